"""Corpora at scale: streaming local files, the max_tokens cap, the locked one-time build,
parallel tokenisation, the tail split, option errors."""

import hashlib
import json
import multiprocessing as mp
import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from postformer.train import corpus
from postformer.train.corpus import Corpus, split_is_val, stable_unit, stdlib_files
from postformer.train.data import TextDataModule
from postformer.train.tokenizer import train_bpe

SMALL = {"seq_len": 16, "batch_size": 2}


def _rows(n: int = 300) -> list[str]:
    rng = np.random.default_rng(0)
    words = ["alpha", "βeta", "gamma", "数据", "🐍", "x", "long" * 5, "\t", "\n"]
    return [" ".join(rng.choice(words, size=int(rng.integers(0, 60)))) for _ in range(n)]


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    """The same rows as one jsonl file and as two parquet files."""
    root = tmp_path_factory.mktemp("tables")
    texts = _rows()
    (root / "jsonl").mkdir()
    with open(root / "jsonl" / "data.jsonl", "w") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"text": t, "id": i}) + "\n")
    (root / "parquet").mkdir()
    for part, rows in enumerate((texts[:120], texts[120:])):
        pq.write_table(pa.table({"text": rows, "n": list(range(len(rows)))}),
                       root / "parquet" / f"part{part}.parquet")
    return root, texts


def _expected(texts: list[str], val_fraction: float, max_tokens: int | None = None):
    """Independent byte-tokenizer arrays: rows in order, keys their index, each followed by
    NUL, the global stream cut at max_tokens, then each split's tokens in order."""
    pieces = [np.frombuffer(t.encode() + b"\0", np.uint8) for t in texts]
    side = np.concatenate([np.full(len(p), v) for p, v in
                           zip(pieces, split_is_val([str(i) for i in range(len(texts))],
                                                    val_fraction))])
    stream = np.concatenate(pieces)
    if max_tokens is not None:
        stream, side = stream[:max_tokens], side[:max_tokens]
    return {"train": stream[~side], "val": stream[side]}


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
@pytest.mark.parametrize("max_tokens", [None, 3000])
def test_streaming_local_tables_equals_reading_them(tables, tmp_path, kind, max_tokens):
    root, texts = tables
    total = sum(len(t.encode()) + 1 for t in texts)
    assert max_tokens is None or max_tokens < total / 3
    arrays = {}
    for streaming in (False, True):
        dm = TextDataModule(path=str(root / kind), streaming=streaming, max_tokens=max_tokens,
                            cache_dir=str(tmp_path), val_fraction=0.2, **SMALL)
        dm.setup()
        assert dm.cache_hit is False  # streaming is part of the key: a real second build
        assert isinstance(dm.tokens["train"], np.memmap)
        arrays[streaming] = {s: np.asarray(a) for s, a in dm.tokens.items()}
    want = _expected(texts, 0.2, max_tokens)
    for s in ("train", "val"):
        assert np.array_equal(arrays[True][s], arrays[False][s])
        assert np.array_equal(arrays[False][s], want[s])
    n = len(want["train"]) + len(want["val"])
    assert n == (total if max_tokens is None else max_tokens)  # the cap is exact


def test_streaming_reads_only_as_far_as_max_tokens(tables, tmp_path, monkeypatch):
    root, texts = tables
    monkeypatch.setattr(corpus, "BATCH_DOCS", 8)
    read = []
    rows = Corpus._rows

    def counting(self):
        for text in rows(self):
            read.append(text)
            yield text

    monkeypatch.setattr(Corpus, "_rows", counting)
    dm = TextDataModule(path=str(root / "jsonl"), streaming=True, max_tokens=1000,
                        cache_dir=str(tmp_path), **SMALL)
    dm.setup()
    needed = int(np.searchsorted(np.cumsum([len(t.encode()) + 1 for t in texts]), 1000)) + 1
    assert needed <= len(read) <= needed + 8  # at most one batch of read-ahead
    assert len(read) < len(texts) / 3
    assert len(dm.tokens["train"]) + len(dm.tokens["val"]) == 1000


def test_max_tokens_on_the_default_corpus(tmp_path):
    dm = TextDataModule(max_tokens=300_000, cache_dir=str(tmp_path), seq_len=32, batch_size=4)
    dm.setup()
    # independent: the stdlib files in the salted hash order, read until the cap, cut there
    root, files = stdlib_files()
    order = sorted(files, key=lambda f: stable_unit("cap:" + f.relative_to(root).as_posix()))
    taken, n = [], 0
    while n < 300_000:
        taken.append(order[len(taken)])
        n += taken[-1].stat().st_size + 1
    keys = [f.relative_to(root).as_posix() for f in taken]
    assert len({k.split("/")[0] for k in keys}) > 3  # not one folder: the order is mixed
    side = np.concatenate([np.full(f.stat().st_size + 1, v)
                           for f, v in zip(taken, split_is_val(keys, dm.val_fraction))])
    stream = np.frombuffer(b"".join(f.read_bytes() + b"\0" for f in taken), np.uint8)
    stream, side = stream[:300_000], side[:300_000]
    assert np.array_equal(dm.tokens["train"], stream[~side])
    assert np.array_equal(dm.tokens["val"], stream[side])
    meta = json.loads(dm._meta_path().read_text())
    assert meta["split"] == "by document"
    assert meta["tokens"] == {"train": len(dm.tokens["train"]), "val": len(dm.tokens["val"])}
    assert meta["documents"]["train"] + meta["documents"]["val"] == len(taken)


def test_parallel_tokenisation_gives_the_same_arrays(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "BATCH_DOCS", 4)  # several tasks for the pool
    pools = []

    class Pool(corpus.ProcessPoolExecutor):
        def submit(self, *args, **kwargs):
            pools.append(self._max_workers)
            return super().submit(*args, **kwargs)

    monkeypatch.setattr(corpus, "ProcessPoolExecutor", Pool)
    texts = [t for _, t in zip(range(30), (corpus.read_text(p)[0]
                                           for _, p in Corpus(max_bytes=200_000).documents()))]
    tok_path = tmp_path / "bpe.json"
    train_bpe(texts, vocab_size=400).save(tok_path)
    out = {}
    for num_proc in (1, 2):
        dm = TextDataModule(max_bytes=200_000, tokenizer=str(tok_path), num_proc=num_proc,
                            cache_dir=str(tmp_path / f"c{num_proc}"), seq_len=32, batch_size=4)
        dm.setup()
        assert dm.cache_hit is False and dm.tokens["train"].dtype == np.uint16
        out[num_proc] = {s: np.asarray(a) for s, a in dm.tokens.items()}
    assert len(pools) > 3 and set(pools) == {2}  # num_proc=2 used a pool of 2, 1 none
    for s in ("train", "val"):
        assert len(out[1][s]) > 1000 and np.array_equal(out[1][s], out[2][s])


def _build_in_child(cache_dir, log, barrier, results):
    """One of two processes building the same cache at once (spawned: a fresh interpreter)."""
    from postformer.train.data import TextDataModule

    tokenize = TextDataModule._tokenize

    def slow_tokenize(self):
        with open(log, "a") as f:
            f.write(f"build {os.getpid()}\n")
        time.sleep(1.5)  # long enough for the other process to reach the lock
        tokenize(self)

    TextDataModule._tokenize = slow_tokenize
    dm = TextDataModule(cache_dir=cache_dir, max_bytes=100_000, seq_len=32, batch_size=4)
    barrier.wait()
    start = time.monotonic()
    dm.setup()
    digest = hashlib.sha256(np.asarray(dm.tokens["train"]).tobytes()
                            + np.asarray(dm.tokens["val"]).tobytes()).hexdigest()
    results.put((dm.cache_hit, time.monotonic() - start, digest))


def test_two_processes_build_the_cache_once(tmp_path):
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    log = tmp_path / "builds.log"
    procs = [ctx.Process(target=_build_in_child, args=(str(tmp_path / "cache"), str(log),
                                                       barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    assert [p.exitcode for p in procs] == [0, 0]  # (None: still running, >0: crashed)
    got = [results.get(timeout=10) for _ in procs]
    assert len(log.read_text().splitlines()) == 1  # one build
    assert sorted(hit for hit, _, _ in got) == [False, True]
    assert got[0][2] == got[1][2]  # identical arrays
    reader = next(t for hit, t, _ in got if hit)
    builder = next(t for hit, t, _ in got if not hit)
    assert builder >= 1.5 and reader <= builder + 30
    # and they are the arrays a plain build gives
    dm = TextDataModule(cache_dir=str(tmp_path / "other"), max_bytes=100_000, seq_len=32,
                        batch_size=4)
    dm.setup()
    digest = hashlib.sha256(np.asarray(dm.tokens["train"]).tobytes()
                            + np.asarray(dm.tokens["val"]).tobytes()).hexdigest()
    assert digest == got[0][2]
    tokens = tmp_path / "cache" / "tokens"
    assert not [p for p in tokens.iterdir() if p.name.startswith(".")]  # no temp files


@pytest.mark.parametrize("lands_in", ["train", "val"])
def test_one_document_holds_out_the_tail(tmp_path, lands_in):
    data = ("one long file, " * 400).encode()
    f = tmp_path / "book.txt"
    f.write_bytes(data)
    u = stable_unit("book.txt")
    val_fraction = u / 2 if lands_in == "train" else (1 + u) / 2  # the key's side
    dm = TextDataModule(path=str(f), cache_dir=str(tmp_path / "c"), val_fraction=val_fraction,
                        **SMALL)
    dm.setup()
    stream = data + b"\0"
    cut = int(len(stream) * (1 - val_fraction))
    assert bytes(np.asarray(dm.tokens["train"])) == stream[:cut]
    assert bytes(np.asarray(dm.tokens["val"])) == stream[cut:]
    assert dm.describe_validation()["split"] == "tail"


def test_stale_temporary_files_are_cleared(tmp_path):
    dm = TextDataModule(cache_dir=str(tmp_path), max_bytes=100_000, seq_len=32, batch_size=4)
    folder = tmp_path / "tokens"
    folder.mkdir()
    stale = folder / f".{dm.cache_key()}-train.npy.12345.tmp"
    stale.write_bytes(b"half written")
    dm.setup()
    assert not stale.exists() and dm.cache_hit is False


def test_cache_key_follows_the_new_options(tables, tmp_path):
    root, _ = tables
    base = dict(path=str(root / "jsonl"), cache_dir=str(tmp_path))
    key = TextDataModule(**base).cache_key()
    assert TextDataModule(**base, num_proc=2).cache_key() == key  # same arrays
    for change in ({"max_tokens": 5000}, {"streaming": True}, {"split": "train[:50%]"}):
        assert TextDataModule(**base, **change).cache_key() != key


def test_option_errors_are_one_clear_line(tmp_path, tables):
    root, _ = tables
    cases = [
        (dict(hf_config="en"), "hf_config='en' needs data.hf_name"),
        (dict(streaming=True), "data.streaming needs data.path or data.hf_name"),
        (dict(max_tokens=100, seq_len=128), r"max_tokens=100 is below seq_len \+ 1 = 129"),
        (dict(num_proc=0), "num_proc must be >= 1"),
        (dict(path=str(root / "jsonl"), hf_name="x"), "not both"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message) as err:
            TextDataModule(cache_dir=str(tmp_path), **kwargs)
        assert "\n" not in str(err.value)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.txt").write_text("a")
    (mixed / "b.jsonl").write_text('{"text": "b"}\n')
    with pytest.raises(ValueError, match="mixes file kinds"):
        TextDataModule(path=str(mixed), cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="text_field 'body'"):
        TextDataModule(path=str(root / "parquet"), streaming=True, text_field="body",
                       cache_dir=str(tmp_path)).setup()
