"""``LMModule``: a ``LanguageModel`` with its loss, optimizer, LR schedule and metrics.

Metrics (names as they appear in metrics.csv):

- ``train/loss``: next-token cross-entropy in nats, every step; under data parallelism the
  mean over ranks (each rank's mean over its equal share of the global batch), which is the
  mean over the global batch.
- ``train/lr``: the learning rate the step used.
- ``train/tokens_per_sec``: tokens of the global batch (all ranks) over the wall time since
  the previous step ended (data loading and logging included); also on the progress bar.
- ``val/accuracy``: the share of scored targets whose argmax prediction is right (every
  next token for language modelling; the answers only for a probe task).
- ``val/loss``, ``val/bpb``: over the whole validation set (or ``limit_val_batches``), sums
  reduced over ranks; bits per byte = total nats / (ln 2 * total bytes), where each target
  token counts the UTF-8 bytes it stands for (one per token with the byte tokenizer).
- Lightning's ``ThroughputMonitor`` (added by ``train.cli``) reads ``flops_per_batch``: the
  training FLOPs of one device's batch as ``arch/flops.py`` counts them (the count the
  scaling study's C uses), for FLOPs/s and, on GPUs with a known peak, MFU.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from functools import partial
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from postformer.arch import LanguageModel, ModelConfig
from postformer.arch.flops import flops_per_token

from .schedule import DEFAULT_SCHEDULE, SCHEDULES, lr_factor

IGNORE = -100  # a target not scored (F.cross_entropy's ignore_index): probes score answers only


def split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch -> (inputs ``[B, T]``, targets ``[B, T]``): token windows ``[B, T + 1]`` shift by
    one (language modelling); an ``(inputs, targets)`` pair (a probe task, targets ``IGNORE``
    where not scored) is taken as it is."""
    if isinstance(batch, (tuple, list)):
        return batch[0], batch[1]
    return batch[:, :-1], batch[:, 1:]


def bits_per_byte(total_nats: float | torch.Tensor, total_bytes: float | torch.Tensor) -> Any:
    """Summed cross-entropy (nats) over the bytes it covers -> bits per byte."""
    return total_nats / (math.log(2) * total_bytes)


def decay_split(model: nn.Module) -> tuple[list[str], list[str]]:
    """Parameter names that get weight decay, and those that do not.

    No decay for parameters marked ``_no_weight_decay`` (embeddings, ``A_log``, ``dt_bias``,
    ``D``) and for anything with fewer than two dimensions (norm scales, biases).
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or getattr(p, "_no_weight_decay", False):
            no_decay.append(name)
        else:
            decay.append(name)
    return decay, no_decay


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: ``[{decay params}, {no-decay params, weight_decay=0}]``."""
    params = dict(model.named_parameters())
    decay, no_decay = decay_split(model)
    return [
        {"name": "decay", "params": [params[n] for n in decay], "weight_decay": weight_decay},
        {"name": "no_decay", "params": [params[n] for n in no_decay], "weight_decay": 0.0},
    ]


class LMModule(L.LightningModule):
    """Trains a ``LanguageModel`` on batches of token windows ``[B, T + 1]``.

    Args:
        config: the model shape (a ``ModelConfig``; a dict of its fields also works, which
            is how checkpoints store it).
        lr: peak learning rate.
        weight_decay: AdamW decay on matrices (see ``decay_split``).
        betas, eps: AdamW.
        warmup_steps: linear warmup length in optimizer steps.
        schedule: ``cosine`` or ``wsd`` (warmup-stable-decay); see ``train.schedule``.
        min_lr_ratio: the final LR as a share of ``lr``.
        decay_fraction: the share of steps the wsd cooldown takes.
        compile: compile each block of the model with ``torch.compile`` when training starts
            (``--model.compile true``); the ops run as custom ops inside the compiled graph
            (``kernels/_library.py``). The backend is inductor, or the environment variable
            ``POSTFORMER_COMPILE_BACKEND`` (e.g. ``aot_eager``, for tests). An execution choice,
            not part of the model: not stored in hparams; checkpoints keep the eager
            ``state_dict`` keys (``nn.Module.compile`` compiles in place, no ``_orig_mod.``).

    The total number of steps is ``trainer.max_steps``, which must be set.
    """

    def __init__(
        self,
        config: ModelConfig = ModelConfig(),  # noqa: B008  (a frozen-in default; never mutated)
        lr: float = 3e-3,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        warmup_steps: int = 10,
        schedule: str = DEFAULT_SCHEDULE,
        min_lr_ratio: float = 0.1,
        decay_fraction: float = 0.2,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(config, dict):
            config = ModelConfig(**config)
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; known: {list(SCHEDULES)}")
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"model.lr: expected a positive learning rate, got {lr}")
        if warmup_steps < 0 or weight_decay < 0:
            raise ValueError(f"model.warmup_steps and model.weight_decay: expected >= 0, got "
                             f"{warmup_steps}, {weight_decay}")
        if not 0.0 <= min_lr_ratio <= 1.0 or not 0.0 < decay_fraction <= 1.0:
            raise ValueError(
                f"need 0 <= min_lr_ratio <= 1 and 0 < decay_fraction <= 1, got {min_lr_ratio}, "
                f"{decay_fraction}"
            )
        # The config is stored as a plain dict so hparams.yaml and checkpoints stay plain data;
        # load_from_checkpoint passes it back as a dict, which __init__ accepts.
        self.save_hyperparameters({
            "config": dataclasses.asdict(config), "lr": lr, "weight_decay": weight_decay,
            "betas": list(betas), "eps": eps, "warmup_steps": warmup_steps,
            "schedule": schedule, "min_lr_ratio": min_lr_ratio, "decay_fraction": decay_fraction,
        })
        self.config = config
        self.model = LanguageModel(config)
        # Bytes per target token, for bits per byte; replaced by the DataModule's table.
        self.register_buffer("token_bytes", torch.ones(config.vocab_size), persistent=False)
        self.flops_per_batch: float | None = None  # read by Lightning's ThroughputMonitor
        self._flops_shape: tuple[int, int] | None = None
        self._last_step_end: float | None = None
        self._eval_sums: dict[str, torch.Tensor] = {}
        self.compile_blocks = compile
        self._compiled = False

    # ---- wiring ----------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        trainer = self._attached_trainer()
        dm = getattr(trainer, "datamodule", None) if trainer is not None else None
        if dm is None:
            return
        vocab = getattr(dm, "vocab_size", None)
        if vocab is not None and vocab > self.config.vocab_size:
            raise ValueError(
                f"the data's tokenizer has {vocab} tokens but model.config.vocab_size is "
                f"{self.config.vocab_size}; set model.config.vocab_size >= {vocab}"
            )
        seq_len = getattr(dm, "seq_len", None)
        if isinstance(seq_len, int) and seq_len > 0:
            # one sequence for the model summary's FLOP count (Lightning's ModelSummary runs it)
            self.example_input_array = torch.zeros(1, seq_len, dtype=torch.long)
        if hasattr(dm, "token_bytes"):
            table = torch.as_tensor(dm.token_bytes(), dtype=torch.float32)
            padded = torch.ones(self.config.vocab_size)
            padded[: len(table)] = table
            self.token_bytes = padded.to(self.token_bytes.device)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens ``[B, T]`` -> logits ``[B, T, vocab]``."""
        return self.model(tokens)

    def _loss_terms(self, batch: Any) -> dict[str, torch.Tensor]:
        """A batch (see ``split_batch``) -> per position ``[B*T]``: ``nats`` (0 where not
        scored), ``scored`` (target not ``IGNORE``; all of them for language modelling),
        ``correct`` (a scored target whose argmax prediction is right) and ``targets`` (the ids,
        ``IGNORE`` as 0, for byte counts). No host sync: usable per step on a GPU."""
        inputs, targets = split_batch(batch)  # [B, T], [B, T]
        logits = self.model(inputs).float().flatten(0, 1)  # [B*T, V]
        targets = targets.flatten()
        scored = targets != IGNORE
        nats = F.cross_entropy(logits, targets, reduction="none", ignore_index=IGNORE)
        correct = (logits.argmax(-1) == targets) & scored
        return {"nats": nats, "scored": scored, "correct": correct,
                "targets": targets.clamp(min=0)}

    # ---- training --------------------------------------------------------------------

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        t = self._loss_terms(batch)
        loss = t["nats"].sum() / t["scored"].sum().clamp(min=1)  # the mean over scored targets
        self._count_flops(*split_batch(batch)[0].shape)
        # sync_dist: the mean over ranks (equal shares), i.e. the global batch's mean loss
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, sync_dist=True)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True,
                 on_epoch=False)
        return loss

    def _count_flops(self, batch: int, seq_len: int) -> None:
        """``flops_per_batch`` for a ``[batch, seq_len]`` input (recomputed when it changes)."""
        if self._flops_shape != (batch, seq_len):
            self._flops_shape = (batch, seq_len)
            self.flops_per_batch = flops_per_token(self.config, seq_len) * batch * seq_len

    def _attached_trainer(self) -> L.Trainer | None:
        try:
            return self.trainer
        except RuntimeError:  # Lightning: not attached to a Trainer
            return None

    def _world_size(self) -> int:
        trainer = self._attached_trainer()
        return trainer.world_size if trainer is not None else 1

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._last_step_end is None:
            self._last_step_end = time.perf_counter()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        elapsed = now - (self._last_step_end or now)
        self._last_step_end = now
        if elapsed > 0:
            tokens = split_batch(batch)[0].numel() * self._world_size()
            self.log("train/tokens_per_sec", tokens / elapsed, on_step=True, on_epoch=False,
                     prog_bar=True)

    def on_validation_model_train(self) -> None:
        super().on_validation_model_train()
        self._last_step_end = None  # do not count validation time as a training step

    def compile_model(self) -> None:
        """Compile each block in place (``nn.Module.compile``), once; called at the start of
        training when ``compile`` is set (after the model summary and sanity validation, which
        run eagerly). The backend is ``POSTFORMER_COMPILE_BACKEND`` or inductor."""
        if self._compiled:
            return
        backend = os.environ.get("POSTFORMER_COMPILE_BACKEND", "").strip() or "inductor"
        for block in self.model.blocks:
            block.compile(backend=backend)
        self._compiled = True

    def on_train_start(self) -> None:
        if self.compile_blocks:
            self.compile_model()
        # A resumed run restores the optimizer's LR of the step it was saved at, computed with
        # the max_steps of the run that saved it. When the resumed run has another max_steps
        # (a wsd cooldown branched off a longer run), the next step must use *this* run's
        # schedule: recompute every group's LR from the new lambda at the restored step.
        # A no-op for a fresh run and for a resume with the same max_steps.
        for config in self.trainer.lr_scheduler_configs:
            sched = config.scheduler
            if not isinstance(sched, torch.optim.lr_scheduler.LambdaLR):
                continue
            lrs = [base * fn(sched.last_epoch) for base, fn in zip(sched.base_lrs, sched.lr_lambdas)]
            for group, lr in zip(sched.optimizer.param_groups, lrs):
                group["lr"] = lr  # LambdaLR.step() recomputes from last_epoch: nothing else to set

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        max_steps = self.trainer.max_steps
        if max_steps is None or max_steps <= 0:
            raise ValueError(
                "LMModule shapes its LR schedule from trainer.max_steps, which is not set; "
                "pass --trainer.max_steps N"
            )
        opt = torch.optim.AdamW(
            param_groups(self.model, hp.weight_decay), lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps
        )
        fn = partial(
            lr_factor, total_steps=max_steps, warmup_steps=hp.warmup_steps, schedule=hp.schedule,
            min_lr_ratio=hp.min_lr_ratio, decay_fraction=hp.decay_fraction,
        )
        sched = torch.optim.lr_scheduler.LambdaLR(opt, fn)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ---- evaluation: sums over the whole set, then one number --------------------------

    def _eval_start(self) -> None:
        z = lambda: torch.zeros((), dtype=torch.float64, device=self.device)
        self._eval_sums = {"nats": z(), "tokens": z(), "bytes": z(), "correct": z()}

    def _eval_step(self, batch: Any) -> None:
        t = self._loss_terms(batch)
        s = self._eval_sums
        s["nats"] += t["nats"].sum().double()
        s["tokens"] += t["scored"].sum().double()
        s["bytes"] += (self.token_bytes[t["targets"]] * t["scored"]).sum().double()
        s["correct"] += t["correct"].sum().double()

    def _eval_end(self, prefix: str) -> None:
        sums = {k: self.trainer.strategy.reduce(v, reduce_op="sum") for k, v in self._eval_sums.items()}
        if sums["tokens"] == 0:
            return
        # the sums are reduced already, so every rank holds the same value; sync_dist's mean
        # of identical values is that value (and tells Lightning the metric is global)
        self.log(f"{prefix}/loss", (sums["nats"] / sums["tokens"]).float(), sync_dist=True)
        self.log(f"{prefix}/bpb", bits_per_byte(sums["nats"], sums["bytes"]).float(), sync_dist=True,
                 prog_bar=prefix == "val")
        self.log(f"{prefix}/accuracy", (sums["correct"] / sums["tokens"]).float(), sync_dist=True)

    @torch.no_grad()
    def evaluate(self, dataloader: Any) -> dict[str, float]:
        """Mean loss (nats/token), bits per byte and argmax accuracy over the scored targets of
        every batch of ``dataloader`` (see ``split_batch``), outside Lightning's loops: used by
        ``callbacks.EvalAtSteps`` to validate at chosen steps. Restores the training mode.

        Returns ``{"loss", "bpb", "accuracy", "tokens"}``. Under data parallelism every rank must call it
        at the same point (a collective): each evaluates its shard of the loader (the
        DataModule's evaluation loaders shard by rank) and the sums are reduced over ranks."""
        was_training = self.training
        self.eval()
        try:
            self._eval_start()
            for batch in dataloader:
                self._eval_step(self.transfer_batch_to_device(batch, self.device, 0))
            s = self._eval_sums
            if self._world_size() > 1:
                s = {k: self.trainer.strategy.reduce(v, reduce_op="sum") for k, v in s.items()}
            tokens = float(s["tokens"])
            if tokens == 0:
                raise ValueError("evaluate: the dataloader yielded no tokens")
            return {"loss": float(s["nats"] / s["tokens"]),
                    "bpb": float(bits_per_byte(s["nats"], s["bytes"])),
                    "accuracy": float(s["correct"] / s["tokens"]), "tokens": tokens}
        finally:
            self.train(was_training)

    def on_validation_epoch_start(self) -> None:
        self._eval_start()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def on_test_epoch_start(self) -> None:
        self._eval_start()

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")
