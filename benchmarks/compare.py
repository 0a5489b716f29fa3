"""A previous version against the working tree, measured in the same run.

    python benchmarks/compare.py [--baseline HEAD | --baseline-src DIR] [--candidate REV]
                                 [--device cuda|cpu] [--rounds 2] [--repeats N]
                                 [--skip-inference | --skip-training]

benchmarks/RESULTS.md records every speed change next to the previous version measured in the
same run, on the same machine. This script does that comparison in one command. It exports the
``src/`` of ``--baseline`` (any git revision; default HEAD) and takes the working tree's as the
candidate (uncommitted changes included; ``--candidate REV`` exports a revision instead). Each
version is measured in fresh Python processes that import its own ``napari_vmunet`` (on the GPU
each tunes its Triton kernels anew), baseline and candidate alternating ``--rounds`` times. It
prints medians over the rounds, the ratio candidate / baseline, and how far the candidate's
logits are from the baseline's (when inference is measured).

Where the copy of the repository has no git history (a GPU machine it was copied to), export the
baseline where git is (``git archive REV src | tar -x -C DIR``), take DIR along, and pass
``--baseline-src DIR/src``.

Measured, on the released configuration (config B, random weights from seed 0, 256² inputs):

- ``cuda``: batch 32 in bf16 replayed as a CUDA graph (as the Segmenter runs it) and eager,
  batch 32 fp32 as a CUDA graph, batch 1 fp32 as a CUDA graph; a bf16 training step at batch
  32 (AdamW, BCE + Dice) and its peak memory, in a process that does nothing else; then the
  engine's own ``Trainer`` step, as fine-tuning runs it, at batch 32 and 8;
- ``cpu``: a batch-1 fp32 forward; a training step at batch 2.

Record the output in benchmarks/RESULTS.md with the device and versions it prints.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_RESULT = "RESULT "  # prefix of the worker's one line of JSON on stdout


def _seconds(fn, repeats: int, device: str) -> float:
    """Median seconds of ``fn`` after two warm-up calls (CUDA events on the GPU)."""
    # gpu.py and cpu.py are siblings: benchmarks/ is the script's folder, first on the path
    if device == "cuda":
        from gpu import timed

        return timed(fn, repeats)
    from cpu import _median_seconds

    return _median_seconds(fn, repeats, warmup=2)[0]


def _training_names():
    """The training names of whichever version is imported: the engine split training into a
    package (engine/training/) in December 2026; a baseline from before has one module."""
    from types import SimpleNamespace

    try:
        from napari_vmunet.engine.training.data import SliceSet
        from napari_vmunet.engine.training.losses import segmentation_loss
        from napari_vmunet.engine.training.settings import TrainingSettings
        from napari_vmunet.engine.training.trainer import Trainer
    except ImportError:
        from napari_vmunet.engine.training import (
            SliceSet,
            Trainer,
            TrainingSettings,
            segmentation_loss,
        )
    return SimpleNamespace(SliceSet=SliceSet, Trainer=Trainer, TrainingSettings=TrainingSettings,
                           segmentation_loss=segmentation_loss)


def _model(device: str):
    import torch

    from napari_vmunet.model import build_model

    torch.manual_seed(0)
    return build_model("isic").to(device)


def _inference(device: str, repeats: int, logits_path: Path) -> dict:
    import torch

    from napari_vmunet.engine.cuda_graphs import GraphedForward

    model = _model(device).eval()
    g = torch.Generator(device=device).manual_seed(1)
    results = {}
    if device == "cpu":
        x1 = torch.rand(1, 3, 256, 256, generator=g)
        with torch.no_grad():
            results["256² b1 fp32 ms"] = _seconds(lambda: model.forward_logits(x1), repeats,
                                                  device) * 1000
            torch.save(model.forward_logits(x1), logits_path)
        return results
    x32 = torch.rand(32, 3, 256, 256, device=device, generator=g)
    with torch.no_grad():
        bf16 = GraphedForward(model.forward_logits, bf16=True)
        results["256² b32 bf16 img/s, CUDA graph"] = 32 / _seconds(lambda: bf16(x32), repeats,
                                                                   device)
        torch.save(bf16(x32)[:2].float().cpu(), logits_path)
        bf16 = None  # its graph's memory
        with torch.autocast("cuda", dtype=torch.bfloat16):
            results["256² b32 bf16 img/s, eager"] = 32 / _seconds(
                lambda: model.forward_logits(x32), repeats, device)
        fp32 = GraphedForward(model.forward_logits)
        results["256² b32 fp32 img/s, CUDA graph"] = 32 / _seconds(lambda: fp32(x32), repeats,
                                                                   device)
        x1 = x32[:1].clone()
        results["256² b1 fp32 ms, CUDA graph"] = _seconds(lambda: fp32(x1), repeats,
                                                          device) * 1000
    return results


def _training(device: str, repeats: int) -> dict:
    import torch

    segmentation_loss = _training_names().segmentation_loss

    model = _model(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = 32 if device == "cuda" else 2
    g = torch.Generator(device=device).manual_seed(2)
    x = torch.rand(batch, 3, 256, 256, device=device, generator=g)
    labels = (torch.rand(batch, 256, 256, device=device, generator=g) > 0.5).long()

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = segmentation_loss(model.forward_logits(x).float(), labels)
        loss.backward()
        optimizer.step()

    if device == "cpu":
        return {"train 256² b2 fp32 ms": _seconds(step, repeats, device) * 1000}
    step()
    torch.cuda.reset_peak_memory_stats()
    results = {"train 256² b32 bf16 ms": _seconds(step, repeats, device) * 1000}
    results["train peak GiB"] = torch.cuda.max_memory_allocated() / 2**30
    optimizer = None
    model.zero_grad(set_to_none=True)
    results.update(_trainer_steps(model, x, labels, repeats))
    return results


def _trainer_steps(model, x, labels, repeats: int) -> dict:
    """One step of the engine's Trainer, as fine-tuning and training run it (whatever that
    version does: its optimizer, clipping, schedule, CUDA graph), at batch 32 and at batch 8
    (fine-tuning's default)."""
    import gc

    import torch

    names = _training_names()
    SliceSet, Trainer, TrainingSettings = names.SliceSet, names.Trainer, names.TrainingSettings

    results = {}
    for batch in (32, 8):
        xb, yb = x[:batch], labels[:batch]
        data = SliceSet(xb, yb, [tuple(xb.shape[-2:])] * batch)
        settings = TrainingSettings(steps=10**6, batch_size=batch, augment=False)
        trainer = Trainer(model, data, data, settings, x.device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        for _ in range(3):  # a CUDA graph's eager warm-up steps and its capture, if it has one
            trainer._step(xb, yb)
        seconds = _seconds(lambda: trainer._step(xb, yb), repeats, "cuda")  # noqa: B023
        results[f"Trainer step b{batch} bf16 ms"] = seconds * 1000
        results[f"Trainer b{batch} peak GiB"] = torch.cuda.max_memory_allocated() / 2**30
        trainer = None  # and the memory of its graph, if any
        model.zero_grad(set_to_none=True)
        gc.collect()
    return results


def _worker(part: str, device: str, repeats: int, logits_path: Path) -> None:
    """One measurement in this process, of the napari_vmunet first on the path."""
    import napari_vmunet

    results = (_inference(device, repeats, logits_path) if part == "inference"
               else _training(device, repeats))
    results["module"] = napari_vmunet.__file__
    print(_RESULT + json.dumps(results), flush=True)


def _export(revision: str, into: Path) -> Path:
    """``revision``'s src/ under ``into``; an error that says what git said otherwise."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", revision, "src"],
                             capture_output=True)
    if archive.returncode != 0:
        raise SystemExit(f"cannot export src/ of {revision!r}: "
                         f"{archive.stderr.decode().strip()}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def _short(revision: str) -> str:
    named = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", revision],
                           capture_output=True, text=True)
    return named.stdout.strip() or revision


def _run(src: Path, part: str, args, logits_path: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(src), *filter(None, [os.environ.get("PYTHONPATH")])]))
    command = [sys.executable, __file__, "--worker", part, "--device", args.device,
               "--repeats", str(args.repeats), "--logits", str(logits_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith(_RESULT)]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"the {part} measurement of {src} failed:\n{done.stderr[-3000:]}")
    results = json.loads(lines[-1][len(_RESULT):])
    module = Path(results.pop("module")).resolve()
    if src.resolve() not in module.parents:  # an installed copy shadowed the one to measure
        raise SystemExit(f"measured {module}, not the version under {src}")
    return results


def _versions(device: str) -> str:
    import torch

    words = [f"torch {torch.__version__}"]
    if device == "cuda":
        words.insert(0, torch.cuda.get_device_name())
        try:
            import triton

            words.append(f"triton {triton.__version__}")
        except ImportError:
            pass
    else:
        from cpu import _cpu_name

        words.insert(0, f"{_cpu_name()}, {torch.get_num_threads()} threads")
    return ", ".join([*words, f"python {sys.version.split()[0]}"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="HEAD", help="git revision to compare against")
    parser.add_argument("--baseline-src", type=Path,
                        help="instead of --baseline: a src/ folder holding the baseline's "
                             "napari_vmunet (for a copy of the repository without git history)")
    parser.add_argument("--candidate", help="git revision to measure (default: the working tree)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None,
                        help="default: cuda when a GPU is visible")
    parser.add_argument("--rounds", type=int, default=2,
                        help="baseline/candidate alternations (medians over these)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs per measurement (default 10 on the GPU, 3 on the CPU)")
    skip = parser.add_mutually_exclusive_group()
    skip.add_argument("--skip-inference", action="store_true")
    skip.add_argument("--skip-training", action="store_true")
    parser.add_argument("--worker", choices=["inference", "training"], help=argparse.SUPPRESS)
    parser.add_argument("--logits", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.repeats is None:
        args.repeats = 10 if args.device == "cuda" else 3
    if args.worker:
        _worker(args.worker, args.device, args.repeats, args.logits)
        return 0

    if args.baseline_src and not (args.baseline_src / "napari_vmunet" / "__init__.py").is_file():
        raise SystemExit(f"--baseline-src {args.baseline_src} holds no napari_vmunet package: "
                         "pass the src/ folder of an exported revision")
    parts = (([] if args.skip_inference else ["inference"])
             + ([] if args.skip_training else ["training"]))
    print(_versions(args.device))
    baseline = (str(args.baseline_src) if args.baseline_src
                else f"{args.baseline} ({_short(args.baseline)})")
    candidate = (f"{args.candidate} ({_short(args.candidate)})" if args.candidate
                 else "the working tree's src/")
    print(f"baseline {baseline}, candidate {candidate}; "
          f"{args.rounds} round(s) of {args.repeats} timed runs", flush=True)
    runs: dict[str, dict[str, list[float]]] = {"baseline": {}, "candidate": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sources = {"baseline": args.baseline_src or _export(args.baseline, tmp / "baseline"),
                   "candidate": (_export(args.candidate, tmp / "candidate") if args.candidate
                                 else REPO / "src")}
        for round_ in range(args.rounds):
            for name, src in sources.items():
                for part in parts:
                    results = _run(src, part, args, tmp / f"{name}.pt")
                    for metric, value in results.items():
                        runs[name].setdefault(metric, []).append(value)
                    print(f"  round {round_ + 1} {name:9s} {part:9s} " + ", ".join(
                        f"{m} {v:.4g}" for m, v in results.items()), flush=True)
        if "inference" in parts:
            import torch

            base, cand = (torch.load(tmp / f"{name}.pt", weights_only=True)
                          for name in ("baseline", "candidate"))
    print(f"\n{'metric':36s} {'baseline':>10s} {'candidate':>10s} {'cand/base':>10s}")
    for metric, values in runs["baseline"].items():
        b, c = statistics.median(values), statistics.median(runs["candidate"][metric])
        print(f"{metric:36s} {b:10.4g} {c:10.4g} {c / b:10.3f}")
    if "inference" in parts:
        print(f"logits, candidate against baseline: max |difference| "
              f"{float((cand - base).abs().max()):.3g}, relative (norm) "
              f"{float((cand - base).norm() / base.norm()):.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
