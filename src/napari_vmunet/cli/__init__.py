"""``napari-vmunet``: the command line.

Each sub-command is a thin layer over the engine: parse arguments, call it, print what happened.
Errors a user can fix are printed as one message (no traceback) with exit code 2. The parser is
built without torch (``--help`` stays instant); a sub-command imports what it needs when it runs.

Sub-commands: ``info`` (:mod:`.info`), ``segment`` and ``demo`` (:mod:`.segment`),
``finetune`` and ``train`` (:mod:`.train`); :mod:`.distributed` is what runs under torchrun.
"""

from __future__ import annotations

import argparse
import sys

from . import info, segment, train


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="napari-vmunet",
        description="VM-UNet segmentation for napari, headless.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (info, segment, train):
        module.add_parsers(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..checkpoint import CheckpointError

    try:
        return args.run(args)
    except (CheckpointError, OSError, ValueError, RuntimeError, MemoryError) as exc:
        print(f"napari-vmunet {args.command}: error: {exc}", file=sys.stderr)
        return 2
