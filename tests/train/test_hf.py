"""The transformers face of an export (train/hf.py): AutoModelForCausalLM round trip, generate
with the recurrent cache, save_pretrained, the byte tokenizer, and the `kernels` shadowing fix.

A tiny random model is exported here with ``LanguageModel.save_pretrained`` and the entries
`postformer export` adds (config.json + model.safetensors).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from postformer import __version__  # noqa: E402
from postformer.arch.config import ModelConfig  # noqa: E402
from postformer.arch.layers import Rotary  # noqa: E402
from postformer.arch.model import LanguageModel  # noqa: E402
from postformer.arch.registry import MIXERS  # noqa: E402
from postformer.train import hf  # noqa: E402  (registers the Auto classes)

ROOT = Path(__file__).resolve().parents[2]


def write_export(model: LanguageModel, out: Path, tokenizer: str = "bytes", eos_token_id: int = 0) -> Path:
    """An export folder of ``model`` as `postformer export` writes it (config.json with the
    tokenizer entries + model.safetensors), through ``LanguageModel.save_pretrained``."""
    model.save_pretrained(out, {"tokenizer": tokenizer, "eos_token_id": eos_token_id,
                                "torch_dtype": "float32"})
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == dataclasses.asdict(model.cfg) and config["postformer_version"] == __version__
    return out


def tiny_model(pattern=("gla", "attn"), tie: bool = True, seed: int = 0) -> LanguageModel:
    torch.manual_seed(seed)
    cfg = ModelConfig(d_model=32, n_layers=2, pattern=list(pattern), tie_embeddings=tie,
                      mixers={"attn": {"n_heads": 2}, "gla": {"n_heads": 2}})
    return LanguageModel(cfg).eval()


def _load(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).eval()


@pytest.mark.parametrize("pattern,tie", [(("gla", "attn"), True), (("mamba2",), False)])
def test_from_pretrained_matches_language_model(tmp_path, pattern, tie):
    model = tiny_model(pattern, tie)
    hf_model = _load(write_export(model, tmp_path / "export"))
    assert isinstance(hf_model, hf.PostformerForCausalLM)
    assert (hf_model.lm_head.weight is hf_model.embedding.weight) == tie
    tokens = torch.randint(1, 256, (2, 11))
    with torch.no_grad():
        expected = model(tokens)
        got = hf_model(tokens, use_cache=False).logits
        got_cached = hf_model(tokens).logits  # a prefill through the recurrent cache
    assert got.shape == (2, 11, 256) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(got_cached, expected, atol=1e-5, rtol=1e-5)


def test_generate_greedy_uses_the_cache_and_matches_recompute(tmp_path):
    model = tiny_model()
    hf_model = _load(write_export(model, tmp_path / "export"))
    prompt = torch.randint(1, 256, (2, 5))
    lengths: list[int] = []
    hook = hf_model.register_forward_pre_hook(
        lambda mod, args, kwargs: lengths.append(kwargs["input_ids"].shape[1]), with_kwargs=True)
    try:
        out = hf_model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8,
                                do_sample=False, pad_token_id=0, eos_token_id=None)
    finally:
        hook.remove()
    # independent greedy decoding: argmax of a full recompute at every step
    seq = prompt
    with torch.no_grad():
        for _ in range(8):
            seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert out.tolist() == seq.tolist()
    assert lengths == [5] + [1] * 7  # the prompt once, then one token per step
    no_cache = hf_model.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=False,
                                 pad_token_id=0, eos_token_id=None)
    assert no_cache.tolist() == seq.tolist()
    with pytest.raises(NotImplementedError, match="beam"):
        hf_model.generate(prompt, max_new_tokens=2, num_beams=2)


def test_labels_loss_and_padding_refused(tmp_path):
    model = tiny_model()
    hf_model = _load(write_export(model, tmp_path / "export"))
    tokens = torch.randint(1, 256, (1, 9))
    with torch.no_grad():
        loss = hf_model(tokens, labels=tokens, use_cache=False).loss
        logits = model(tokens)
    expected = torch.nn.functional.cross_entropy(logits[0, :-1], tokens[0, 1:])
    torch.testing.assert_close(loss, expected)
    mask = torch.ones_like(tokens)
    mask[0, 0] = 0
    with pytest.raises(ValueError, match="padding"):
        hf_model(tokens, attention_mask=mask)


def test_save_pretrained_writes_the_export_keys(tmp_path):
    from safetensors.torch import load_model

    model = tiny_model()
    hf_model = _load(write_export(model, tmp_path / "export"))
    hf_model.save_pretrained(tmp_path / "again")
    config = json.loads((tmp_path / "again" / "config.json").read_text())
    assert config["model_type"] == "postformer"
    assert config["model"] == dataclasses.asdict(model.cfg)
    fresh = LanguageModel(ModelConfig(**config["model"])).eval()
    load_model(fresh, str(tmp_path / "again" / "model.safetensors"))
    tokens = torch.randint(1, 256, (1, 7))
    with torch.no_grad():
        torch.testing.assert_close(fresh(tokens), model(tokens), atol=0, rtol=0)
    assert _load(tmp_path / "again").config.model == config["model"]


def test_register_is_idempotent():
    from transformers import AutoConfig

    hf.register()
    hf._REGISTERED = False
    hf.register()  # registering again must not raise
    assert isinstance(AutoConfig.for_model("postformer"), hf.PostformerConfig)


def test_only_rotary_holds_non_persistent_buffers():
    """from_pretrained leaves non-persistent buffers empty; _init_weights refills Rotary's only."""
    for name in MIXERS:
        model = LanguageModel(ModelConfig(d_model=64, n_layers=1, pattern=[name]))
        for module in model.modules():
            if module._non_persistent_buffers_set:
                assert isinstance(module, Rotary), f"{name}: {type(module).__name__} has " \
                    f"{module._non_persistent_buffers_set}; teach hf.PostformerForCausalLM._init_weights"


def test_byte_tokenizer_ids_are_bytes(tmp_path):
    tok = hf.byte_tokenizer()
    text = "héllo wörld\n\t€ {x}"
    ids = tok.encode(text).ids
    assert ids == list(text.encode("utf-8"))
    assert tok.get_vocab_size() == 256
    assert tok.decode(ids) == text
    tok.save(str(tmp_path / "tokenizer.json"))
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    assert fast(text)["input_ids"] == list(text.encode("utf-8"))
    assert fast.decode(fast(text)["input_ids"]) == text


def test_transformers_imports_from_the_repository_root():
    """`kernels/` at the repo root shadows the PyPI `kernels` that transformers imports; run
    from the root (cwd first on sys.path), importing postformer.train.hf must fix that."""
    code = (
        "import sys; assert sys.path[0] == '';"
        "import postformer.train.hf;"
        "from transformers import GPT2Config, GPT2LMHeadModel;"
        "GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2));"
        "import importlib.metadata as md, importlib.util, postformer.kernels;"
        "hub = importlib.util.find_spec('kernels') if 'kernels' in md.packages_distributions() else None;"
        "assert hub is None or 'site-packages' in hub.origin, hub;"
        "assert postformer.kernels.__file__.startswith(sys.argv[1]), postformer.kernels.__file__;"
        "assert sys.path[0] == ''"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code, str(ROOT)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
