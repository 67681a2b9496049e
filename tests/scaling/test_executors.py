"""`postformer study` on a folder another process uses (study and run locks), and the
submitit executors (local jobs end to end, Slurm settings mapped to sbatch)."""

from __future__ import annotations

import copy
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import submitit
import yaml

import postformer.train.cli  # noqa: F401  (imported up front: a study started in-process starts at once)
from postformer.cli import main
from postformer.scaling.run import results as results_mod
from postformer.scaling.run import run_study
from postformer.scaling.run.executors import RunJob, make_executor, submitit_parameters
from postformer.scaling.run.plan import plan
from postformer.scaling.spec import StudyError, study_from_dict

# One arch at one size, two token budgets (16 and 8 steps of 4 x 32 tokens): a main run and a
# cooldown branched off it, the least that still has a dependency between two runs.
TINY = {
    "name": "tiny",
    "archs": {"transformer": "transformer"},
    "sizes": [{"name": "a", "d_model": 32, "n_layers": 1, "n_heads": 2}],
    "budgets": {"tokens": [1024, 2048]},
    "model": {"lr": 3e-3, "warmup_steps": 2, "decay_fraction": 0.25},
    "data": {"max_bytes": 150_000, "seq_len": 32, "batch_size": 4},
    "eval": {"tokens": 256, "points": 2},
    "trainer": {"accelerator": "cpu", "log_every_n_steps": 1},
}
MAIN, COOL = "runs/transformer-a-s0", "runs/transformer-a-s0/cooldown-1024"


pytestmark = pytest.mark.usefixtures("one_thread")


def write_spec(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def postformer(*args: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "postformer", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    t0 = time.monotonic()
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the process ended before {path} appeared:\n{out}\n{err}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            pytest.fail(f"{path} did not appear in {timeout}s")
        time.sleep(0.02)


def steps_logged(run_dir: Path) -> list[int]:
    return [int(r["step"]) for r in results_mod.read_metrics(run_dir) if r.get("train/loss")]


# ---- two studies on one folder ------------------------------------------------------------


def test_second_study_on_a_busy_folder_exits_2(tmp_path, capsys):
    """A study in a subprocess trains the folder; a second `postformer study` on it exits 2 at
    once, naming the first one's PID and host; nothing is trained twice; once the first is
    done, the same command runs normally (nothing left to train)."""
    spec = write_spec(tmp_path / "tiny.yaml", TINY)
    out = tmp_path / "out"
    first = postformer("study", str(spec), "--out", str(out), "--no-report")
    wait_for(out / "study.yaml", first)  # written once the first study holds the folder
    t0 = time.monotonic()
    with pytest.raises(SystemExit) as exc:
        main(["study", str(spec), "--out", str(out), "--no-report"])
    waited = time.monotonic() - t0
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2, err
    assert first.poll() is None, "the first study should still be running"
    assert waited < 10
    assert len(err.splitlines()) == 1
    assert f"PID {first.pid}" in err and socket.gethostname() in err and str(out) in err
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert "2 runs (0 finished already)" in stdout
    # every step once: nobody else appended to the runs' metrics
    assert steps_logged(out / MAIN) == list(range(16))
    assert steps_logged(out / COOL) == [6, 7]
    assert not (out / ".study.owner").exists()  # released with the lock
    assert main(["study", str(spec), "--out", str(out), "--no-report"]) == 0
    assert "2 runs (2 finished already)" in capsys.readouterr().out


def test_listed_command_on_a_run_being_trained_exits_2(tmp_path, capsys):
    """The `postformer fit` command --list prints for a run exits 2 while another process
    trains that run folder, naming its PID and host, and writes nothing there; the study
    reports that run as not finished; once the folder is free, the command trains it."""
    spec = write_spec(tmp_path / "tiny.yaml", TINY)
    out = tmp_path / "out"
    main_cmd = run_study(spec, out, list_only=True)[0]
    assert main_cmd.startswith("postformer fit --config ") and f"{MAIN}/fit.yaml" in main_cmd
    run = out / MAIN
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from postformer.train.locks import FolderLock; "
         "lock = FolderLock(sys.argv[1], 'run'); lock.acquire(); print('held', flush=True); "
         "sys.stdin.readline(); lock.release()", str(run)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = sorted(p.name for p in run.iterdir())
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            main(shlex.split(main_cmd)[1:])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        assert f"PID {holder.pid} on {socket.gethostname()}" in err[0] and str(run) in err[0]
        assert sorted(p.name for p in run.iterdir()) == before  # no metrics, config, checkpoint
        # a study trains around it: that run is not finished, nor is its cooldown
        rows = run_study(spec, out)
        log = capsys.readouterr().out
        assert rows == [] and f"FAILED: {run} is being trained by another process: PID {holder.pid}" in log
        assert "not finished: transformer-a-s0, transformer-a-s0/cooldown-1024" in log
        assert not (run / "timing.json").exists()
    finally:
        holder.communicate("\n", timeout=30)
    assert main(shlex.split(main_cmd)[1:]) == 0
    assert steps_logged(run) == list(range(16)) and not (run / ".run.owner").exists()


# ---- the local executor ------------------------------------------------------------------------


def test_local_executor_reproduces_the_in_process_study(tmp_path, capsys):
    """--executor local: one submitit job per run, the cooldown submitted once its main run's
    job finished; the results are the in-process study's (same seeds, one thread each)."""
    spec = write_spec(tmp_path / "tiny.yaml", TINY)
    ref = tmp_path / "ref"
    run_study(spec, ref)
    out = tmp_path / "local"
    capsys.readouterr()
    t0 = time.monotonic()
    assert main(["study", str(spec), "--out", str(out), "--executor", "local", "--executor-opt",
                 "cpus_per_task=1", "--executor-opt", "poll_s=0.2", "--no-report"]) == 0
    log = capsys.readouterr().out
    assert time.monotonic() - t0 < 110, log
    assert "2 runs (0 finished already), as local jobs" in log
    submitted_main = log.index("submitted transformer-a-s0 as local job")
    main_done = log.index("[1/2] transformer-a-s0 (D=2.05K tokens): loss")
    submitted_cool = log.index("submitted transformer-a-s0/cooldown-1024 as local job")
    assert submitted_main < main_done < submitted_cool, log
    assert "2/2 done" in log
    got = pd.read_csv(out / "results.csv").sort_values("run_dir").reset_index(drop=True)
    want = pd.read_csv(ref / "results.csv").sort_values("run_dir").reset_index(drop=True)
    assert list(got["run_dir"]) == list(want["run_dir"]) == [MAIN, COOL]
    for col in ("N", "D", "C", "steps"):
        assert list(got[col]) == list(want[col]), col
    assert got["loss"].to_numpy() == pytest.approx(want["loss"].to_numpy(), rel=0, abs=1e-6)
    # submitit's files and the jobs' logs are in the study folder, one folder per job
    job_dirs = list((out / "jobs").iterdir())
    assert len(job_dirs) == 2, job_dirs
    for d in job_dirs:
        assert (d / f"{d.name}_0_log.out").is_file() and (d / f"{d.name}_0_result.pkl").is_file()
    assert not (out / ".study.owner").exists()
    # a job that fails is named with its log; the study goes on and says what is not finished
    (out / MAIN / "checkpoints" / "stable-6.ckpt").unlink()
    shutil.rmtree(out / COOL)
    assert main(["study", str(spec), "--out", str(out), "--executor", "local", "--executor-opt",
                 "poll_s=0.2", "--no-report"]) == 0
    log = capsys.readouterr().out
    failed = [line for line in log.splitlines() if "FAILED" in line]
    assert len(failed) == 1 and "[2/2] transformer-a-s0/cooldown-1024" in failed[0], log
    job = next(d.name for d in (out / "jobs").iterdir() if d not in job_dirs)
    assert "FileNotFoundError" in failed[0] and "stable-6.ckpt is missing" in failed[0]
    assert f"(job {job}, log: {out}/jobs/{job}/{job}_0_log.err)" in failed[0]
    assert "not finished: transformer-a-s0/cooldown-1024" in log


# ---- Slurm settings ----------------------------------------------------------------------------


def slurm_spec(**executor) -> dict:
    spec = copy.deepcopy(TINY)
    spec["trainer"] = {"accelerator": "gpu", "precision": "bf16-mixed"}
    spec["budgets"] = {"tokens": [8 * 1024, 16 * 1024]}  # 8 and 16 steps of 8 devices' batches
    spec["executor"] = {"kind": "slurm", "partition": "gpu", "nodes": 2, "gpus_per_node": 4,
                        "time_min": 240, "account": "proj", "cpus_per_task": 8, "mem_gb": 64,
                        "setup": ["source .venv/bin/activate"], "sbatch": {"mail-user": "me@x.org"},
                        **executor}
    return spec


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """`srun` and `sbatch` stand-ins: submitit submits, sbatch answers with job 4242."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("srun", "exit 0"), ("sbatch", "echo Submitted batch job 4242")):
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_slurm_settings_map_to_sbatch(tmp_path, fake_slurm):
    # a CLI override (--executor-opt partition=long) wins over the spec
    study = study_from_dict(slurm_spec(), source="s.yaml", executor={"partition": "long"})
    # nodes and GPUs per node set the trainer, and the tokens per step count them all
    assert study.trainer["num_nodes"] == 2 and study.trainer["devices"] == 4
    assert study.n_devices == 8 and study.tokens_per_step == 4 * 32 * 8
    assert submitit_parameters(study, "slurm") == {
        "job_name": "postformer-tiny", "time": 240, "nodes": 2, "ntasks_per_node": 4,
        "gpus_per_node": 4, "cpus_per_task": 8, "partition": "long", "account": "proj",
        "mem": "64GB", "setup": ["source .venv/bin/activate"],
        "additional_parameters": {"requeue": True, "mail-user": "me@x.org"},
    }
    out = tmp_path / "out"
    executor = make_executor(study, out, "slurm")
    assert isinstance(executor, submitit.SlurmExecutor) and executor.max_num_timeout == 3
    run = plan(study)[0].runs[0]
    job = executor.submit(RunJob(str(out), run))
    assert job.job_id == "4242"
    lines = job.paths.submission_file.read_text().splitlines()
    for flag in ("--partition=long", "--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4",
                 "--time=240", "--account=proj", "--cpus-per-task=8", "--mem=64GB", "--requeue",
                 "--mail-user=me@x.org", "--signal=USR2@90",
                 f"--output={out}/jobs/%j/%j_0_log.out"):
        assert f"#SBATCH {flag}" in lines, flag
    assert "source .venv/bin/activate" in lines
    # the pickled job trains that run; on a timeout it resubmits itself (it resumes from last.ckpt)
    delayed = submitit.helpers.DelayedSubmission.load(job.paths.submitted_pickle)
    assert isinstance(delayed.function, RunJob) and delayed.function.run == run
    again = delayed.function.checkpoint()
    assert isinstance(again, submitit.helpers.DelayedSubmission) and again.function.run == run
    # the resolved spec says how it ran
    assert study.to_dict()["executor"]["partition"] == "long"
    local = study_from_dict(slurm_spec(kind="local", nodes=1), executor={"time_min": None})
    assert submitit_parameters(local, "local") == {"timeout_min": 365 * 24 * 60, "tasks_per_node": 1,
                                                   "gpus_per_node": 4, "setup": ["source .venv/bin/activate"]}


FAKE_SBATCH = r"""#!/bin/bash
# sbatch: job N runs the batch script in the background (again after `scontrol requeue N`)
n=$(( $(cat "$FAKE_SLURM/next" 2>/dev/null || echo 100) + 1 )); echo $n > "$FAKE_SLURM/next"
cp "$1" "$FAKE_SLURM/$n.sh"; echo RUNNING > "$FAKE_SLURM/$n.state"
export SLURM_JOB_ID=$n SLURM_JOB_NAME=fake SLURM_NTASKS=1 SLURM_NTASKS_PER_NODE=1 SLURM_NNODES=1 \
       SLURM_JOB_NUM_NODES=1 SLURM_PROCID=0 SLURM_LOCALID=0 SLURM_NODEID=0 SLURM_NODELIST=localhost \
       SLURM_JOB_NODELIST=localhost
( while true; do
    rm -f "$FAKE_SLURM/$n.requeue"; echo x >> "$FAKE_SLURM/$n.attempts"
    bash "$FAKE_SLURM/$n.sh"; rc=$?
    [ -f "$FAKE_SLURM/$n.requeue" ] || break
  done
  if [ $rc = 0 ]; then echo COMPLETED; else echo FAILED; fi > "$FAKE_SLURM/$n.state" ) >/dev/null 2>&1 &
echo "Submitted batch job $n"
"""
FAKE_SRUN = r"""#!/bin/bash
out=/dev/null; err=/dev/null
while [[ "$1" == --* ]]; do
  case "$1" in --output) out="$2"; shift 2;; --error) err="$2"; shift 2;; *) shift;; esac
done
out=${out//%j/$SLURM_JOB_ID}; out=${out//%t/0}; err=${err//%j/$SLURM_JOB_ID}; err=${err//%t/0}
mkdir -p "$(dirname "$out")"; exec "$@" >> "$out" 2>> "$err"
"""
FAKE_SACCT = r"""#!/bin/bash
echo "JobID|State|NodeList"
while [ $# -gt 0 ]; do
  [ "$1" = -j ] && { echo "$2|$(cat "$FAKE_SLURM/$2.state")|localhost"; shift; }; shift
done
"""
FAKE_SCONTROL = r"""#!/bin/bash
[ "$1" = requeue ] && touch "$FAKE_SLURM/$2.requeue"
"""


@pytest.fixture
def fake_cluster(tmp_path, monkeypatch):
    """sbatch / srun / sacct / scontrol / scancel stand-ins that run jobs on this machine."""
    bin_dir, state = tmp_path / "bin", tmp_path / "slurm"
    bin_dir.mkdir()
    state.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("srun", FAKE_SRUN), ("sacct", FAKE_SACCT),
                       ("scontrol", FAKE_SCONTROL), ("scancel", "#!/bin/sh\nexit 0\n")):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM", str(state))
    return state


@pytest.mark.filterwarnings("ignore:The `srun` command is available")  # the in-process reference
def test_slurm_executor_requeues_a_preempted_job(tmp_path, fake_cluster, capsys):
    """--executor slurm on a stand-in cluster: a job per run, the cooldown after its main run;
    the main run's job is preempted (SIGUSR2, as Slurm signals it) after its first checkpoint,
    requeued, and resumes from its last.ckpt; the results are the in-process study's."""
    spec = copy.deepcopy(TINY)
    spec["budgets"] = {"tokens": [1024, 8192]}  # a 64-step main run, an 8-step cooldown
    spec["checkpoint"] = {"every_n_train_steps": 4}
    path = write_spec(tmp_path / "tiny.yaml", spec)
    ref = tmp_path / "ref"
    run_study(path, ref)
    out = tmp_path / "slurm"
    capsys.readouterr()
    outcome: dict[str, int] = {}
    study = threading.Thread(target=lambda: outcome.update(rc=main(
        ["study", str(path), "--out", str(out), "--executor", "slurm", "--executor-opt", "time_min=60",
         "--executor-opt", "cpus_per_task=1", "--executor-opt", "poll_s=0.2", "--no-report"])))
    study.start()
    try:
        last, owner = out / MAIN / "checkpoints" / "last.ckpt", out / MAIN / ".run.owner"
        t0 = time.monotonic()
        while not last.exists() and study.is_alive() and time.monotonic() - t0 < 120:
            time.sleep(0.005)
        assert last.exists(), "the main run never saved a checkpoint"
        # Lightning saves a step's checkpoint before it logs that step's row: a kill between the
        # two loses the row (a window of milliseconds, noted in issue 15's note). Preempt after
        # the first checkpoint's row, so that the test is about the requeue, not that window.
        while 3 not in steps_logged(out / MAIN) and study.is_alive() and time.monotonic() - t0 < 120:
            time.sleep(0.005)
        pid = int(json.loads(owner.read_text())["pid"])
        os.kill(pid, signal.SIGUSR2)  # preempted: submitit checkpoints and requeues
    finally:
        study.join(timeout=300)
    assert outcome.get("rc") == 0
    log = capsys.readouterr().out
    assert "2 runs (0 finished already), as slurm jobs" in log and "2/2 done" in log, log
    assert log.index("[1/2] transformer-a-s0 (") < log.index("submitted transformer-a-s0/cooldown-1024")
    main_job = (fake_cluster / "101.attempts").read_text().count("x")
    assert main_job == 2 and (fake_cluster / "102.attempts").read_text().count("x") == 1
    job_log = (out / "jobs" / "101" / "101_0_log.out").read_text() + (out / "jobs" / "101" / "101_0_log.err").read_text()
    assert "Requeued job 101" in job_log
    assert f"resuming {MAIN} from its checkpoints/last.ckpt" in job_log
    assert steps_logged(out / MAIN) == list(range(64))  # the history continues, once each
    got = pd.read_csv(out / "results.csv").sort_values("run_dir").reset_index(drop=True)
    want = pd.read_csv(ref / "results.csv").sort_values("run_dir").reset_index(drop=True)
    assert list(got["run_dir"]) == list(want["run_dir"]) == [MAIN, COOL]
    for col in ("N", "D", "C", "steps"):
        assert list(got[col]) == list(want[col]), col
    assert got["loss"].to_numpy() == pytest.approx(want["loss"].to_numpy(), rel=0, abs=1e-5)


def test_num_nodes_counts_in_tokens_per_step():
    spec = copy.deepcopy(TINY)
    spec["trainer"] = {"accelerator": "cpu", "devices": 2, "num_nodes": 3}
    study = study_from_dict(spec)
    assert study.n_devices == 6 and study.tokens_per_step == 4 * 32 * 6
    assert study.executor == {"kind": "inprocess"}


@pytest.mark.parametrize(
    ("executor", "trainer", "message"),
    [
        ({"kind": "pbs"}, {}, r"executor.kind: must be one of \['inprocess', 'local', 'slurm'\], got 'pbs'"),
        ({"kind": "slurm"}, {}, r"executor.time_min: required with the slurm executor"),
        ({"kind": "slurm", "time_min": "4h"}, {}, r"executor.time_min: must be an integer >= 1, got '4h'"),
        ({"kind": "local", "nodes": 2}, {}, r"executor.nodes: 2 nodes per run need the slurm executor"),
        ({"kind": "local"}, {"num_nodes": 2}, r"trainer.num_nodes: 2 nodes per run need the slurm executor"),
        ({"kind": "slurm", "time_min": 9, "gpus_per_node": 4}, {"devices": 2},
         r"executor.gpus_per_node: 4 differs from trainer.devices 2"),
        ({"kind": "slurm", "time_min": 9, "nodes": 2}, {"num_nodes": 1},
         r"executor.nodes: 2 differs from trainer.num_nodes 1"),
        ({"partion": "gpu"}, {}, r"executor: unknown key\(s\) \['partion'\]"),
        ({"mem_gb": -1}, {}, r"executor.mem_gb: must be positive"),
        ({"jobs": 0}, {}, r"executor.jobs: must be an integer >= 1"),
        ({"setup": [1]}, {}, r"executor.setup: must be a list of shell lines"),
        ({"partition": ""}, {}, r"executor.partition: must be a non-empty string"),
        ({"sbatch": {"exclusive": [1]}}, {}, r"executor.sbatch.exclusive: must be a flag: value"),
    ],
)
def test_bad_executor_settings_name_the_key(executor, trainer, message):
    spec = copy.deepcopy(TINY)
    spec["trainer"].update(trainer)
    with pytest.raises(StudyError, match=message):
        study_from_dict(spec, source="tiny.yaml", executor=executor)


def test_bad_executor_options_on_the_command_line(tmp_path, capsys):
    spec = write_spec(tmp_path / "tiny.yaml", TINY)
    for args, message in ((["--executor-opt", "partition"], "--executor-opt expects KEY=VALUE, got 'partition'"),
                          (["--executor", "slurm"], "executor.time_min: required with the slurm executor"),
                          (["--executor-opt", "nodes=two"], "executor.nodes: must be an integer >= 1, got 'two'")):
        with pytest.raises(SystemExit) as exc:
            main(["study", str(spec), "--out", str(tmp_path / "out"), *args])
        assert exc.value.code == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_compare_on_a_busy_folder_exits_2(tmp_path, capsys):
    from postformer.train.locks import FolderLock

    repo = Path(__file__).resolve().parents[2]
    configs = [str(repo / "configs" / "smoke" / f"{a}.yaml") for a in ("transformer", "mamba2")]
    out = tmp_path / "cmp"
    lock = FolderLock(out, "study")
    lock.acquire()
    try:
        with pytest.raises(SystemExit) as exc:
            main(["compare", *configs, "--out", str(out), "--max_steps", "6"])
    finally:
        lock.release()
    err = capsys.readouterr().err
    assert exc.value.code == 2 and f"PID {os.getpid()}" in err and socket.gethostname() in err
    assert not (out / "runs").exists()  # nothing trained
