"""Data parallelism on CPU (2 processes, gloo, Lightning's defaults): a run on 2 devices with
batch b follows the trajectory of 1 device with batch 2b, and a 2-process run killed mid-way
and resumed equals the uninterrupted one.

Each run is a real ``python -m postformer fit`` subprocess (Lightning's DDP launcher starts
the second rank by re-running that command), so this is the path a user takes.
"""

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tiny_fit import tiny_config

HERE = Path(__file__).resolve().parent

pytestmark = pytest.mark.slow

# batch_size and devices come from each test; validation on a fixed 2048-token set (not
# limit_val_batches, which would cut each rank's share)
CONFIG = tiny_config(data={"batch_size": None, "val_tokens": 2048},
                     trainer={"max_steps": 12, "val_check_interval": 12, "devices": None,
                              "limit_val_batches": None, "enable_progress_bar": False,
                              "enable_model_summary": False})
STEPS = 12


def fit(tmp_path: Path, name: str, devices: int, batch: int, *extra: str,
        strategy: str | None = "ddp") -> subprocess.CompletedProcess:
    cfg = tmp_path / "fit.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    env.pop("MASTER_PORT", None)
    cmd = [sys.executable, "-m", "postformer", "fit", "--config", str(cfg),
           "--trainer.default_root_dir", str(tmp_path / name), "--trainer.devices", str(devices),
           "--data.batch_size", str(batch), *extra]
    if devices > 1 and strategy:
        cmd += ["--trainer.strategy", strategy]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def metrics(run: Path, name: str) -> dict[int, float]:
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return {int(r["step"]): float(r[name]) for r in rows if r.get(name)}


def check(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_two_processes_match_one_with_the_global_batch(tmp_path):
    check(fit(tmp_path, "one", 1, 4))
    check(fit(tmp_path, "two", 2, 2))
    one, two = metrics(tmp_path / "one", "train/loss"), metrics(tmp_path / "two", "train/loss")
    assert sorted(one) == sorted(two) == list(range(STEPS))
    for s in range(STEPS):
        assert math.isclose(one[s], two[s], rel_tol=2e-4), (s, one[s], two[s])
    # the trajectory moved: not a trivially equal pair of constant curves
    assert one[STEPS - 1] < one[0] - 0.3
    v1, v2 = metrics(tmp_path / "one", "val/loss"), metrics(tmp_path / "two", "val/loss")
    assert list(v1) == list(v2) == [STEPS - 1]
    assert math.isclose(v1[STEPS - 1], v2[STEPS - 1], rel_tol=2e-4)
    # the two ranks drew different halves: a 2-device run with duplicated data would follow
    # the 1-device run with batch 2, which is a different trajectory
    check(fit(tmp_path, "half", 1, 2))
    half = metrics(tmp_path / "half", "train/loss")
    assert max(abs(half[s] - two[s]) for s in range(1, STEPS)) > 1e-2
    worst = max(abs(one[s] - two[s]) / one[s] for s in range(STEPS))
    print(f"DDP parity over {STEPS} steps: max relative train/loss difference {worst:.2e}; "
          f"val/loss {v1[STEPS - 1]:.6f} (1 device) vs {v2[STEPS - 1]:.6f} (2 devices)")


def test_two_processes_killed_and_resumed_equal_uninterrupted(tmp_path):
    check(fit(tmp_path, "whole", 2, 2))
    # both ranks die (os._exit) after step 7 is trained, rows 0-5 logged; last.ckpt is step 4
    killed = fit(tmp_path, "killed", 2, 2, "--trainer.callbacks+=ddp_helpers.DieAtStep",
                 "--trainer.callbacks.step", "7")
    assert killed.returncode != 0
    partial = metrics(tmp_path / "killed", "train/loss")
    assert max(partial) >= 5 and STEPS - 1 not in partial
    check(fit(tmp_path, "killed", 2, 2, "--ckpt_path", "last"))
    whole, resumed = (metrics(tmp_path / r, "train/loss") for r in ("whole", "killed"))
    assert sorted(resumed) == list(range(STEPS))  # no step lost, none doubled
    for s in range(STEPS):
        assert math.isclose(whole[s], resumed[s], rel_tol=1e-5), (s, whole[s], resumed[s])
    vw, vr = metrics(tmp_path / "whole", "val/loss"), metrics(tmp_path / "killed", "val/loss")
    assert math.isclose(vw[STEPS - 1], vr[STEPS - 1], rel_tol=1e-5)


@pytest.mark.gpu
def test_fsdp_matches_one_device_with_the_global_batch(tmp_path):
    """FSDP is GPU-only in Lightning: configs/trainer/fsdp.yaml (fp32 here, for parity) on
    every visible GPU (up to 2) against one GPU with the global batch."""
    import torch

    n = min(2, torch.cuda.device_count())
    gpu = ["--trainer.accelerator", "gpu", "--trainer.precision", "32"]
    check(fit(tmp_path, "one", 1, 2 * n, *gpu))
    fsdp = ["--config", str(HERE.parents[1] / "configs" / "trainer" / "fsdp.yaml"), *gpu]
    check(fit(tmp_path, "fsdp", n, 2, *fsdp, strategy=None))
    one, sharded = metrics(tmp_path / "one", "train/loss"), metrics(tmp_path / "fsdp", "train/loss")
    assert sorted(one) == sorted(sharded) == list(range(STEPS))
    for s in range(STEPS):
        assert math.isclose(one[s], sharded[s], rel_tol=1e-3), (s, one[s], sharded[s])
