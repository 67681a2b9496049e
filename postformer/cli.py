"""The ``postformer`` command: one entry point, subcommands routed to their packages.

    postformer fit|validate|test --config CONFIG [...]           LightningCLI (postformer.train)
    postformer compare CONFIG [CONFIG ...] --out DIR             a one-size study of fit configs
    postformer study STUDY.yaml --out DIR [--plan|--list]        a scaling study (postformer.scaling)
    postformer probe PROBE.yaml --out DIR                        synthetic probes (MQAR, MAD)
    postformer report DIR [--probes PROBE_DIR]                   the verdict of a study folder
    postformer tokenizer train --vocab_size N --out tok.json     a byte-level BPE on a corpus
    postformer generate|export|eval|list ...                     use a trained model; discover
    postformer --version

Imports are lazy so ``postformer --help`` answers at once.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence


def _lightning(argv: list[str]) -> None:
    from postformer.train.callbacks import NonFiniteLossError
    from postformer.train.cli import lightning_main
    from postformer.train.corpus import DataError

    try:
        lightning_main(argv)
    except DataError as err:  # found once training started: the data, not the config's form
        print(f"postformer {argv[0]}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except NonFiniteLossError as err:
        print(f"postformer {argv[0]}: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        print(f"\npostformer {argv[0]}: interrupted; a run resumes from its last checkpoint "
              "with --ckpt_path RUN/checkpoints/last.ckpt", file=sys.stderr)
        raise SystemExit(130) from None


def _entry(target: str) -> Callable[[list[str]], None]:
    """A subcommand whose ``main(argv)`` lives at ``"module:function"``, imported when it runs and
    called with the arguments after the subcommand's name."""

    def run(argv: list[str]) -> None:
        import importlib

        module, function = target.split(":")
        try:
            main_fn = getattr(importlib.import_module(module), function)
        except ImportError as err:
            print(f"postformer {argv[0]}: not available here ({err})", file=sys.stderr)
            raise SystemExit(1) from None
        main_fn(argv[1:])

    return run


# name -> (runner taking the full argv, one-line help)
SUBCOMMANDS: dict[str, tuple[Callable[[list[str]], None], str]] = {
    "fit": (_lightning, "train a model (LightningCLI; see `postformer fit --help`)"),
    "validate": (_lightning, "evaluate on the validation split"),
    "test": (_lightning, "evaluate on the test split"),
    "generate": (_entry("postformer.train.generate:generate_main"),
                 "sample text from a checkpoint or an exported model, streamed as it is produced"),
    "export": (_entry("postformer.train.export:export_main"),
               "write a checkpoint as model.safetensors + config.json + tokenizer files"),
    "eval": (_entry("postformer.train.evaluate:eval_main"),
             "evaluate a checkpoint or an export with lm-evaluation-harness tasks"),
    "list": (_entry("postformer.train.discover:list_main"),
             "list archs, presets, mixers and their options, tokenizers, study and probe configs"),
    "compare": (_entry("postformer.scaling.cli:compare_main"),
                "train several fit configs as a one-size study and compare them"),
    "study": (_entry("postformer.scaling.cli:study_main"),
              "train a scaling study (LR tuning, IsoFLOP budgets, seeds) into a folder, or --plan / "
              "--list its runs"),
    "probe": (_entry("postformer.scaling.cli:probe_main"),
              "train synthetic probes (MQAR, the MAD tasks) over archs x tasks x widths x LRs into a "
              "folder, with a report"),
    "report": (_entry("postformer.scaling.cli:report_main"),
               "write the verdict of a study folder or a results.csv (report.json, .md, .html)"),
    "tokenizer": (_entry("postformer.train.tokenizer:tokenizer_main"),
                  "train a byte-level BPE tokenizer on a corpus (`tokenizer train --vocab_size N "
                  "--out tok.json`)"),
}


def usage() -> str:
    width = max(len(n) for n in SUBCOMMANDS)
    lines = ["usage: postformer SUBCOMMAND [options]   (postformer --version)", "", "subcommands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in SUBCOMMANDS.items()]
    lines += ["", "`postformer SUBCOMMAND --help` shows a subcommand's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0
    if args[0] in ("-V", "--version"):
        from postformer import __version__

        print(f"postformer {__version__}")
        return 0
    if args[0] not in SUBCOMMANDS:
        print(usage(), file=sys.stderr)
        print(f"\npostformer: error: unknown subcommand {args[0]!r}; known: {', '.join(SUBCOMMANDS)}",
              file=sys.stderr)
        return 2
    SUBCOMMANDS[args[0]][0](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
