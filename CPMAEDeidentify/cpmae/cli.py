"""The ``cpmae`` command.

Each sub-command lives in its own module under ``cpmae.commands`` and exposes
``register(subparsers)``; this file only assembles them (every one of them: a module that does
not import is an error, never a command quietly missing from ``--help``) and turns ``CPMAEError`` into one
line on stderr plus a documented exit code (see ``cpmae.errors``), never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from cpmae import __version__
from cpmae.errors import EXIT_CANCELLED, CPMAEError

# Order is the order shown in ``cpmae --help``.
COMMANDS = [
    "deidentify",
    "deidentify_batch",
    "demo",
    "mask",
    "render",
    "fetch_samples",
    "generate_cohort",
    "prepare",
    "train",
    "encode",
    "export",
    "audit",
    "review",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cpmae",
        description="Learned face remodeling for 3D head MRI: the brain stays bit-identical, "
        "skull and face are resynthesised by a conditional token model (CP-MAE).",
    )
    parser.add_argument("--version", action="version", version=f"cpmae {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:  # a command that fails to import is a broken engine: let it raise
        importlib.import_module(f"cpmae.commands.{name}").register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CPMAEError as exc:
        print(f"cpmae: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("cpmae: cancelled", file=sys.stderr)
        return EXIT_CANCELLED


if __name__ == "__main__":
    sys.exit(main())
