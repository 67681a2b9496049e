"""The generators behind ``probes.tasks``: per task, its settings check, its example generator
``(rng, n, settings, split) -> (inputs [n, T], targets [n, T])`` and, where it differs from
``seq_len``, its input length; the sampling helpers they share. ``probes.tasks`` holds the
registry and the public API (and the task definitions' sources and deviations).
"""

from __future__ import annotations

import math

import numpy as np

IGNORE = -100  # target value at positions that are not scored (F.cross_entropy's ignore_index)


def need(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise ValueError(f"{name}: {message}")


def check_common(name: str, s: dict) -> None:
    for key in ("num_train", "num_test"):
        need(s[key] >= 1, name, f"{key}={s[key]} must be >= 1")


def check_noise(name: str, s: dict) -> None:
    f, nv = s["frac_noise"], s["noise_vocab_size"]
    need(0.0 <= f < 1.0, name, f"frac_noise={f} must be in [0, 1)")
    need(nv >= 0, name, f"noise_vocab_size={nv} must be >= 0")
    need(f == 0.0 or nv >= 1, name, f"frac_noise={f} > 0 needs noise_vocab_size >= 1")



# ---------------------------------------------------------------------------------------------
# sampling helpers


def rows_with_duplicates(a: np.ndarray) -> np.ndarray:
    if a.shape[1] < 2:
        return np.zeros(a.shape[0], bool)
    s = np.sort(a, axis=1)
    return (s[:, 1:] == s[:, :-1]).any(axis=1)


def distinct_rows(rng: np.random.Generator, n: int, k: int, lo: int, hi: int) -> np.ndarray:
    """``[n, k]``: per row an ordered k-subset of ``[lo, hi)`` drawn uniformly (like
    ``rng.choice(range(lo, hi), k, replace=False)`` per row)."""
    m = hi - lo
    if k <= 8:
        # sequentially: the j-th pick is uniform over the m - j ids not picked yet
        picks = np.empty((n, k), np.int64)
        for j in range(k):
            val = rng.integers(0, m - j, size=n)
            for c in np.sort(picks[:, :j], axis=1).T:  # skip earlier picks, in ascending order
                val += val >= c
            picks[:, j] = val
        return lo + picks
    # rejection of rows with repeats while repeats are rare, then exact k-smallest-of-uniforms
    out = rng.integers(lo, hi, size=(n, k))
    for _ in range(8):
        bad = rows_with_duplicates(out)
        if not bad.any():
            return out
        out[bad] = rng.integers(lo, hi, size=(int(bad.sum()), k))
    idx = np.flatnonzero(rows_with_duplicates(out))
    for chunk in np.array_split(idx, max(1, len(idx) * m // 4_000_000 + 1)):
        if len(chunk) == 0:
            continue
        u = rng.random((len(chunk), m))
        sel = np.argpartition(u, k - 1, axis=1)[:, :k]
        order = np.argsort(np.take_along_axis(u, sel, axis=1), axis=1)
        out[chunk] = lo + np.take_along_axis(sel, order, axis=1)
    return out


def first_index(codes: np.ndarray) -> np.ndarray:
    """Per row, for every position the index of the first position holding the same code."""
    n, m = codes.shape
    order = np.argsort(codes, axis=1, kind="stable")
    srt = np.take_along_axis(codes, order, axis=1)
    new = np.ones((n, m), bool)
    new[:, 1:] = srt[:, 1:] != srt[:, :-1]
    start = np.maximum.accumulate(np.where(new, np.arange(m), 0), axis=1)
    first_sorted = np.take_along_axis(order, start, axis=1)
    first = np.empty_like(first_sorted)
    np.put_along_axis(first, order, first_sorted, axis=1)
    return first


def shift(stream: np.ndarray, scored: np.ndarray, dense: bool):
    """Stream ``[n, L+1]`` -> ``(inputs, targets)`` ``[n, L]``; ``scored`` marks stream tokens
    that are answers (the target of the position before them)."""
    inputs = stream[:, :-1]
    nxt = stream[:, 1:]
    targets = nxt.copy() if dense else np.where(scored[:, 1:], nxt, IGNORE)
    return inputs, targets


# ---------------------------------------------------------------------------------------------
# MQAR (Zoology)


def check_mqar(name: str, s: dict) -> None:
    V, T, k = s["vocab_size"], s["seq_len"], s["num_kv_pairs"]
    need(k >= 1, name, f"num_kv_pairs={k} must be >= 1")
    need(T % 2 == 0, name, f"seq_len={T} must be even")
    need(
        T >= 4 * k,
        name,
        f"seq_len={T} is too short for num_kv_pairs={k} (needs seq_len >= 4 * num_kv_pairs)",
    )
    need(V > T, name, f"vocab_size={V} must be > seq_len={T} (as in Zoology)")
    need(s["power_a"] > 0, name, f"power_a={s['power_a']} must be > 0")


def gen_mqar(rng, n, s, split):
    """Multi-query associative recall, Zoology's ``multiquery_ar`` (``_mqar``).

    Layout of one example (``T = seq_len``, ``C = 2 * num_kv_pairs``):
    ``k_1 v_1 k_2 v_2 ... k_K v_K`` then a query region of ``T - C`` tokens. Keys are distinct
    within an example and drawn from ``[1, vocab_size // 2)``, values distinct from
    ``[vocab_size // 2, vocab_size)`` (disjoint halves; 0 is Zoology's placeholder id and is
    never a key). Every key is queried exactly once: key ``j`` sits at query-region offset
    ``2 * g_j``, the gaps ``g`` drawn without replacement from ``range((T - C) // 2)`` with
    ``p(g) ∝ power_a * (g + 1) ** (power_a - 1)``, in draw order (so earlier pairs tend to be
    asked earlier, as in Zoology). The target at a query's own position is its value; the
    value is never shown after the query. Every other query-region position holds a uniform
    token from ``[0, vocab_size)`` (``random_non_queries=True``, possibly equal to a key: a
    distractor that is not scored) or 0. ``num_kv_pairs`` answers per example.

    Deviation: none in distribution. Zoology's Figure-2 config sets
    ``random_non_queries=False``; its generator's default (used here) is True.
    """
    V, T, k = s["vocab_size"], s["seq_len"], s["num_kv_pairs"]
    a = s["power_a"]
    half, C = V // 2, 2 * k
    space = (T - C) // 2
    keys = distinct_rows(rng, n, k, 1, half)
    values = distinct_rows(rng, n, k, half, V)
    # sequential sampling without replacement with p ∝ a * i^(a-1) == Gumbel top-k, sorted
    i = np.arange(1, space + 1, dtype=np.float64)
    logp = np.log(a) + (a - 1.0) * np.log(i)
    score = logp + rng.gumbel(size=(n, space))
    top = np.argpartition(-score, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(score, top, axis=1), axis=1)
    gaps = np.take_along_axis(top, order, axis=1)
    inputs = np.zeros((n, T), np.int64)
    if s["random_non_queries"]:
        inputs[:, C:] = rng.integers(0, V, size=(n, T - C))
    inputs[:, 0:C:2] = keys
    inputs[:, 1:C:2] = values
    rows = np.arange(n)[:, None]
    pos = C + 2 * gaps
    inputs[rows, pos] = keys
    targets = np.full((n, T), IGNORE, np.int64)
    targets[rows, pos] = values
    return inputs, targets


# ---------------------------------------------------------------------------------------------
# MAD: in-context recall and noisy in-context recall


def _recall_vocab(s: dict, specials: int):
    """``(ns, K)``: ids ``[0, K)`` keys, ``[K, ns)`` values, ``[ns, ns + noise)`` noise; the
    ``specials`` top ids of ``vocab_size`` are special tokens (copy prefix, pad)."""
    ns = s["vocab_size"] - specials - s["noise_vocab_size"]
    return ns, ns // 2


def check_recall(name: str, s: dict) -> None:
    check_noise(name, s)
    T = s["seq_len"]
    need(T % 2 == 0, name, f"seq_len={T} must be even (key-value pairs)")
    need(T >= 4, name, f"seq_len={T} must be >= 4 (one key-value pair and the query)")
    ns, _ = _recall_vocab(s, 0 if s["multi_query"] else 1)
    need(
        ns >= 2,
        name,
        f"vocab_size={s['vocab_size']} leaves {ns} key/value ids after noise and special tokens "
        f"(needs >= 2)",
    )


def gen_recall(rng, n, s, split):
    """MAD in-context recall; with noise, MAD noisy in-context recall (mad-lab
    ``generate_in_context_recall_instance``, which the noisy variant calls).

    Vocabulary (``vocab_size`` counts all of it): keys ``[0, K)``, values ``[K, ns)`` with
    ``ns = vocab_size - noise_vocab_size - (0 if multi_query else 1)``, ``K = ns // 2``;
    noise ids ``[ns, ns + noise_vocab_size)``; single-query's copy prefix ``vocab_size - 1``.

    One example is a stream of ``seq_len / 2`` two-token slots. Each of the first
    ``seq_len / 2 - 1`` (body) slots is, with probability ``frac_noise``, two uniform noise
    tokens, else a key-value pair: a uniform key (with replacement) and the value the
    example's own random key->value map gives it (the map is drawn afresh per example, values
    with replacement, so it is consistent within and unrelated across examples). One body
    slot, uniform, is always a pair. The last slot repeats a key presented in the body
    (uniform over the distinct presented keys) with its value. ``inputs`` is the stream
    without its last token (``T = seq_len - 1``), targets the stream shifted by one.

    Answers (``multi_query=True``, MAD's protocol): every value whose key was presented in an
    earlier slot, the final one included (a variable number per example). Single-query
    (``multi_query=False``): a copy-prefix token precedes the final pair (``T = seq_len``) and
    only the final value is scored.

    ``train_targets="all"`` (the default, MAD's training targets: every next token of a
    training example; ``"answers"``: the answers only). Deviation: the guaranteed pair is drawn among body slots (mad-lab's index may fall on the final slot,
    leaving no guarantee).
    """
    T, f, nv, mq = s["seq_len"], s["frac_noise"], s["noise_vocab_size"], s["multi_query"]
    ns, K = _recall_vocab(s, 0 if mq else 1)
    P = T // 2
    B = P - 1
    rows = np.arange(n)
    keys = rng.integers(0, K, size=(n, B))
    vmap = rng.integers(K, ns, size=(n, K))
    vals = np.take_along_axis(vmap, keys, axis=1)
    noise = np.zeros((n, B), bool)
    body = np.stack([keys, vals], axis=-1)
    if f > 0:
        noise = rng.random((n, B)) < f
        noise[rows, rng.integers(0, B, size=n)] = False
        noise_tok = rng.integers(ns, ns + nv, size=(n, B, 2))
        body = np.where(noise[..., None], noise_tok, body)
    first = first_index(np.where(noise, K, keys)) == np.arange(B)
    presented = first & ~noise
    pick = np.where(presented, rng.random((n, B)), -1.0).argmax(axis=1)
    pk = keys[rows, pick]
    pv = vmap[rows, pk]
    body_scored = np.zeros((n, B, 2), bool)
    if mq:
        body_scored[:, :, 1] = ~first & ~noise
    parts = [body.reshape(n, 2 * B)]
    scored = [body_scored.reshape(n, 2 * B)]
    if not mq:
        parts.append(np.full((n, 1), s["vocab_size"] - 1))
        scored.append(np.zeros((n, 1), bool))
    parts += [pk[:, None], pv[:, None]]
    scored += [np.zeros((n, 1), bool), np.ones((n, 1), bool)]
    stream = np.concatenate(parts, axis=1)
    dense = split == "train" and s["train_targets"] == "all"
    return shift(stream, np.concatenate(scored, axis=1), dense)


def len_recall(s: dict) -> int:
    return s["seq_len"] - 1 if s["multi_query"] else s["seq_len"]


# ---------------------------------------------------------------------------------------------
# MAD: fuzzy in-context recall


def check_fuzzy(name: str, s: dict) -> None:
    check_noise(name, s)
    a, b, T = s["k_motif_size"], s["v_motif_size"], s["seq_len"]
    need(a >= 1, name, f"k_motif_size={a} must be >= 1")
    need(b >= 1, name, f"v_motif_size={b} must be >= 1")
    ns, K = _recall_vocab(s, 1 if s["multi_query"] else 2)
    need(
        K >= a and ns - K >= b,
        name,
        f"vocab_size={s['vocab_size']} gives {max(K, 0)} key and {max(ns - K, 0)} value ids; "
        f"motifs of distinct tokens need >= k_motif_size={a} and >= v_motif_size={b}",
    )
    need(
        T >= 2 * (a + b) + 1,
        name,
        f"seq_len={T} is too short for k_motif_size={a}, v_motif_size={b} "
        f"(needs seq_len >= 2 * (k_motif_size + v_motif_size) + 1)",
    )
    need(a * math.log2(K + 1) <= 62, name, f"k_motif_size={a} is too large for int64 key codes")


def gen_fuzzy(rng, n, s, split):
    """MAD fuzzy in-context recall (mad-lab ``generate_fuzzy_in_context_recall_instance``).

    Vocabulary: keys ``[0, K)``, values ``[K, ns)`` with ``ns = vocab_size - noise_vocab_size
    - (1 if multi_query else 2)``, ``K = ns // 2``; noise ``[ns, ns + noise_vocab_size)``; pad
    ``vocab_size - 1`` (multi-query) or ``vocab_size - 2`` with copy prefix ``vocab_size - 1``.

    Keys and values are motifs: a uniform size (keys ``1..k_motif_size``, values
    ``1..v_motif_size``) and then a uniform sequence of that many *distinct* tokens of the
    key (value) ids. Test examples (``split="test"``) use keys of exactly ``k_motif_size``
    tokens, as mad-lab's ``is_training=False``. Keys and values come from disjoint id
    ranges, so the stream segments unambiguously: a key is a maximal run of key ids, its value
    the run of value ids after it.

    One example: a probe pair (key, value) is drawn; key-value slots are added (each, with
    probability ``frac_noise``, ``k_size + v_size`` noise tokens instead) until the body
    reaches ``seq_len - |probe pair| - (k_motif_size + v_motif_size)`` tokens, with the probe
    pair inserted as in mad-lab (see the deviations for the one exception). Values are
    consistent within an example (the probe key's value is the probe value wherever the key
    occurs; another key's value is drawn at its first occurrence and repeated after). Then
    (single-query: a copy prefix and) the probe pair again; the stream is left-padded with the
    pad token to ``seq_len + 1`` and shifted (``T = seq_len``).

    Answers (``multi_query=True``): every token of every value whose key (same motif) was
    presented in an earlier pair, the final value included; single-query: the final value.
    The first value token is predicted at the key's last token, where a key may look complete
    but continue; such positions are unscored (their target is a key token), so a lookup that
    answers whenever the key run so far was seen as a complete key scores 1.0.

    Deviations: the probed key is always presented before the final query: where mad-lab's
    drawn insertion position lies beyond the end of the body (about 2-4% of its examples)
    and the key did not occur otherwise, mad-lab leaves the probe pair out and the final
    answer is unknowable; here the probe pair becomes the body's last pair.
    ``train_targets="all"`` (the default: MAD's dense training targets, pads included).
    """
    T, mq = s["seq_len"], s["multi_query"]
    a, b = s["k_motif_size"], s["v_motif_size"]
    W = a + b
    ns, K = _recall_vocab(s, 1 if mq else 2)
    pad = s["vocab_size"] - 1 if mq else s["vocab_size"] - 2
    test = split == "test"
    M = (T - 2 - W) // 2 + 1  # body slots: M + 1 slots of >= 2 tokens always cover the budget
    per_row = (M + 1) * (3 * W + 4)
    chunk = max(1, 8_000_000 // per_row)
    streams, masks = [np.zeros((0, T + 1), np.int64)], [np.zeros((0, T + 1), bool)]
    for lo in range(0, n, chunk):
        stream, mask = _fuzzy_chunk(rng, min(chunk, n - lo), s, test, ns, K, pad, M)
        streams.append(stream)
        masks.append(mask)
    dense = split == "train" and s["train_targets"] == "all"
    return shift(np.concatenate(streams), np.concatenate(masks), dense)


def _fuzzy_chunk(rng, n, s, test, ns, K, pad, M):
    T, f, nv, mq = s["seq_len"], s["frac_noise"], s["noise_vocab_size"], s["multi_query"]
    a, b = s["k_motif_size"], s["v_motif_size"]
    W = a + b
    # the probe pair
    pks = np.full(n, a) if test else rng.integers(1, a + 1, size=n)
    pvs = rng.integers(1, b + 1, size=n)
    pk = distinct_rows(rng, n, a, 0, K)
    pv = distinct_rows(rng, n, b, K, ns)
    budget = T - (pks + pvs) - W  # mad-lab: add pairs while the body is shorter than this
    # body slots
    ks = np.full((n, M), a) if test else rng.integers(1, a + 1, size=(n, M))
    vs = rng.integers(1, b + 1, size=(n, M))
    kt = distinct_rows(rng, n * M, a, 0, K).reshape(n, M, a)
    vt = distinct_rows(rng, n * M, b, K, ns).reshape(n, M, b)
    noise = rng.random((n, M)) < f if f > 0 else np.zeros((n, M), bool)
    nt = rng.integers(ns, ns + max(nv, 1), size=(n, M, W)) if f > 0 else None
    # integer code of a key motif (size implied: unused places are 0, used ones token + 1)
    place = (K + 1) ** np.arange(a, dtype=np.int64)

    def code(tok, size):
        used = np.arange(a) < size[..., None]
        return ((tok + 1) * used * place).sum(axis=-1)

    pcode = code(pk, pks)
    kcode = np.where(noise, -1 - np.arange(M), code(kt, ks))
    # values: the probe key's value is the probe value; other keys keep their first value
    fi = first_index(kcode)
    vs = np.take_along_axis(vs, fi, axis=1)
    vt = np.take_along_axis(vt, fi[..., None], axis=1)
    is_pk = kcode == pcode[:, None]
    vs = np.where(is_pk, pvs[:, None], vs)
    vt = np.where(is_pk[..., None], pv[:, None, :], vt)
    length = ks + vs
    start = np.cumsum(length, axis=1) - length
    # mad-lab: the probe pair goes in at the first slot boundary at or after a uniform
    # position of [0, seq_len - 2 |probe pair|), unless the probe key occurred in a body pair
    # before; a position the body never reaches leaves it out (the final query may then be
    # unanswerable): here it goes in as the last pair instead
    rows = np.arange(n)
    where = np.floor(rng.random(n) * (T - 2 * (pks + pvs))).astype(np.int64)
    q = (start < where[:, None]).sum(axis=1)
    reach = np.where(q < M, start[rows, np.minimum(q, M - 1)], budget) < budget
    first_pk = np.where(is_pk.any(axis=1), is_pk.argmax(axis=1), M)
    natural = (first_pk < q) & (start[rows, np.minimum(first_pk, M - 1)] < budget)
    q = np.where(reach, q, (start < budget[:, None]).sum(axis=1) - 1)
    skip = natural
    p = np.arange(M + 1)
    src = np.clip(p - (p > q[:, None]), 0, M - 1)
    probe = p == q[:, None]

    def slots(body, pr):
        g = np.take_along_axis(body, src.reshape(src.shape + (1,) * (body.ndim - 2)), axis=1)
        return np.where(probe.reshape(probe.shape + (1,) * (body.ndim - 2)), pr, g)

    ks2 = slots(ks, pks[:, None])
    vs2 = slots(vs, pvs[:, None])
    kt2 = slots(kt, pk[:, None, :])
    vt2 = slots(vt, pv[:, None, :])
    noise2 = slots(noise, False)
    absent = probe & skip[:, None]  # a skipped probe slot: no tokens, presents nothing
    kcode2 = np.where(absent, -2 - M, slots(kcode, pcode[:, None]))
    length2 = np.where(absent, 0, ks2 + vs2)
    start2 = np.cumsum(length2, axis=1) - length2
    kept = (start2 < budget[:, None]) & ~absent
    seen = first_index(kcode2) != p  # the key was presented in an earlier slot
    # slot tokens [n, M+1, W]
    c = np.arange(W)
    in_key = c < ks2[..., None]
    in_val = ~in_key & (c < length2[..., None])
    kidx = np.broadcast_to(np.minimum(c, a - 1), (n, M + 1, W))
    ktok = np.take_along_axis(kt2, kidx, axis=2)
    vtok = np.take_along_axis(vt2, np.clip(c - ks2[..., None], 0, b - 1), axis=2)
    tok = np.where(in_key, ktok, vtok)
    if nt is not None:
        tok = np.where(noise2[..., None], slots(nt, 0), tok)
    valid = (c < length2[..., None]) & kept[..., None]
    scored = valid & in_val & ~noise2[..., None] & seen[..., None] & mq
    # the final segment: (copy prefix,) probe key, probe value
    F = 1 + W
    cf = np.arange(F)
    off = 0 if mq else 1
    fk = np.take_along_axis(pk, np.clip(cf - off, 0, a - 1)[None, :].repeat(n, 0), axis=1)
    fv = np.take_along_axis(pv, np.clip(cf[None, :] - off - pks[:, None], 0, b - 1), axis=1)
    fin_key = (cf >= off) & (cf < off + pks[:, None])
    fin_val = (cf >= off + pks[:, None]) & (cf < off + pks[:, None] + pvs[:, None])
    ftok = np.where(fin_key, fk, fv)
    if not mq:
        ftok[:, 0] = s["vocab_size"] - 1
    fvalid = fin_val | fin_key | ((cf < off) & np.ones((n, 1), bool))
    # concatenate valid tokens per row, right-aligned in a stream of T + 1 left-padded tokens
    all_tok = np.concatenate([tok.reshape(n, -1), ftok], axis=1)
    all_valid = np.concatenate([valid.reshape(n, -1), fvalid], axis=1)
    all_scored = np.concatenate([scored.reshape(n, -1), fin_val], axis=1)
    total = all_valid.sum(axis=1)
    lead = T + 1 - total
    r, col = np.nonzero(all_valid)
    dest = lead[r] + (np.cumsum(all_valid, axis=1) - 1)[r, col]
    stream = np.full((n, T + 1), pad, np.int64)
    stream[r, dest] = all_tok[r, col]
    mask = np.zeros((n, T + 1), bool)
    mask[r, dest] = all_scored[r, col]
    return stream, mask


# ---------------------------------------------------------------------------------------------
# MAD: selective copying


def check_copying(name: str, s: dict) -> None:
    c, T, V = s["num_tokens_to_copy"], s["seq_len"], s["vocab_size"]
    need(c >= 1, name, f"num_tokens_to_copy={c} must be >= 1")
    need(
        T > 2 * c + 1,
        name,
        f"seq_len={T} is too short for num_tokens_to_copy={c} "
        f"(needs seq_len > 2 * num_tokens_to_copy + 1)",
    )
    need(V >= 3, name, f"vocab_size={V} must be >= 3 (blank, copy and >= 1 content token)")


def gen_copying(rng, n, s, split):
    """MAD selective copying (mad-lab ``generate_selective_copying_instance``).

    Vocabulary: content ``[0, vocab_size - 2)``, blank (noise) ``vocab_size - 2``, copy token
    ``vocab_size - 1``. With ``c = num_tokens_to_copy`` and ``nb = seq_len - 2c - 1``:
    ``c`` uniform content tokens (with replacement) with ``nb`` blanks inserted among them,
    then the copy token, then ``c`` blanks (``T = seq_len``). At the ``i``-th blank after the
    copy token the target is the ``i``-th content token (the model's earlier answers are not
    fed back): exactly ``c`` answers per example, in order of occurrence.

    Noise layout as mad-lab's ``np.insert`` at ``randint(0, c)`` indices: each blank
    independently goes before one of the ``c`` content tokens (uniformly), so the blank counts
    per gap are multinomial and the last content token always directly precedes the copy
    token.

    Deviation: the layout is drawn from the seeded generator (mad-lab draws it from the global
    ``np.random`` state).
    """
    V, T, c = s["vocab_size"], s["seq_len"], s["num_tokens_to_copy"]
    blank, copy = V - 2, V - 1
    nb = T - 2 * c - 1
    content = rng.integers(0, V - 2, size=(n, c))
    counts = rng.multinomial(nb, np.full(c, 1.0 / c), size=n)
    pos = np.cumsum(counts, axis=1) + np.arange(c)
    rows = np.arange(n)[:, None]
    inputs = np.full((n, T), blank, np.int64)
    inputs[rows, pos] = content
    inputs[:, c + nb] = copy
    targets = np.full((n, T), IGNORE, np.int64)
    targets[:, c + nb + 1 :] = content
    return inputs, targets


# ---------------------------------------------------------------------------------------------
# MAD: compression


def check_compression(name: str, s: dict) -> None:
    need(s["seq_len"] >= 2, name, f"seq_len={s['seq_len']} must be >= 2")
    need(s["vocab_size"] >= 3, name, f"vocab_size={s['vocab_size']} must be >= 3")


def gen_compression(rng, n, s, split):
    """MAD compression (mad-lab ``generate_compression_instance``), as next-token prediction.

    MAD: ``seq_len - 1`` uniform tokens from ``[0, vocab_size - 1)`` then the compression
    token ``vocab_size - 1``; an encoder reads the sequence, its output at the compression
    token is the only thing an MLP decoder (plus a position embedding) sees, and the decoder
    must reconstruct every position.

    Here (``m = seq_len - 1``, ``T = 2m``): the ``m`` tokens, then the compression token
    repeated ``m`` times; at the ``j``-th compression token the target is the ``j``-th token
    of the sequence (``m`` answers, the model's earlier answers not fed back).

    Deviations: a causal LM can attend back to the sequence, so nothing forces the
    information through one token: for attention the task reduces to positional copying,
    while fixed-state (recurrent) models must hold the whole sequence in their state at the
    first compression token; MAD's bottleneck readout would need a model-side change. The
    trivially predictable compression-token position that MAD's reconstruction includes is
    not scored. mad-lab's ``frac_noise`` knob (unused by its protocol) is not provided.
    """
    V, m = s["vocab_size"], s["seq_len"] - 1
    x = rng.integers(0, V - 1, size=(n, m))
    inputs = np.concatenate([x, np.full((n, m), V - 1, np.int64)], axis=1)
    targets = np.concatenate([np.full((n, m), IGNORE, np.int64), x], axis=1)
    return inputs, targets


# ---------------------------------------------------------------------------------------------
# MAD: memorization


def check_memorization(name: str, s: dict) -> None:
    T, V = s["seq_len"], s["vocab_size"]
    need(T >= 2 and T % 2 == 0, name, f"seq_len={T} must be even and >= 2 (key, insert)")
    need(V >= 4, name, f"vocab_size={V} must be >= 4 (keys, values and the insert token)")
    need(s["kv_map_seed"] >= 0, name, f"kv_map_seed={s['kv_map_seed']} must be >= 0")


def fact_map(s: dict) -> np.ndarray:
    """Memorization's fixed facts for validated settings ``s``: ``map[key]`` is the value id of key id ``key``.

    Keys are ``[0, K)``, values ``[K, vocab_size - 1)`` with ``K = (vocab_size - 1) // 2``;
    the map is a uniform random injection (mad-lab zips a shuffled key list with a shuffled
    value list), seeded by ``kv_map_seed`` only, so it is the same for every data seed and for
    train and test.
    """
    ns = s["vocab_size"] - 1
    K = ns // 2
    rng = np.random.default_rng(np.random.SeedSequence([s["kv_map_seed"], 0x6D656D6F]))
    return (K + rng.permutation(ns - K)[:K]).astype(np.int64)


def gen_memorization(rng, n, s, split):
    """MAD memorization (mad-lab ``generate_memorization_instance``).

    ``seq_len / 2`` slots ``key, insert``: a uniform key from ``[0, K)`` and the insert token
    ``vocab_size - 1``; at the insert token the target is the key's value under the task's
    fixed map (``fact_map``, public as ``tasks.memorization_map``), the same in every example and split: the facts must be
    learnt from the training data. ``seq_len / 2`` answers per example, ``T = seq_len``.

    Deviation: the map is seeded by ``kv_map_seed`` (default 12345, MAD's seed) independently
    of the data seed (MAD uses its one config seed for both); mad-lab's noise knobs (unused by
    its protocol) are not provided.
    """
    T, V = s["seq_len"], s["vocab_size"]
    facts = fact_map(s)
    K = len(facts)
    keys = rng.integers(0, K, size=(n, T // 2))
    inputs = np.full((n, T), V - 1, np.int64)
    inputs[:, 0::2] = keys
    targets = np.full((n, T), IGNORE, np.int64)
    targets[:, 1::2] = facts[keys]
    return inputs, targets
