"""The `pdfusion` console script: non-Ray utilities (simulate a PDF, make a particle, import data, sample).

Each subcommand lives in its own module exposing `register(subparsers)`; the handler is stored as
`func` on the parsed namespace. Errors a user can fix exit with status 2 and a one-line message.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from pdfusion.config import ConfigError

# module name -> subcommand(s) it registers
_COMMANDS = ("pdf_cmd", "structure_cmd", "data_cmd", "sample_cmd", "solve_cmd", "fit_cmd")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pdfusion", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in _COMMANDS:
        importlib.import_module(f"pdfusion.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, ValueError, FileNotFoundError, KeyError) as exc:
        print(f"pdfusion {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
