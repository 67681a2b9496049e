"""``postformer export CKPT --out DIR``: a trained model as files any loader can read.

    DIR/config.json            {"model_type": "postformer", "architectures": ["PostformerForCausalLM"],
                                "postformer_version": ..., "vocab_size": ..., "model": {ModelConfig},
                                "tokenizer": "bytes" | "tokenizer.json", "eos_token_id": ...,
                                "torch_dtype": "float32"}
    DIR/model.safetensors      the LanguageModel's state dict, float32 (tied weights once)
    DIR/tokenizer.json         the run's BPE (absent for the byte tokenizer)
    DIR/tokenizer_config.json  {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": ...}

``LanguageModel.from_pretrained(DIR)`` reloads the model with identical logits;
``load_export_tokenizer(DIR)`` the tokenizer; ``postformer generate DIR``, ``postformer
eval`` and the transformers integration read the same folder.

The run's tokenizer: a checkpoint ``RUN/checkpoints/*.ckpt`` belongs to the run folder
``RUN``, whose ``config.yaml`` (written by ``postformer fit``) names it as
``data.init_args.tokenizer`` (``bytes`` when the text data module's default is kept).
``--tokenizer SPEC`` overrides it; when nothing names one the command stops with a line that
says which file it read, never guessing. The shared loaders here (``resolve_source``,
``load_checkpoint_model``, ``load_model_and_tokenizer``) serve ``generate`` and ``eval`` too.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch

from postformer.arch import LanguageModel, ModelConfig
from postformer.arch.model import CONFIG_FILE, WEIGHTS_FILE

from .tokenizer import ByteTokenizer, HFTokenizer, Tokenizer, get_tokenizer

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
RUN_CONFIG = "config.yaml"
TOKENIZER_HINT = "pass --tokenizer bytes or --tokenizer PATH/tokenizer.json"


class OneLineParser(argparse.ArgumentParser):
    """argparse with errors in one line (``PROG: error: ...``, exit 2), no usage block."""

    def error(self, message: str) -> NoReturn:
        fail(self.prog, message)


def fail(prog: str, message: str) -> NoReturn:
    """A usage error: one line on stderr, exit code 2."""
    first = (str(message).strip().splitlines() or [""])[0]
    print(f"{prog}: error: {first}", file=sys.stderr)
    raise SystemExit(2)


# ---- sources: a checkpoint, a run folder, an export folder -----------------------------


@dataclass
class Source:
    """What a path names: ``kind`` ``"checkpoint"`` (``path`` the .ckpt file) or ``"export"``
    (``path`` the folder)."""

    kind: str
    path: Path


def resolve_source(path: str | Path) -> Source:
    """A checkpoint file, a run folder (its ``checkpoints/last.ckpt``) or an export folder
    (holding ``config.json``). FileNotFoundError (naming the path) otherwise."""
    p = Path(path).expanduser()
    if p.is_file():
        return Source("checkpoint", p)
    if p.is_dir():
        if (p / CONFIG_FILE).is_file():
            return Source("export", p)
        last = p / "checkpoints" / "last.ckpt"
        if last.is_file():
            return Source("checkpoint", last)
        raise FileNotFoundError(f"{p} is a folder with neither {CONFIG_FILE} (an export) nor "
                                "checkpoints/last.ckpt (a run folder)")
    raise FileNotFoundError(f"{p} does not exist")


def run_folder(ckpt: str | Path) -> Path:
    """The run folder of a checkpoint: ``RUN`` for ``RUN/checkpoints/x.ckpt``, else the
    checkpoint's own folder."""
    ckpt = Path(ckpt)
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def load_checkpoint_model(ckpt: str | Path) -> tuple[LanguageModel, dict[str, Any]]:
    """The ``LanguageModel`` of an ``LMModule`` checkpoint (``postformer fit``), float32 on
    the CPU in eval mode, and facts about it (``step``). ValueError / FileNotFoundError with
    one line naming the file when it is missing, unreadable or not such a checkpoint."""
    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise FileNotFoundError(f"checkpoint {ckpt} does not exist")
    try:
        state = torch.load(ckpt, map_location="cpu", mmap=True, weights_only=False)
    except Exception as err:  # torch's zip reader, pickle: all say "damaged"
        first = (str(err).strip().splitlines() or [""])[0]
        raise ValueError(f"checkpoint {ckpt} cannot be read ({type(err).__name__}: {first}); "
                         "it is truncated, damaged or not a checkpoint") from None
    hparams = state.get("hyper_parameters") if isinstance(state, dict) else None
    fields = hparams.get("config") if isinstance(hparams, dict) else None
    weights = state.get("state_dict") if isinstance(state, dict) else None
    if not isinstance(fields, dict) or not isinstance(weights, dict):
        raise ValueError(f"checkpoint {ckpt} is not a `postformer fit` checkpoint (no "
                         "hyper_parameters.config and state_dict of an LMModule)")
    try:
        model = LanguageModel(ModelConfig(**fields))
    except (TypeError, ValueError) as err:
        raise ValueError(f"checkpoint {ckpt}: hyper_parameters.config is not a valid "
                         f"ModelConfig ({err})") from None
    prefix = "model."
    own = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
    try:
        model.load_state_dict(own, strict=True)
    except RuntimeError as err:
        first = (str(err).strip().splitlines() or [""])[0]
        raise ValueError(f"checkpoint {ckpt}: its weights do not fit its config ({first})") from None
    return model.float().eval(), {"step": state.get("global_step")}


# ---- tokenizers ---------------------------------------------------------------------


def run_tokenizer_spec(ckpt: str | Path) -> tuple[str, str]:
    """The tokenizer spec the run of checkpoint ``ckpt`` trained with, from its run folder's
    config.yaml, and where it was read (``RUN/config.yaml``). ValueError (one line, naming
    the file) when the file is missing or names no tokenizer."""
    import yaml

    path = run_folder(ckpt) / RUN_CONFIG
    if not path.is_file():
        raise ValueError(f"no tokenizer known for {ckpt}: {path} does not exist (the run's "
                         f"config names its tokenizer); {TOKENIZER_HINT}")
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} cannot be read as YAML ({type(err).__name__}); "
                         f"{TOKENIZER_HINT}") from None
    data = cfg.get("data") if isinstance(cfg, dict) else None
    if not isinstance(data, dict):
        raise ValueError(f"no tokenizer known for {ckpt}: {path} has no data section; "
                         f"{TOKENIZER_HINT}")
    class_path = str(data.get("class_path") or "")
    init = data.get("init_args") if "init_args" in data else data
    init = init if isinstance(init, dict) else {}
    if init.get("tokenizer"):
        key = "data.init_args.tokenizer" if "init_args" in data else "data.tokenizer"
        return str(init["tokenizer"]), f"{path} ({key})"
    if class_path in ("", "postformer.train.data.TextDataModule") or class_path.endswith(".TextDataModule"):
        return "bytes", f"{path} (the text data's default)"
    raise ValueError(f"no tokenizer known for {ckpt}: {path} trains on {class_path}, which "
                     f"names no tokenizer; {TOKENIZER_HINT}")


def load_tokenizer(spec: str, where: str) -> Tokenizer:
    """``get_tokenizer(spec)`` with its errors in one line that says where ``spec`` came from."""
    try:
        return get_tokenizer(spec)
    except (OSError, ValueError) as err:
        raise ValueError(f"tokenizer {spec!r} from {where}: {err}") from None


def load_export_tokenizer(directory: str | Path) -> Tokenizer:
    """The tokenizer of an export folder, as its config.json names it: ``"bytes"`` or
    ``"tokenizer.json"`` (the file beside it; the separator ``eos_token_id`` names)."""
    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{config_path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{config_path} is not valid JSON ({err})") from None
    spec = config.get("tokenizer") if isinstance(config, dict) else None
    if spec == "bytes":
        return ByteTokenizer()
    if spec == TOKENIZER_FILE:
        path = directory / TOKENIZER_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{config_path} names {TOKENIZER_FILE}, but {path} does not exist")
        tok = HFTokenizer.from_file(path)
        eos = config.get("eos_token_id")
        if isinstance(eos, int) and eos != tok.eos_id:
            name = tok.backend.id_to_token(eos)
            if name is None:
                raise ValueError(f"{config_path}: eos_token_id {eos} is not in {path}")
            tok = HFTokenizer(tok.backend, tok.name, eos_token=name)
        return tok
    if spec is None:
        raise ValueError(f"no tokenizer known for {directory}: {config_path} has no 'tokenizer' "
                         f"entry; {TOKENIZER_HINT}")
    raise ValueError(f"{config_path}: 'tokenizer' is {spec!r}; expected 'bytes' or "
                     f"'{TOKENIZER_FILE}'")


def check_vocab(model: LanguageModel, tokenizer: Tokenizer, what: str) -> None:
    """The tokenizer's vocabulary must be the model's (``postformer fit`` makes it so)."""
    if tokenizer.vocab_size != model.cfg.vocab_size:
        raise ValueError(f"tokenizer {tokenizer.name!r} has {tokenizer.vocab_size} tokens but the "
                         f"model of {what} has a vocabulary of {model.cfg.vocab_size}: not the "
                         f"run's tokenizer; {TOKENIZER_HINT}")


@dataclass
class Loaded:
    """A model ready to use, with its tokenizer and where both came from."""

    model: LanguageModel
    tokenizer: Tokenizer
    source: Source
    tokenizer_from: str  # "--tokenizer", "RUN/config.yaml (...)", "DIR/config.json"
    step: int | None = None


def load_model_and_tokenizer(path: str | Path, tokenizer: str | None = None) -> Loaded:
    """A checkpoint, run folder or export folder -> its model (float32, CPU, eval mode) and
    tokenizer (``tokenizer``, a spec, overrides the one the source names)."""
    source = resolve_source(path)
    step = None
    if source.kind == "checkpoint":
        model, facts = load_checkpoint_model(source.path)
        step = facts["step"]
        if tokenizer is None:
            spec, where = run_tokenizer_spec(source.path)
            tok = load_tokenizer(spec, where)
        else:
            where, tok = "--tokenizer", load_tokenizer(tokenizer, "--tokenizer")
    else:
        model = LanguageModel.from_pretrained(source.path)
        if tokenizer is None:
            where, tok = str(source.path / CONFIG_FILE), load_export_tokenizer(source.path)
        else:
            where, tok = "--tokenizer", load_tokenizer(tokenizer, "--tokenizer")
    check_vocab(model, tok, str(source.path))
    return Loaded(model, tok, source, where, step)


# ---- export -------------------------------------------------------------------------


def _tokenizer_json(tokenizer: HFTokenizer, spec: str | None) -> bytes:
    """The tokenizer.json to write: the run's file byte for byte when ``spec`` is a path,
    else the tokenizer's own serialisation (a hub tokenizer)."""
    if spec is not None:
        p = Path(spec).expanduser()
        if p.is_dir() and (p / TOKENIZER_FILE).is_file():
            p = p / TOKENIZER_FILE
        if p.is_file():
            return p.read_bytes()
    return tokenizer.backend.to_str().encode("utf-8")


def export_model(model: LanguageModel, tokenizer: Tokenizer, out: str | Path,
                 tokenizer_spec: str | None = None) -> list[Path]:
    """Write ``model`` and ``tokenizer`` to the folder ``out`` (see the module docstring);
    the tokenizer files first, config.json last. Returns the files written."""
    from .fileio import atomic_write

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if isinstance(tokenizer, ByteTokenizer):
        name = "bytes"
    elif isinstance(tokenizer, HFTokenizer):
        name = TOKENIZER_FILE
        atomic_write(out / TOKENIZER_FILE, _tokenizer_json(tokenizer, tokenizer_spec))
        tok_config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": tokenizer.eos_token}
        atomic_write(out / TOKENIZER_CONFIG_FILE, json.dumps(tok_config, indent=2) + "\n")
        written += [out / TOKENIZER_FILE, out / TOKENIZER_CONFIG_FILE]
    else:
        raise ValueError(f"tokenizer {tokenizer.name!r} ({type(tokenizer).__name__}) cannot be "
                         "exported; expected the byte tokenizer or a tokenizer.json")
    for stale in (TOKENIZER_FILE, TOKENIZER_CONFIG_FILE):  # an earlier export's (--overwrite)
        if out / stale not in written:
            (out / stale).unlink(missing_ok=True)
    model.float().save_pretrained(out, {"tokenizer": name, "eos_token_id": int(tokenizer.eos_id),
                                        "torch_dtype": "float32"})
    return [out / WEIGHTS_FILE, out / CONFIG_FILE, *written]


def _size(path: Path) -> str:
    n = path.stat().st_size
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def export_main(argv: Sequence[str]) -> None:
    """``postformer export CKPT --out DIR [--tokenizer SPEC] [--overwrite]``."""
    prog = "postformer export"
    parser = OneLineParser(
        prog=prog,
        description="Write a checkpoint as an export folder: model.safetensors, config.json and "
                    "the run's tokenizer files, which LanguageModel.from_pretrained, `postformer "
                    "generate`, `postformer eval` and the transformers integration read.")
    parser.add_argument("ckpt", help="a checkpoint of `postformer fit` (RUN/checkpoints/last.ckpt) "
                        "or a run folder (its checkpoints/last.ckpt)")
    parser.add_argument("--out", required=True, help="the folder to write (new or empty)")
    parser.add_argument("--tokenizer", help="the tokenizer spec (bytes, a tokenizer.json, a hub "
                        "name); default: the one the run's config.yaml names")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a folder that is not empty (replacing an earlier export)")
    args = parser.parse_args(list(argv))

    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        fail(prog, f"--out {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        fail(prog, f"--out {out} is not empty; pass --overwrite to replace the export in it, or "
                   "choose another folder")
    try:
        source = resolve_source(args.ckpt)
        if source.kind != "checkpoint":
            raise ValueError(f"{source.path} is an export folder already; export takes a "
                             "checkpoint (RUN/checkpoints/last.ckpt)")
        loaded = load_model_and_tokenizer(source.path, args.tokenizer)
        spec = args.tokenizer
        if spec is None and not isinstance(loaded.tokenizer, ByteTokenizer):
            spec = run_tokenizer_spec(source.path)[0]
        files = export_model(loaded.model, loaded.tokenizer, out, spec)
    except (OSError, ValueError) as err:
        fail(prog, str(err))
    cfg = loaded.model.cfg
    print(f"exported {source.path} (step {loaded.step}) to {out}: "
          f"{'-'.join(cfg.pattern)} x{cfg.n_layers}, d_model {cfg.d_model}, "
          f"{loaded.model.num_params():,} parameters, tokenizer {loaded.tokenizer.name!r} "
          f"(from {loaded.tokenizer_from})")
    for path in files:
        print(f"  {path}  {_size(path)}")
