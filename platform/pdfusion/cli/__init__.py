"""The `pdfusion` console script: non-Ray utilities (simulate a PDF, make a particle, import data, sample).

Each subcommand lives in its own module exposing `register(subparsers)`; the handler is stored as
`func` on the parsed namespace. Errors a user can fix exit with status 2 and a one-line message:
``ConfigError`` (the package's user-error type, raised by ``pdfusion.limits`` and every config) and the
``ValueError`` / ``FileNotFoundError`` of the readers, plus the ``OSError`` of a disk that is full or
read-only. Bugs still show their traceback.

`pdfusion --help` imports every subcommand module, so each imports only light modules at its top; what a
handler alone needs (torch, pymatgen, the simulator, the model) is imported inside it. This package is the
one place where function-local `pdfusion` imports are the rule.
"""

from __future__ import annotations

import argparse
import errno
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


def _one_line(exc: BaseException) -> str:
    """The error as one line: an OSError says which file and what the system said (disk full, read-only)."""
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError) and exc.errno is not None:
        where = f"{exc.filename}: " if exc.filename else ""
        hint = {errno.ENOSPC: "; free space or write elsewhere", errno.EROFS: "; write to a writable folder",
                errno.EACCES: "; check the folder's permissions", errno.ENOTDIR: "; a parent of this path is a file",
                errno.EDQUOT: "; free space or write elsewhere"}.get(exc.errno, "")
        text = f"cannot write or read {where}{exc.strerror or exc}{hint}"
    elif isinstance(exc, KeyError):
        text = str(exc.args[0]) if exc.args else "missing key"
    elif isinstance(exc, MemoryError):
        text = "out of memory; lower the sizes asked for (see --max-memory / --max-atoms)"
    else:
        text = str(exc)
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, ValueError, OSError, KeyError, MemoryError) as exc:
        print(f"pdfusion {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
