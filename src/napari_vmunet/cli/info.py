"""``napari-vmunet info``, the install doctor: versions, devices, which scan backend runs where
and why the others don't, and what a checkpoint contains."""

from __future__ import annotations

import argparse
import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def _version_of(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def environment_report() -> list[str]:
    import torch

    from .. import __version__
    from ..ops.scan import ENV_VAR, backend_report, resolve_backend

    lines = [
        f"napari-vmunet {__version__}",
        f"python        {platform.python_version()} ({platform.system()} {platform.machine()})",
        f"torch         {torch.__version__} ({_torch_build(torch)}), "
        f"{torch.get_num_threads()} CPU threads",
    ]
    for dist in ("napari", "numba", "safetensors", "triton", "mamba-ssm"):
        lines.append(f"{dist:13s} {_version_of(dist)}")

    devices = ["cpu"]
    lines.append("devices:")
    lines.append(f"  cpu     {platform.processor() or platform.machine()}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            free, total = torch.cuda.mem_get_info(i)
            lines.append(f"  cuda:{i}  {props.name}, compute capability "
                         f"{props.major}.{props.minor}, {free / 2**30:.1f} of "
                         f"{total / 2**30:.1f} GiB free")
            devices.append(f"cuda:{i}")
    elif torch.version.cuda:
        lines.append("  cuda    this torch is built for CUDA but sees no GPU (driver missing?)")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        lines.append("  mps     Apple GPU")
        devices.append("mps")

    lines.append("selective-scan backends:")
    for device in dict.fromkeys(d.split(":")[0] for d in devices):
        try:
            chosen = resolve_backend(device)
        except RuntimeError as exc:  # a forced backend that cannot run here
            chosen, forced_error = None, str(exc)
        else:
            forced_error = None
        lines.append(f"  on {device}: {chosen or 'none'}"
                     + (f"  ({forced_error})" if forced_error else ""))
        for name, description, reason in backend_report(device):
            mark = "*" if name == chosen else " "
            state = "available" if reason is None else f"unavailable: {reason}"
            lines.append(f"    {mark} {name:10s} {description}; {state}")
    if os.environ.get(ENV_VAR):
        lines.append(f"  {ENV_VAR}={os.environ[ENV_VAR]} forces the backend")
    else:
        lines.append(f"  (set {ENV_VAR}=<name> to force one)")
    return lines


def _torch_build(torch) -> str:
    if torch.version.cuda:
        return f"CUDA {torch.version.cuda}"
    if getattr(torch.version, "hip", None):
        return f"ROCm {torch.version.hip}"
    return "CPU only"


def checkpoint_report(path: str | Path) -> list[str]:
    from ..checkpoint import load_checkpoint

    model = load_checkpoint(path)
    cfg, info = model.config, model.info
    classes = info.class_names or (
        ["foreground"] if cfg.num_classes == 1
        else ["background", *(f"class {i}" for i in range(1, cfg.num_classes))]
    )
    output = "sigmoid probability" if cfg.num_classes == 1 else "logits (softmax/argmax)"
    lines = [
        f"checkpoint    {Path(path).resolve()}",
        f"sha256        {info.sha256}",
        f"parameters    {model.num_parameters():,}",
        f"classes       {cfg.num_classes}: {', '.join(classes)} ({output})",
        f"input         {cfg.in_chans} channels (1-channel images are tiled), sides multiples "
        f"of {cfg.size_multiple}"
        + (f", trained at {cfg.image_size}x{cfg.image_size}" if cfg.image_size else ""),
        f"architecture  dims {list(cfg.dims)}, depths {list(cfg.depths)}, decoder depths "
        f"{list(cfg.depths_decoder)}, d_state {cfg.d_state}",
    ]
    if cfg.head_hidden:
        lines.append(f"output        a pixel classifier on the network's features "
                     f"({cfg.head_hidden} hidden, {cfg.head_priors} shape-prior channel(s)), "
                     "fitted by fine-tuning")
    if info.recipe is not None:
        lines.append(f"recipe        {info.recipe.name}: {info.recipe.description}")
    else:
        lines.append("recipe        none stored (a file from the authors' code); choose the "
                     "preprocessing when you segment")
    for key, value in info.provenance.items():
        if value not in (None, "", [], {}):
            lines.append(f"provenance    {key}: {value}")
    return lines


def run(args: argparse.Namespace) -> int:
    for line in environment_report():
        print(line)
    if args.checkpoint:
        print()
        for line in checkpoint_report(args.checkpoint):
            print(line)
    return 0


def add_parsers(commands) -> None:
    info = commands.add_parser(
        "info",
        help="what is installed, which devices and scan backends work, what a checkpoint holds",
        description="Install doctor: package, torch and napari versions, the torch build, "
        "CUDA/MPS devices and memory, the selective-scan backend in use and why the others are "
        "not, and for a checkpoint its config, classes, recipe and parameter count.",
    )
    info.add_argument("checkpoint", nargs="?", help="a .pth or .safetensors checkpoint to describe")
    info.set_defaults(run=run)
