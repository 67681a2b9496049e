import json

import numpy as np
import pytest
import torch

from postformer.train.data import DataError, PackedSequences, TextDataModule, split_is_val
from postformer.train.sampler import ResumableBatchSampler
from postformer.train.tokenizer import ByteTokenizer, get_tokenizer

TINY_DATA = {"max_bytes": 150_000, "seq_len": 32, "batch_size": 4}

def test_byte_tokenizer_round_trip():
    tok = get_tokenizer("bytes")
    text = "def f(x):\n    return x ** 2  # żółw, 数, 🐍\n"
    ids = tok.encode(text)
    assert ids.dtype == np.uint8 and len(ids) == len(text.encode("utf-8"))
    assert tok.decode(ids) == text
    assert tok.vocab_size == 256 and (tok.token_bytes() == 1).all()
    # "gpt2" is a hub name now (network); a name that is neither fails at once
    with pytest.raises(ValueError, match="known"):
        get_tokenizer("not a tokenizer!")


def test_default_corpus_split_is_deterministic_and_disjoint():
    docs_a = TextDataModule(**TINY_DATA).load_documents()
    docs_b = TextDataModule(**TINY_DATA).load_documents()
    assert docs_a["key"] == docs_b["key"] and len(docs_a) > 5
    assert all(k.endswith(".py") for k in docs_a["key"])
    val = split_is_val(docs_a["key"], 0.3)
    assert (val == split_is_val(docs_b["key"], 0.3)).all()
    train_keys = {k for k, v in zip(docs_a["key"], val, strict=True) if not v}
    val_keys = {k for k, v in zip(docs_a["key"], val, strict=True) if v}
    assert train_keys and val_keys and not train_keys & val_keys
    # a file's side does not depend on which other files are in the corpus
    full = TextDataModule(max_bytes=600_000).load_documents()["key"]
    full_val = dict(zip(full, split_is_val(full, 0.3), strict=True))
    assert all(full_val[k] == v for k, v in zip(docs_a["key"], val, strict=True) if k in full_val)


def test_packing_windows():
    tokens = np.arange(23, dtype=np.uint8)
    ds = PackedSequences(tokens, seq_len=5)
    assert len(ds) == 4  # (23 - 1) // 5
    assert ds[0].tolist() == [0, 1, 2, 3, 4, 5]
    assert ds[1].tolist() == [5, 6, 7, 8, 9, 10]  # consecutive windows share one token
    assert ds[3].tolist()[-1] == 20


def test_cache_hit_on_second_load(tmp_path, monkeypatch):
    dm = TextDataModule(cache_dir=str(tmp_path), **TINY_DATA)
    dm.setup()
    assert dm.cache_hit is False
    files = sorted(p.name for p in (tmp_path / "tokens").iterdir())
    # train, val, meta and the build lock; no temporary file left
    assert len(files) == 4 and not any(f.endswith(".tmp") for f in files)
    assert sum(f.endswith(".lock") for f in files) == 1

    again = TextDataModule(cache_dir=str(tmp_path), **TINY_DATA)
    monkeypatch.setattr(again, "_tokenize", lambda: pytest.fail("tokenised again"))
    again.setup()
    assert again.cache_hit is True
    for split in ("train", "val"):
        assert np.array_equal(dm.tokens[split], again.tokens[split])
    # a different tokenizer-relevant setting is a different key
    other = TextDataModule(cache_dir=str(tmp_path), **(TINY_DATA | {"max_bytes": 100_000}))
    assert other.cache_key() != dm.cache_key()


@pytest.mark.parametrize("damaged", ["train.npy", "meta.json"])
def test_damaged_token_cache_names_the_file_and_the_fix(tmp_path, damaged):
    dm = TextDataModule(cache_dir=str(tmp_path), **TINY_DATA)
    dm.setup()
    path = tmp_path / "tokens" / f"{dm.cache_key()}-{damaged}"
    path.write_bytes(path.read_bytes()[: 200 if damaged == "train.npy" else 10])
    again = TextDataModule(cache_dir=str(tmp_path), **TINY_DATA)
    with pytest.raises(DataError, match="truncated or damaged") as exc:
        again.setup() if damaged == "train.npy" else again.describe_validation()
    message = str(exc.value)
    assert f"the token cache file {path} cannot be read" in message
    assert f"remove {tmp_path / 'tokens' / dm.cache_key()}-* and run again" in message
    assert "\n" not in message


def test_missing_path_error(tmp_path):
    missing = tmp_path / "nope" / "corpus.txt"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        TextDataModule(path=str(missing))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no data files"):
        TextDataModule(path=str(tmp_path / "empty"))


def test_local_txt_and_jsonl(tmp_path):
    tok = ByteTokenizer()
    txt = tmp_path / "txt"
    txt.mkdir()
    for i in range(40):
        (txt / f"doc{i:02d}.txt").write_text(f"document number {i}\n" * 20)
    dm = TextDataModule(path=str(txt), cache_dir=str(tmp_path / "c"), seq_len=16, batch_size=2)
    dm.setup()
    n_text = sum(len(f.read_bytes()) + 1 for f in txt.iterdir())  # + one separator each
    assert len(dm.tokens["train"]) + len(dm.tokens["val"]) == n_text
    assert "document number" in tok.decode(dm.tokens["train"][:40])

    rows = [{"text": f"row {i} " * 30, "other": i} for i in range(200)]
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows))
    dm = TextDataModule(path=str(jsonl), cache_dir=str(tmp_path / "c"), seq_len=16, batch_size=2)
    dm.setup()
    assert len(dm.tokens["val"]) > 0 and len(dm.tokens["train"]) > len(dm.tokens["val"])
    with pytest.raises(ValueError, match="text_field"):
        TextDataModule(path=str(jsonl), text_field="body", cache_dir=str(tmp_path / "c")).setup()


def test_sampler_resumes_mid_stream_across_epochs():
    full = ResumableBatchSampler(range(23), batch_size=4, seed=3)
    assert len(full) == 5
    stream = [b for _ in range(3) for b in full]  # three epochs, 15 batches
    assert len({i for b in stream[:5] for i in b}) == 20  # no repeats within an epoch
    assert stream[:5] != stream[5:10]  # a new order each epoch
    for start in (0, 2, 5, 7):
        resumed = ResumableBatchSampler(range(23), batch_size=4, seed=3, start_batch=start)
        tail = [b for _ in range(3) for b in resumed][: 15 - start]
        assert tail == stream[start:]
    assert [b for b in ResumableBatchSampler(range(23), 4, seed=4)] != stream[:5]


def test_validation_set_is_a_fixed_shuffled_subset(tmp_path):
    dm = TextDataModule(cache_dir=str(tmp_path), val_tokens=1000, seed=0, **TINY_DATA)
    other = TextDataModule(cache_dir=str(tmp_path), val_tokens=1000, seed=7, **TINY_DATA)
    windows = dm.val_windows()
    n_all = len(dm.dataset("val"))
    assert len(windows) == -(-1000 // 32) and len(set(windows.tolist())) == len(windows)
    assert (windows == other.val_windows()).all()  # the training seed does not move it
    # drawn from the whole held-out split, not its first files
    assert windows.max() > 0.7 * n_all and windows.min() < 0.3 * n_all
    seen = torch.cat([b[:, :-1].reshape(-1) for b in dm.val_dataloader()])
    assert len(seen) == len(windows) * 32
    expect = torch.cat([dm.dataset("val")[int(i)][:-1] for i in windows])
    assert torch.equal(seen, expect)
    desc = dm.describe_validation()
    assert desc["windows"] == len(windows) and desc["tokens"] == len(windows) * 32
    assert desc["held_out_tokens"] == len(dm.tokens["val"]) and desc["documents"] >= 1
    everything = TextDataModule(cache_dir=str(tmp_path), **TINY_DATA)
    assert len(everything.val_windows()) == n_all
    with pytest.raises(ValueError, match="val_tokens must be >= 1"):
        TextDataModule(val_tokens=0, **TINY_DATA)


def test_default_corpus_tokens_are_the_files_bytes(tmp_path):
    """With the bytes tokenizer each split is its files' raw bytes, in path order, each
    followed by the NUL separator (computed here from the files themselves)."""
    from postformer.train.corpus import stable_unit, stdlib_files

    dm = TextDataModule(cache_dir=str(tmp_path), val_fraction=0.3, **TINY_DATA)
    dm.setup()
    assert dm.describe_validation()["split"] == "by document"
    root, files = stdlib_files()
    order = sorted(files, key=lambda f: stable_unit("cap:" + f.relative_to(root).as_posix()))
    keep, total = [], 0
    for f in order:  # the max_bytes rule: whole files until the cap is reached
        if total >= TINY_DATA["max_bytes"]:
            break
        keep.append(f)
        total += f.stat().st_size
    keep.sort()
    val = split_is_val([f.relative_to(root).as_posix() for f in keep], dm.val_fraction)
    for split, want_val in (("train", False), ("val", True)):
        want = b"".join(f.read_bytes() + b"\0" for f, v in zip(keep, val) if v == want_val)
        assert dm.tokens[split].dtype == np.uint8 and bytes(np.asarray(dm.tokens[split])) == want
