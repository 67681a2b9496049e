"""``postformer fit|validate|test|predict``: LightningCLI over ``LMModule`` and ``TextDataModule``.

Run folder layout (``--trainer.default_root_dir DIR``, default ``runs/default``)::

    DIR/config.yaml              the resolved config (every default filled in)
    DIR/metrics.csv              RunLogger (a flat CSVLogger): one row per logged step,
                                 extended, not replaced, when the run is resumed
    DIR/hparams.yaml             the module's hyperparameters
    DIR/checkpoints/last.ckpt    every ``checkpoint.every_n_train_steps`` and at the end

Additions to plain LightningCLI:

- ``checkpoint.*``: the ``RunCheckpoint`` options (save_last on, no top-k files).
- ``nan_guard.*``: the ``NonFiniteGuard`` options.
- ``seed_everything`` defaults to 0, so two runs of one config are the same run.
- With ``trainer.check_val_every_n_epoch: null`` (step-based validation), a
  ``val_check_interval`` larger than ``max_steps`` is lowered to ``max_steps``, so a short
  run still ends with a validation (and a val/bpb).
- Errors raised while building the model, data or trainer from the config (an unknown
  mixer, a missing data path) are reported like parse errors: a message and exit code 2.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from .callbacks import NonFiniteGuard, RunCheckpoint
from .data import TextDataModule
from .module import LMModule

DEFAULT_ROOT = "runs/default"


class PostformerCLI(LightningCLI):
    def __init__(self, args: list[str] | None = None, run: bool = True, **kwargs) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("parser_kwargs", {"default_env": False})
        super().__init__(LMModule, TextDataModule, args=args, run=run, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.save_last": True,
            "checkpoint.save_top_k": 0,
            "checkpoint.every_n_train_steps": 500,
        })
        parser.add_lightning_class_args(NonFiniteGuard, "nan_guard")

    def _cfg(self) -> Namespace:
        return self.config[self.subcommand] if self.subcommand else self.config

    def before_instantiate_classes(self) -> None:
        trainer = self._cfg().trainer
        if trainer.default_root_dir is None:
            trainer.default_root_dir = DEFAULT_ROOT
        root = str(trainer.default_root_dir)
        if trainer.logger is None or trainer.logger is True:
            # Flat layout: metrics.csv straight into the run folder, kept across resumes.
            trainer.logger = Namespace(
                class_path="postformer.train.logger.RunLogger",
                init_args=Namespace(save_dir=root),
            )
        steps = trainer.max_steps
        interval = trainer.val_check_interval
        if (trainer.check_val_every_n_epoch is None and isinstance(interval, int)
                and steps is not None and steps > 0):
            batches = steps * (trainer.accumulate_grad_batches or 1)
            if interval > batches:
                trainer.val_check_interval = batches
        Path(root).mkdir(parents=True, exist_ok=True)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, TypeError, FileNotFoundError) as err:
            self.parser.error(f"{type(err).__name__}: {err}")


def lightning_main(args: list[str]) -> PostformerCLI:
    """Run ``postformer fit|validate|test|predict ...`` in process; returns the CLI object."""
    # Resuming mid-epoch is exact here (the DataModule restores its position), so Lightning's
    # generic warning about it does not apply; the CSV logger appends on resume by design.
    warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended.*")
    warnings.filterwarnings("ignore", message=".*Experiment logs directory .* exists and is not empty.*")
    # `postformer` always passes its own argv; running inside pytest or a script is fine.
    warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter is intended.*")
    # Lightning 2.6's own use of torch's pytree API, once per run: not actionable here.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")
    return PostformerCLI(args=args)
