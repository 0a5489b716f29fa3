"""``napari-vmunet``: the command line.

Each sub-command is a thin layer over the engine: parse arguments, call it, print what happened.
Errors a user can fix are printed as one message (no traceback) with exit code 2.
"""

from __future__ import annotations

import argparse
import sys


def _info(args: argparse.Namespace) -> int:
    from .info import checkpoint_report, environment_report

    for line in environment_report():
        print(line)
    if args.checkpoint:
        print()
        for line in checkpoint_report(args.checkpoint):
            print(line)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="napari-vmunet",
        description="VM-UNet segmentation for napari, headless.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    info = commands.add_parser(
        "info",
        help="what is installed, which devices and scan backends work, what a checkpoint holds",
        description="Install doctor: package, torch and napari versions, the torch build, "
        "CUDA/MPS devices and memory, the selective-scan backend in use and why the others are "
        "not, and for a checkpoint its config, classes, recipe and parameter count.",
    )
    info.add_argument("checkpoint", nargs="?", help="a .pth or .safetensors checkpoint to describe")
    info.set_defaults(run=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .checkpoint import CheckpointError

    try:
        return args.run(args)
    except (CheckpointError, FileNotFoundError, FileExistsError, ValueError, RuntimeError) as exc:
        print(f"napari-vmunet {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
