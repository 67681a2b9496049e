"""The locks that keep two processes from training one study folder or one run folder at the
same time: ``FolderLock`` (a study or probe holds its folder's) and the ``RunLock`` callback,
which runs inside training (``scaling`` writes its class path first into every fit.yaml it
lays out).

Locks (``filelock``: an flock on the lock file, which the OS drops when its process dies)::

    DIR/.study.lock, DIR/.study.owner    held by the `postformer study` that trains DIR (not
                                         --plan, not --list); the owner file names its PID,
                                         host, start time and command
    RUN/.run.lock, RUN/.run.owner        held while the run trains, by the ``RunLock`` callback
                                         every study's RUN/fit.yaml lists first: whoever trains the run
                                         holds it (the study, a worker, a submitit job, a
                                         command printed by --list, `postformer fit` by hand)

Nobody waits for a lock. A second `postformer study` on a busy folder exits 2 with one line
naming the holder's PID and host; so does `postformer fit` on a run folder being trained (in a
study that run is reported as not finished and the others go on). A multi-process run locks
on its rank 0 and tells the other ranks.
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

from .fileio import atomic_write

STUDY, RUN = "study", "run"  # DIR/.study.lock, RUN/.run.lock


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

