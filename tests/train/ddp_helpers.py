"""A callback for the DDP tests' subprocesses (on their PYTHONPATH): a hard kill."""

import os

from lightning.pytorch.callbacks import Callback


class DieAtStep(Callback):
    """Ends the process with ``os._exit(137)`` (as a SIGKILL would: no cleanup, no final
    checkpoint) once global step ``step`` is trained, on every rank."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.step:
            os._exit(137)
