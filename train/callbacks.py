"""Callbacks: stop on a non-finite loss before it reaches a checkpoint; save last.ckpt at the end;
save checkpoints at chosen steps (the branching points of wsd cooldowns); stop at a step.

Why the guard raises instead of setting ``trainer.should_stop``: a NaN loss would still be
back-propagated and stepped, and the checkpoint callbacks that run after the step would
write NaN weights over ``last.ckpt``. Raising in ``on_before_backward`` leaves the weights
and every checkpoint on disk as they were after the last good step.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint


class NonFiniteLossError(RuntimeError):
    """Training met a NaN/Inf loss or gradient; the message names the global step."""


def _last_checkpoint(trainer: L.Trainer) -> str | None:
    cb = trainer.checkpoint_callback
    path = os.path.join(cb.dirpath, "last.ckpt") if cb is not None and cb.dirpath else None
    return path if path and os.path.exists(path) else None


class NonFiniteGuard(Callback):
    """Stops training when the loss (or, with ``check_grads``, a gradient) is NaN/Inf.

    Raises ``NonFiniteLossError`` before the optimizer step, so no bad weights are stepped
    into or saved. ``check_grads`` costs one norm over all gradients per step.
    """

    def __init__(self, check_grads: bool = True) -> None:
        self.check_grads = check_grads

    def _fail(self, trainer: L.Trainer, what: str) -> None:
        last = _last_checkpoint(trainer)
        kept = f"the last good checkpoint is kept: {last}" if last else "no checkpoint was written"
        raise NonFiniteLossError(
            f"{what} at global step {trainer.global_step}; training stopped, {kept}. "
            "Try a lower model.lr, a smaller trainer.gradient_clip_val, or precision 32."
        )

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss).all():
            self._fail(trainer, f"non-finite training loss ({loss.detach().float().item()})")

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        if not self.check_grads:
            return
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if grads and not torch.isfinite(torch.nn.utils.get_total_norm(grads)):
            self._fail(trainer, "non-finite gradient norm")


class InterruptWatch(Callback):
    """Notes a Ctrl-C (``KeyboardInterrupt``) that reaches Lightning's loops.

    Lightning turns one into ``sys.exit(1)``, with no message, and ignores SIGINT from then
    on; ``train.cli.lightning_main`` reads ``interrupted`` to raise ``KeyboardInterrupt``
    again instead, so a caller (``postformer fit``, a study) can say what happened.
    """

    def __init__(self) -> None:
        self.interrupted = False

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.interrupted |= isinstance(exception, KeyboardInterrupt)


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that also writes ``last.ckpt`` when training ends normally.

    Lightning's own end-of-training save happens only if no ``last.ckpt`` was written during
    the run, so with ``every_n_train_steps`` not dividing ``max_steps`` the last checkpoint
    would lag behind the final weights. Not called after an exception (e.g. the guard above).
    """

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.save_last and self.dirpath and saved_step(self.last_model_path) != trainer.global_step:
            trainer.save_checkpoint(os.path.join(self.dirpath, self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION))
        super().on_train_end(trainer, pl_module)


def saved_step(path: str) -> int | None:
    """The global step a checkpoint file was saved at (None: no file). Memory-mapped: the
    weights are not read, so it is also a cheap check that a checkpoint is whole."""
    if not path or not os.path.isfile(path):
        return None
    return int(torch.load(path, map_location="cpu", mmap=True, weights_only=False)["global_step"])


class StopAtStep(Callback):
    """Ends training cleanly at global step ``stop_at``, before ``max_steps``.

    The LR schedule keeps the shape ``max_steps`` gives it, so the run can be resumed from
    its last.ckpt later and continue as if never stopped (a budgeted job, or a test of that).
    """

    def __init__(self, stop_at: int) -> None:
        self.stop_at = stop_at

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step >= self.stop_at:
            trainer.should_stop = True


class EvalAtSteps(Callback):
    """Validates after each of the global steps in ``steps`` and logs ``val/loss`` and
    ``val/bpb`` (the whole validation loader of the DataModule, see ``LMModule.evaluate``).

    Lightning's own validation runs every ``val_check_interval`` batches; a scaling study
    needs evaluations at steps of its choosing instead (a few along each run for its loss
    curve, the stable-phase branch points of its cooldowns, and always the last step), so
    this callback runs them itself. The metrics of step ``s`` (after ``s`` optimizer steps)
    are logged at step ``s - 1``, the last optimizer step trained, which is the step
    Lightning's own validation at that point would log them at. A resumed run
    does not repeat the evaluations of the steps it already trained.

    ``curve_batches``: evaluate the steps before the last on the first this many batches of
    the validation loader only (a fixed random subset of the validation set: points of the
    loss curve, cheaper); the last step always sees the whole set. ``val/tokens`` records
    how many tokens each evaluation covered.
    """

    def __init__(self, steps: list[int], curve_batches: int | None = None) -> None:
        if any(int(s) < 1 for s in steps):
            raise ValueError(f"EvalAtSteps: steps must be >= 1, got {steps}")
        if curve_batches is not None and curve_batches < 1:
            raise ValueError(f"EvalAtSteps: curve_batches must be >= 1, got {curve_batches}")
        self.steps = sorted(set(int(s) for s in steps))
        self.curve_batches = curve_batches
        self._done = -1

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if step in self.steps and step != self._done:  # once per optimizer step
            self._done = step
            loader = trainer.datamodule.val_dataloader()
            if self.curve_batches is not None and step != self.steps[-1]:
                # a point of the loss curve, not the result: the first batches of the fixed,
                # shuffled validation set (a random subset of it); each rank evaluates its
                # slice of every global batch, so W ranks need 1/W of the batches
                per_rank = -(-self.curve_batches // trainer.world_size)
                loader = itertools.islice(loader, per_rank)
            metrics = pl_module.evaluate(loader)
            values = {"val/loss": metrics["loss"], "val/bpb": metrics["bpb"],
                      "val/accuracy": metrics["accuracy"], "val/tokens": metrics["tokens"]}
            # straight to the loggers (rank zero only): a value logged through
            # pl_module.log in this hook would be repeated on the following steps' rows
            for logger in trainer.loggers:
                logger.log_metrics(values, step=step - 1)
            trainer.callback_metrics.update({k: torch.tensor(v) for k, v in values.items()})


class SaveAtSteps(Callback):
    """Saves a full checkpoint (weights, optimizer, scheduler, data position) after each of
    the global steps in ``steps``, as ``dirpath/{prefix}{step}.ckpt``.

    A scaling study saves the wsd stable-phase checkpoints of its shorter budgets this way
    (``scaling.run.plan``), then resumes each one with a smaller ``max_steps`` to cool it down.
    Steps already on disk are not rewritten, so a resumed run does not redo them. Usable from
    a config: ``trainer.callbacks: [{class_path: postformer.train.callbacks.SaveAtSteps,
    init_args: {steps: [100, 200], dirpath: RUN/checkpoints}}]``.
    """

    def __init__(self, steps: list[int], dirpath: str, prefix: str = "step-") -> None:
        if any(s < 1 for s in steps):
            raise ValueError(f"SaveAtSteps: steps must be >= 1, got {steps}")
        self.steps = sorted(set(int(s) for s in steps))
        self.dirpath = dirpath
        self.prefix = prefix

    def path(self, step: int) -> str:
        return os.path.join(self.dirpath, f"{self.prefix}{step}.ckpt")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        # Lightning has stepped the optimizer and the LR scheduler before this hook, and the
        # DataModule has counted the batch, so the checkpoint resumes at the next step.
        step = trainer.global_step
        if step in self.steps and not os.path.exists(self.path(step)):
            trainer.save_checkpoint(self.path(step))
