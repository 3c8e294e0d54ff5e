"""The ``medmtl`` console script.

Subcommands that train (``fit``, ``validate``, ``test``, ``predict``) go to LightningCLI
(``medmtl.lightning.cli``); the others are argparse subcommands registered by one module each. User error ->
one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from medmtl import __version__
from medmtl.errors import MedmtlError

EXIT_USER_ERROR = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (``medmtl data inspect: error: ...``) and exits 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see --help)\n")


# Handed to LightningCLI whole (it has its own parser); listed here so that `medmtl --help` shows them.
LIGHTNING_COMMANDS = {
    "fit": "train a model from a YAML config (configs/*.yaml)",
    "validate": "evaluate a checkpoint on the validation data of a config",
    "test": "evaluate a checkpoint on the test folder of a config",
    "predict": "write prediction files for the predict folder of a config",
}


def build_parser() -> argparse.ArgumentParser:
    from medmtl.cli import checkpoint, data, export, lesion, recon_seg

    parser = OneLineParser(prog="medmtl", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"medmtl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True
    for name, text in LIGHTNING_COMMANDS.items():
        sub.add_parser(name, help=f"{text} (see `medmtl {name} --help`)", add_help=False)
    data.register(sub)
    recon_seg.register(sub)
    lesion.register(sub)
    checkpoint.register(sub)
    export.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in LIGHTNING_COMMANDS:
            from medmtl.lightning.cli import run

            return run(argv)
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except MedmtlError as err:
        print(f"medmtl: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("medmtl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
