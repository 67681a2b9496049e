"""The ``postformer`` command: one entry point, subcommands routed to their packages.

    postformer fit|validate|test --config CONFIG [...]           LightningCLI (postformer.train)
    postformer compare CONFIG [CONFIG ...] --out DIR             a one-size study of fit configs
    postformer study STUDY.yaml --out DIR [--plan|--list]        a scaling study (postformer.scaling)
    postformer probe PROBE.yaml --out DIR                        synthetic probes (MQAR, MAD)
    postformer report DIR [--probes PROBE_DIR]                   the verdict of a study folder
    postformer tokenizer train --vocab_size N --out tok.json     a byte-level BPE on a corpus

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


def _compare(argv: list[str]) -> None:
    from postformer.scaling.compare import compare_main

    compare_main(argv[1:])


def _study(argv: list[str]) -> None:
    from postformer.scaling.runner import study_main

    study_main(argv[1:])


def _probe(argv: list[str]) -> None:
    from postformer.scaling.probe import probe_main

    probe_main(argv[1:])


def _tokenizer(argv: list[str]) -> None:
    from postformer.train.tokenizer import tokenizer_main

    tokenizer_main(argv[1:])


def _report(argv: list[str]) -> None:
    try:
        from postformer.scaling.report import report_main
    except ImportError as err:
        print(f"postformer report: the report is not available ({err})", file=sys.stderr)
        raise SystemExit(1) from None
    report_main(argv[1:])


# name -> (runner taking the full argv, one-line help)
SUBCOMMANDS: dict[str, tuple[Callable[[list[str]], None], str]] = {
    "fit": (_lightning, "train a model (LightningCLI; see `postformer fit --help`)"),
    "validate": (_lightning, "evaluate on the validation split"),
    "test": (_lightning, "evaluate on the test split"),
    "compare": (_compare, "train several fit configs as a one-size study and compare them"),
    "study": (_study, "train a scaling study (LR tuning, IsoFLOP budgets, seeds) into a "
                      "folder, or --plan / --list its runs"),
    "probe": (_probe, "train synthetic probes (MQAR, the MAD tasks) over archs x tasks x widths "
                      "x LRs into a folder, with a report"),
    "report": (_report, "write the verdict of a study folder or a results.csv (report.json, "
                        ".md, .html)"),
    "tokenizer": (_tokenizer, "train a byte-level BPE tokenizer on a corpus (`tokenizer train "
                              "--vocab_size N --out tok.json`)"),
}


def usage() -> str:
    width = max(len(n) for n in SUBCOMMANDS)
    lines = ["usage: postformer SUBCOMMAND [options]", "", "subcommands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in SUBCOMMANDS.items()]
    lines += ["", "`postformer SUBCOMMAND --help` shows a subcommand's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
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
