"""A spec's ``executor`` section: where its runs train (``scaling.run.executors`` runs them;
its docstring says what each key does). Studies and probes share it."""

from __future__ import annotations

from typing import Any

from .checks import check_keys, fail, integer, mapping, positive

#: where the runs train (``scaling.run.executors`` says what each kind and key does)
EXECUTOR_KINDS = ("inprocess", "local", "slurm")
EXECUTOR_KEYS = ("kind", "jobs", "time_min", "nodes", "gpus_per_node", "cpus_per_task", "mem_gb",
                 "partition", "account", "qos", "constraint", "setup", "sbatch", "max_timeouts",
                 "poll_s")


def executor_section(src: str, spec: dict[str, Any], trainer: dict[str, Any],
                     overrides: dict[str, Any] | None) -> dict[str, Any]:
    """A spec's executor section with ``overrides`` applied (``--executor``,
    ``--executor-opt``; a None value removes a key), validated (:func:`check_executor`)."""
    ex = dict(mapping(src, "executor", spec.get("executor")))
    for key, value in (overrides or {}).items():
        if value is None:
            ex.pop(key, None)
        else:
            ex[key] = value
    return check_executor(src, ex, trainer, mapping(src, "trainer", spec.get("trainer")))


def check_executor(src: str, section: Any, trainer: dict[str, Any], given: dict[str, Any]
                   ) -> dict[str, Any]:
    """The executor section, validated; sets ``trainer.num_nodes`` from ``nodes`` and
    ``trainer.devices`` from ``gpus_per_node`` (``given``: the trainer section as written)."""
    ex = dict(mapping(src, "executor", section))
    check_keys(src, "executor", ex, EXECUTOR_KEYS)
    kind = ex.setdefault("kind", "inprocess")
    if kind not in EXECUTOR_KINDS:
        raise fail(src, "executor.kind", f"must be one of {list(EXECUTOR_KINDS)}, got {kind!r}")
    for key, lo in (("jobs", 1), ("time_min", 1), ("nodes", 1), ("gpus_per_node", 0),
                    ("cpus_per_task", 1), ("max_timeouts", 0)):
        if key in ex:
            integer(src, f"executor.{key}", ex[key], lo)
    for key in ("mem_gb", "poll_s"):
        if key in ex:
            ex[key] = positive(src, f"executor.{key}", ex[key])
    for key in ("partition", "account", "qos", "constraint"):
        if key in ex and not (isinstance(ex[key], str) and ex[key].strip()):
            raise fail(src, f"executor.{key}", f"must be a non-empty string, got {ex[key]!r}")
    setup = ex.get("setup", [])
    if isinstance(setup, str):
        setup = ex["setup"] = [setup]
    if not (isinstance(setup, list) and all(isinstance(x, str) for x in setup)):
        raise fail(src, "executor.setup", f"must be a list of shell lines, got {setup!r}")
    sbatch = mapping(src, "executor.sbatch", ex.get("sbatch"))
    for flag, value in sbatch.items():
        if not isinstance(flag, str) or not isinstance(value, str | int | float | bool):
            raise fail(src, f"executor.sbatch.{flag}", f"must be a flag: value, got {value!r}")
    if kind == "slurm" and "time_min" not in ex:
        raise fail(src, "executor.time_min", "required with the slurm executor (minutes per job; "
                                             "a job that hits it is requeued and resumes)")
    # nodes and devices per node set the tokens per step: one value, in the trainer section
    if "nodes" in ex:
        nodes = ex["nodes"]
        if "num_nodes" in given and given["num_nodes"] != nodes:
            raise fail(src, "executor.nodes", f"{nodes} differs from trainer.num_nodes "
                                              f"{given['num_nodes']}; give one of them")
        if nodes != 1 and kind != "slurm":
            raise fail(src, "executor.nodes", f"{nodes} nodes per run need the slurm executor, "
                                              f"not {kind}")
        if nodes != 1:
            trainer["num_nodes"] = nodes
    elif kind == "local" and trainer.get("num_nodes", 1) != 1:
        raise fail(src, "trainer.num_nodes", f"{trainer['num_nodes']} nodes per run need the slurm "
                                             "executor, not local")
    devices = trainer.get("devices", 1)
    n_dev = len(devices) if isinstance(devices, list) else devices
    if ex.get("gpus_per_node"):
        gpus = ex["gpus_per_node"]
        if "devices" in given and n_dev != gpus:
            raise fail(src, "executor.gpus_per_node", f"{gpus} differs from trainer.devices "
                                                      f"{devices!r}; give one of them")
        trainer["devices"] = gpus
    elif "gpus_per_node" not in ex and str(trainer.get("accelerator", "")).lower() in ("gpu", "cuda"):
        ex["gpus_per_node"] = n_dev
    return ex
