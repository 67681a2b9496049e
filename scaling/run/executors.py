"""How a study's runs are executed (``postformer study --executor``).

Locks: ``postformer.train.locks``.

Executors (``--executor KIND``, or the spec's ``executor.kind``)::

    inprocess  (default) the runs train in the study process one after another, or with
               ``--jobs N`` in N worker processes side by side
    local      one submitit job per run on this machine, a process of its own; at most
               ``--jobs N`` at a time (default 1), each on its own GPUs when the runs use GPUs
    slurm      one sbatch job per run through submitit; ``--jobs N``: at most N submitted and
               not finished (default: every run that is ready)

Job flow (local, slurm). The study process holds the study lock, lays out the runs, submits
every run that is ready and waits, polling every ``poll_s`` seconds: a cooldown is submitted
once its main run's job has finished (its stable checkpoint exists), the main grid once the
tuning stage has (its LRs come from the tuned optima: the runner's stages). A job trains its
run exactly as the in-process runner does (``training.train_run``: ``postformer fit`` on
RUN/fit.yaml, from RUN/checkpoints/last.ckpt when there is one) and returns the step it
reached; the study writes RUN/result.json and prints ``[i/n] run: loss ..., k/n done`` or
``FAILED: ... (log: PATH)``; at the end results.csv and the report, as in process.
Submitit's files and each job's stdout/stderr go to ``DIR/jobs/<job id>/``. A job that hits
its time limit is requeued (up to ``max_timeouts`` times) and Slurm requeues a preempted one
(``--requeue``); either way the run resumes from its last.ckpt, so the steps since its last
checkpoint (``checkpoint.every_n_train_steps``) train again. Ctrl-C on the study cancels its
jobs; a study that was killed leaves them running, holding their run locks.

Settings: the spec's ``executor`` section (validated by ``scaling.spec.executor``); ``--executor-opt
KEY=VALUE`` overrides one key (the value read as YAML)::

    kind            inprocess | local | slurm
    jobs            runs at a time (``--jobs`` overrides)
    time_min        a job's time limit in minutes (required with slurm; local: none)
    nodes           nodes per job (slurm): trainer.num_nodes
    gpus_per_node   GPUs per node: trainer.devices (default: trainer.devices with accelerator
                    gpu/cuda). Slurm starts one task per device (ntasks-per-node = devices) on
                    every node, which Lightning's SLURMEnvironment turns into ranks
    cpus_per_task   CPUs per task (also the torch threads of a local job)
    mem_gb          memory per node
    partition, account, qos, constraint   passed to sbatch
    setup           shell lines run before the job (module load, source .venv/bin/activate)
    sbatch          more #SBATCH flags, {flag: value} (e.g. {exclusive: true, mail-user: me})
    max_timeouts    requeues after hitting time_min (default 3)
    poll_s          seconds between polls of the jobs' states (default 5)
"""

from __future__ import annotations

import ctypes
import json
import multiprocessing
import os
import signal
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import torch

from postformer.train.callbacks import NonFiniteLossError
from postformer.train.fileio import atomic_write
from postformer.train.locks import RunLocked, is_rank_zero

from ..numbers import fmt_duration, fmt_tokens
from . import training
from .results import finished_row
from .results import make_row as study_row

LOCAL_TIMEOUT_MIN = 365 * 24 * 60  # a local job without time_min: no limit to speak of
HEARTBEAT_S = 300.0


# ---- submitit ------------------------------------------------------------------------------


def _devices_per_node(trainer: dict[str, Any]) -> int:
    devices = trainer.get("devices", 1)
    return len(devices) if isinstance(devices, list) else int(devices)


def _mem(gb: float) -> str:
    return f"{int(gb)}GB" if gb == int(gb) else f"{int(gb * 1024)}MB"


def local_gpus(study: Any) -> int:
    """GPUs of one local job: ``gpus_per_node``, else the run's devices when its accelerator
    is auto and this machine has GPUs (a local job sees only the GPUs it is given)."""
    gpus = study.executor.get("gpus_per_node")
    if gpus is None and str(study.trainer.get("accelerator", "auto")).lower() == "auto":
        gpus = _devices_per_node(study.trainer) if torch.cuda.is_available() else 0
    return int(gpus or 0)


def submitit_parameters(study: Any, kind: str) -> dict[str, Any]:
    """The ``update_parameters`` of a study's ``local`` or ``slurm`` executor (submitit's own
    names: ``SlurmExecutor`` for slurm, ``LocalExecutor`` for local)."""
    s = study.executor
    if kind == "local":
        params: dict[str, Any] = {"timeout_min": s.get("time_min", LOCAL_TIMEOUT_MIN),
                                  "tasks_per_node": 1,  # Lightning starts a run's other devices
                                  "gpus_per_node": local_gpus(study)}
        if s.get("setup"):
            params["setup"] = list(s["setup"])
        return params
    if kind != "slurm":
        raise ValueError(f"no submitit executor for kind {kind!r}")
    params = {
        "job_name": f"postformer-{study.name}",
        "time": s["time_min"],
        "nodes": int(study.trainer.get("num_nodes", 1)),
        "ntasks_per_node": _devices_per_node(study.trainer),  # one task per device: Lightning's ranks
        "additional_parameters": {"requeue": True, **(s.get("sbatch") or {})},
    }
    if s.get("gpus_per_node"):
        params["gpus_per_node"] = s["gpus_per_node"]
    for key in ("cpus_per_task", "partition", "account", "qos", "constraint"):
        if s.get(key) is not None:
            params[key] = s[key]
    if s.get("mem_gb") is not None:
        params["mem"] = _mem(float(s["mem_gb"]))
    if s.get("setup"):
        params["setup"] = list(s["setup"])
    return params


def make_executor(study: Any, out: Path, kind: str) -> Any:
    """A submitit executor whose files go to ``out/jobs/<job id>/``."""
    import submitit  # heavy, and only the local and slurm executors need it

    cls = submitit.SlurmExecutor if kind == "slurm" else submitit.LocalExecutor
    executor = cls(folder=Path(out) / "jobs" / "%j",
                   max_num_timeout=int(study.executor.get("max_timeouts", 3)))
    executor.update_parameters(**submitit_parameters(study, kind))
    return executor


class RunJob:
    """A submitit job: one run of a study folder, trained as the in-process runner trains it
    (``training.train_run``); returns (the global step reached, seconds). On a timeout submitit
    calls ``checkpoint``: the same run again, which resumes from its last.ckpt."""

    def __init__(self, out: str, run: Any, threads: int | None = None, verbose: bool = False) -> None:
        self.out, self.run, self.threads, self.verbose = str(out), run, threads, verbose

    def __call__(self) -> tuple[int, float]:
        if self.threads:
            torch.set_num_threads(self.threads)
        if is_rank_zero() and (Path(self.out) / self.run.run_dir / "checkpoints" / "last.ckpt").is_file():
            print(f"resuming {self.run.run_dir} from its checkpoints/last.ckpt", flush=True)
        try:
            with training.quiet_lightning(self.verbose):
                cli, wall = training.train_run(Path(self.out), self.run)
        except RunLocked as err:  # an exception submitit reports, not an exit
            raise RuntimeError(str(err)) from None
        return int(cli.trainer.global_step), wall

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        from submitit.helpers import DelayedSubmission  # heavy: only inside a submitit job

        return DelayedSubmission(RunJob(self.out, self.run, self.threads, self.verbose))


class JobFailed(RuntimeError):
    """A job that ended without a result; the message names its log."""


def _job_error(job: Any, err: BaseException) -> JobFailed:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip() and not set(ln.strip()) <= {"-"}]
    # submitit's message: "... failed during processing with trace:", the trace, where the logs are
    trace = [ln for ln in lines if not ln.startswith(("You can check", "- /", "Job (task="))]
    cause = trace[-1] if trace else type(err).__name__
    return JobFailed(f"{cause} (job {job.job_id}, log: {job.paths.stderr})")


# ---- executing a stage's runs ----------------------------------------------------------------


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)
    if sys.platform.startswith("linux"):
        # a worker dies with its study process (killed, not only interrupted): no orphan
        # keeps training into a run folder; its run resumes from last.ckpt next time
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _train_in_worker(out: str, run: Any, verbose: bool) -> tuple[int, float]:
    """One run in a worker process (``--jobs``): (the global step reached, seconds)."""
    with training.quiet_lightning(verbose):
        cli, wall = training.train_run(Path(out), run)
    return int(cli.trainer.global_step), wall


class _Workers:
    """``--jobs N`` worker processes (spawned), each with its share of the torch threads."""

    limit = None  # the pool queues what it cannot start yet

    def __init__(self, jobs: int, verbose: bool) -> None:
        self.verbose = verbose
        threads = max(1, torch.get_num_threads() // jobs)
        self.pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_worker_init, initargs=(threads,))

    def submit(self, out: Path, name: str, run: Any) -> Any:
        return self.pool.submit(_train_in_worker, str(out), run, self.verbose)

    def wait(self, handles: list[Any], status: Any) -> list[Any]:
        return list(wait(handles, return_when=FIRST_COMPLETED)[0])

    def result(self, handle: Any) -> tuple[int, float]:
        return handle.result()

    def abort(self, handles: list[Any]) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        self.pool.shutdown(wait=True)


class _Jobs:
    """Submitit jobs (local or slurm), polled every ``poll_s`` seconds."""

    def __init__(self, study: Any, out: Path, kind: str, jobs: int | None, verbose: bool) -> None:
        self.kind, self.verbose, self.out = kind, verbose, out
        self.executor = make_executor(study, out, kind)
        self.poll_s = float(study.executor.get("poll_s", 5.0))
        self.limit = jobs if jobs is not None else (1 if kind == "local" else None)
        self.threads = study.executor.get("cpus_per_task")
        self.job_name = self.executor.parameters.get("job_name")
        self.slots: dict[Any, int] = {}  # local GPU runs: job -> its slot of GPUs
        self.gpus = 0
        if kind == "local":
            self.gpus = local_gpus(study)
            if self.gpus:
                n_slots = max(1, torch.cuda.device_count() // self.gpus)
                self.limit = min(self.limit or 1, n_slots)
            elif self.threads is None:
                self.threads = max(1, (os.cpu_count() or 1) // (self.limit or 1))
        self.last_note = time.monotonic()

    def submit(self, out: Path, name: str, run: Any) -> Any:
        if self.gpus:  # the first free slot's GPUs
            slot = min(set(range(len(self.slots) + 1)) - set(self.slots.values()))
            self.executor.update_parameters(visible_gpus=list(range(slot * self.gpus, (slot + 1) * self.gpus)))
        elif self.kind == "slurm":
            self.executor.update_parameters(job_name=f"{self.job_name}:{name}")
        job = self.executor.submit(RunJob(str(out), run, self.threads, self.verbose))
        if self.gpus:
            self.slots[job] = slot
        print(f"  submitted {name} as {self.kind} job {job.job_id} (logs: {job.paths.folder})", flush=True)
        return job

    def wait(self, handles: list[Any], status: Any) -> list[Any]:
        while True:
            done = [job for job in handles if job.done()]
            if done:
                for job in done:
                    self.slots.pop(job, None)
                return done
            if time.monotonic() - self.last_note > HEARTBEAT_S:
                self.last_note = time.monotonic()
                print(f"  waiting: {status()}", flush=True)
            time.sleep(self.poll_s)

    def result(self, job: Any) -> tuple[int, float]:
        try:
            step, wall = job.result()
        except Exception as err:
            raise _job_error(job, err) from None
        return int(step), float(wall)

    def abort(self, handles: list[Any]) -> None:
        for job in handles:
            try:
                job.cancel(check=False)
            except Exception as err:  # cancel what can be cancelled; say what could not
                print(f"  could not cancel job {job.job_id}: {err}", file=sys.stderr)
        if handles:
            print(f"cancelled {len(handles)} job(s): {', '.join(str(j.job_id) for j in handles)}",
                  file=sys.stderr)

    def close(self) -> None:
        # submitit's local controller makes its folder argument, "%j" unexpanded: an empty one
        try:
            (self.out / "jobs" / "%j").rmdir()
        except OSError:
            pass


class _Progress:
    """Counts the compute of the runs left and done, and the wall time spent: the ETA."""

    def __init__(self, work: dict[int, float]) -> None:
        self.work = work
        self.done_work = self.done_wall = 0.0

    def eta(self) -> str:
        left = sum(self.work.values())
        return fmt_duration(self.done_wall / self.done_work * left) if self.done_work else "?"


def train_points(study: Any, points: list[Any], out: Path, verbose: bool, failed: list[str],
                 title: str, jobs: int | None = None, make_row: Any = None) -> None:
    """Train every unfinished run of ``points``, a cooldown after its main run, with the
    study's executor (see the module docstring); ``jobs``: runs at a time. A run that fails
    (any error but Ctrl-C) is printed as FAILED with its reason and the others go on;
    appends the runs that did not finish to ``failed``.

    ``study`` needs ``executor`` and ``trainer`` (and ``name`` for slurm); a point needs
    ``name``, ``runs`` (``plan.RunPlan``, main run first) and ``flops_per_token``: the probe
    runner (``scaling.run.probe``) trains its cells through here too, with its own ``make_row``
    (``(out, run_dir) -> row | None``; default ``results.make_row``)."""
    make_row = make_row or study_row
    kind = study.executor.get("kind", "inprocess")
    jobs = jobs if jobs is not None else study.executor.get("jobs")
    items = [(p, r) for p in points for r in p.runs]
    total = len(items)
    todo = []
    for p, r in items:
        row = finished_row(out, out / r.run_dir, make_row)
        if row is None:
            todo.append((p, r))
        elif not (out / r.run_dir / "result.json").exists():
            atomic_write(out / r.run_dir / "result.json", json.dumps(row, indent=2) + "\n")
    how = ""
    if todo and kind != "inprocess":
        how = f", as {kind} jobs"
    if todo and (jobs or 1) > 1:
        how += f", {jobs} at a time"
    what = f"{total} runs" if total == len(points) else f"{len(points)} trajectories, {total} runs"
    print(f"{title}: {what} ({total - len(todo)} finished already){how}", flush=True)
    prog = _Progress({id(r): (r.steps - r.start_step) / r.steps * r.tokens * p.flops_per_token
                      for p, r in todo})
    index = {id(r): i + 1 for i, (_, r) in enumerate(items)}
    done = [total - len(todo)]
    start = time.perf_counter()
    # a run that fails is reported and the others go on; anything but Ctrl-C (a usage error
    # of `postformer fit` is a SystemExit after its one-line message)
    errors = (Exception, SystemExit)
    expected = (NonFiniteLossError, FileNotFoundError, RunLocked, JobFailed)

    def why(err: BaseException) -> str:
        if isinstance(err, expected):  # RunLocked, a SystemExit, says it all
            return str(err)
        if isinstance(err, SystemExit):
            return f"postformer fit exited {err.code} (its message is above)"
        if verbose:
            traceback.print_exception(err)
        return f"{type(err).__name__}: {err}"

    def name(p: Any, r: Any) -> str:
        return p.name if r.kind != "cooldown" else f"{p.name}/{Path(r.run_dir).name}"

    def finish(p: Any, r: Any, step: int | None, wall: float, err: BaseException | None,
               t0: float) -> bool:
        head = f"  [{index[id(r)]}/{total}] {name(p, r)} (D={fmt_tokens(r.tokens)} tokens)"
        work = prog.work.pop(id(r), 0.0)
        if err is not None:
            print(f"{head}: FAILED: {why(err)}", flush=True)
            failed.append(name(p, r))
            return False
        if step != r.steps:
            print(f"{head}: stopped at step {step} of {r.steps}; run again to resume", flush=True)
            failed.append(name(p, r))
            return False
        row = make_row(out, out / r.run_dir, wall_s=wall)
        if row is None:
            raise RuntimeError(f"{r.run_dir}: training ended without a validation at its last step")
        atomic_write(out / r.run_dir / "result.json", json.dumps(row, indent=2) + "\n")
        prog.done_work += work
        prog.done_wall = time.perf_counter() - start
        done[0] += 1
        acc = f", accuracy {row['accuracy']:.3f}" if row.get("accuracy") is not None else ""
        print(f"{head}: loss {row['loss']:.4f}{acc}, {fmt_duration(time.perf_counter() - t0)}; "
              f"{done[0]}/{total} done, stage ETA {prog.eta()}", flush=True)
        return True

    def resuming(r: Any) -> None:
        if (out / r.run_dir / "checkpoints" / "last.ckpt").is_file():
            print(f"  resuming {r.run_dir} from its checkpoints/last.ckpt", flush=True)

    if kind == "inprocess" and ((jobs or 1) <= 1 or len(todo) <= 1):
        with training.quiet_lightning(verbose):
            for p, r in todo:
                resuming(r)
                t0 = time.perf_counter()
                try:
                    cli, wall = training.train_run(out, r)
                except errors as err:
                    finish(p, r, None, 0.0, err, t0)
                    continue
                finish(p, r, cli.trainer.global_step, wall, None, t0)
        return

    backend = _Workers(jobs, verbose) if kind == "inprocess" else _Jobs(study, out, kind, jobs, verbose)
    waiting = list(todo)
    running: dict[Any, tuple[Any, Any, float]] = {}
    bad_mains: set[str] = set()

    def status() -> str:
        return (f"{len(running)} job(s) running or queued ({', '.join(name(p, r) for p, r, _ in running.values())}), "
                f"{len(waiting)} waiting, {done[0]}/{total} done")

    def submit_ready() -> None:
        for item in list(waiting):
            if backend.limit is not None and len(running) >= backend.limit:
                return
            p, r = item
            main_dir = p.runs[0].run_dir
            if r.kind == "cooldown":
                if main_dir in bad_mains:
                    waiting.remove(item)
                    finish(p, r, None, 0.0, RuntimeError(f"its main run {main_dir} did not finish"),
                           time.perf_counter())
                    continue
                if finished_row(out, out / main_dir, make_row) is None:
                    continue  # its branch checkpoint is not there yet
            waiting.remove(item)
            resuming(r)
            running[backend.submit(out, name(p, r), r)] = (p, r, time.perf_counter())

    try:
        submit_ready()
        while running:
            for handle in backend.wait(list(running), status):
                p, r, t0 = running.pop(handle)
                try:
                    step, wall = backend.result(handle)
                    # queued runs wait for a worker: time the run by its own seconds
                    ok = finish(p, r, step, wall, None, time.perf_counter() - wall)
                except errors as err:
                    ok = finish(p, r, None, 0.0, err, t0)
                if not ok and r.kind != "cooldown":
                    bad_mains.add(r.run_dir)
            submit_ready()
        for p, r in waiting:  # cooldowns whose main run is neither finished nor in this stage
            finish(p, r, None, 0.0, RuntimeError(f"its main run {p.runs[0].run_dir} did not finish"),
                   time.perf_counter())
    except BaseException:
        backend.abort(list(running))
        raise
    backend.close()
