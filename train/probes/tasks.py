"""Synthetic probe tasks as next-token prediction: MQAR (Zoology) and the six MAD tasks.

Tasks (one line each; the generators' docstrings give the details and every deviation):

``mqar``
    Multi-query associative recall: ``num_kv_pairs`` key-value pairs, then a query region in
    which every key is asked once; the model must answer each query with its value.
    Arora, Eyuboglu et al. 2023, "Zoology: Measuring and Improving Recall in Efficient
    Language Models" (the MQAR task and its Figure-2 settings); code: HazyResearch/zoology,
    ``zoology/data/associative_recall.py`` (``multiquery_ar``/``_mqar``) and
    ``zoology/data/multiquery_ar.py``.
``in_context_recall``, ``noisy_in_context_recall``, ``fuzzy_in_context_recall``,
``selective_copying``, ``compression``, ``memorization``
    The MAD suite: Poli, Thomas, Nguyen et al. 2024, "Mechanistic Design and Scaling of Hybrid
    Architectures" (the synthetic task suite and the MAD protocol); code: athms/mad-lab,
    ``mad/data/instances.py`` (the instance generators), ``configs/tasks/*.yml`` (baseline
    settings and the difficulty sweeps of the MAD protocol), ``mad/configs.py``
    (``MADConfig``: 1,280 test examples, ``multi_query=True``, seed 12345) and its README (the
    task descriptions and the protocol). Definitions and defaults follow that code.

Conventions. ``generate`` returns ``inputs [n, T]`` and ``targets [n, T]``, both int64, where
``targets[i, t]`` is the token the model must predict after reading ``inputs[i, :t+1]`` and
``IGNORE`` where nothing is scored. Only the task's answers are scored (see ``train_targets``
for MAD's dense training targets). ``T`` is ``input_length(name, **settings)``; it follows the
reference code, so it is not always ``seq_len`` (MAD's plain recall tasks read
``seq_len - 1`` tokens, compression ``2 * (seq_len - 1)``). ``vocab_size`` counts every token
id, special ones included (MAD's convention, e.g. noisy recall's 32 = 16 + 16 noise tokens),
so ``model_vocab(...) == vocab_size`` for every task.

Randomness: ``numpy.random.Generator`` seeded by ``SeedSequence([seed, crc32(name), stream])``;
the same (name, seed, settings, split) give the same arrays; nothing reads global state.

Deviations from the reference code, all deliberate (details in the generators' docstrings):

* Not a deviation, the paper's protocol: MAD trains the three recall tasks on every next
  token (``is_training=True`` returns ``inputs[1:]`` as targets) and scores only the answers
  at test time; so does the default here (``train_targets="all"``: the train split's targets
  are dense, the test split's the answers). ``train_targets="answers"`` trains on the
  answers only.
* Compression is an encoder/MLP-decoder readout in MAD; here it is next-token prediction
  after the sequence (see ``gen_compression``): no bottleneck is enforced by the task.
* Fixed reference-code slips: fuzzy recall always presents the probed key before querying it
  (mad-lab leaves it out when its drawn insertion point lies past the end of the body); the
  guaranteed key-value slot of noisy recall is always a body slot; selective copying draws
  its noise layout from the seeded generator (mad-lab uses the global ``np.random``).
* Memorization's fixed map is seeded by ``kv_map_seed`` (MAD's 12345) apart from the data
  seed; the compression-token position (trivial in MAD's reconstruction) is not scored.
* Noise knobs of compression and memorization (present but unused in mad-lab's protocol) and
  the JRT ``num_passes`` of newer Zoology code are not provided.
* MQAR samples the same distributions as Zoology with vectorised draws (Gumbel top-k for the
  power-law query gaps, which equals ``np.random.choice(replace=False, p=...)`` in
  distribution); the random numbers, hence the exact examples, differ from Zoology's.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .generators import (
    IGNORE,
    check_common,
    check_compression,
    check_copying,
    check_fuzzy,
    check_memorization,
    check_mqar,
    check_recall,
    fact_map,
    gen_compression,
    gen_copying,
    gen_fuzzy,
    gen_memorization,
    gen_mqar,
    gen_recall,
    len_recall,
)

__all__ = [
    "IGNORE",
    "TASKS",
    "TaskSpec",
    "generate",
    "input_length",
    "make_split",
    "memorization_map",
    "model_vocab",
    "task_settings",
]


@dataclass(frozen=True)
class TaskSpec:
    """One probe task: its name, the paper's default settings and the paper's difficulty sweep.

    Attributes:
        name: the task's key in ``TASKS``.
        defaults: the paper's default settings (do not mutate; ``task_settings`` copies them).
        description: what the model must do, in one line.
        answers: which positions are scored, per example.
        source: the paper and the reference code the definition and defaults come from.
        sweep: the paper's difficulty settings as overrides of ``defaults``, baseline first
            (``{}``); MAD varies one knob at a time, Zoology pairs ``seq_len`` and
            ``num_kv_pairs``. ``task_settings(name, **o) for o in spec.sweep`` gives them all.
    """

    name: str
    defaults: dict
    description: str
    answers: str
    source: str
    sweep: tuple = ()


# ---------------------------------------------------------------------------------------------
# settings


#: the kind of every setting: "int", "float", "bool" or a tuple of allowed strings
_KINDS: dict[str, object] = {
    "vocab_size": "int",
    "seq_len": "int",
    "num_train": "int",
    "num_test": "int",
    "num_kv_pairs": "int",
    "power_a": "float",
    "random_non_queries": "bool",
    "noise_vocab_size": "int",
    "frac_noise": "float",
    "multi_query": "bool",
    "k_motif_size": "int",
    "v_motif_size": "int",
    "num_tokens_to_copy": "int",
    "kv_map_seed": "int",
    "train_targets": ("answers", "all"),
}


def _coerce(name: str, key: str, value):
    kind = _KINDS[key]
    if kind == "int":
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name}: setting {key}={value!r} must be an integer")
        return int(value)
    if kind == "float":
        if isinstance(value, (bool, np.bool_)) or not isinstance(
            value, (int, float, np.integer, np.floating)
        ):
            raise ValueError(f"{name}: setting {key}={value!r} must be a number")
        if not math.isfinite(float(value)):
            raise ValueError(f"{name}: setting {key}={value!r} must be finite")
        return float(value)
    if kind == "bool":
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{name}: setting {key}={value!r} must be True or False")
        return bool(value)
    if value not in kind:
        raise ValueError(f"{name}: setting {key}={value!r} must be one of {', '.join(kind)}")
    return value



def _task(name: str) -> TaskSpec:
    if not isinstance(name, str) or name not in TASKS:
        raise ValueError(f"unknown probe task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name]


def task_settings(name: str, **overrides) -> dict:
    """The task's default settings updated by ``overrides``, checked.

    Raises ``ValueError`` (one line) for an unknown task, an unknown setting (naming it and the
    known ones), a value of the wrong type, or values the task cannot be built from (e.g.
    ``mqar`` with ``seq_len < 4 * num_kv_pairs``).
    """
    spec = _task(name)
    unknown = [k for k in overrides if k not in spec.defaults]
    if unknown:
        raise ValueError(
            f"{name}: unknown setting {unknown[0]!r}; known: {', '.join(spec.defaults)}"
        )
    settings = dict(spec.defaults)
    for key, value in overrides.items():
        settings[key] = _coerce(name, key, value)
    check_common(name, settings)
    _CHECKS[name](name, settings)
    return settings


def model_vocab(name: str, **settings) -> int:
    """Vocabulary size a model needs for the task: every token id, special, separator, noise,
    copy and compression tokens included (all ids are ``< vocab_size``)."""
    return task_settings(name, **settings)["vocab_size"]


def input_length(name: str, **settings) -> int:
    """``T``, the number of input tokens per example that ``generate`` returns."""
    s = task_settings(name, **settings)
    return _LENGTHS[name](s)


def _rng(name: str, seed: int, *stream: int) -> np.random.Generator:
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{name}: seed={seed!r} must be an integer >= 0")
    return np.random.default_rng(
        np.random.SeedSequence([int(seed), zlib.crc32(name.encode()), *stream])
    )


_SPLITS = {"train": 0, "test": 1}


def generate(name: str, n: int, seed: int, *, split: str = "train", **settings):
    """``n`` examples of the task as next-token-prediction pairs.

    Returns ``(inputs, targets)``, int64 arrays ``[n, T]`` (``T = input_length(...)``):
    token ids in ``[0, model_vocab)`` and, per position, the token to predict after reading
    ``inputs[i, :t+1]`` or ``IGNORE`` where nothing is scored. Deterministic in
    ``(name, seed, split, settings)``.

    ``split`` matters only where the paper's protocol differs between training and test
    data: fuzzy recall's test examples use keys of ``k_motif_size`` tokens only (mad-lab's
    ``is_training=False``), and ``train_targets="all"`` makes the recall tasks' *train* targets
    dense. ``num_train``/``num_test`` are ignored here (``n`` decides).
    """
    s = task_settings(name, **settings)
    if split not in _SPLITS:
        raise ValueError(f"{name}: split={split!r} must be 'train' or 'test'")
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"{name}: n={n!r} must be an integer >= 0")
    return _generate(name, int(n), _rng(name, seed, _SPLITS[split]), s, split)


def _generate(name: str, n: int, rng: np.random.Generator, s: dict, split: str):
    inputs, targets = _BUILDERS[name](rng, n, s, split)
    return np.ascontiguousarray(inputs, np.int64), np.ascontiguousarray(targets, np.int64)


def make_split(name: str, seed: int, **settings) -> dict:
    """The task's training and test sets: ``{"train": (inputs, targets), "test": (...)}``.

    ``num_train`` / ``num_test`` examples. The training set is ``generate(name, num_train,
    seed, split="train", ...)``. The test set comes from its own random stream, and any
    drawn example whose input row also occurs in the training set is dropped; rows are drawn
    in rounds until ``num_test`` remain (deterministic), so the two sets share no identical
    example. ``ValueError`` when the task's space of distinct examples is too small for that.

    Memorization: train and test share the key-value facts by design (the paper's protocol:
    the model memorises a fixed map from the training data and is tested on the same map), so
    test queries ask facts seen in training; only identical *rows* are excluded.
    """
    s = task_settings(name, **settings)
    train = _generate(name, s["num_train"], _rng(name, seed, _SPLITS["train"]), s, "train")
    train_hashes = _row_hashes(train[0])
    need = s["num_test"]
    xs, ys = [], []
    for attempt in range(32):
        draw = need + need // 50 + 8 if attempt == 0 else 2 * need + 8
        x, y = _generate(name, draw, _rng(name, seed, _SPLITS["test"], attempt), s, "test")
        keep = ~_rows_in(x, train[0], train_hashes)
        x, y = x[keep][:need], y[keep][:need]
        xs.append(x)
        ys.append(y)
        need -= len(x)
        if need == 0:
            break
    else:
        raise ValueError(
            f"{name}: cannot draw num_test={s['num_test']} examples distinct from the "
            f"num_train={s['num_train']} training examples; the task has too few distinct ones"
        )
    return {"train": train, "test": (np.concatenate(xs), np.concatenate(ys))}


def _row_hashes(x: np.ndarray) -> np.ndarray:
    """A 64-bit hash per row (equal rows, equal hashes; ``_rows_in`` checks hits exactly)."""
    mult = np.random.default_rng(0x5EED).integers(1, 2**63, size=x.shape[1], dtype=np.uint64)
    out = np.empty(len(x), np.uint64)
    for lo in range(0, len(x), 8192):
        part = x[lo : lo + 8192].astype(np.uint64)
        out[lo : lo + 8192] = (part * (mult | np.uint64(1))).sum(axis=1, dtype=np.uint64)
    return out


def _rows_in(x: np.ndarray, ref: np.ndarray, ref_hashes: np.ndarray) -> np.ndarray:
    """Which rows of ``x`` occur in ``ref`` (exactly)."""
    found = np.zeros(len(x), bool)
    h = _row_hashes(x)
    hit = np.flatnonzero(np.isin(h, ref_hashes))
    if hit.size:
        same_hash = {r.tobytes() for r in ref[np.isin(ref_hashes, h[hit])]}
        found[hit] = [x[i].tobytes() in same_hash for i in hit]
    return found


def memorization_map(**settings) -> np.ndarray:
    """Memorization's fixed facts: ``map[key]`` is the value id of key id ``key`` (the same for
    every data seed and for train and test; see ``generators.fact_map``)."""
    return fact_map(task_settings("memorization", **settings))


# ---------------------------------------------------------------------------------------------
# the registry


def _mad_sweep(changes: dict) -> tuple:
    return ({},) + tuple({key: v} for key, values in changes.items() for v in values)


_MAD_SOURCE = (
    "Poli et al. 2024 (MAD); athms/mad-lab mad/data/instances.py, configs/tasks/{}.yml, "
    "mad/configs.py"
)
_MAD_SIZES = {"num_train": 12_800, "num_test": 1_280}
_MAD_TRAIN_SWEEP = {"num_train": (6_400, 3_200, 1_600, 800)}
#: what the three recall tasks share: a query per key, no noise unless set, all targets trained
_RECALL = {"multi_query": True, "noise_vocab_size": 0, "frac_noise": 0.0, "train_targets": "all"}
_RECALL_ANSWERS = "every value whose key appeared earlier, incl. the final query (varies)"


def _mad_task(name: str, defaults: dict, description: str, answers: str, sweep: dict,
              train_sweep: bool = True, then: dict | None = None) -> TaskSpec:
    """A MAD task: the paper's train/test sizes, its source, and its sweep (each setting one
    change from the defaults: ``sweep``, with ``train_sweep`` the smaller training sets, then
    ``then``, in the paper's order)."""
    changes = {**sweep, **(_MAD_TRAIN_SWEEP if train_sweep else {}), **(then or {})}
    return TaskSpec(name=name, defaults={**_MAD_SIZES, **defaults}, description=description, answers=answers,
                    source=_MAD_SOURCE.format(name.replace("_", "-")), sweep=_mad_sweep(changes))


TASKS: dict[str, TaskSpec] = {
    "mqar": TaskSpec(
        name="mqar",
        defaults={"vocab_size": 8_192, "seq_len": 64, "num_kv_pairs": 4, "num_train": 100_000,
                  "num_test": 3_000, "power_a": 0.01, "random_non_queries": True},
        description="recall the value of every key queried after a block of key-value pairs",
        answers="num_kv_pairs per example: the value at each query",
        source=(
            "Arora et al. 2023 (Zoology); HazyResearch/zoology "
            "zoology/data/associative_recall.py (multiquery_ar), zoology/data/multiquery_ar.py"
        ),
        sweep=tuple(
            {"seq_len": t, "num_kv_pairs": k} for t, k in ((64, 4), (128, 8), (256, 16), (512, 64))
        ),
    ),
    "in_context_recall": _mad_task(
        "in_context_recall", {"vocab_size": 16, "seq_len": 128, **_RECALL},
        "recall the value of every key seen before in a stream of key-value pairs", _RECALL_ANSWERS,
        {"vocab_size": (32, 64, 128), "seq_len": (256, 512, 1024)}),
    "noisy_in_context_recall": _mad_task(
        "noisy_in_context_recall",
        {"vocab_size": 32, "seq_len": 128, **_RECALL, "noise_vocab_size": 16, "frac_noise": 0.2},
        "in-context recall with noise tokens of their own vocabulary between pairs", _RECALL_ANSWERS,
        {"vocab_size": (48, 80, 144), "seq_len": (256, 512, 1024)}, then={"frac_noise": (0.4, 0.6, 0.8)}),
    "fuzzy_in_context_recall": _mad_task(
        "fuzzy_in_context_recall",
        {"vocab_size": 16, "seq_len": 128, **_RECALL, "k_motif_size": 3, "v_motif_size": 3},
        "in-context recall where keys and values span 1..3 adjacent tokens",
        "every token of every value whose key appeared earlier, incl. the final (varies)",
        {"vocab_size": (32, 64, 128), "seq_len": (256, 512, 1024)}),
    "selective_copying": _mad_task(
        "selective_copying", {"vocab_size": 16, "seq_len": 256, "num_tokens_to_copy": 16},
        "after the copy token, reproduce the content tokens scattered among blanks",
        "num_tokens_to_copy per example, in order",
        {"vocab_size": (32, 64, 128), "seq_len": (512, 1024)}, then={"num_tokens_to_copy": (32, 64, 96)}),
    "compression": _mad_task(
        "compression", {"vocab_size": 16, "seq_len": 32},
        "after the compression token, reproduce the whole random sequence",
        "seq_len - 1 per example, one per compression token",
        {"vocab_size": (32, 64, 128), "seq_len": (64, 128, 256)}),
    "memorization": _mad_task(
        "memorization", {"vocab_size": 256, "seq_len": 32, "num_train": 256, "kv_map_seed": 12_345},
        "answer each key with its value under a fixed map learnt from training",
        "seq_len / 2 per example, at each insert token",
        {"vocab_size": (512, 1_024, 2_048, 4_096, 8_192)}, train_sweep=False),
}

_CHECKS: dict[str, Callable] = {
    "mqar": check_mqar,
    "in_context_recall": check_recall,
    "noisy_in_context_recall": check_recall,
    "fuzzy_in_context_recall": check_fuzzy,
    "selective_copying": check_copying,
    "compression": check_compression,
    "memorization": check_memorization,
}

_BUILDERS: dict[str, Callable] = {
    "mqar": gen_mqar,
    "in_context_recall": gen_recall,
    "noisy_in_context_recall": gen_recall,
    "fuzzy_in_context_recall": gen_fuzzy,
    "selective_copying": gen_copying,
    "compression": gen_compression,
    "memorization": gen_memorization,
}

_LENGTHS: dict[str, Callable] = {
    "mqar": lambda s: s["seq_len"],
    "in_context_recall": len_recall,
    "noisy_in_context_recall": len_recall,
    "fuzzy_in_context_recall": lambda s: s["seq_len"],
    "selective_copying": lambda s: s["seq_len"],
    "compression": lambda s: 2 * (s["seq_len"] - 1),
    "memorization": lambda s: s["seq_len"],
}
