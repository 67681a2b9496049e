"""``postformer list``: what this install offers, read from the code itself.

    postformer list                       every section below
    postformer list archs                 ARCHS: the mixer pattern and a line about each
    postformer list presets               PRESETS: every arch x size with its shape and parameters
    postformer list mixers                MIXERS: every option, its type, default and meaning
    postformer list tokenizers            what ``--data.tokenizer`` accepts
    postformer list configs               the study, probe and smoke YAML files of the repository
    postformer list presets --json        one JSON object, for scripts

Nothing here is written twice: presets come from ``arch.config.PRESETS`` (parameters from
``arch.flops.param_counts``, kept in the cache folder per version of the code:
:func:`preset_counts`), a mixer option's meaning from the ``#:`` comment lines above its
field in the mixer's ``Options`` dataclass (:func:`option_docs`, the one parser), configs from
the first sentence of each YAML file's leading comment.

Presets are usable by name from any folder: ``postformer fit --model.preset gdn/small``
(:func:`preset_config`; ``train/cli.py`` applies it).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import re
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: the vocabulary the preset table counts parameters at (GPT-NeoX's, as the configs' headers)
PRESET_VOCAB = 50277
SECTIONS = ("archs", "presets", "mixers", "tokenizers", "configs")
#: folders under the repository's configs/ that ``list configs`` shows, with how each is run
CONFIG_KINDS = {
    "study": "postformer study FILE --out DIR",
    "probe": "postformer probe FILE --out DIR (probe/fit/: postformer fit --config FILE)",
    "smoke": "postformer fit --config FILE",
}


# -- presets by name ----------------------------------------------------------------------


def preset_names() -> list[str]:
    """Every ``ARCH/SIZE`` of ``PRESETS``."""
    from postformer.arch.config import PRESETS

    return [f"{arch}/{size}" for arch, sizes in PRESETS.items() for size in sizes]


def preset_config(name: str) -> dict[str, Any]:
    """The ``ModelConfig`` fields of preset ``ARCH/SIZE`` (``ModelConfig.from_preset``), every
    field but ``vocab_size`` (the data's, or given apart), so that a preset replaces a whole
    shape. ValueError in one line, listing the known names, for an unknown one."""
    from postformer.arch.config import PRESETS, SIZES, ModelConfig

    arch, _, size = str(name).partition("/")
    if arch not in PRESETS or size not in PRESETS[arch]:
        raise ValueError(f"unknown preset {name!r}; presets are ARCH/SIZE with ARCH one of "
                         f"{', '.join(PRESETS)} and SIZE one of {', '.join(SIZES)} "
                         "(`postformer list presets`)")
    fields = dataclasses.asdict(ModelConfig.from_preset(arch, size))
    fields.pop("vocab_size")
    return fields


# -- mixer options: the one parser of the `#:` comments -------------------------------------


@dataclasses.dataclass
class OptionDoc:
    """One option of a mixer: ``name: type = default`` and its meaning."""

    name: str
    type: str
    default: Any
    meaning: str
    #: where the meaning came from: ``comment`` (its own ``#:`` lines), ``shared`` (the ``#:``
    #: lines of an earlier field of the group that name it), ``docstring`` (the docstring of
    #: the option group defining it names it), or ``""`` (none: undocumented)
    source: str
    #: the class that defines the field (``Options``, or a shared group such as ``HeadOptions``)
    defined_in: str


_FIELD = re.compile(r"(\w+)\s*:")


def _comment_blocks(klass: type) -> tuple[dict[str, list[str]], list[str]]:
    """``({field: its #: comment lines}, [the (inherited) notes])`` of the dataclass ``klass``'s
    own body, read from its source: a ``#:`` block documents the field right below it (a blank
    line, code or a docstring in between ends the block)."""
    lines = inspect.getsource(klass).splitlines()
    lines = lines[next(i for i, ln in enumerate(lines) if ln.lstrip().startswith("class ")):]
    body = [ln for ln in lines[1:] if ln.strip()]
    indent = len(body[0]) - len(body[0].lstrip()) if body else 0
    blocks: dict[str, list[str]] = {}
    notes: list[str] = []
    pending: list[str] = []
    for line in lines[1:]:
        stripped = line.strip()
        if not stripped or len(line) - len(line.lstrip()) != indent:
            pending = []
            continue
        if stripped.startswith("#:"):
            pending.append(stripped[2:].strip())
            continue
        match = _FIELD.match(stripped)
        if match and not stripped.startswith(("def ", "class ", "@")):
            note, rest = _split_inherited(pending)
            if note:
                notes.append(note)
            if rest:
                blocks[match.group(1)] = rest
        pending = []
    return blocks, notes


def _split_inherited(block: list[str]) -> tuple[str, list[str]]:
    """A block that opens with ``(inherited) ...`` starts with a note on the inherited fields,
    not the meaning of the field below: it runs to the end of the line where its brackets
    close; when it spans lines, the last of them may go on after a ``;`` with the meaning
    (``(inherited) n_heads (None: 4, ...`` / ``... dims), expand_v = 1; key dim = ...``).
    Returns ``(note, the meaning's lines)``."""
    if not block:
        return "", block
    text = " ".join(block)
    at = text.find("(inherited)")
    if at > 0:  # `meaning; (inherited) note`: the rest of the block is the note
        return text[at:].removeprefix("(inherited)").strip(), [text[:at].rstrip(" ;,")]
    if at < 0:
        return "", block
    depth, end = 0, len(block) - 1
    for i, line in enumerate(block):
        depth += line.count("(") - line.count(")")
        if depth <= 0:
            end = i
            break
    note, rest = block[: end + 1], block[end + 1:]
    if end > 0:
        last, cut = note[-1], None
        # the first `;` after the brackets opened on the earlier lines close
        depth = sum(ln.count("(") - ln.count(")") for ln in note[:-1])
        for j, ch in enumerate(last):
            depth += (ch == "(") - (ch == ")")
            if ch == ";" and depth <= 0:
                cut = j
                break
        if cut is not None:
            note = [*note[:-1], last[:cut]]
            rest = [last[cut + 1:].strip(), *rest]
    return " ".join(note).removeprefix("(inherited)").strip(), [r for r in rest if r]


def _docstring_names(klass: type, name: str) -> str:
    doc = inspect.cleandoc(klass.__dict__.get("__doc__") or "")
    if doc.startswith(f"{klass.__name__}("):  # the signature dataclasses writes when none is given
        return ""
    first = doc.split("\n\n")[0]
    return " ".join(first.split()) if re.search(rf"\b{re.escape(name)}\b", first) else ""


def option_docs(mixer: type) -> tuple[list[OptionDoc], list[str]]:
    """Every option of ``mixer.Options`` in field order, with its type, default and meaning, and
    the ``(inherited)`` notes of the mixer's own ``Options``. The meaning is, in this order:

    - the ``#:`` comment lines right above the field, in the class that defines it (the mixer's
      ``Options``, or an option group it inherits: ``StepSizeOptions``, ``HeadOptions``, ...);
    - else those of the nearest field above it in the same class, when they name it
      (``#: dt is initialised log-uniformly in [dt_min, dt_max]`` above ``dt_min`` also
      documents ``dt_max``);
    - else the first paragraph of the defining class's docstring, when it names the field;
    - else ``""``: undocumented (``tests/train/test_discover.py`` lists those).
    """
    options = mixer.Options
    defaults = dataclasses.asdict(options())
    parsed: dict[type, tuple[dict[str, list[str]], list[str]]] = {}
    docs = []
    for f in dataclasses.fields(options):
        owner = next(k for k in options.__mro__ if f.name in k.__dict__.get("__annotations__", {}))
        if owner not in parsed:
            parsed[owner] = _comment_blocks(owner)
        blocks = parsed[owner][0]
        meaning, source = " ".join(blocks.get(f.name, [])), "comment"
        if not meaning:
            own = list(owner.__dict__["__annotations__"])
            above = [n for n in own[: own.index(f.name)] if n in blocks]
            text = " ".join(blocks[above[-1]]) if above else ""
            if re.search(rf"\b{re.escape(f.name)}\b", text):
                meaning, source = text, "shared"
        if not meaning:
            meaning, source = _docstring_names(owner, f.name), "docstring"
        if not meaning:
            source = ""
        if owner is not options:  # an inherited field: what the mixer's notes say of it
            said = [n for n in parsed.setdefault(options, _comment_blocks(options))[1]
                    if re.search(rf"\b{re.escape(f.name)}\b", n)
                    and re.sub(r"[\w]+_\w+|[\s,;]", "", n)]
            meaning = " ".join([meaning, *(f"(here: {n})" for n in said)]).strip()
        type_ = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        docs.append(OptionDoc(f.name, type_, defaults[f.name], meaning, source, owner.__qualname__))
    if options not in parsed and options.__dict__.get("__annotations__"):
        parsed[options] = _comment_blocks(options)
    return docs, parsed[options][1] if options in parsed else []


# -- the sections -------------------------------------------------------------------------


def archs_data() -> dict[str, Any]:
    from postformer.arch.config import ARCHS

    return {name: {"pattern": spec["pattern"], "mlp": spec.get("mlp"), "about": spec["about"]}
            for name, spec in ARCHS.items()}


def preset_counts() -> dict[str, list[int]]:
    """``{"ARCH/SIZE": [N, N_non_embedding]}`` of every preset at ``PRESET_VOCAB``.

    The counts are a function of the code alone, so they are kept in the cache folder
    (``$POSTFORMER_CACHE/presets/<hash of arch/'s source and torch's version>.json``) and
    counted (``arch.flops.param_counts``) only when the arch code changed: counting builds
    a block of every distinct kind on the meta device, which imports torch's decompositions
    and Dynamo (about a second), more than the rest of ``postformer list`` together."""
    import hashlib

    import torch

    import postformer.arch as arch_pkg
    from postformer.arch.config import PRESETS, ModelConfig
    from postformer.arch.flops import param_counts

    from .corpus import default_cache_dir
    from .fileio import atomic_write

    digest = hashlib.sha256(f"{torch.__version__} {PRESET_VOCAB}".encode())
    root = Path(arch_pkg.__file__).parent
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    cache = default_cache_dir() / "presets" / f"{digest.hexdigest()[:16]}.json"
    try:
        counts = json.loads(cache.read_text())
        if set(counts) == {f"{a}/{s}" for a in PRESETS for s in PRESETS[a]}:
            return counts
    except (OSError, ValueError):  # absent or damaged: count again
        pass
    counts = {f"{arch}/{size}": list(param_counts(ModelConfig.from_preset(arch, size,
                                                                          vocab_size=PRESET_VOCAB)))
              for arch in PRESETS for size in PRESETS[arch]}
    try:
        atomic_write(cache, json.dumps(counts) + "\n")
    except OSError:  # a read-only cache folder: list anyway, count again next time
        pass
    return counts


def presets_data() -> list[dict[str, Any]]:
    """One row per preset: its name, shape and parameters at ``PRESET_VOCAB``
    (:func:`preset_counts`)."""
    from postformer.arch.config import PRESETS, ModelConfig

    counts = preset_counts()
    rows = []
    for arch, sizes in PRESETS.items():
        for size in sizes:
            cfg = ModelConfig.from_preset(arch, size, vocab_size=PRESET_VOCAB)
            n, n_nonemb = counts[f"{arch}/{size}"]
            rows.append({
                "name": f"{arch}/{size}", "arch": arch, "size": size, "d_model": cfg.d_model,
                "n_layers": cfg.n_layers, "pattern": cfg.pattern, "d_ff": cfg.ff_dim,
                "mlp": [cfg.block_has_mlp(m) for m in cfg.pattern], "mixers": cfg.mixers,
                "vocab_size": PRESET_VOCAB, "params": n, "params_non_embedding": n_nonemb,
            })
    return rows


def mixers_data() -> dict[str, Any]:
    from postformer.arch.registry import MIXERS

    out = {}
    for name, cls in MIXERS.items():
        docs, notes = option_docs(cls)
        doc = (inspect.getdoc(cls) or "").split("\n\n")[0]
        out[name] = {
            "class": f"{cls.__module__}.{cls.__qualname__}", "about": " ".join(doc.split()),
            "has_mlp": cls.has_mlp, "notes": notes,
            "options": [dataclasses.asdict(d) for d in docs],
        }
    return out


def tokenizers_data() -> dict[str, Any]:
    from postformer.train.tokenizer import TOKENIZERS

    named = {}
    for name, cls in TOKENIZERS.items():
        doc = (inspect.getdoc(cls) or "").split("\n\n")[0]
        named[name] = {"class": f"{cls.__module__}.{cls.__qualname__}",
                       "vocab_size": getattr(cls, "vocab_size", None), "about": " ".join(doc.split())}
    return {
        "option": "--data.tokenizer (data: {tokenizer: ...}); default: bytes",
        "named": named,
        "file": "a path to a Hugging Face tokenizer.json, or a folder holding one (e.g. written "
                "by `postformer tokenizer train --vocab_size N --out tok.json`)",
        "hub": "a Hugging Face hub name such as gpt2 (its tokenizer.json; needs a network or the "
               "local hub cache)",
    }


def repo_root() -> Path | None:
    """The repository this package runs from (an editable install), if it has ``configs/``."""
    import postformer

    root = Path(postformer.__file__).resolve().parent.parent
    return root if (root / "configs").is_dir() else None


def _describe(path: Path) -> str:
    """The first sentence of a YAML file's leading comment block."""
    text = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.startswith("#"):
            break
        text.append(line.lstrip("#").strip())
    joined = " ".join(t for t in text if t)
    # the first full stop that ends a sentence (not "et al.", "e.g.", "i.e.", "vs.")
    match = re.match(r"(.+?(?<!\bal)(?<!\be\.g)(?<!\bi\.e)(?<!\bvs)\.)(\s|$)", joined)
    sentence = match.group(1) if match else joined
    return sentence if len(sentence) <= 160 else sentence[:157].rstrip() + "..."


def configs_data() -> dict[str, Any]:
    root = repo_root()
    if root is None:
        return {"root": None, "files": {}}
    files = {}
    for kind, how in CONFIG_KINDS.items():
        paths = sorted((root / "configs" / kind).rglob("*.yaml"))
        files[kind] = {"run": how, "files": [
            {"path": str(p.relative_to(root)), "about": _describe(p)} for p in paths]}
    return {"root": str(root), "files": files}


DATA = {"archs": archs_data, "presets": presets_data, "mixers": mixers_data,
        "tokenizers": tokenizers_data, "configs": configs_data}


# -- text ---------------------------------------------------------------------------------


def _millions(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n < 1e9 else f"{n / 1e9:.2f}B"


def _wrap(text: str, indent: int, width: int = 100) -> str:
    return textwrap.fill(text, width=width, initial_indent=" " * indent,
                         subsequent_indent=" " * indent, break_on_hyphens=False)


def render_archs(data: dict[str, Any]) -> list[str]:
    width = max(map(len, data))
    lines = ["archs (arch/config.py ARCHS; each has the presets ARCH/SIZE below):"]
    for name, spec in data.items():
        mlp = " (MLP after every mixer)" if spec["mlp"] else ""
        lines.append(f"  {name:<{width}}  [{', '.join(spec['pattern'])}]{mlp}  {spec['about']}")
    return lines


def render_presets(rows: list[dict[str, Any]]) -> list[str]:
    lines = [f"presets (arch/config.py PRESETS; by name from any folder: postformer fit --model.preset "
             f"ARCH/SIZE; parameters at a {PRESET_VOCAB}-token vocabulary, embeddings tied, and "
             "without embeddings):"]
    head = ("name", "d_model", "n_layers", "d_ff", "params", "non-emb", "pattern / mixer options")
    table = [head]
    for r in rows:
        opts = "; ".join(f"{m}: " + ", ".join(f"{k}={v}" for k, v in o.items())
                         for m, o in r["mixers"].items())
        pattern = ",".join(r["pattern"]) + (" (all MLP)" if all(r["mlp"]) and not
                                            all(_mixer_mlp(m) for m in r["pattern"]) else "")
        table.append((r["name"], str(r["d_model"]), str(r["n_layers"]),
                      str(r["d_ff"]) if any(r["mlp"]) else "-", _millions(r["params"]),
                      _millions(r["params_non_embedding"]), f"{pattern}  {opts}".rstrip()))
    widths = [max(len(row[i]) for row in table) for i in range(len(head) - 1)]
    for row in table:
        cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  " + "  ".join(cells) + "  " + row[-1])
    return lines


def _mixer_mlp(name: str) -> bool:
    from postformer.arch.registry import MIXERS

    return MIXERS[name].has_mlp


def render_mixers(data: dict[str, Any]) -> list[str]:
    lines = ["mixers (arch/registry.py MIXERS): every option, its type, default and meaning; set them "
             "per mixer in model.config.mixers, e.g. --model.config.mixers '{gdn: {conv_size: 0}}'"]
    for name, m in data.items():
        lines += ["", f"{name}: {m['about']} ({m['class']}; "
                      f"{'an MLP after it' if m['has_mlp'] else 'no MLP'} unless model.config.mlp says)"]
        for o in m["options"]:
            lines.append(f"  {o['name']}: {o['type']} = {o['default']!r}")
            lines.append(_wrap(o["meaning"] or "(undocumented)", 6))
    return lines


def render_tokenizers(data: dict[str, Any]) -> list[str]:
    lines = [f"tokenizers ({data['option']}):"]
    for name, t in data["named"].items():
        lines.append(f"  {name}  vocab {t['vocab_size']}: {t['about']}")
    lines.append(_wrap(f"a file: {data['file']}", 2))
    lines.append(_wrap(f"a hub name: {data['hub']}", 2))
    return lines


def render_configs(data: dict[str, Any]) -> list[str]:
    if data["root"] is None:
        return ["configs: none here (the YAML files live in the repository's configs/ folder; this "
                "install does not run from a checkout)"]
    lines = [f"configs (under {data['root']}):"]
    for kind, group in data["files"].items():
        lines.append(f"  {kind}/  ({group['run']})")
        width = max((len(f["path"]) for f in group["files"]), default=0)
        for f in group["files"]:
            lines.append(f"    {f['path']:<{width}}  {f['about']}")
    return lines


RENDER = {"archs": render_archs, "presets": render_presets, "mixers": render_mixers,
          "tokenizers": render_tokenizers, "configs": render_configs}


def list_main(argv: Sequence[str]) -> None:
    """``postformer list [SECTION ...] [--json]``."""
    parser = argparse.ArgumentParser(
        prog="postformer list", description="List what this install offers: " + ", ".join(SECTIONS)
        + " (all of them when none is named).")
    parser.add_argument("sections", nargs="*", metavar="SECTION", help=f"one of {', '.join(SECTIONS)}")
    parser.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")
    args = parser.parse_args(list(argv))
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section {unknown[0]!r}; known: {', '.join(SECTIONS)}")
    sections = list(dict.fromkeys(args.sections)) or list(SECTIONS)
    data = {name: DATA[name]() for name in sections}
    if args.json:
        json.dump(data, sys.stdout, indent=1, default=str)
        print()
        return
    blocks = ["\n".join(RENDER[name](data[name])) for name in sections]
    print("\n\n".join(blocks))
