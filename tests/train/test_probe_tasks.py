"""Probe task generators (postformer.train.probes.tasks): hand-written lookup solvers score 1.0
on the answers, predictors that ignore the context stay near chance, and seeds, splits,
shapes, difficulty knobs and settings errors behave as the papers define them."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from postformer.train.probes import tasks
from postformer.train.probes.tasks import (
    IGNORE,
    TASKS,
    generate,
    input_length,
    make_split,
    memorization_map,
    model_vocab,
    task_settings,
)

#: test sizes: the paper defaults except the number of examples
SMALL = {"num_train": 300, "num_test": 200}
#: MQAR's default vocabulary (8,192) gives ~0 context-free hits in a small test set; this one
#: keeps the chance rate (1/128) measurable with a few thousand answers
MQAR_SMALL_VOCAB = {"vocab_size": 256, "seq_len": 64, "num_kv_pairs": 4}


def answers_settings(name: str, **overrides) -> dict:
    """``task_settings`` with the recall tasks trained on their answers only, so a split's
    scored positions are its answers (the default, MAD's protocol, trains on every token:
    tested by ``test_mad_recall_trains_on_every_token_by_default``)."""
    s = task_settings(name, **overrides)
    if "train_targets" in s and "train_targets" not in overrides:
        s["train_targets"] = "answers"
    return s


def scored(targets: np.ndarray) -> np.ndarray:
    return targets != IGNORE


def accuracy(pred: np.ndarray, targets: np.ndarray) -> float:
    m = scored(targets)
    return float((pred[m] == targets[m]).mean())


# -------------------------------------------------------------------------------------------
# reference solvers: read the context only (inputs[:t+1] for the prediction at t)


def solve_mqar(x: np.ndarray, s: dict) -> np.ndarray:
    """The value that followed the first occurrence of the current key."""
    half = s["vocab_size"] // 2
    pred = np.full(x.shape, -1)
    for i, row in enumerate(x):
        memo: dict[int, int] = {}
        for t, tok in enumerate(row.tolist()):
            if tok in memo:
                pred[i, t] = memo[tok]
            elif 1 <= tok < half and t + 1 < len(row) and row[t + 1] >= half:
                memo[tok] = int(row[t + 1])  # used from t + 1 on, after the value was read
    return pred


def recall_ids(s: dict, specials: int) -> tuple[int, int]:
    """(K, ns): keys [0, K), values [K, ns), as the MAD code lays the vocabulary out."""
    ns = s["vocab_size"] - specials - s["noise_vocab_size"]
    return ns // 2, ns


def solve_recall(x: np.ndarray, s: dict) -> np.ndarray:
    """The token that followed the last earlier occurrence of the current key."""
    K, _ = recall_ids(s, 0 if s["multi_query"] else 1)
    pred = np.full(x.shape, -1)
    for i, row in enumerate(x):
        memo: dict[int, int] = {}
        for t, tok in enumerate(row.tolist()):
            if tok < K:
                if tok in memo:
                    pred[i, t] = memo[tok]
                if t + 1 < len(row):
                    memo[tok] = int(row[t + 1])
    return pred


def recall_expected_mask(x: np.ndarray, y: np.ndarray, s: dict) -> np.ndarray:
    """Positions that must be scored: before every value whose key was shown in an earlier pair
    (multi-query), or before the final value only (single-query)."""
    K, ns = recall_ids(s, 0 if s["multi_query"] else 1)
    mask = np.zeros(x.shape, bool)
    for i in range(len(x)):
        stream = x[i].tolist() + [int(y[i, -1])]
        keys_seen: set[int] = set()
        for p in range(1, len(stream)):
            key, tok = stream[p - 1], stream[p]
            if key < K and K <= tok < ns:
                if s["multi_query"] and key in keys_seen:
                    mask[i, p - 1] = True
                keys_seen.add(key)
        mask[i, -1] = True
    return mask


def fuzzy_ids(s: dict) -> tuple[int, int]:
    K, ns = recall_ids(s, 1 if s["multi_query"] else 2)
    return K, ns


def solve_fuzzy(x: np.ndarray, s: dict) -> np.ndarray:
    """Keys are maximal runs of key ids, values the runs of value ids after them: predict the
    next token of the value the current key run had the last time it was a complete key."""
    K, ns = fuzzy_ids(s)
    pred = np.full(x.shape, -1)
    for i, row in enumerate(x):
        pairs: dict[tuple, tuple] = {}
        key: list[int] = []
        val: list[int] = []
        for t, tok in enumerate(row.tolist()):
            if tok < K:
                if val:  # a new pair starts
                    pairs[tuple(key)] = tuple(val)
                    key, val = [], []
                key.append(tok)
            elif tok < ns and key:
                val.append(tok)
            else:  # pad, noise, copy prefix
                if key and val:
                    pairs[tuple(key)] = tuple(val)
                key, val = [], []
            known = pairs.get(tuple(key))
            if known is not None and len(val) < len(known):
                pred[i, t] = known[len(val)]
    return pred


def fuzzy_pairs(stream: list[int], s: dict) -> list[tuple[tuple, tuple, int]]:
    """(key, value, stream index of the value's first token) in order."""
    K, ns = fuzzy_ids(s)
    out, p = [], 0
    while p < len(stream):
        if stream[p] < K:
            q = p
            while q < len(stream) and stream[q] < K:
                q += 1
            r = q
            while r < len(stream) and K <= stream[r] < ns:
                r += 1
            out.append((tuple(stream[p:q]), tuple(stream[q:r]), q))
            p = r
        else:
            p += 1
    return out


def fuzzy_expected_mask(x: np.ndarray, y: np.ndarray, s: dict) -> np.ndarray:
    mask = np.zeros(x.shape, bool)
    for i in range(len(x)):
        stream = x[i].tolist() + [int(y[i, -1])]
        pairs = fuzzy_pairs(stream, s)
        seen: set[tuple] = set()
        for n_pair, (key, val, start) in enumerate(pairs):
            if (s["multi_query"] and key in seen) or n_pair == len(pairs) - 1:
                mask[i, start - 1 : start - 1 + len(val)] = True
            seen.add(key)
    return mask


def solve_copying(x: np.ndarray, s: dict) -> np.ndarray:
    blank, copy = s["vocab_size"] - 2, s["vocab_size"] - 1
    pred = np.full(x.shape, -1)
    for i, row in enumerate(x.tolist()):
        c = row.index(copy)
        content = [tok for tok in row[:c] if tok != blank]
        for j, t in enumerate(range(c + 1, len(row))):
            if j < len(content):
                pred[i, t] = content[j]
    return pred


def solve_compression(x: np.ndarray, s: dict) -> np.ndarray:
    comp = s["vocab_size"] - 1
    pred = np.full(x.shape, -1)
    for i, row in enumerate(x.tolist()):
        c = row.index(comp)
        for j, t in enumerate(range(c, len(row))):
            if j < c:
                pred[i, t] = row[j]
    return pred


def solve_memorization(x: np.ndarray, facts: np.ndarray, s: dict) -> np.ndarray:
    insert = s["vocab_size"] - 1
    pred = np.full(x.shape, -1)
    at = x == insert
    at[:, 0] = False
    r, t = np.nonzero(at)
    pred[r, t] = facts[x[r, t - 1]]
    return pred


SOLVERS = {
    "mqar": solve_mqar,
    "in_context_recall": solve_recall,
    "noisy_in_context_recall": solve_recall,
    "fuzzy_in_context_recall": solve_fuzzy,
    "selective_copying": solve_copying,
    "compression": solve_compression,
}


def answer_ids(name: str, s: dict) -> int:
    """How many distinct tokens an answer can be: the chance rate is its inverse."""
    V = s["vocab_size"]
    if name == "mqar":
        return V - V // 2
    if name in ("in_context_recall", "noisy_in_context_recall"):
        K, ns = recall_ids(s, 0 if s["multi_query"] else 1)
        return ns - K
    if name == "fuzzy_in_context_recall":
        K, ns = fuzzy_ids(s)
        # tokens of one value motif are distinct: knowing the current one leaves ns - K - 1
        return ns - K - 1
    if name == "selective_copying":
        return V - 2
    if name == "compression":
        return V - 1
    if name == "memorization":
        return (V - 1) - (V - 1) // 2
    raise AssertionError(name)


def context_free_predictors(x_train, y_train):
    """The most frequent training answer, overall and given the current input token."""
    m = scored(y_train)
    mode = Counter(y_train[m].tolist()).most_common(1)[0][0]
    by_token: dict[int, Counter] = {}
    for tok, ans in zip(x_train[m].tolist(), y_train[m].tolist(), strict=True):
        by_token.setdefault(tok, Counter())[ans] += 1
    table = {tok: c.most_common(1)[0][0] for tok, c in by_token.items()}

    def global_mode(x):
        return np.full(x.shape, mode)

    def token_mode(x):
        return np.vectorize(lambda tok: table.get(tok, mode), otypes=[np.int64])(x)

    return {"global mode": global_mode, "mode given the token": token_mode}


# -------------------------------------------------------------------------------------------
# solvers score 1.0; context-free predictors stay near chance


CONTEXT_TASKS = [name for name in TASKS if name != "memorization"]


@pytest.mark.parametrize("name", CONTEXT_TASKS)
def test_lookup_solver_is_exact(name):
    s = answers_settings(name, **SMALL)
    for split in ("train", "test"):
        x, y = generate(name, 64, 3, split=split, **s)
        assert accuracy(SOLVERS[name](x, s), y) == 1.0, split


def test_solvers_fail_on_corrupted_answers():
    """The solver check can fail: shift the answers and it does."""
    s = answers_settings("in_context_recall", **SMALL)
    x, y = generate("in_context_recall", 32, 0, **s)
    K, ns = recall_ids(s, 0)
    wrong = np.where(scored(y), K + (y - K + 1) % (ns - K), y)
    assert accuracy(solve_recall(x, s), wrong) == 0.0


@pytest.mark.parametrize("name", CONTEXT_TASKS)
def test_context_free_predictors_are_near_chance(name):
    over = {**SMALL, **(MQAR_SMALL_VOCAB if name == "mqar" else {})}
    if name == "mqar":
        over.update(num_train=1000, num_test=1000)
    s = answers_settings(name, **over)
    split = make_split(name, 5, **s)
    (xtr, ytr), (xte, yte) = split["train"], split["test"]
    chance = 1.0 / answer_ids(name, s)
    assert scored(yte).sum() * chance >= 30  # enough answers to tell 2x chance from chance
    for label, predict in context_free_predictors(xtr, ytr).items():
        assert accuracy(predict(xte), yte) < 2 * chance, label
    uniform = np.random.default_rng(0).integers(0, model_vocab(name, **s), size=yte.shape)
    assert accuracy(uniform, yte) < 2 * chance


def test_memorization_needs_the_map():
    s = answers_settings("memorization", **SMALL)
    split = make_split("memorization", 1, **s)
    (xtr, ytr), (xte, yte) = split["train"], split["test"]
    facts = memorization_map(**s)
    assert accuracy(solve_memorization(xte, facts, s), yte) == 1.0
    assert accuracy(solve_memorization(xtr, facts, s), ytr) == 1.0
    chance = 1.0 / answer_ids("memorization", s)
    other = memorization_map(**{**s, "kv_map_seed": 7})
    assert accuracy(solve_memorization(xte, other, s), yte) < 2 * chance
    mode = context_free_predictors(xtr, ytr)["global mode"]
    assert accuracy(mode(xte), yte) < 2 * chance


def test_memorization_facts_are_fixed_and_shared():
    s = answers_settings("memorization", **SMALL)
    facts = memorization_map(**s)
    K = (s["vocab_size"] - 1) // 2
    assert facts.shape == (K,)
    assert len(set(facts.tolist())) == K  # an injection
    assert facts.min() >= K and facts.max() < s["vocab_size"] - 1
    assert np.array_equal(facts, memorization_map())  # the default settings' map
    # the same facts in every data seed and split
    for seed in (0, 1):
        for split in ("train", "test"):
            x, y = generate("memorization", 50, seed, split=split, **s)
            m = scored(y)
            assert np.array_equal(y[m], facts[x[:, :-1][m[:, 1:]]])


# -------------------------------------------------------------------------------------------
# what is scored, shapes, ranges, seeds, splits


def test_scored_positions_are_the_answers():
    s = answers_settings("in_context_recall", **SMALL)
    for over in ({}, {"multi_query": False}):
        for name in ("in_context_recall", "noisy_in_context_recall"):
            t = answers_settings(name, **SMALL, **over)
            x, y = generate(name, 40, 2, **t)
            assert np.array_equal(scored(y), recall_expected_mask(x, y, t)), (name, over)
            if over:
                assert (scored(y).sum(1) == 1).all()
                assert (x[:, -2] == t["vocab_size"] - 1).all()  # copy prefix, then the key
        t = answers_settings("fuzzy_in_context_recall", **SMALL, **over)
        for split in ("train", "test"):
            x, y = generate("fuzzy_in_context_recall", 40, 2, split=split, **t)
            assert np.array_equal(scored(y), fuzzy_expected_mask(x, y, t)), (over, split)
    # in-context recall with 8 keys and 63 body pairs: nearly every value is an answer
    x, y = generate("in_context_recall", 40, 2, **s)
    assert scored(y).sum(1).min() > 40


def test_answer_counts_and_positions():
    s = answers_settings("mqar", **SMALL)
    x, y = generate("mqar", 100, 0, **s)
    C = 2 * s["num_kv_pairs"]
    assert (scored(y).sum(1) == s["num_kv_pairs"]).all()
    assert not scored(y)[:, :C].any()
    # every key asked once, at its own position, answered with its own value
    for row, tgt in zip(x[:10], y[:10], strict=True):
        keys, values = row[0:C:2], row[1:C:2]
        asked = row[scored(tgt)]
        assert sorted(asked.tolist()) == sorted(keys.tolist())
        kv = dict(zip(keys.tolist(), values.tolist(), strict=True))
        assert [kv[k] for k in asked.tolist()] == tgt[scored(tgt)].tolist()
    s = answers_settings("selective_copying", **SMALL)
    x, y = generate("selective_copying", 50, 0, **s)
    assert (scored(y).sum(1) == s["num_tokens_to_copy"]).all()
    s = answers_settings("compression", **SMALL)
    x, y = generate("compression", 50, 0, **s)
    assert (scored(y).sum(1) == s["seq_len"] - 1).all()
    s = answers_settings("memorization", **SMALL)
    x, y = generate("memorization", 50, 0, **s)
    assert (scored(y).sum(1) == s["seq_len"] // 2).all()


@pytest.mark.parametrize("name", list(TASKS))
def test_shapes_dtypes_ranges(name):
    s = answers_settings(name, **SMALL)
    V = model_vocab(name, **s)
    assert V == s["vocab_size"]
    for split in ("train", "test"):
        x, y = generate(name, 37, 11, split=split, **s)
        T = input_length(name, **s)
        assert x.shape == y.shape == (37, T)
        assert x.dtype == y.dtype == np.int64
        assert x.min() >= 0 and x.max() < V
        m = scored(y)
        assert m.any(axis=1).all()
        assert (y[m] >= 0).all() and (y[m] < V).all()
        assert (y[~m] == IGNORE).all()
    x, y = generate(name, 0, 0, **s)
    assert x.shape == (0, input_length(name, **s))


def test_input_lengths_follow_the_reference_code():
    assert input_length("mqar") == 64
    assert input_length("in_context_recall") == 127  # mad-lab returns inputs[:-1]
    assert input_length("in_context_recall", multi_query=False) == 128
    assert input_length("noisy_in_context_recall") == 127
    assert input_length("fuzzy_in_context_recall") == 128
    assert input_length("selective_copying") == 256
    assert input_length("compression") == 62  # 31 tokens, 31 compression-token readouts
    assert input_length("memorization") == 32


@pytest.mark.parametrize("name", list(TASKS))
def test_seeds(name):
    s = answers_settings(name, **SMALL)
    a = generate(name, 20, 4, **s)
    b = generate(name, 20, 4, **s)
    c = generate(name, 20, 5, **s)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    split = make_split(name, 4, **{**s, "num_train": 20, "num_test": 10})
    again = make_split(name, 4, **{**s, "num_train": 20, "num_test": 10})
    for part in ("train", "test"):
        for u, v in zip(split[part], again[part], strict=True):
            assert np.array_equal(u, v)
    assert np.array_equal(split["train"][0], a[0])  # train == generate(split="train")


@pytest.mark.parametrize("name", list(TASKS))
def test_split_sizes_and_no_shared_example(name):
    s = answers_settings(name, num_train=120, num_test=80)
    split = make_split(name, 9, **s)
    assert len(split["train"][0]) == 120 and len(split["test"][0]) == 80
    train_rows = {r.tobytes() for r in split["train"][0]}
    assert not any(r.tobytes() in train_rows for r in split["test"][0])


def test_split_drops_test_rows_seen_in_training():
    """Memorization with one fact per row has only 7 distinct rows: the raw test stream
    repeats training rows, the split drops them, and an exhausted space is an error."""
    s = answers_settings("memorization", vocab_size=16, seq_len=2, num_train=4, num_test=30)
    split = make_split("memorization", 0, **s)
    train_rows = {r.tobytes() for r in split["train"][0]}
    raw, _ = generate("memorization", 30, 0, split="test", **s)
    assert any(r.tobytes() in train_rows for r in raw)  # there is something to drop
    test = split["test"][0]
    assert len(test) == 30
    assert not set(test[:, 0].tolist()) & set(split["train"][0][:, 0].tolist())
    with pytest.raises(ValueError, match="cannot draw num_test"):
        make_split("memorization", 0, **{**s, "num_train": 200})


def test_fuzzy_test_split_uses_full_size_keys():
    s = answers_settings("fuzzy_in_context_recall", **SMALL)
    sizes = {}
    for split in ("train", "test"):
        x, y = generate("fuzzy_in_context_recall", 40, 1, split=split, **s)
        pairs = [p for i in range(len(x)) for p in fuzzy_pairs(x[i].tolist() + [y[i, -1]], s)]
        sizes[split] = (Counter(len(k) for k, _, _ in pairs), Counter(len(v) for _, v, _ in pairs))
    assert set(sizes["train"][0]) == {1, 2, 3}
    assert set(sizes["test"][0]) == {3}
    assert set(sizes["train"][1]) == set(sizes["test"][1]) == {1, 2, 3}
    x, y = generate("fuzzy_in_context_recall", 40, 1, **{**s, "k_motif_size": 2})
    assert max(len(k) for i in range(40) for k, _, _ in fuzzy_pairs(x[i].tolist(), s)) == 2


def test_dense_train_targets_option():
    for name in ("in_context_recall", "noisy_in_context_recall", "fuzzy_in_context_recall"):
        s = answers_settings(name, **SMALL, train_targets="all")
        x, y = generate(name, 20, 0, split="train", **s)
        assert (y != IGNORE).all()
        assert np.array_equal(y[:, :-1], x[:, 1:])  # MAD's training targets: inputs shifted
        xa, ya = generate(name, 20, 0, split="train", **{**s, "train_targets": "answers"})
        assert np.array_equal(x, xa) and np.array_equal(y[scored(ya)], ya[scored(ya)])
        _, yt = generate(name, 20, 0, split="test", **s)
        assert (yt == IGNORE).any()  # test targets stay answers only


# -------------------------------------------------------------------------------------------
# difficulty knobs


def test_noise_share_follows_frac_noise():
    for f in (0.0, 0.2, 0.4, 0.6, 0.8):
        s = answers_settings("noisy_in_context_recall", **SMALL, frac_noise=f)
        x, y = generate("noisy_in_context_recall", 300, 0, **s)
        ns = s["vocab_size"] - s["noise_vocab_size"]
        share = float((x >= ns).mean())
        P = s["seq_len"] // 2
        # per body slot (P - 1 of them, one always a pair) two noise tokens w.p. f
        expected = 2 * f * (P - 2) / (2 * P - 1)
        assert abs(share - expected) < 0.01, (f, share)
        assert accuracy(solve_recall(x, s), y) == 1.0
    x, _ = generate("in_context_recall", 50, 0, **SMALL)
    assert x.max() < 16  # no noise ids in the plain task


@pytest.mark.parametrize("c", [16, 32, 64])
def test_selective_copying_copies_exactly_num_tokens(c):
    s = answers_settings("selective_copying", **SMALL, seq_len=512, num_tokens_to_copy=c)
    x, y = generate("selective_copying", 50, 0, **s)
    blank, copy = s["vocab_size"] - 2, s["vocab_size"] - 1
    cpos = s["seq_len"] - c - 1
    assert (x[:, cpos] == copy).all() and ((x == copy).sum(1) == 1).all()
    content = (x[:, :cpos] != blank).sum(1)
    assert (content == c).all()
    assert (x[:, cpos + 1 :] == blank).all()
    assert np.array_equal(y[:, cpos + 1 :], x[:, :cpos][x[:, :cpos] != blank].reshape(50, c))
    assert (x[:, cpos - 1] != blank).all()  # as mad-lab: the last token precedes the copy


def test_vocab_and_seq_len_knobs():
    for name, over in [
        ("in_context_recall", {"vocab_size": 64, "seq_len": 256}),
        ("noisy_in_context_recall", {"vocab_size": 80, "seq_len": 256}),
        ("fuzzy_in_context_recall", {"vocab_size": 64, "seq_len": 256}),
        ("selective_copying", {"vocab_size": 32, "seq_len": 512}),
        ("compression", {"vocab_size": 64, "seq_len": 64}),
        ("memorization", {"vocab_size": 512}),
    ]:
        s = answers_settings(name, **SMALL, **over)
        x, y = generate(name, 30, 0, **s)
        assert x.shape[1] == input_length(name, **s)
        assert x.max() < s["vocab_size"]
        assert y[scored(y)].max() >= 0.75 * s["vocab_size"] - 16, name  # the new ids are used
        if name in SOLVERS:
            assert accuracy(SOLVERS[name](x, s), y) == 1.0, name


def test_mqar_knobs():
    s = answers_settings("mqar", **SMALL, seq_len=256, num_kv_pairs=16)
    x, y = generate("mqar", 200, 0, **s)
    assert x.shape == (200, 256) and (scored(y).sum(1) == 16).all()
    assert accuracy(solve_mqar(x, s), y) == 1.0
    C = 32
    offsets = {}
    for a in (0.01, 1.0):
        _, y = generate("mqar", 400, 0, **{**s, "power_a": a})
        offsets[a] = np.nonzero(scored(y))[1].mean() - C
    assert offsets[0.01] < 0.8 * offsets[1.0]  # power law: queries crowd near the context
    assert abs(offsets[1.0] - (256 - C - 2) / 2) < 6  # uniform: mean of 0, 2, ..., 222
    x, y = generate("mqar", 50, 0, **{**s, "random_non_queries": False})
    fill = ~scored(y)
    fill[:, :C] = False
    assert (x[fill] == 0).all()
    x, _ = generate("mqar", 50, 0, **s)
    assert (x[:, C:] != 0).mean() > 0.99


def test_mqar_default_generation():
    s = answers_settings("mqar")
    x, y = generate("mqar", 1000, 0, **s)
    assert x.shape == (1000, 64) and x.max() < 8192
    keys, values = x[:, 0:8:2], x[:, 1:8:2]
    assert (keys >= 1).all() and (keys < 4096).all() and (values >= 4096).all()
    assert all(len(set(r)) == 4 for r in keys.tolist())
    assert all(len(set(r)) == 4 for r in values.tolist())
    assert (scored(y).sum(1) == 4).all()
    assert accuracy(solve_mqar(x[:100], s), y[:100]) == 1.0


def test_mqar_many_pairs_distinct_sampling():
    """Keys drawn without replacement stay distinct where rejection rarely succeeds."""
    s = answers_settings("mqar", vocab_size=260, seq_len=256, num_kv_pairs=64, **SMALL)
    x, y = generate("mqar", 50, 0, **s)
    keys = x[:, 0:128:2]
    assert all(len(set(r)) == 64 for r in keys.tolist())
    assert accuracy(solve_mqar(x, s), y) == 1.0


def test_long_fuzzy_sequences():
    s = answers_settings("fuzzy_in_context_recall", **SMALL, vocab_size=128, seq_len=1024)
    x, y = generate("fuzzy_in_context_recall", 8, 0, **s)
    assert x.shape == (8, 1024)
    assert accuracy(solve_fuzzy(x, s), y) == 1.0
    assert np.array_equal(scored(y), fuzzy_expected_mask(x, y, s))


# -------------------------------------------------------------------------------------------
# defaults and settings errors


def test_paper_defaults():
    want = {
        "mqar": dict(vocab_size=8192, seq_len=64, num_kv_pairs=4, num_train=100_000,
                     num_test=3_000, power_a=0.01, random_non_queries=True),
        "in_context_recall": dict(vocab_size=16, seq_len=128, num_train=12_800,
                                  num_test=1_280, multi_query=True, frac_noise=0.0),
        "noisy_in_context_recall": dict(vocab_size=32, noise_vocab_size=16, frac_noise=0.2,
                                        seq_len=128, num_train=12_800, num_test=1_280),
        "fuzzy_in_context_recall": dict(vocab_size=16, seq_len=128, k_motif_size=3,
                                        v_motif_size=3, num_train=12_800, num_test=1_280),
        "selective_copying": dict(vocab_size=16, seq_len=256, num_tokens_to_copy=16,
                                  num_train=12_800, num_test=1_280),
        "compression": dict(vocab_size=16, seq_len=32, num_train=12_800, num_test=1_280),
        "memorization": dict(vocab_size=256, seq_len=32, num_train=256, num_test=1_280,
                             kv_map_seed=12_345),
    }  # fmt: skip
    assert set(TASKS) == set(want)
    for name, values in want.items():
        s = answers_settings(name)
        assert {k: s[k] for k in values} == values, name
        assert TASKS[name].name == name
        s["vocab_size"] = -1  # a copy: the defaults are untouched
        assert TASKS[name].defaults["vocab_size"] != -1


def test_paper_sweeps_are_valid_settings():
    sweeps = {name: spec.sweep for name, spec in TASKS.items()}
    assert {"seq_len": 512, "num_kv_pairs": 64} in sweeps["mqar"]
    assert len(sweeps["mqar"]) == 4
    noisy = sweeps["noisy_in_context_recall"]
    assert noisy[0] == {} and {"frac_noise": 0.8} in noisy and {"vocab_size": 144} in noisy
    assert {"num_tokens_to_copy": 96} in sweeps["selective_copying"]
    assert {"num_train": 800} in sweeps["compression"]
    assert {"vocab_size": 8192} in sweeps["memorization"]
    for name, sweep in sweeps.items():
        for over in sweep:
            s = answers_settings(name, **over)
            assert input_length(name, **s) > 0
            generate(name, 2, 0, **s)


@pytest.mark.parametrize(
    "name, over, match",
    [
        ("mqar", {"foo": 1}, "unknown setting 'foo'; known: vocab_size"),
        ("mqar", {"seq_len": 32, "num_kv_pairs": 16}, "seq_len=32 is too short"),
        ("mqar", {"seq_len": 66, "num_kv_pairs": 4, "vocab_size": 64}, "vocab_size=64"),
        ("mqar", {"seq_len": 65}, "must be even"),
        ("mqar", {"power_a": 0}, "power_a"),
        ("in_context_recall", {"frac_noise": 0.3}, "noise_vocab_size >= 1"),
        ("noisy_in_context_recall", {"frac_noise": 1.0}, r"frac_noise=1.0 must be in \[0, 1\)"),
        ("noisy_in_context_recall", {"vocab_size": 17}, "key/value ids"),
        ("in_context_recall", {"train_targets": "some"}, "train_targets='some'"),
        ("fuzzy_in_context_recall", {"vocab_size": 6}, "k_motif_size=3"),
        ("fuzzy_in_context_recall", {"seq_len": 12}, "seq_len=12 is too short"),
        ("selective_copying", {"num_tokens_to_copy": 128}, "seq_len=256 is too short"),
        ("compression", {"seq_len": True}, "must be an integer"),
        ("memorization", {"seq_len": "32"}, "must be an integer"),
        ("memorization", {"seq_len": 31}, "even"),
        ("memorization", {"num_train": 0}, "num_train=0"),
        ("nope", {}, "unknown probe task 'nope'; known: mqar"),
    ],
)
def test_settings_errors(name, over, match):
    with pytest.raises(ValueError, match=match) as err:
        answers_settings(name, **over)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError):
        generate(name, 2, 0, **over)


def test_call_errors():
    with pytest.raises(ValueError, match="seed"):
        generate("mqar", 2, -1)
    with pytest.raises(ValueError, match="split"):
        generate("mqar", 2, 0, split="val")
    with pytest.raises(ValueError, match="n="):
        generate("mqar", -2, 0)
    assert tasks.task_settings("mqar", vocab_size=np.int64(4096))["vocab_size"] == 4096


@pytest.mark.parametrize("name", ["in_context_recall", "noisy_in_context_recall",
                                  "fuzzy_in_context_recall"])
def test_mad_recall_trains_on_every_token_by_default(name):
    s = task_settings(name, **SMALL)
    assert s["train_targets"] == "all"
    x, dense = generate(name, 32, 5, split="train", **s)
    x2, sparse = generate(name, 32, 5, split="train", **{**s, "train_targets": "answers"})
    assert np.array_equal(x, x2)  # the same examples, only the targets differ
    assert scored(dense).mean() > 0.9 > scored(sparse).mean()
    # dense targets are the next tokens; the answers among them agree
    assert np.array_equal(dense[:, :-1][scored(dense)[:, :-1]], x[:, 1:][scored(dense)[:, :-1]])
    assert np.array_equal(dense[scored(sparse)], sparse[scored(sparse)])
    # the test split is scored on the answers only, whatever train_targets says
    _, test_dense = generate(name, 32, 5, split="test", **s)
    _, test_sparse = generate(name, 32, 5, split="test", **{**s, "train_targets": "answers"})
    assert np.array_equal(test_dense, test_sparse)
