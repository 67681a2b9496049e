"""`postformer export`: the export folder's files and keys, logits identical after
`LanguageModel.from_pretrained`, the run's BPE carried along, refusals in one line."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml
from cli_testing import one_line_error  # tests/train/cli_testing.py
from safetensors.torch import load_file
from tiny_fit import tiny_config  # tests/train/tiny_fit.py

from postformer import __version__
from postformer.arch import LanguageModel, ModelConfig
from postformer.cli import main
from postformer.train.export import load_export_tokenizer
from postformer.train.module import LMModule
from postformer.train.tokenizer import HFTokenizer, train_bpe

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
MODEL = {"config": {"d_model": 32, "n_layers": 2, "pattern": ["gdn", "attn"], "init_std": 0.1,
                    "mixers": {"attn": {"n_heads": 2}, "gdn": {"n_heads": 2}}},
         "lr": 3e-3, "warmup_steps": 2}
KEYS = ["model_type", "architectures", "postformer_version", "vocab_size", "model", "tokenizer",
        "eos_token_id", "torch_dtype"]


def fit(root: Path, cache: Path, **data) -> Path:
    with pytest.MonkeyPatch.context() as mp:  # the autouse cache fixture is per test
        mp.setenv("POSTFORMER_CACHE", str(cache))
        cfg = root / "fit.yaml"
        cfg.write_text(yaml.safe_dump(tiny_config(model=MODEL, data=data, trainer={"max_steps": 3})))
        main(["fit", "--config", str(cfg), "--trainer.default_root_dir", str(root / "run"), *QUIET])
    return root / "run" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def byte_ckpt(tmp_path_factory) -> Path:
    return fit(tmp_path_factory.mktemp("bytes"), tmp_path_factory.getbasetemp() / "postformer-cache")


@pytest.fixture(scope="module")
def bpe_ckpt(tmp_path_factory) -> tuple[Path, Path]:
    """A run with a byte-level BPE (a file given by a relative-free absolute path)."""
    root = tmp_path_factory.mktemp("bpe")
    tok = root / "tok.json"
    train_bpe(["def main():\n    return 0\n", "héllo wörld 日本語 🎉\n", "import os, sys\n"] * 30,
              300).save(tok)
    return fit(root, tmp_path_factory.getbasetemp() / "postformer-cache", tokenizer=str(tok)), tok


def export(ckpt: Path, out: Path, *extra: str) -> None:
    assert main(["export", str(ckpt), "--out", str(out), *extra]) == 0


def reference_model(ckpt: Path) -> LanguageModel:
    """The checkpoint's model as Lightning loads it (not the code under test)."""
    return LMModule.load_from_checkpoint(str(ckpt), map_location="cpu").model.float().eval()


def test_export_bytes_identical_logits(byte_ckpt, tmp_path, capsys):
    out = tmp_path / "exp"
    export(byte_ckpt, out)
    printed = capsys.readouterr().out
    assert str(out / "model.safetensors") in printed and str(out / "config.json") in printed
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    hparams = torch.load(byte_ckpt, map_location="cpu", weights_only=False)["hyper_parameters"]
    assert list(config) == KEYS
    assert config["model_type"] == "postformer"
    assert config["architectures"] == ["PostformerForCausalLM"]
    assert config["postformer_version"] == __version__
    assert config["vocab_size"] == 256 and config["model"]["vocab_size"] == 256
    assert config["model"] == hparams["config"]
    assert config["model"] == dataclasses.asdict(ModelConfig(**config["model"]))
    assert config["tokenizer"] == "bytes" and config["eos_token_id"] == 0
    assert config["torch_dtype"] == "float32"

    reference = reference_model(byte_ckpt)
    tensors = load_file(out / "model.safetensors")
    assert all(t.dtype == torch.float32 for t in tensors.values())
    own = reference.state_dict()
    for name, t in tensors.items():  # a tied matrix is stored once, under one of its names
        assert torch.equal(t, own[name]), name

    model = LanguageModel.from_pretrained(out)
    assert not model.training and model.lm_head.weight is model.embedding.weight
    torch.manual_seed(0)
    tokens = torch.randint(0, 256, (2, 40))
    with torch.no_grad():
        assert torch.equal(model(tokens), reference(tokens))
    assert torch.equal(model.generate(tokens[:, :5], 8), reference.generate(tokens[:, :5], 8))


def test_export_bpe_carries_the_tokenizer(bpe_ckpt, byte_ckpt, tmp_path):
    ckpt, tok_file = bpe_ckpt
    out = tmp_path / "exp"
    export(ckpt, out)
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert (out / "tokenizer.json").read_bytes() == tok_file.read_bytes()
    source = HFTokenizer.from_file(tok_file)
    config = json.loads((out / "config.json").read_text())
    assert list(config) == KEYS
    assert config["tokenizer"] == "tokenizer.json"
    assert config["vocab_size"] == source.vocab_size == config["model"]["vocab_size"]
    assert config["eos_token_id"] == source.eos_id
    assert json.loads((out / "tokenizer_config.json").read_text()) == {
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>"}
    tok = load_export_tokenizer(out)
    text = "def main():\n    héllo 日本語\n"
    assert tok.encode(text).tolist() == source.encode(text).tolist()
    assert tok.eos_id == source.eos_id

    reference = reference_model(ckpt)
    model = LanguageModel.from_pretrained(out)
    tokens = torch.tensor([source.encode(text).tolist()])
    with torch.no_grad():
        assert torch.equal(model(tokens), reference(tokens))

    transformers = pytest.importorskip("transformers")
    hf = transformers.PreTrainedTokenizerFast.from_pretrained(str(out))
    assert hf.encode(text) == source.encode(text).tolist()
    assert hf.eos_token_id == source.eos_id

    # --overwrite with a byte-level run: the old tokenizer files go
    export(byte_ckpt, out, "--overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((out / "config.json").read_text())["tokenizer"] == "bytes"


def test_save_pretrained_extra_and_from_pretrained_errors(tmp_path):
    model = LanguageModel(ModelConfig(vocab_size=64, d_model=32, n_layers=2, pattern=["gla", "attn"]))
    model.save_pretrained(tmp_path / "m", {"tokenizer": "bytes", "custom": 1})
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["custom"] == 1 and config["vocab_size"] == 64 and config["torch_dtype"] == "float32"
    assert not [p for p in (tmp_path / "m").iterdir() if p.name.startswith(".")]  # no temp files
    with pytest.raises(ValueError, match="'model'"):
        model.save_pretrained(tmp_path / "m", {"model": {}})
    with pytest.raises(FileNotFoundError, match="no such folder"):
        LanguageModel.from_pretrained(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json does not exist"):
        LanguageModel.from_pretrained(tmp_path / "empty")
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "postformer"}))
    with pytest.raises(ValueError, match="has no 'model' entry"):
        LanguageModel.from_pretrained(tmp_path / "m")
    other = dataclasses.asdict(ModelConfig(vocab_size=64, d_model=32, n_layers=3, pattern=["gla"]))
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model": other}))
    with pytest.raises(ValueError, match="does not fit"):
        LanguageModel.from_pretrained(tmp_path / "m")


def test_export_errors(byte_ckpt, tmp_path, capsys):
    missing = tmp_path / "run" / "checkpoints" / "last.ckpt"
    one_line_error(capsys, ["export", str(missing), "--out", str(tmp_path / "a")],
                   "does not exist", str(missing))
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    one_line_error(capsys, ["export", str(byte_ckpt), "--out", str(full)], "not empty",
                   "--overwrite")
    assert [p.name for p in full.iterdir()] == ["notes.txt"]
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "model.ckpt").write_bytes(byte_ckpt.read_bytes())
    one_line_error(capsys, ["export", str(lone / "model.ckpt"), "--out", str(tmp_path / "b")],
                   "no tokenizer known", str(lone / "config.yaml"))
    assert not (tmp_path / "b").exists()
    one_line_error(capsys, ["export", str(byte_ckpt)], "--out")
    export(byte_ckpt, tmp_path / "c")
    one_line_error(capsys, ["export", str(tmp_path / "c"), "--out", str(tmp_path / "d")],
                   "export folder already")
