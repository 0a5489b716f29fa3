"""Check napari-vmunet against the authors' own VM-UNet code, on the CPU.

Builds models with the authors' ``models/vmunet`` code (from a checkout of JCruan519/VM-UNet
that you provide; nothing of it is part of this project), saves them exactly the way their
training scripts do, loads those files with ``napari_vmunet.load_checkpoint`` and compares the
outputs on random inputs:

- ISIC config: ``best.pth`` written after thop's ``profile`` (as ``train.py`` does, so the file
  carries thop's ``total_ops``/``total_params`` buffers);
- Synapse config (9 classes) wrapped in DataParallel: ``latest.pth`` with
  ``model_state_dict`` (``module.`` prefix), optimizer and scheduler state and NumPy loss scalars,
  and ``best.pth`` from ``model.module.state_dict()`` (as ``train_synapse.py`` does).

The authors' code needs mamba-ssm's CUDA kernel and timm; on a CPU machine both are replaced by
stand-ins: the selective scan by napari-vmunet's float64 reference recurrence (itself tested
against mamba's semantics), timm's three helpers by their PyTorch equivalents.

    python benchmarks/authors_parity.py --authors-repo /path/to/VM-UNet [--out-dir DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch


def _install_stand_ins() -> None:
    from napari_vmunet.ops.scan import reference

    def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                          delta_softplus=False, return_last_state=False):
        assert z is None and not return_last_state
        out = reference.selective_scan(
            u.double(), delta.double(), A.double(), B.double(), C.double(),
            None if D is None else D.double(),
            None if delta_bias is None else delta_bias.double(), delta_softplus,
        )
        return out.to(u.dtype)

    interface = types.ModuleType("mamba_ssm.ops.selective_scan_interface")
    interface.selective_scan_fn = selective_scan_fn
    interface.selective_scan_ref = selective_scan_fn
    for name in ("mamba_ssm", "mamba_ssm.ops"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["mamba_ssm.ops.selective_scan_interface"] = interface

    class DropPath(torch.nn.Module):
        def __init__(self, drop_prob=0.0):
            super().__init__()
            self.drop_prob = drop_prob

        def forward(self, x):
            return x  # evaluation only

    layers = types.ModuleType("timm.models.layers")
    layers.DropPath = DropPath
    layers.to_2tuple = lambda x: (x, x)
    layers.trunc_normal_ = torch.nn.init.trunc_normal_
    for name in ("timm", "timm.models"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["timm.models.layers"] = layers


def _import_authors(repo: Path):
    package = types.ModuleType("authors_vmunet")
    package.__path__ = [str(repo / "models" / "vmunet")]
    sys.modules["authors_vmunet"] = package
    for name in ("vmamba", "vmunet"):
        spec = importlib.util.spec_from_file_location(
            f"authors_vmunet.{name}", repo / "models" / "vmunet" / f"{name}.py"
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return sys.modules["authors_vmunet.vmunet"].VMUNet


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Trained-looking weights: the authors' init leaves LayerNorms at (1, 0) and biases at 0,
    which would hide a swapped norm or bias."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_logs"):
                p.add_(0.3 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=g))


def _relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours.double() - theirs.double()).norm() / theirs.double().norm())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--authors-repo", type=Path, required=True,
                        help="checkout of JCruan519/VM-UNet")
    parser.add_argument("--out-dir", type=Path, help="keep the written checkpoints here")
    parser.add_argument("--size", type=int, default=64, help="input side (multiple of 32)")
    args = parser.parse_args(argv)

    _install_stand_ins()
    AuthorsVMUNet = _import_authors(args.authors_repo)
    from napari_vmunet import load_checkpoint

    out_dir = args.out_dir or Path(tempfile.mkdtemp(prefix="vmunet-parity-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    results = []

    # ISIC: train.py profiles with thop, then saves model.state_dict() as best.pth.
    isic = AuthorsVMUNet(num_classes=1, input_channels=3, depths=[2, 2, 2, 2],
                         depths_decoder=[2, 2, 2, 1], drop_path_rate=0.2)
    _randomise(isic, 1)
    try:
        from thop import profile

        profile(isic, inputs=(torch.randn(1, 3, args.size, args.size),), verbose=False)
    except ImportError:
        print("thop is not installed: best.pth is written without thop's buffers")
    isic.eval()
    isic_path = out_dir / "isic-best.pth"
    torch.save(isic.state_dict(), isic_path)
    n_keys = len(isic.state_dict())

    # Synapse: train_synapse.py wraps in DataParallel; latest.pth from the wrapper's state_dict
    # (module. prefix) with optimizer/scheduler state and NumPy losses; best.pth from .module.
    synapse = AuthorsVMUNet(num_classes=9, input_channels=3, depths=[2, 2, 2, 2],
                            depths_decoder=[2, 2, 2, 1], drop_path_rate=0.2)
    _randomise(synapse, 2)
    parallel = torch.nn.DataParallel(synapse)
    optimizer = torch.optim.AdamW(parallel.parameters(), lr=1e-3, weight_decay=1e-2)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=100, eta_min=1e-5)
    synapse.eval()
    latest_path, best_path = out_dir / "synapse-latest.pth", out_dir / "synapse-best.pth"
    torch.save({
        "epoch": 7, "min_loss": np.float64(0.41), "min_epoch": 5, "loss": np.mean([0.4, 0.5]),
        "model_state_dict": parallel.state_dict(),
        "optimizer_state_dict": optimizer.state_dict(),
        "scheduler_state_dict": scheduler.state_dict(),
    }, latest_path)
    torch.save(parallel.module.state_dict(), best_path)

    cases = [
        ("isic best.pth (thop keys)", isic, isic_path, 3),
        ("isic best.pth, 1-channel input", isic, isic_path, 1),
        ("synapse latest.pth (DataParallel)", synapse, latest_path, 1),
        ("synapse best.pth", synapse, best_path, 3),
    ]
    for label, theirs, path, channels in cases:
        ours = load_checkpoint(path)
        x = torch.randn(2, channels, args.size, args.size)
        with torch.no_grad():
            expected = theirs(x)
            got = ours(x)
        err = _relative_error(got, expected)
        results.append((label, err, tuple(got.shape)))

    print(f"authors' ISIC state_dict after thop: {n_keys} keys (222 are weights)")
    print(f"{'file':40s} {'output':>18s} {'rel. error':>11s}")
    for label, err, shape in results:
        print(f"{label:40s} {shape!s:>18s} {err:11.2e}")
    worst = max(err for _, err, _ in results)
    ok = worst <= 1e-5
    print(f"worst relative error {worst:.2e}: {'PASS' if ok else 'FAIL'} (limit 1e-5)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
