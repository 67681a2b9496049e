"""How a study's runs are executed (``postformer study --executor``), and the locks that keep
two processes from training one study folder or one run folder at the same time.

Locks (``filelock``: an flock on the lock file, which the OS drops when its process dies)::

    DIR/.study.lock, DIR/.study.owner    held by the `postformer study` that trains DIR (not
                                         --plan, not --list); the owner file names its PID,
                                         host, start time and command
    RUN/.run.lock, RUN/.run.owner        held while the run trains, by the ``RunLock`` callback
                                         every RUN/fit.yaml lists first: whoever trains the run
                                         holds it (the study, a worker, a submitit job, a
                                         command printed by --list, `postformer fit` by hand)

Nobody waits for a lock. A second `postformer study` on a busy folder exits 2 with one line
naming the holder's PID and host; so does `postformer fit` on a run folder being trained (in a
study that run is reported as not finished and the others go on). A multi-process run locks
on its rank 0 and tells the other ranks.

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
run exactly as the in-process runner does (``runner._train``: ``postformer fit`` on
RUN/fit.yaml, from RUN/checkpoints/last.ckpt when there is one) and returns the step it
reached; the study writes RUN/result.json and prints ``[i/n] run: loss ..., k/n done`` or
``FAILED: ... (log: PATH)``; at the end results.csv and the report, as in process.
Submitit's files and each job's stdout/stderr go to ``DIR/jobs/<job id>/``. A job that hits
its time limit is requeued (up to ``max_timeouts`` times) and Slurm requeues a preempted one
(``--requeue``); either way the run resumes from its last.ckpt, so the steps since its last
checkpoint (``checkpoint.every_n_train_steps``) train again. Ctrl-C on the study cancels its
jobs; a study that was killed leaves them running, holding their run locks.

Settings: the spec's ``executor`` section (validated by ``scaling.study``); ``--executor-opt
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

import json
import os
import socket
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import filelock
from lightning.pytorch.callbacks import Callback

from postformer.train.fileio import atomic_write

STUDY, RUN = "study", "run"  # DIR/.study.lock, RUN/.run.lock
LOCAL_TIMEOUT_MIN = 365 * 24 * 60  # a local job without time_min: no limit to speak of
HEARTBEAT_S = 300.0


# ---- locks ----------------------------------------------------------------------------------


def is_rank_zero() -> bool:
    """Whether this process is the first of its run: the lone process of a one-device run, or
    rank 0 of one launched by Slurm, torchrun or Lightning."""
    return all(os.environ.get(k, "0") in ("0", "") for k in ("RANK", "SLURM_PROCID", "LOCAL_RANK",
                                                             "NODE_RANK"))


def _owner_info() -> dict[str, Any]:
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)}
    if os.environ.get("SLURM_JOB_ID"):
        info["slurm_job"] = os.environ["SLURM_JOB_ID"]
    return info


def read_owner(path: Path, wait_s: float = 1.0) -> dict[str, Any] | None:
    """The owner file of a held lock (its holder writes it just after acquiring)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return json.loads(Path(path).read_text())
        except (OSError, ValueError):
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)


class FolderLocked(RuntimeError):
    """A study or run folder whose lock another process holds; ``owner``: its owner file."""

    def __init__(self, folder: str | Path, kind: str, owner: dict[str, Any] | None) -> None:
        self.folder, self.kind, self.owner = str(folder), kind, owner
        lock = Path(folder) / f".{kind}.lock"
        if owner:
            who = f"PID {owner.get('pid')} on {owner.get('host')}"
            if owner.get("slurm_job"):
                who += f" (Slurm job {owner['slurm_job']})"
            who += f", since {owner.get('started')}"
        else:
            who = f"a process that left no {lock.with_suffix('.owner').name}"
        if kind == STUDY:
            msg = f"{folder} is in use by another study: {who}; wait for it or stop it (lock: {lock})"
        else:
            msg = f"{folder} is being trained by another process: {who}; not training it twice (lock: {lock})"
        super().__init__(msg)

    def __reduce__(self):
        return type(self), (self.folder, self.kind, self.owner)


class FolderLock:
    """The lock of a study folder (``kind="study"``) or a run folder (``"run"``): acquired
    without waiting (``FolderLocked`` when held), with an owner file beside it."""

    def __init__(self, folder: str | Path, kind: str) -> None:
        self.folder, self.kind = Path(folder), kind
        self._lock: filelock.FileLock | None = None

    @property
    def owner_path(self) -> Path:
        return self.folder / f".{self.kind}.owner"

    def acquire(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(str(self.folder / f".{self.kind}.lock"), timeout=0)
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            raise FolderLocked(self.folder, self.kind, read_owner(self.owner_path)) from None
        try:
            atomic_write(self.owner_path, json.dumps(_owner_info(), indent=2) + "\n")
        except BaseException:
            lock.release()
            raise
        self._lock = lock

    def release(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            try:
                self.owner_path.unlink(missing_ok=True)  # while still held: nobody else's
            finally:
                lock.release()

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


class RunLocked(SystemExit):
    """Raised in a run whose folder another process trains: ``postformer fit`` exits 2; the
    study catches it and reports the run as not finished."""

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):
        return type(self), (self.message,)


class RunLock(Callback):
    """Holds ``RUN/.run.lock`` (RUN: ``trainer.default_root_dir``) while the run trains; a run
    folder another process trains raises ``RunLocked`` before anything is restored or written.
    Rank 0 takes the lock and tells the others."""

    def __init__(self) -> None:
        self._lock: FolderLock | None = None

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        message = None
        if trainer.is_global_zero:
            lock = FolderLock(trainer.default_root_dir, RUN)
            try:
                lock.acquire()
                self._lock = lock
            except FolderLocked as err:
                message = str(err)
        if trainer.world_size > 1:
            message = trainer.strategy.broadcast(message, src=0)
        if message is not None:
            if trainer.is_global_zero:
                print(message, file=sys.stderr, flush=True)
            raise RunLocked(message)

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._release()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._release()

    def _release(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()


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
        import torch

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
    import submitit

    cls = submitit.SlurmExecutor if kind == "slurm" else submitit.LocalExecutor
    executor = cls(folder=Path(out) / "jobs" / "%j",
                   max_num_timeout=int(study.executor.get("max_timeouts", 3)))
    executor.update_parameters(**submitit_parameters(study, kind))
    return executor


class RunJob:
    """A submitit job: one run of a study folder, trained as the in-process runner trains it
    (``runner._train``); returns (the global step reached, seconds). On a timeout submitit
    calls ``checkpoint``: the same run again, which resumes from its last.ckpt."""

    def __init__(self, out: str, run: Any, threads: int | None = None, verbose: bool = False) -> None:
        self.out, self.run, self.threads, self.verbose = str(out), run, threads, verbose

    def __call__(self) -> tuple[int, float]:
        import torch

        import postformer.train.cli  # noqa: F401  (Lightning sets its loggers' levels on import)

        from . import runner

        if self.threads:
            torch.set_num_threads(self.threads)
        if is_rank_zero() and (Path(self.out) / self.run.run_dir / "checkpoints" / "last.ckpt").is_file():
            print(f"resuming {self.run.run_dir} from its checkpoints/last.ckpt", flush=True)
        try:
            with runner._quiet_lightning(self.verbose):
                cli, wall = runner._train(Path(self.out), self.run)
        except RunLocked as err:  # an exception submitit reports, not an exit
            raise RuntimeError(str(err)) from None
        return int(cli.trainer.global_step), wall

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        from submitit.helpers import DelayedSubmission

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
    import torch

    import postformer.train.cli  # noqa: F401  (Lightning sets its loggers' levels on import;
    # import it before _quiet_lightning lowers them)

    torch.set_num_threads(threads)
    if sys.platform.startswith("linux"):
        # a worker dies with its study process (killed, not only interrupted): no orphan
        # keeps training into a run folder; its run resumes from last.ckpt next time
        import ctypes
        import signal

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _train_in_worker(out: str, run: Any, verbose: bool) -> tuple[int, float]:
    """One run in a worker process (``--jobs``): (the global step reached, seconds)."""
    from . import runner

    with runner._quiet_lightning(verbose):
        cli, wall = runner._train(Path(out), run)
    return int(cli.trainer.global_step), wall


class _Workers:
    """``--jobs N`` worker processes (spawned), each with its share of the torch threads."""

    limit = None  # the pool queues what it cannot start yet

    def __init__(self, jobs: int, verbose: bool) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        import torch

        self.verbose = verbose
        threads = max(1, torch.get_num_threads() // jobs)
        self.pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_worker_init, initargs=(threads,))

    def submit(self, out: Path, name: str, run: Any) -> Any:
        return self.pool.submit(_train_in_worker, str(out), run, self.verbose)

    def wait(self, handles: list[Any], status: Any) -> list[Any]:
        from concurrent.futures import FIRST_COMPLETED, wait

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
                import torch

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
        from .runner import _fmt_time

        left = sum(self.work.values())
        return _fmt_time(self.done_wall / self.done_work * left) if self.done_work else "?"


def train_points(study: Any, points: list[Any], out: Path, verbose: bool, failed: list[str],
                 title: str, jobs: int | None = None) -> None:
    """Train every unfinished run of ``points``, a cooldown after its main run, with the
    study's executor (see the module docstring); ``jobs``: runs at a time. Appends the runs
    that did not finish to ``failed``."""
    from postformer.train.callbacks import NonFiniteLossError

    from . import runner
    from .results import finished_row, make_row

    kind = study.executor.get("kind", "inprocess")
    jobs = jobs if jobs is not None else study.executor.get("jobs")
    tps = study.tokens_per_step
    items = [(p, r) for p in points for r in p.runs]
    total = len(items)
    todo = []
    for p, r in items:
        row = finished_row(out, out / r.run_dir)
        if row is None:
            todo.append((p, r))
        elif not (out / r.run_dir / "result.json").exists():
            atomic_write(out / r.run_dir / "result.json", json.dumps(row, indent=2) + "\n")
    how = ""
    if todo and kind != "inprocess":
        how = f", as {kind} jobs"
    if todo and (jobs or 1) > 1:
        how += f", {jobs} at a time"
    print(f"{title}: {len(points)} trajectories, {total} runs ({total - len(todo)} finished "
          f"already){how}", flush=True)
    prog = _Progress({id(r): (r.steps - r.start_step) * tps * p.flops_per_token for p, r in todo})
    index = {id(r): i + 1 for i, (_, r) in enumerate(items)}
    done = [total - len(todo)]
    start = time.perf_counter()
    fmt_tokens, fmt_time = runner._fmt_tokens, runner._fmt_time
    errors = (NonFiniteLossError, FileNotFoundError, RunLocked, JobFailed)

    def name(p: Any, r: Any) -> str:
        return p.name if r.kind != "cooldown" else f"{p.name}/{Path(r.run_dir).name}"

    def finish(p: Any, r: Any, step: int | None, wall: float, err: BaseException | None,
               t0: float) -> bool:
        head = f"  [{index[id(r)]}/{total}] {name(p, r)} (D={fmt_tokens(r.tokens)} tokens)"
        work = prog.work.pop(id(r), 0.0)
        if err is not None:
            print(f"{head}: FAILED: {err}", flush=True)
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
        print(f"{head}: loss {row['loss']:.4f}, {fmt_time(time.perf_counter() - t0)}; "
              f"{done[0]}/{total} done, stage ETA {prog.eta()}", flush=True)
        return True

    def resuming(r: Any) -> None:
        if (out / r.run_dir / "checkpoints" / "last.ckpt").is_file():
            print(f"  resuming {r.run_dir} from its checkpoints/last.ckpt", flush=True)

    if kind == "inprocess" and ((jobs or 1) <= 1 or len(todo) <= 1):
        with runner._quiet_lightning(verbose):
            for p, r in todo:
                resuming(r)
                t0 = time.perf_counter()
                try:
                    cli, wall = runner._train(out, r)
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
                if finished_row(out, out / main_dir) is None:
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
