"""The ``medmtl`` console script.

Subcommands that train (``fit``, ``validate``, ``test``, ``predict``) go to LightningCLI once the model issue
lands; the others are argparse subcommands registered by one module each. User error -> one line on stderr
and exit code 2.
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


def build_parser() -> argparse.ArgumentParser:
    from medmtl.cli import data

    parser = OneLineParser(prog="medmtl", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"medmtl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True
    data.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MedmtlError as err:
        print(f"medmtl: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("medmtl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
