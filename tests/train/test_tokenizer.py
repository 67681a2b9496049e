"""Subword tokenizers through Hugging Face ``tokenizers``: training, loading, exact bytes
per token, the ``postformer tokenizer`` command, and BPE in the data module."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from postformer.cli import main
from postformer.train.corpus import Corpus, read_text, split_is_val
from postformer.train.data import TextDataModule
from postformer.train.tokenizer import EOT, HFTokenizer, get_tokenizer, train_bpe

REPO = Path(__file__).resolve().parents[2]

SAMPLES = [
    "def f(x):\n    return x ** 2  # żółw, 数, 🐍\n",
    "naïve café — “quotes” ½ ∑ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \t\r\n 漢字かな交じり文 😀😃😄",
    f"a literal {EOT} inside a document is text, not a separator",
    "",
    " leading space and trailing   ",
]


@pytest.fixture(scope="module")
def stdlib_texts() -> list[str]:
    return [read_text(p)[0] for _, p in Corpus(max_bytes=300_000).documents()]


@pytest.fixture(scope="module")
def bpe(stdlib_texts) -> HFTokenizer:
    return train_bpe(stdlib_texts, vocab_size=512)


@pytest.fixture(scope="module")
def bpe_file(bpe, tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "bpe512.json"
    bpe.save(path)
    return path


def test_bpe_trains_round_trips_and_counts_bytes_exactly(bpe, stdlib_texts):
    assert bpe.vocab_size == 512 == bpe.backend.get_vocab_size(with_added_tokens=True)
    assert bpe.eos_id == 0 and bpe.backend.id_to_token(0) == EOT
    table = bpe.token_bytes()
    assert table.shape == (512,) and table.dtype == np.int64 and table[bpe.eos_id] == 1
    for text in stdlib_texts[:50] + SAMPLES:
        ids = bpe.encode(text)
        assert bpe.decode(ids) == text
        assert int(table[ids].sum()) == len(text.encode("utf-8"))
        assert bpe.eos_id not in ids  # document text never yields the separator
        # the token bytes, mapped back through the ByteLevel alphabet, are the text's bytes
        assert b"".join(bpe.id_to_bytes(int(i)) for i in ids) == text.encode("utf-8")
    # a vocab-512 BPE compresses Python source well beyond one byte per token
    ids = bpe.encode_batch(stdlib_texts)
    n_bytes = sum(len(t.encode()) for t in stdlib_texts)
    assert n_bytes / sum(len(x) for x in ids) > 1.5
    # partial UTF-8 tokens exist (single bytes of 🐍): decode([id]) would say U+FFFD, 1 char
    snake = bpe.encode("🐍")
    assert len(snake) > 1 and "\ufffd" in bpe.decode(snake[:1])
    assert int(table[snake].sum()) == 4


def test_tokenizer_json_loads_by_path_with_a_content_hash(bpe, bpe_file, stdlib_texts, tmp_path):
    tok = get_tokenizer(str(bpe_file))
    assert isinstance(tok, HFTokenizer)
    assert re.fullmatch(r"bpe512\.json:[0-9a-f]{12}", tok.name)
    assert tok.vocab_size == 512 and tok.eos_id == 0
    assert (tok.token_bytes() == bpe.token_bytes()).all()
    assert (tok.encode(SAMPLES[1]) == bpe.encode(SAMPLES[1])).all()
    # a folder holding a tokenizer.json works too; other contents, other name
    (tmp_path / "tokenizer.json").write_bytes(bpe_file.read_bytes())
    assert get_tokenizer(str(tmp_path)).name.split(":")[1] == tok.name.split(":")[1]
    other = tmp_path / "other" / "bpe512.json"
    train_bpe(stdlib_texts[:5], vocab_size=300).save(other)
    assert get_tokenizer(str(other)).name != tok.name
    with pytest.raises(FileNotFoundError, match="missing.json"):
        get_tokenizer(str(tmp_path / "missing.json"))
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid tokenizer.json"):
        get_tokenizer(str(tmp_path / "broken.json"))
    with pytest.raises(ValueError, match="known"):
        get_tokenizer("no such tokenizer!")


def test_hub_name_without_network_is_one_clear_error(monkeypatch, tmp_path):
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)  # no 20 s of retries in a test
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))  # an empty cache
    with pytest.raises(ValueError, match="not loadable from the Hugging Face hub") as err:
        get_tokenizer("some-org/some-tokenizer")
    assert "\n" not in str(err.value)


def test_bpe_cannot_be_trained_below_the_byte_alphabet():
    with pytest.raises(ValueError, match="vocab_size must be >= 257"):
        train_bpe(["abc"], vocab_size=100)


def test_tokenizer_command_trains_and_writes_a_loadable_json(tmp_path, capsys):
    out = tmp_path / "sub" / "tok.json"
    rc = main(["tokenizer", "train", "--data.max_bytes", "300000", "--vocab_size", "512",
               "--out", str(out)])
    assert rc == 0 and out.is_file()
    assert not [p for p in out.parent.iterdir() if p.name != "tok.json"]  # no temp file left
    tok = get_tokenizer(str(out))
    assert tok.vocab_size == 512 and json.loads(out.read_text())["model"]["type"] == "BPE"
    printed = capsys.readouterr().out
    assert "vocab size 512" in printed
    # the printed mean bytes per token, against a count from the raw texts
    texts = [read_text(p)[0] for _, p in Corpus(max_bytes=300_000).documents()]
    n_bytes = sum(len(t.encode()) for t in texts) + len(texts)  # one separator each
    n_tokens = sum(len(tok.encode(t)) for t in texts) + len(texts)
    mean = float(re.search(r"([0-9.]+) bytes per token", printed).group(1))
    assert mean == pytest.approx(n_bytes / n_tokens, abs=1e-3) and mean > 1.5


@pytest.mark.parametrize("args", [
    ["--vocab_size", "100", "--out", "{tmp}/a.json"],  # below the byte alphabet
    ["--vocab_size", "512"],  # no --out
    ["--data.path", "{tmp}/nope", "--out", "{tmp}/a.json"],  # missing corpus
    ["--data.hf_config", "en", "--out", "{tmp}/a.json"],  # a subset without a hub dataset
    ["--data.streaming", "--out", "{tmp}/a.json"],  # the stdlib is not streamed
    ["--out", "{tmp}"],  # a folder
    ["--vocab_size", "lots", "--out", "{tmp}/a.json"],
])
def test_tokenizer_command_bad_arguments_exit_2(tmp_path, capsys, args):
    with pytest.raises(SystemExit) as exit_:
        main(["tokenizer", "train", *[a.format(tmp=tmp_path) for a in args]])
    assert exit_.value.code == 2
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "a.json").exists()
    with pytest.raises(SystemExit) as exit_:
        main(["tokenizer"])
    assert exit_.value.code == 2


def _write_docs(folder, texts):
    folder.mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(texts):
        (folder / f"doc{i:03d}.txt").write_text(text, encoding="utf-8")


def test_data_module_with_bpe_keeps_bits_per_byte_exact(bpe_file, stdlib_texts, tmp_path):
    texts = stdlib_texts[:40] + SAMPLES
    _write_docs(tmp_path / "docs", texts)
    dm = TextDataModule(path=str(tmp_path / "docs"), tokenizer=str(bpe_file), seq_len=16,
                        batch_size=2, cache_dir=str(tmp_path / "cache"), val_fraction=0.2)
    dm.setup()
    assert dm.vocab_size == 512 and dm.tokens["train"].dtype == np.uint16
    table = dm.token_bytes()
    keys = [f"doc{i:03d}.txt" for i in range(len(texts))]
    is_val = split_is_val(keys, 0.2)
    for split, want_val in (("train", False), ("val", True)):
        ids = np.asarray(dm.tokens[split])
        mine = [t for t, v in zip(texts, is_val) if v == want_val]
        # mean bytes per token of the split = (UTF-8 bytes + separators) / tokens
        n_bytes = sum(len(t.encode("utf-8")) for t in mine) + len(mine)
        assert int(table[ids].sum()) == n_bytes
        assert (ids == dm.tokenizer.eos_id).sum() == len(mine)
        # independent: the split is its documents' encodings, each followed by the separator
        want = np.concatenate([np.append(dm.tokenizer.encode(t), 0) for t in mine])
        assert np.array_equal(ids, want)
    assert "bpe512.json:" in dm.describe_validation()["tokenizer"]


def test_invalid_utf8_is_raw_bytes_for_bytes_and_one_warning_for_bpe(bpe_file, tmp_path):
    bad = b"\xff\xfe abc \x80 \xe2\x82 end"  # 3 stray bytes and a cut 3-byte sequence
    docs = tmp_path / "docs"
    _write_docs(docs, [f"clean document {i}\n" * 10 for i in range(12)])
    (docs / "bad.txt").write_bytes(bad)
    n_invalid = len(bad) - len(bad.decode("utf-8", errors="ignore").encode())
    assert n_invalid == 5

    dm = TextDataModule(path=str(docs), seq_len=8, batch_size=2, cache_dir=str(tmp_path / "c"))
    dm.setup()
    files = sorted(docs.iterdir())
    is_val = split_is_val([f.name for f in files], dm.val_fraction)
    for split, want_val in (("train", False), ("val", True)):
        want = b"".join(f.read_bytes() + b"\0" for f, v in zip(files, is_val) if v == want_val)
        assert bytes(np.asarray(dm.tokens[split])) == want
    assert bad in bytes(np.asarray(dm.tokens["train"])) + bytes(np.asarray(dm.tokens["val"]))

    bpe_dm = TextDataModule(path=str(docs), tokenizer=str(bpe_file), seq_len=8, batch_size=2,
                            cache_dir=str(tmp_path / "c"))
    with pytest.warns(UserWarning, match=rf"^{n_invalid} bytes of the corpus are not valid UTF-8") as rec:
        bpe_dm.setup()
    assert sum("not valid UTF-8" in str(w.message) for w in rec) == 1  # one warning, a count
    ids = np.concatenate([bpe_dm.tokens["train"], bpe_dm.tokens["val"]])
    assert "\ufffd" in bpe_dm.tokenizer.decode(ids)


def test_tokenizer_training_can_leave_out_the_held_out_documents(tmp_path):
    from postformer.train.tokenizer import _corpus_texts

    texts = [f"document {i} " * (i + 1) for i in range(40)]
    _write_docs(tmp_path / "docs", texts)
    c = Corpus(files=sorted((tmp_path / "docs").iterdir()))
    assert list(_corpus_texts(c, [0])) == texts
    is_val = split_is_val([f"doc{i:03d}.txt" for i in range(40)], 0.3)
    assert 0 < is_val.sum() < 40
    assert list(_corpus_texts(c, [0], 0.3)) == [t for t, v in zip(texts, is_val) if not v]


def test_fit_with_a_trained_tokenizer_reports_its_real_bytes_per_token(tmp_path):
    """`postformer tokenizer train` then `postformer fit --data.tokenizer tok.json`: the model's
    vocab follows the tokenizer, and val/loss / (ln 2 * val/bpb), the mean bytes per token the
    metrics imply, equals the mean over the evaluated windows' targets counted from the raw
    bytes each token decodes to."""
    import csv
    import math

    import torch

    from postformer.train.module import LMModule

    tok = tmp_path / "tok.json"
    assert main(["tokenizer", "train", "--data.max_bytes", "300000", "--vocab_size", "1024",
                 "--out", str(tok)]) in (0, None)
    run = tmp_path / "run"
    data = ["--data.max_bytes", "300000", "--data.seq_len", "64", "--data.batch_size", "4",
            "--data.val_tokens", "4096"]
    main(["fit", "--config", str(REPO / "configs" / "smoke" / "transformer.yaml"),
          "--data.tokenizer", str(tok), *data, "--trainer.default_root_dir", str(run),
          "--trainer.max_steps", "4", "--trainer.val_check_interval", "4",
          "--trainer.limit_val_batches", "null", "--trainer.enable_progress_bar", "false",
          "--trainer.enable_model_summary", "false"])
    model = LMModule.load_from_checkpoint(run / "checkpoints" / "last.ckpt")
    assert model.config.vocab_size == 1024
    with open(run / "metrics.csv") as f:
        row = [r for r in csv.DictReader(f) if r.get("val/bpb")][-1]
    implied = float(row["val/loss"]) / (math.log(2) * float(row["val/bpb"]))
    # independently: the evaluated windows' target tokens and the bytes each decodes to
    dm = TextDataModule(tokenizer=str(tok), max_bytes=300_000, seq_len=64, batch_size=4,
                        val_tokens=4096)
    hf = get_tokenizer(str(tok))
    targets = torch.cat([dm.dataset("val")[int(i)][1:] for i in dm.val_windows()])
    n_bytes = sum(1 if t == hf.eos_id else len(hf.id_to_bytes(int(t))) for t in targets.tolist())
    real = n_bytes / len(targets)
    assert real > 1.8  # a BPE, not bytes
    assert math.isclose(implied, real, rel_tol=1e-4), (implied, real)
    print(f"bytes per token: implied by val/loss and val/bpb {implied:.4f}, counted {real:.4f}")
