"""CPU speed of VM-UNet in napari-vmunet, against the plain-loop scan in the same run.

Measures, on the released configuration (27.43 M parameters, 256x256, batch 1):
- a full forward with the compiled ``cpu`` scan backend and with the ``reference`` plain loop
  (what running the authors' model on a CPU amounts to: their code has no CPU kernel);
- optionally the authors' own model code (``--authors-repo``, a checkout of JCruan519/VM-UNet)
  with the plain-loop scan standing in for mamba-ssm's CUDA kernel;
- the first stage's selective scan alone (4 x 192 channels, L = 4096), with ordinary and with
  very large delta*|A| (where denormal numbers would slow a naive kernel down);
- a training step (forward + backward, batch 2) with the ``cpu`` backend.

    python benchmarks/cpu.py [--repeats 7] [--authors-repo DIR] [--json OUT.json]

Prints medians; record them in benchmarks/RESULTS.md with the machine and versions it prints.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch


def _median_seconds(fn, repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--reference-repeats", type=int, default=1,
                        help="repeats for the slow plain-loop runs")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--authors-repo", type=Path,
                        help="checkout of JCruan519/VM-UNet to time their model code too")
    parser.add_argument("--json", type=Path, help="write all timings here")
    args = parser.parse_args(argv)

    import numba

    from napari_vmunet.model import build_model
    from napari_vmunet.ops import scan

    torch.manual_seed(0)
    results: dict[str, dict] = {}
    env = {
        "cpu": _cpu_name(), "cores": torch.get_num_threads(), "python": platform.python_version(),
        "torch": torch.__version__, "numba": numba.__version__,
    }
    print("environment:", ", ".join(f"{k} {v}" for k, v in env.items()))

    model = build_model("isic").eval()
    x = torch.randn(1, 3, args.size, args.size)

    def forward(backend):
        model.set_scan_backend(backend)
        with torch.inference_mode():
            model(x)

    def record(name, seconds, times):
        results[name] = {"median_s": seconds, "runs_s": times}
        print(f"{name:55s} {seconds * 1000:10.1f} ms")

    record(f"forward {args.size}² b1, scan=cpu",
           *_median_seconds(lambda: forward("cpu"), args.repeats))
    record(f"forward {args.size}² b1, scan=reference (plain loop)",
           *_median_seconds(lambda: forward("reference"), args.reference_repeats))

    if args.authors_repo:
        from authors_parity import _import_authors, _install_stand_ins

        _install_stand_ins()
        theirs = _import_authors(args.authors_repo)(
            num_classes=1, input_channels=3, depths=[2, 2, 2, 2], depths_decoder=[2, 2, 2, 1]
        ).eval()

        def authors_forward():
            with torch.inference_mode():
                theirs(x)

        record(f"authors' model code {args.size}² b1, plain-loop scan (float64 stand-in)",
               *_median_seconds(authors_forward, args.reference_repeats))

    # The first stage's scan, alone.
    length = (args.size // 4) ** 2
    channels = 4 * 192
    u = torch.randn(1, channels, length)
    A = -torch.exp(torch.randn(channels, 16))
    B, C = torch.randn(1, 4, 16, length), torch.randn(1, 4, 16, length)
    D, bias = torch.ones(channels), torch.randn(channels) * 0.5 - 4.0
    for label, scale in (("ordinary delta", 1.0), ("huge delta*|A|", 50.0)):
        delta = torch.randn(1, channels, length) * scale
        for backend in ("cpu", "reference"):
            reps = args.repeats if backend == "cpu" else args.reference_repeats

            def run_scan(backend=backend, delta=delta):
                with torch.inference_mode():
                    scan.selective_scan(u, delta, A, B, C, D, bias, True, backend=backend)

            record(f"scan stage 0 (768 ch, L={length}), {label}, {backend}",
                   *_median_seconds(run_scan, reps))

    # One training step on the CPU (what fine-tuning does).
    model.set_scan_backend("cpu")
    model.train()
    xb, yb = torch.randn(2, 3, args.size, args.size), torch.rand(2, 1, args.size, args.size)

    def train_step():
        model.zero_grad(set_to_none=True)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model.forward_logits(xb), yb)
        loss.backward()

    record(f"training step fwd+bwd {args.size}² b2, scan=cpu",
           *_median_seconds(train_step, max(3, args.repeats // 2)))

    fast = results[f"forward {args.size}² b1, scan=cpu"]["median_s"]
    slow = results[f"forward {args.size}² b1, scan=reference (plain loop)"]["median_s"]
    print(f"\nfull forward: cpu backend {fast:.3f} s vs plain loop {slow:.2f} s "
          f"-> {slow / fast:.1f}x faster")
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
