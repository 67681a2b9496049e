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
  ``model.config`` keys, expanded by ``load_config_text`` as the file is read).
  ``postformer list presets`` lists them.
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
import copy
import inspect
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
import yaml
from jsonargparse import ActionYesNo, Namespace, get_loader, set_loader
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, ThroughputMonitor
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from postformer.arch import ModelConfig

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
        while key := re.match(r'Parser key "([^"]+)":\s*', line):  # one or more, then text
            keys.append(key.group(1))
            line = line[key.end():]
        if line and not line.startswith(_NOISE) and "Does not validate against any" not in line:
            text.append(line)
    first = next((t for t in text if not t.startswith(_VAGUE)), text[0] if text else message.strip())
    typed = re.fullmatch(r"Expected a <class '(\w+)'>\. Got value: (.*)", first)
    if typed:
        first = f"expected {typed.group(1)}, got {typed.group(2)!r}"
    return f"{_full_key(keys)}: {first}" if keys else first


def _full_key(keys: list[str]) -> str:
    """The keys of a nested message joined (``data`` + ``seq_len``: ``data.seq_len``); a key
    that repeats or spells out the one before it (``model`` + ``model.preset``) or follows
    the config option's (``config`` + ``model.preset``, an inline ``--config``) stands alone."""
    full: list[str] = []
    for key in keys:
        if full == ["config"] or (full and f"{key}.".startswith(f"{full[-1]}.")):
            full.pop()
        full.append(key)
    return ".".join(full)


# the lines of a jsonargparse message that say nothing about what was wrong
_NOISE = ("Subtypes:", "Errors:", "Given value", "Expected a <class 'NoneType'>",
          "Problem with given class_path")
# the lines that say what failed, not why: shown only when no line says more
_VAGUE = ("Unable to load config",)


#: PostformerParser's parser mode: jsonargparse's yaml loader, then a model preset expanded
#: (``load_config_text``); dumps (config.yaml, --print_config) are yaml, jsonargparse's
#: fallback for a mode without a dumper of its own
PARSER_MODE = "postformer_yaml"


class PostformerParser(LightningArgumentParser):
    """Errors in one line, ``postformer fit: error: KEY: what was wrong``, without the usage
    (``--help`` shows it); configs are read in ``PARSER_MODE``, which expands a model preset
    as a config is loaded."""

    def __init__(self, *args: Any, parser_mode: str = PARSER_MODE, **kwargs: Any) -> None:
        super().__init__(*args, parser_mode=parser_mode, **kwargs)

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:  # a nested parser: its caller reports
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        print(f"{parser.prog.replace(' [options]', '')}: error: {one_line(message)}",
              file=sys.stderr)
        self.exit(2)


#: the keys of a model section (``--model FILE`` holds one alone): LMModule's and ``preset``
MODEL_KEYS = frozenset({"preset", *inspect.signature(LMModule).parameters})


def load_config_text(text: str) -> Any:
    """The loader of ``PARSER_MODE``: jsonargparse's yaml loader, then a config's
    ``model: {preset: ...}`` expanded (``expand_preset``), and so a model section alone
    (``--model FILE``), before jsonargparse applies the keys in their order."""
    value = get_loader("yaml")(text)
    if isinstance(value, dict):
        section = value.get("model")
        if isinstance(section, dict) and "preset" in section:
            expand_preset(section)
        elif "preset" in value and set(value) <= MODEL_KEYS:
            expand_preset(value)
    return value


set_loader(PARSER_MODE, load_config_text, exceptions=(yaml.YAMLError,))


def expand_preset(section: dict) -> None:
    """A config's ``model: {preset: ARCH/SIZE, config: {...}}``: the preset's fields with the
    section's own ``config`` keys over them, whatever their order (``mixers`` merged per
    mixer, as ``ModelConfig.from_preset`` does); ``preset`` itself removed. Raises TypeError,
    jsonargparse's error for a bad value, with the key."""
    name = section.pop("preset")
    try:
        fields = preset_config(name)
    except ValueError as err:
        raise TypeError(f'Parser key "model.preset":\n{err}') from None
    given = section.get("config")
    if isinstance(given, str):
        raise TypeError(f'Parser key "model.preset":\n{name} and model.config {given!r} (a file) '
                        "both give the whole model config; keep one, or give config fields")
    given = dict(given or {})
    mixers = {m: dict(o) for m, o in fields["mixers"].items()}
    for m, opts in (given.pop("mixers", None) or {}).items():
        mixers[m] = {**mixers.get(m, {}), **opts}
    fields.update(given, mixers=mixers)
    section["config"] = fields


def expand_presets_in(args: dict, subcommands: typing.Iterable[str]) -> dict:
    """A copy of the ``args`` LightningCLI parses as an object (``args={...}``, not read by a
    loader) with its model presets expanded, at the top or under a subcommand."""
    args = copy.deepcopy(args)
    for cfg in [args, *(args[s] for s in subcommands if isinstance(args.get(s), dict))]:
        section = cfg.get("model")
        if isinstance(section, dict) and "preset" in section:
            expand_preset(section)
    return args


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


#: the help of ``--track`` and ``--overwrite`` (PostformerCLI's own options), for --help-short too
TRACK_HELP = f"trackers beside metrics.csv: {sorted(TRACKERS)}"
OVERWRITE_HELP = ("fit: start afresh in a run folder that holds a run (its checkpoints are "
                  "removed, metrics.csv replaced); without it such a folder is refused unless "
                  "--ckpt_path resumes it")

#: the sections of ``--help-short``: (title, key prefix, the class whose signature and
#: docstrings give the options); ``run`` lists SHORT_HELP_RUN
SHORT_HELP_GROUPS = (
    ("model: LMModule, its optimizer (AdamW) and LR schedule", "model.", LMModule),
    ("model.config: ModelConfig, the model's shape (mixer options: `postformer list mixers`)",
     "model.config.", ModelConfig),
    ("data: TextDataModule unless --data names another DataModule (its options: --data.help "
     "CLASS; probe tasks: postformer.train.probes.data.ProbeDataModule)", "data.", TextDataModule),
    ("checkpoint: RunCheckpoint, into DIR/checkpoints", "checkpoint.", RunCheckpoint),
    ("run", "", None),
)
#: the run-level options ``--help-short`` shows, in its order (Lightning's other trainer.*
#: options and the rest stay in --help): ``trainer.*`` read off Trainer, ``ckpt_path`` off the
#: subcommand's Trainer method; the others, which no signature describes, as (type, help)
SHORT_HELP_RUN: dict[str, tuple[Any, str] | None] = {
    "config": ("FILE", "Path to a configuration file in json or yaml format"),
    "seed_everything": (bool | int, "Set to an int to run seed_everything with this value "
                                    "before classes instantiation"),
    "trainer.accelerator": None,
    "trainer.devices": None,
    "trainer.precision": None,
    "trainer.max_steps": None,
    "trainer.default_root_dir": None,
    "track": (list[str], TRACK_HELP),
    "overwrite": (bool, OVERWRITE_HELP),
    "ckpt_path": None,
}


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


def _parameters(obj: Any) -> dict[str, inspect.Parameter]:
    """The named parameters of a class's constructor or a function (no self, *args, **kwargs),
    their annotations evaluated where they can be."""
    try:
        params = inspect.signature(obj, eval_str=True).parameters
    except NameError:  # an annotation only a type checker resolves
        params = inspect.signature(obj).parameters
    return {name: p for name, p in params.items() if name != "self"
            and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)}


def _parameter_docs(obj: Any) -> dict[str, str]:
    """What the docstrings say of each parameter of ``obj`` (docstring_parser, as jsonargparse's
    help reads them): a function's own; a class's, its ``__init__``'s and those of its bases up
    to the one that defines the ``__init__``, the nearest first."""
    import docstring_parser

    texts = [obj.__doc__]
    if isinstance(obj, type):
        texts = []
        for owner in inspect.getmro(obj):
            init = vars(owner).get("__init__")
            texts += [owner.__doc__, getattr(init, "__doc__", None)]
            if init is not None:
                break
    docs: dict[str, str] = {}
    for text in filter(None, texts):
        try:
            params = docstring_parser.parse(text).params
        except docstring_parser.ParseError:
            continue
        # a name given twice in one docstring: the later description, as jsonargparse reads it
        own = {param.arg_name: param.description for param in params if param.description}
        docs = own | docs
    return docs


def _first_sentence(text: str | None) -> str:
    text = " ".join((text or "").split()).replace("``", "`")
    match = re.match(r"(.+?(?<!\be\.g)(?<!\bi\.e)\.)(\s|$)", text)
    return (match.group(1) if match else text).rstrip(".")


def _short_help_options(prefix: str, cls: type | None, subcommand: str
                        ) -> list[tuple[str, Any, Any, str]]:
    """A ``--help-short`` section's options: (key, type hint or name, signature default, help)."""
    if cls is not None:
        docs = _parameter_docs(cls)
        options = [(f"{prefix}{name}", p.annotation, p.default, docs.get(name, ""))
                   for name, p in _parameters(cls).items()
                   if not (cls is LMModule and name == "config")]  # model.config: its own section
        if cls is LMModule:
            options.insert(0, ("model.preset", "ARCH/SIZE", None, PresetAction.HELP))
        return options
    options = []
    for key, given in SHORT_HELP_RUN.items():
        if given is not None:
            options.append((key, given[0], None, given[1]))
            continue
        owner = L.Trainer if key.startswith("trainer.") else getattr(L.Trainer, subcommand, None)
        name = key.removeprefix("trainer.")
        param = _parameters(owner).get(name) if owner is not None else None
        if param is not None:
            options.append((key, param.annotation, param.default, _parameter_docs(owner).get(name, "")))
    return options


def short_help(parser: Any, subcommand: str, width: int = 110) -> str:
    """``postformer fit --help-short``: the project's own options, one line each (name, type,
    default, the first sentence of its help): model.* and model.preset, model.config.*, the
    TextDataModule's data.*, checkpoint.* and a few run options; ``--help`` has the rest.
    Read off the classes' signatures and docstrings, the defaults off ``parser.get_defaults()``
    (so ``checkpoint.*`` shows what ``PostformerCLI`` sets)."""
    defaults = parser.get_defaults()
    lines = [f"usage: postformer {subcommand} [--config FILE] [--model.preset ARCH/SIZE] "
             "[--model.* ...] [--data.* ...] [--trainer.* ...]",
             f"postformer's own options; `postformer {subcommand} --help` gives the full Lightning "
             "help (every trainer.* option, nan_guard.*, --print_config, ...)."]
    for title, prefix, cls in SHORT_HELP_GROUPS:
        lines += ["", f"{title}:"]
        for key, hint, default, text in _short_help_options(prefix, cls, subcommand):
            # the parser's default: data's under data.init_args (any DataModule may be named)
            default = defaults.get(re.sub(r"^data\.", "data.init_args.", key), default)
            kind = hint if isinstance(hint, str) else _hint_name(hint) \
                if hint is not inspect.Parameter.empty else type(default).__name__
            kind = kind if len(kind) <= 30 else kind[:27] + "..."
            shown = default not in (None, inspect.Parameter.empty) and key != "config"
            line = f"  --{key} {kind}{f' = {default!r}' if shown else ''}".rstrip()
            line = f"{line:<44} {_first_sentence(text)}"
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
        parser.add_argument("--track", type=list[str], default=[], help=TRACK_HELP)
        parser.add_argument("--overwrite", action=ActionYesNo, default=False, help=OVERWRITE_HELP)

    def _fail(self, message: str) -> NoReturn:
        """A usage error found after parsing: one line, exit 2, as the parser's own."""
        prog = " ".join(filter(None, [self.parser.prog, self.config.get("subcommand")]))
        print(f"{prog}: error: {one_line(message)}", file=sys.stderr)
        raise SystemExit(2)

    def _cfg(self) -> Namespace:
        subcommand = self.config.get("subcommand")
        return self.config[subcommand] if subcommand else self.config

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        if isinstance(args, (dict, Namespace)):  # parsed as an object, read by no loader
            args = args.as_dict() if isinstance(args, Namespace) else args
            try:
                args = expand_presets_in(args, self.subcommands())
            except TypeError as err:
                parser.error(str(err))
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
