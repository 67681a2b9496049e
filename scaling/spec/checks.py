"""The checks every spec reader shares (studies, probes, their executor sections): one error
type, messages of the form ``FILE: KEY: what was wrong``, and the keys each section accepts,
read off the classes that take them (``LMModule``, ``TextDataModule``, Lightning's
``Trainer``, ``RunCheckpoint``), so a new option there is accepted here without a word."""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
from pathlib import Path
from typing import Any

import lightning as L
import yaml

from postformer.arch import PRESETS, ModelConfig
from postformer.train.callbacks import RunCheckpoint
from postformer.train.data import TextDataModule
from postformer.train.module import LMModule

#: an arch mapping's keys that are not ModelConfig fields
ARCH_EXTRA_KEYS = ("preset", "layer_multiplier", "match_params", "model", "seed_offset",
                   "lr_from", "lr_scale")
#: labels and size names name run folders
LABEL = re.compile(r"^[A-Za-z0-9_.+-]+$")


class StudyError(ValueError):
    """A study or probe spec that cannot be run; the message names the file and the key."""


def fail(src: str, where: str, msg: str) -> StudyError:
    """The error of key ``where`` in spec file ``src``: ``src: where: msg``."""
    return StudyError(f"{src}: {where}: {msg}")


def check_keys(src: str, where: str, got: dict, allowed: list[str] | tuple[str, ...]) -> None:
    """StudyError naming the unknown keys of ``got`` and the accepted ones."""
    unknown = [k for k in got if k not in allowed]
    if unknown:
        raise fail(src, where, f"unknown key(s) {unknown}; accepted: {sorted(allowed)}")


def mapping(src: str, where: str, value: Any) -> dict:
    """``value`` as a mapping ({} for None)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise fail(src, where, f"must be a mapping, got {value!r}")
    return value


def nonempty_list(src: str, where: str, value: Any) -> list:
    if not isinstance(value, list) or not value:
        raise fail(src, where, f"must be a non-empty list, got {value!r}")
    return value


def positive(src: str, where: str, v: Any) -> float:
    """A finite positive number (YAML reads ``1e6`` as a string: accepted)."""
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise fail(src, where, f"{v!r} is not a number") from None
    if not x > 0 or not math.isfinite(x):
        raise fail(src, where, f"must be positive, got {v!r}")
    return x


def positive_numbers(src: str, where: str, value: Any) -> list[float]:
    """A non-empty list of distinct positive numbers."""
    out = [positive(src, where, v) for v in nonempty_list(src, where, value)]
    if len(set(out)) != len(out):
        raise fail(src, where, f"repeated values in {value}")
    return out


def integer(src: str, where: str, v: Any, lo: int) -> int:
    """An integer >= ``lo`` (a bool is not one)."""
    if not isinstance(v, int) or isinstance(v, bool) or v < lo:
        raise fail(src, where, f"must be an integer >= {lo}, got {v!r}")
    return v


def seed_list(src: str, where: str, value: Any, allow_empty: bool = False) -> list[int]:
    """Distinct integers >= 0 (``[]`` only with ``allow_empty``)."""
    if allow_empty and value == []:
        return []
    seeds = nonempty_list(src, where, value)
    if not all(isinstance(s, int) and s >= 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise fail(src, where, f"must be distinct integers >= 0, got {seeds}")
    return list(seeds)


def _accepted(cls: Any, skip: tuple[str, ...] = ()) -> list[str]:
    return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", *skip)]


def model_keys() -> list[str]:
    """The keys of a ``model`` section: LMModule's arguments but its ``config``."""
    return _accepted(LMModule, ("config",))


def lm_default(key: str) -> Any:
    """LMModule's default for argument ``key``."""
    return inspect.signature(LMModule.__init__).parameters[key].default


def data_defaults() -> dict[str, Any]:
    """TextDataModule's arguments and their defaults (a study's ``data`` section)."""
    sig = inspect.signature(TextDataModule.__init__)
    return {k: p.default for k, p in sig.parameters.items() if k != "self"}


def trainer_keys() -> list[str]:
    """The keys of a ``trainer`` section: Lightning Trainer's arguments."""
    return _accepted(L.Trainer)


def checkpoint_keys() -> list[str]:
    """The keys of a ``checkpoint`` section: RunCheckpoint's arguments."""
    return _accepted(RunCheckpoint)


def n_devices(trainer: dict[str, Any]) -> int:
    """Devices a run trains on: ``trainer.devices`` (a count or a list of ids) x ``num_nodes``."""
    devices = trainer.get("devices", 1)
    n_dev = len(devices) if isinstance(devices, list) else int(devices)
    return n_dev * int(trainer.get("num_nodes", 1))


def check_archs(src: str, archs: Any) -> None:
    """A spec's ``archs``: label -> a preset name, or a mapping of ModelConfig fields (but
    ``d_model`` and ``n_layers``, which the sizes give) plus ``ARCH_EXTRA_KEYS``."""
    if not isinstance(archs, dict) or not archs:
        raise fail(src, "archs", f"must be a non-empty mapping label -> arch, got {archs!r}")
    model_fields = [f.name for f in dataclasses.fields(ModelConfig)]
    lm_keys = model_keys()
    for label, arch in archs.items():
        where = f"archs.{label}"
        if not LABEL.match(str(label)):
            raise fail(src, where, "labels name run folders: use letters, digits, _ . + -")
        if isinstance(arch, str):
            if arch not in PRESETS:
                raise fail(src, where, f"unknown arch {arch!r}; presets: {sorted(PRESETS)}, "
                                       "or give ModelConfig fields as a mapping")
        elif isinstance(arch, dict):
            allowed = [f for f in model_fields if f not in ("d_model", "n_layers")] + list(ARCH_EXTRA_KEYS)
            check_keys(src, where, arch, allowed)
            if "preset" in arch and arch["preset"] not in PRESETS:
                raise fail(src, where, f"unknown preset {arch['preset']!r}; known: {sorted(PRESETS)}")
            if "pattern" not in arch and "preset" not in arch:
                raise fail(src, where, "give a pattern (e.g. [mamba2, attn]) or a preset")
            integer(src, f"{where}.layer_multiplier", arch.get("layer_multiplier", 1), 1)
            if not isinstance(arch.get("match_params", False), bool):
                raise fail(src, f"{where}.match_params", "must be true or false")
            check_keys(src, f"{where}.model", mapping(src, f"{where}.model", arch.get("model")),
                       lm_keys)
            integer(src, f"{where}.seed_offset", arch.get("seed_offset", 0), 0)
            positive(src, f"{where}.lr_scale", arch.get("lr_scale", 1.0))
            source = arch.get("lr_from")
            if source is not None and (source == label or source not in archs
                                       or isinstance(archs[source], dict) and "lr_from" in archs[source]):
                raise fail(src, f"{where}.lr_from", f"must name another arch that tunes its own LR, "
                                                    f"got {source!r}; archs: {list(archs)}")
        else:
            raise fail(src, where, f"must be a preset name or a mapping of fields, got {arch!r}")


def read_spec(path: str | Path, what: str = "study") -> Any:
    """A spec file's YAML; StudyError naming the file when it is missing or not YAML."""
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"{what} file {str(path)!r} does not exist")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise StudyError(f"{path}: not valid YAML: {err}") from None
