"""``postformer fit|validate|test``: LightningCLI over ``LMModule`` and ``TextDataModule``.

Run folder layout (``--trainer.default_root_dir DIR``, default ``runs/default``)::

    DIR/config.yaml              the resolved config (every default filled in)
    DIR/metrics.csv              RunLogger: one row per logged step, flushed as logged,
                                 extended, not replaced, when the run is resumed
    DIR/hparams.yaml             the module's hyperparameters
    DIR/checkpoints/last.ckpt    every ``checkpoint.every_n_train_steps`` and at the end
    DIR/tensorboard/, DIR/wandb/ with ``--track tensorboard`` / ``--track wandb``

The run folder is the contract: loggers a user adds (``--trainer.logger``, ``--track``) go
beside ``RunLogger``, which always comes first, and checkpoints always go to
``DIR/checkpoints``, so adding a logger never moves the files a study reads.

Additions to plain LightningCLI:

- ``--model.preset ARCH/SIZE``: a named shape from ``arch.config.PRESETS``, from any folder
  (``PresetAction``: every ``model.config`` field but ``vocab_size``, where it stands on the
  command line; ``model: {preset: ...}`` in a config file, under that file's own
  ``model.config`` keys). ``postformer list presets`` lists them.
- ``--help-short``: the project's own options (model, model.config, data, checkpoint, a few
  run options), one line each; ``--help`` stays Lightning's full help.
- ``checkpoint.*``: the ``RunCheckpoint`` options (save_last on, no top-k files).
- ``nan_guard.*``: the ``NonFiniteGuard`` options.
- ``track``: extra trackers beside the CSV, ``tensorboard`` and/or ``wandb`` (the
  ``.[track]`` extra; W&B runs offline unless ``WANDB_MODE`` says otherwise).
- ``data`` is any LightningDataModule (``class_path`` + ``init_args``), ``TextDataModule``
  when no class is named, so ``data: {seq_len: 128}`` sets the text data's options; a probe
  task is ``data: {class_path: postformer.train.probes.data.ProbeDataModule, ...}``.
- ``model.config.vocab_size`` follows the data (``data.tokenizer``'s vocabulary, a probe
  task's; so do the parameter count and FLOPs); a config that gives another vocab size is
  overridden, with a note.
- Lightning's ``ThroughputMonitor`` (``flops_per_batch`` from ``arch/flops.py``): tokens/s,
  FLOPs/s and, on GPUs with a known peak, MFU in metrics.csv; the model summary counts the
  FLOPs of one sequence.
- ``seed_everything`` defaults to 0, so two runs of one config are the same run.
- With ``trainer.check_val_every_n_epoch: null`` (step-based validation), a
  ``val_check_interval`` larger than ``max_steps`` is lowered to ``max_steps``, so a short
  run still ends with a validation (and a val/bpb).
- Errors raised while building the model, data or trainer from the config (an unknown
  mixer, a missing data path) are reported like parse errors: a message and exit code 2.
- ``--optimizer`` / ``--lr_scheduler`` (LightningCLI's) are refused: they would replace
  AdamW, the decay split and the schedule without a word; ``model.*`` sets those.
- A fresh ``fit`` (no ``--ckpt_path``) into a run folder that holds a run (metrics.csv or
  checkpoints) is refused with exit 2, saying how to resume it, unless ``--overwrite``
  (then the old checkpoints go once the classes are built and metrics.csv is replaced at
  the first row): otherwise the old history would be lost and a ``last-v1.ckpt`` written
  beside the old ``last.ckpt``, which a resume would pick.
- Ctrl-C: ``lightning_main`` raises ``KeyboardInterrupt`` (Lightning alone exits 1 without a
  word and ignores SIGINT from then on); ``postformer fit`` says so and exits 130, a study or
  probe says the same command resumes.
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
import types
import typing
import warnings
from importlib import import_module
from pathlib import Path
from typing import Any, NoReturn

import lightning as L
from jsonargparse import ActionYesNo, Namespace
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, ThroughputMonitor
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from .callbacks import InterruptWatch, NonFiniteGuard, RunCheckpoint, saved_step
from .data import TextDataModule
from .discover import preset_config
from .logger import METRICS
from .module import LMModule, split_batch

DEFAULT_ROOT = "runs/default"
RUN_LOGGER = "postformer.train.logger.RunLogger"
TRACKERS = {
    "tensorboard": ("lightning.pytorch.loggers.TensorBoardLogger",
                    lambda root: {"save_dir": root, "name": "tensorboard", "version": ""}),
    "wandb": ("lightning.pytorch.loggers.WandbLogger",
              lambda root: {"save_dir": root, "offline": True}),
}


def throughput_monitor() -> ThroughputMonitor:
    """Lightning's ThroughputMonitor for ``[B, T + 1]`` token batches: samples are
    sequences, items are target tokens; a 10-step window."""
    return ThroughputMonitor(batch_size_fn=lambda b: split_batch(b)[0].shape[0],
                             length_fn=lambda b: split_batch(b)[0].numel(), window_size=10)


def one_line(message: str) -> str:
    """A jsonargparse error message in one line: the innermost error of a nested one (a bad
    value inside a class's arguments), prefixed with its full key."""
    keys, text = [], []
    for line in message.splitlines():
        line = line.strip().removeprefix("- ")
        key = re.fullmatch(r'Parser key "([^"]+)":', line)
        if key:
            keys.append(key.group(1))
        elif line and not line.startswith(_NOISE) and "Does not validate against any" not in line:
            text.append(line)
    first = text[0] if text else message.strip()
    typed = re.fullmatch(r"Expected a <class '(\w+)'>\. Got value: (.*)", first)
    if typed:
        first = f"expected {typed.group(1)}, got {typed.group(2)!r}"
    return f"{'.'.join(keys)}: {first}" if keys else first


# the lines of a jsonargparse message that say nothing about what was wrong
_NOISE = ("Subtypes:", "Errors:", "Given value", "Expected a <class 'NoneType'>",
          "Problem with given class_path")


class PostformerParser(LightningArgumentParser):
    """Errors in one line, ``postformer fit: error: KEY: what was wrong``, without the usage
    (``--help`` shows it)."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:  # a nested parser: its caller reports
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        print(f"{parser.prog.replace(' [options]', '')}: error: {one_line(message)}",
              file=sys.stderr)
        self.exit(2)

    def _apply_actions(self, cfg: Any, parent_key: str = "", *args: Any, **kwargs: Any) -> Any:
        # a config file's model section, as it is loaded: its preset expanded (PresetAction)
        section = cfg if parent_key == "model" else cfg.get("model") if parent_key == "" else None
        if isinstance(section, (dict, Namespace)) and "preset" in section:
            expand_preset(section)
        return super()._apply_actions(cfg, parent_key, *args, **kwargs)


def expand_preset(section: dict | Namespace) -> None:
    """A config file's ``model: {preset: ARCH/SIZE, config: {...}}``: the preset's fields with
    the section's own ``config`` keys over them, whatever their order (``mixers`` merged per
    mixer, as ``ModelConfig.from_preset`` does); ``preset`` itself removed."""
    name = section["preset"]
    try:
        fields = preset_config(name)
    except ValueError as err:
        raise TypeError(f'Parser key "model.preset":\n{err}') from None
    given = section.get("config")
    if isinstance(given, str):
        raise TypeError(f'Parser key "model.preset":\n{name} and model.config {given!r} (a file) '
                        "both give the whole model config; keep one, or give config fields")
    given = given.as_dict() if isinstance(given, Namespace) else dict(given or {})
    mixers = {m: dict(o) for m, o in fields["mixers"].items()}
    for m, opts in (given.pop("mixers", None) or {}).items():
        mixers[m] = {**mixers.get(m, {}), **opts}
    fields.update(given, mixers=mixers)
    if isinstance(section, Namespace):
        del section["preset"]
        section["config"] = Namespace(fields)
    else:
        section.pop("preset")
        section["config"] = fields


def _class_path(logger: Any) -> str:
    return str(getattr(logger, "class_path", "") or "")


def _loggers(value: Any, root: str, track: list[str]) -> Any:
    """The trainer's logger setting with RunLogger first and the --track loggers added."""
    if value is False and not track:
        return False
    extra = [] if value in (None, True, False) else list(value) if isinstance(value, list) else [value]
    run = Namespace(class_path=RUN_LOGGER, init_args=Namespace(save_dir=root))
    ours = [x for x in extra if _class_path(x) == RUN_LOGGER] or [run]
    others = [x for x in extra if _class_path(x) != RUN_LOGGER]
    for name in track:
        cls, args = TRACKERS[name]
        if not any(_class_path(x) == cls for x in others):
            others.append(Namespace(class_path=cls, init_args=Namespace(**args(root))))
    return ours[:1] + others


class PresetAction(argparse.Action):
    """``--model.preset ARCH/SIZE``: every field of ``model.config`` but ``vocab_size`` set to
    the preset's (``ModelConfig.from_preset``), where it stands on the command line: arguments
    after it override it, a ``--config`` after it replaces it. Nothing named ``preset``
    reaches LMModule or config.yaml, which holds the fields themselves."""

    HELP = ("a named model shape (`postformer list presets`), e.g. gdn/small: sets every "
            "model.config field but vocab_size; later --model.config.* arguments override it")

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        try:
            fields = preset_config(values)
        except ValueError as err:
            raise argparse.ArgumentError(self, str(err)) from None
        for key, value in fields.items():
            namespace[f"model.config.{key}"] = value


#: the sections of ``--help-short``: (title, key prefix); ``data`` is read off TextDataModule
SHORT_HELP_GROUPS = (
    ("model: LMModule, its optimizer (AdamW) and LR schedule", "model."),
    ("model.config: ModelConfig, the model's shape (mixer options: `postformer list mixers`)",
     "model.config."),
    ("data: TextDataModule unless --data names another DataModule (its options: --data.help "
     "CLASS; probe tasks: postformer.train.probes.data.ProbeDataModule)", "data."),
    ("checkpoint: RunCheckpoint, into DIR/checkpoints", "checkpoint."),
    ("run", ""),
)
#: the run-level options ``--help-short`` shows besides the groups (Lightning's trainer.* and
#: the rest stay in --help)
SHORT_HELP_RUN = ("config", "trainer.default_root_dir", "trainer.max_steps", "trainer.accelerator",
                  "trainer.devices", "trainer.precision", "ckpt_path", "overwrite", "track",
                  "seed_everything")


def _hint_name(hint: Any) -> str:
    """A type hint as a user reads it: ``int | None``, ``list[str]``, ``{'link'}``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return "None"
    if origin in (typing.Union, types.UnionType):
        return " | ".join(dict.fromkeys(_hint_name(a) for a in args))
    if origin is typing.Literal:
        return "{" + ",".join(map(repr, args)) + "}"
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(map(_hint_name, args))}]"
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def _type_name(action: argparse.Action) -> str:
    hint = getattr(action, "_typehint", None)
    name = _hint_name(hint) if hint is not None else (action.metavar or "")
    return name if len(name) <= 30 else name[:27] + "..."


def _first_sentence(text: str | None) -> str:
    text = " ".join((text or "").split()).replace("``", "`")
    text = re.sub(r"\s*\(type: .*$", "", text)  # jsonargparse's own suffix
    match = re.match(r"(.+?(?<!\be\.g)(?<!\bi\.e)\.)(\s|$)", text)
    return (match.group(1) if match else text).rstrip(".")


def short_help(parser: Any, subcommand: str, width: int = 110) -> str:
    """``postformer fit --help-short``: the project's own options, one line each (name, type,
    default, the first sentence of its help): model.* and model.preset, model.config.*, the
    TextDataModule's data.*, checkpoint.* and a few run options; ``--help`` has the rest."""
    from jsonargparse import ArgumentParser

    data = ArgumentParser()
    data.add_class_arguments(TextDataModule, "data")
    actions = {a.dest: a for a in parser._actions if a.dest != "help"}
    actions.update({a.dest: a for a in data._actions if a.dest.startswith("data.")})
    lines = [f"usage: postformer {subcommand} [--config FILE] [--model.preset ARCH/SIZE] "
             "[--model.* ...] [--data.* ...] [--trainer.* ...]",
             f"postformer's own options; `postformer {subcommand} --help` gives the full Lightning "
             "help (every trainer.* option, nan_guard.*, --print_config, ...)."]
    shown = set()
    for title, prefix in SHORT_HELP_GROUPS:
        lines += ["", f"{title}:"]
        for dest, action in sorted(actions.items(), key=lambda kv: kv[0] != "model.preset"):
            in_group = (dest in SHORT_HELP_RUN if not prefix else dest.startswith(prefix)
                        and (prefix == "model.config." or not dest.startswith("model.config.")))
            if not in_group or dest in shown or action.help == argparse.SUPPRESS or (
                    action.default == argparse.SUPPRESS and dest not in ("model.preset", "config")):
                continue
            shown.add(dest)
            flag = next((o for o in action.option_strings if o.startswith("--")), f"--{dest}")
            kind = ({"model.preset": "ARCH/SIZE", "config": "FILE"}.get(dest) or _type_name(action)
                    or type(action.default).__name__)
            default = "" if action.default in (argparse.SUPPRESS, None) and dest != "config" \
                else f" = {action.default!r}" if dest != "config" else ""
            line = f"  {flag} {kind}{default}".rstrip()
            line = f"{line:<44} {_first_sentence(action.help)}"
            lines.append(line if len(line) <= width else line[: width - 3] + "...")
    return "\n".join(lines)


class ShortHelpAction(argparse.Action):
    """``--help-short``: print :func:`short_help` and exit, like ``--help``."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0,
                         help="show the project's own options only (model, data, checkpoint, run), "
                              "one line each, and exit")

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        subcommand = parser.prog.split()[-1] if parser.prog else "fit"
        print(short_help(parser, subcommand))
        parser.exit(0)


class PostformerCLI(LightningCLI):
    def __init__(self, args: list[str] | None = None, run: bool = True,
                 callbacks: tuple[Callback, ...] = (), **kwargs) -> None:
        """``callbacks``: added to every trainer beside the configured ones."""
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("parser_kwargs", {"default_env": False, "prog": "postformer"})
        kwargs.setdefault("parser_class", PostformerParser)
        kwargs.setdefault("trainer_defaults", {"callbacks": [throughput_monitor(), *callbacks]})
        # any LightningDataModule (``data: {class_path: ..., init_args: ...}``), TextDataModule
        # by default, so ``data: {seq_len: 128}`` keeps meaning the text data's options
        kwargs.setdefault("subclass_mode_data", True)
        super().__init__(LMModule, L.LightningDataModule, args=args, run=run, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--help-short", action=ShortHelpAction)
        parser.add_argument("--model.preset", action=PresetAction, metavar="ARCH/SIZE",
                            default=argparse.SUPPRESS, help=PresetAction.HELP)
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.save_last": True,
            "checkpoint.save_top_k": 0,
            "checkpoint.every_n_train_steps": 500,
        })
        parser.add_lightning_class_args(NonFiniteGuard, "nan_guard")
        parser.set_defaults({"data": {"class_path": f"{TextDataModule.__module__}.TextDataModule"}})
        parser.add_argument("--track", type=list[str], default=[],
                            help=f"trackers beside metrics.csv: {sorted(TRACKERS)}")
        parser.add_argument("--overwrite", action=ActionYesNo, default=False,
                            help="fit: start afresh in a run folder that holds a run (its "
                                 "checkpoints are removed, metrics.csv replaced); without it "
                                 "such a folder is refused unless --ckpt_path resumes it")

    def _fail(self, message: str) -> NoReturn:
        """A usage error found after parsing: one line, exit 2, as the parser's own."""
        prog = " ".join(filter(None, [self.parser.prog, self.config.get("subcommand")]))
        print(f"{prog}: error: {one_line(message)}", file=sys.stderr)
        raise SystemExit(2)

    def _cfg(self) -> Namespace:
        subcommand = self.config.get("subcommand")
        return self.config[subcommand] if subcommand else self.config

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        # before LightningCLI reads the model's hyperparameters from --ckpt_path
        self._check_checkpoint(self._cfg())

    def _follow_data_vocab(self, cfg: Namespace) -> None:
        """Set ``model.config.vocab_size`` to the data's vocabulary (``data.tokenizer``'s, or a
        probe task's): the data module class's ``planned_vocab(init_args)``, where it has one."""
        cls = import_module(cfg.data.class_path.rpartition(".")[0])
        cls = getattr(cls, cfg.data.class_path.rpartition(".")[2])
        planned = getattr(cls, "planned_vocab", None)
        if planned is None:
            return
        init_args = cfg.data.init_args.as_dict() if cfg.data.get("init_args") else {}
        try:
            vocab = planned(init_args)
        except (ValueError, OSError) as err:
            self._fail(f"data: {err}")
        given = cfg.model.config.vocab_size
        if given != vocab:
            if given not in (None, 256):  # 256: the bytes default the smoke configs spell out
                print(f"note: model.config.vocab_size {given} -> {vocab} (the data's vocabulary)",
                      file=sys.stderr)
            cfg.model.config.vocab_size = vocab

    def before_instantiate_classes(self) -> None:
        cfg = self._cfg()
        trainer = cfg.trainer
        if trainer.default_root_dir is None:
            trainer.default_root_dir = DEFAULT_ROOT
        root = str(trainer.default_root_dir)
        self._refuse_optimizer_options(cfg)
        unknown = sorted(set(cfg.track) - set(TRACKERS))
        if unknown:
            self._fail(f"track: unknown tracker(s) {unknown}; known: {sorted(TRACKERS)}")
        # Flat layout: RunLogger first (metrics.csv and config.yaml in the run folder), any
        # other logger beside it; checkpoints in DIR/checkpoints whatever the loggers are.
        trainer.logger = _loggers(trainer.logger, root, list(cfg.track))
        if cfg.checkpoint.dirpath is None:
            cfg.checkpoint.dirpath = str(Path(root) / "checkpoints")
        self._follow_data_vocab(cfg)
        self._stale = self._check_fresh_fit(cfg) if self.subcommand == "fit" else []
        steps = trainer.max_steps
        if self.subcommand == "fit" and not (isinstance(steps, int) and steps >= 1):
            self._fail(f"trainer.max_steps: expected an integer >= 1 (the LR schedule "
                              f"is shaped from it), got {steps}")
        interval = trainer.val_check_interval
        if (trainer.check_val_every_n_epoch is None and isinstance(interval, int)
                and steps is not None and steps > 0):
            batches = steps * (trainer.accumulate_grad_batches or 1)
            if interval > batches:
                trainer.val_check_interval = batches
        Path(root).mkdir(parents=True, exist_ok=True)

    def _refuse_optimizer_options(self, cfg: Namespace) -> None:
        """LightningCLI's ``--optimizer`` / ``--lr_scheduler`` would replace LMModule's AdamW,
        its weight-decay split and its schedule all at once, without a word: refused (the
        options stay, so a saved config.yaml with ``optimizer: null`` still parses)."""
        given = [k for k in ("optimizer", "lr_scheduler") if cfg.get(k) is not None]
        if given:
            self._fail(
                f"{given[0]}: not supported; LMModule trains with AdamW, no weight decay on "
                "norms, biases and embeddings, and its model.schedule LR schedule, which "
                f"--{given[0]} would silently replace; set model.lr, model.weight_decay, "
                "model.betas, model.eps, model.schedule, model.warmup_steps instead")

    def _check_checkpoint(self, cfg: Namespace) -> None:
        """``--ckpt_path`` names a whole checkpoint (read memory-mapped, weights untouched):
        a truncated one is a line saying so, not a traceback from deep in torch."""
        path = cfg.get("ckpt_path")
        if path is None or path in ("last", "best", "hpc", "registry"):  # Lightning's names
            return
        if not Path(path).is_file():
            self._fail(f"ckpt_path: {path} does not exist")
        try:
            saved_step(path)
        except Exception as err:  # torch's zip reader, pickle, a missing key: all say "damaged"
            self._fail(
                f"ckpt_path: {path} cannot be read ({type(err).__name__}: "
                f"{one_line(str(err))}); it is truncated or damaged: resume from another "
                "checkpoint of the run (checkpoints/*.ckpt), or start afresh with --overwrite")

    def _check_fresh_fit(self, cfg: Namespace) -> list[Path]:
        """The files of an earlier run that a fresh fit (no ``--ckpt_path``) would clobber:
        ``metrics.csv`` (replaced) and checkpoints (a ``last-v1.ckpt`` beside the old
        ``last.ckpt``, which a resume would then pick). Refuses them (exit 2, saying how to
        resume or where to start afresh) unless ``--overwrite``; returns the checkpoints
        to remove once the classes are built."""
        if cfg.get("ckpt_path") is not None:
            return []
        root = Path(cfg.trainer.default_root_dir)
        ckpts = sorted(Path(cfg.checkpoint.dirpath).glob("*.ckpt"))
        used = [p for p in [root / METRICS] if p.is_file()] + ckpts
        if not used:
            return []
        if not cfg.overwrite:
            last = Path(cfg.checkpoint.dirpath) / "last.ckpt"
            resume = (f"resume it with --ckpt_path {last}, " if last.is_file() else "")
            self._fail(
                f"{root} holds a run already ({', '.join(p.name for p in used[:3])}"
                f"{', ...' if len(used) > 3 else ''}); {resume}start afresh in another "
                "--trainer.default_root_dir, or pass --overwrite to replace it")
        cfg.overwrite = False  # config.yaml: a rerun of it must not clobber this run
        return ckpts

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, TypeError, FileNotFoundError, MisconfigurationException) as err:
            self._fail(str(err))
        for path in self._stale:  # --overwrite: the earlier run's checkpoints, now
            path.unlink(missing_ok=True)


def lightning_main(args: list[str]) -> PostformerCLI:
    """Run ``postformer fit|validate|test ...`` in process; returns the CLI object.
    Ctrl-C raises ``KeyboardInterrupt`` (Lightning itself would exit 1 without a word)."""
    # Resuming mid-epoch is exact here (the DataModule restores its position), so Lightning's
    # generic warning about it does not apply; the CSV logger appends on resume by design.
    warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended.*")
    warnings.filterwarnings("ignore", message=".*Experiment logs directory .* exists and is not empty.*")
    # `postformer` always passes its own argv; running inside pytest or a script is fine.
    warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter is intended.*")
    # Lightning 2.6's own use of torch's pytree API, once per run: not actionable here.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")
    watch = InterruptWatch()
    handler = signal.getsignal(signal.SIGINT)
    try:
        return PostformerCLI(args=args, callbacks=(watch,))
    except SystemExit:
        if not watch.interrupted:
            raise
        # Lightning's answer to Ctrl-C: exit 1 with SIGINT ignored from then on; give the
        # caller the interrupt back, with Ctrl-C working again
        signal.signal(signal.SIGINT, handler)
        raise KeyboardInterrupt from None
