"""The study spec of ``postformer compare CONFIG [CONFIG ...] --out DIR [--max_steps N]
[--seeds S ...]``: a one-size study.

Each CONFIG is a ``postformer fit`` config (model, data, trainer). They become the archs of a
study with one size (each model keeps its own shape) and one token budget (``max_steps``
steps of every config), trained by the study runner into ``DIR`` and collected into the
study's one results table (``DIR/results.csv``) and report; the table of final losses is
printed at the end. The configs must share their data section (a comparison on different
data is not one); each keeps its own optimizer options (``model.lr``, warmup, schedule).
An interrupted comparison resumes like any study.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from .checks import StudyError
from .study import RUNNER_DATA_KEYS, RUNNER_TRAINER_KEYS

# trainer keys a fit config may hold that a study sets itself (or has no use for)
_DROP_TRAINER = (*RUNNER_TRAINER_KEYS, "callbacks", "logger")


def _load(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise StudyError(f"config {path!r} does not exist")
    try:
        cfg = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise StudyError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(cfg, dict) or not isinstance((cfg.get("model") or {}).get("config"), dict):
        raise StudyError(f"{path}: a fit config with model.config (a ModelConfig mapping) is needed")
    return cfg


def compare_study(configs: list[str], max_steps: int | None = None,
                  seeds: list[int] | None = None, name: str = "compare") -> dict[str, Any]:
    """The study spec (a dict) of a comparison of ``configs``."""
    stems = [Path(c).stem for c in configs]
    if len(set(stems)) != len(stems):
        raise StudyError(f"config file names must differ (they name the archs): {stems}")
    loaded = [_load(c) for c in configs]
    data = {k: v for k, v in (loaded[0].get("data") or {}).items() if k not in RUNNER_DATA_KEYS}
    for c, cfg in zip(configs[1:], loaded[1:]):
        other = {k: v for k, v in (cfg.get("data") or {}).items() if k not in RUNNER_DATA_KEYS}
        if other != data:
            raise StudyError(f"{c}: its data section differs from {configs[0]}'s; a comparison "
                             "needs the same data")
    steps = max_steps
    if steps is None:
        found = {(cfg.get("trainer") or {}).get("max_steps") for cfg in loaded}
        if len(found) != 1 or None in found:
            raise StudyError(f"the configs' trainer.max_steps differ or are missing ({sorted(map(str, found))}); "
                             "pass --max_steps N")
        steps = found.pop()
    trainer = {k: v for k, v in (loaded[0].get("trainer") or {}).items() if k not in _DROP_TRAINER}
    tps = (data.get("batch_size", 16) * data.get("seq_len", 256)
           * int(trainer.get("accumulate_grad_batches", 1)) * int(trainer.get("devices", 1)))
    archs, overrides = {}, {}
    for stem, cfg in zip(stems, loaded):
        model = copy.deepcopy(cfg["model"])
        fields = model.pop("config")
        archs[stem] = {"pattern": fields.get("pattern", ["attn"]), "layer_multiplier": 1,
                       "model": model}
        overrides[stem] = {k: v for k, v in fields.items() if k != "pattern"}
    first = loaded[0]["model"]["config"]
    spec = {
        "name": name, "baseline": stems[0], "archs": archs,
        "sizes": [{"name": "cfg", "d_model": first.get("d_model", 256),
                   "n_layers": first.get("n_layers", 4), "overrides": overrides}],
        "budgets": {"tokens": [steps * tps]}, "seeds": seeds or [0],
        "eval": {"points": 5}, "model": {}, "data": data, "trainer": trainer,
    }
    if loaded[0].get("checkpoint"):
        spec["checkpoint"] = loaded[0]["checkpoint"]
    return spec
