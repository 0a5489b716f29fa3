"""GPU speed of VM-UNet's selective scan and of the whole model, per scan backend, in one run.

    python benchmarks/gpu.py [--backends triton,mamba] [--repeats 20]

For each backend that can run here (``triton``: ours; ``mamba``: mamba-ssm's CUDA kernel, the
one the authors' code uses, when it imports), on the same GPU in the same run:

1. the scan kernel at the shape of stage 0 of a 256² image in config B (batch 32, 4 directions
   x 192 channels, L = 4096, N = 16, B/C grouped by direction): forward in fp32 and with bf16
   inputs, and forward + backward, with the bytes the forward must move and the bandwidth it
   reaches against a plain device-to-device copy measured here;
2. the released configuration (config B, ``isic``, 27.4 M parameters): 256² batch 1 latency
   (fp32), 256² batch 32 throughput in fp32 and bf16 autocast, 512² batch 8 (bf16), and a
   training step at 256² batch 32 in bf16 (AdamW, BCE + Dice) with its peak memory; outputs
   of every backend compared with the first one's.

Medians of ``--repeats`` timed runs after a warm-up (Triton autotunes then). Record the output
in benchmarks/RESULTS.md with the device and versions it prints.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch


def timed(fn, repeats: int) -> float:
    """Median seconds of ``fn`` on the GPU (CUDA events), after two warm-up calls."""
    fn()
    fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return statistics.median(times)


def copy_bandwidth(repeats: int) -> float:
    """GB/s of a 1 GiB device-to-device copy (read + write counted)."""
    src = torch.empty(2**28, device="cuda")
    dst = torch.empty_like(src)
    seconds = timed(lambda: dst.copy_(src), repeats)
    return 2 * src.numel() * 4 / seconds / 1e9


def scan_inputs(dtype, requires_grad=False, batch=32, directions=4, channels=192, length=4096,
                n_state=16):
    g = torch.Generator(device="cuda").manual_seed(0)

    def randn(*shape, dt=dtype):
        return torch.randn(*shape, device="cuda", generator=g).to(dt)

    dd = directions * channels
    x = dict(u=randn(batch, dd, length), delta=randn(batch, dd, length),
             A=-torch.exp(randn(dd, n_state, dt=torch.float32)),
             B=randn(batch, directions, n_state, length),
             C=randn(batch, directions, n_state, length),
             D=randn(dd, dt=torch.float32), delta_bias=randn(dd, dt=torch.float32) - 2)
    if requires_grad:
        for v in x.values():
            v.requires_grad_()
    return x


def bench_scan(backend: str, copy_gbs: float, repeats: int) -> dict:
    from napari_vmunet.scan import selective_scan

    results = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        x = scan_inputs(dtype)
        with torch.no_grad():
            seconds = timed(lambda x=x: selective_scan(**x, delta_softplus=True,
                                                       backend=backend), repeats)
        size = x["u"].element_size()
        moved = (3 * x["u"].numel() + 2 * x["B"].numel()) * size  # u, delta, y; B, C
        results[f"fwd {name} ms"] = seconds * 1000
        results[f"fwd {name} GB/s"] = moved / seconds / 1e9
        results[f"fwd {name} % copy"] = 100 * moved / seconds / 1e9 / copy_gbs
    x = scan_inputs(torch.bfloat16, requires_grad=True)

    def step():
        out = selective_scan(**x, delta_softplus=True, backend=backend)
        torch.autograd.grad(out, list(x.values()), torch.ones_like(out))

    results["fwd+bwd bf16 ms"] = timed(step, repeats) * 1000
    return results


def bench_model(backend: str, repeats: int, reference_outputs: dict) -> dict:
    from napari_vmunet.engine.training import segmentation_loss
    from napari_vmunet.model import build_model

    torch.manual_seed(0)
    model = build_model("isic").cuda().eval()
    model.set_scan_backend(backend)
    results = {}
    g = torch.Generator(device="cuda").manual_seed(1)
    x1 = torch.rand(1, 3, 256, 256, device="cuda", generator=g)
    x32 = torch.rand(32, 3, 256, 256, device="cuda", generator=g)
    x8 = torch.rand(8, 3, 512, 512, device="cuda", generator=g)
    with torch.no_grad():
        results["256² b1 fp32 ms"] = timed(lambda: model.forward_logits(x1), repeats) * 1000
        seconds = timed(lambda: model.forward_logits(x32), repeats)
        results["256² b32 fp32 img/s"] = 32 / seconds
        with torch.autocast("cuda", dtype=torch.bfloat16):
            seconds = timed(lambda: model.forward_logits(x32), repeats)
            results["256² b32 bf16 img/s"] = 32 / seconds
            seconds = timed(lambda: model.forward_logits(x8), repeats)
            results["512² b8 bf16 img/s"] = 8 / seconds
        out = model.forward_logits(x32[:4]).float()
        if "out" in reference_outputs:
            ref = reference_outputs["out"]
            results["max |Δ logits| vs first backend"] = float((out - ref).abs().max())
        else:
            reference_outputs["out"] = out

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    labels = (torch.rand(32, 256, 256, device="cuda", generator=g) > 0.5).long()

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = segmentation_loss(model.forward_logits(x32).float(), labels)
        loss.backward()
        optimizer.step()

    train_step()
    torch.cuda.reset_peak_memory_stats()
    results["train 256² b32 bf16 ms"] = timed(train_step, max(3, repeats // 2)) * 1000
    results["train peak GiB"] = torch.cuda.max_memory_allocated() / 2**30
    return results


def main(argv=None) -> int:
    from napari_vmunet.scan import unavailable_reason

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="triton,mamba")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--skip-model", action="store_true")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU")
        return 2
    try:
        import triton

        triton_version = triton.__version__
    except Exception:
        triton_version = "not importable"
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA "
          f"{torch.version.cuda}, triton {triton_version}, python {sys.version.split()[0]}")
    copy_gbs = copy_bandwidth(args.repeats)
    print(f"device-to-device copy: {copy_gbs:.0f} GB/s")
    backends = []
    for name in args.backends.split(","):
        reason = unavailable_reason(name, "cuda")
        if reason:
            print(f"{name}: skipped ({reason})")
        else:
            backends.append(name)
    reference_outputs: dict = {}
    for name in backends:
        for key, value in bench_scan(name, copy_gbs, args.repeats).items():
            print(f"{name:7s} scan   {key:34s} {value:10.2f}")
    if not args.skip_model:
        for name in backends:
            for key, value in bench_model(name, args.repeats, reference_outputs).items():
                print(f"{name:7s} model  {key:34s} {value:10.4g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
