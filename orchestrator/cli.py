"""`orchestrate`: the command-line entry point.

Each subcommand lives in its own module under ``orchestrator/commands/`` and exposes

    NAME: str                     # the subcommand word, e.g. "models"
    HELP: str                     # one line for ``orchestrate --help``
    def add_arguments(parser)     # fill an argparse parser (description/epilog carry examples)
    def run(args) -> int          # do the work, return the exit code

Commands are discovered from that folder, so adding a command never edits this file.
Logging is configured here and nowhere on import.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import pkgutil
import sys

from common.errors import InputError
from common.rundir import EXIT_BAD_INPUT, EXIT_INTERRUPTED
from orchestrator import commands as _commands_pkg
from orchestrator.cliutil import OneLineParser

# OSErrors that describe the machine or the user's paths, printed as one line (exit 2), not a traceback.
ENVIRONMENT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR,
                      errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG)


def _command_modules():
    mods = []
    for info in sorted(pkgutil.iter_modules(_commands_pkg.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{_commands_pkg.__name__}.{info.name}")
        if hasattr(mod, "NAME") and hasattr(mod, "run"):
            mods.append(mod)
    return mods


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="orchestrate",
        description="Train, sweep, resume and compare speech-enhancement models "
        "(MambAttention, RWSA-MambaUNet, SEMamba, MP-SENet) locally, on SLURM or on Ray.",
        epilog="Run `orchestrate COMMAND --help` for the examples of each command.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _command_modules():
        p = sub.add_parser(
            mod.NAME,
            help=mod.HELP,
            description=getattr(mod, "DESCRIPTION", mod.HELP),
            epilog=getattr(mod, "EPILOG", None),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def printable_output() -> None:
    """Names from data may hold bytes that are not UTF-8 (file names, tar members, manifest entries, kept
    as surrogates): stdout/stderr write them as backslash escapes instead of failing on them."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError):  # not a text file (a test's replacement): leave it
            pass


def main(argv: list[str] | None = None) -> int:
    printable_output()
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not getattr(args, "_run", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:  # the launchers have already asked running cells to checkpoint
        print("interrupted (run the same command again to resume)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except InputError as e:  # bad input of any package: one line, exit 2
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as e:  # the machine, not the code: full/read-only disk, a path that is a file, ...
        if e.errno not in ENVIRONMENT_ERRNOS:
            raise
        where = e.filename if e.filename is not None else ""
        print(f"error: {where}{': ' if where else ''}{e.strerror or e}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
