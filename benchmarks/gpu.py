"""GPU speed of VM-UNet's selective scan and of the whole model, per scan backend, in one run.

    python benchmarks/gpu.py [--backends triton,mamba] [--model-backends triton] [--repeats 20]
                             [--authors-repo DIR] [--profile]

(``mamba`` and ``--authors-repo`` need mamba-ssm's kernel importable, built on the GPU machine
for the measurement only; nnU-Net needs ``pip install dynamic-network-architectures``.)

For each backend that can run here (``triton``: ours; ``mamba``: mamba-ssm's CUDA kernel, the
one the authors' code uses, when it imports), on the same GPU in the same run:

1. the scan kernel at the shape of stage 0 of a 256² image in config B (batch 32, 4 directions
   x 192 channels, L = 4096, N = 16, B/C grouped by direction): forward in fp32 and with bf16
   inputs, and forward + backward, with the bytes the forward must move and the bandwidth it
   reaches against a plain device-to-device copy measured here; and ``triton``'s fused
   four-direction kernel (``selective_scan_2d``) at the same shape, batch 32 and 1, and its
   forward + backward (the training path) at batch 32;
2. the released configuration (config B, ``isic``, 27.4 M parameters): 256² batch 1 latency
   (fp32; eager, and replayed as a CUDA graph), 256² batch 32 throughput in fp32 and bf16
   autocast (eager, and replayed as a CUDA graph as the Segmenter runs it: eager timings
   include the host's launch overhead, ~10-20 ms a forward pass of ours depending on the CPU),
   512² batch 8 (bf16), and a training step at 256² batch 32 in bf16 (BCE + Dice) with its
   peak memory: eager with PyTorch's default AdamW, and as our Trainer runs it on CUDA (fused
   AdamW, the whole step replayed as one CUDA graph); outputs of every backend compared with
   the first one's.
   The same for the authors' model (``--authors-repo``, with the same weights; needs
   mamba-ssm's kernel) and nnU-Net's 2D PlainConvUNet (when dynamic-network-architectures
   imports).

``--profile`` prints where our model's GPU time goes (torch.profiler, 256² batch 32, bf16),
in the forward pass and in a training step.
Medians of ``--repeats`` timed runs after a warm-up (Triton autotunes then). Record the output
in benchmarks/RESULTS.md with the device and versions it prints.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

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
    from napari_vmunet.ops.scan import selective_scan

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


def bench_ss2d(copy_gbs: float, repeats: int, batch: int = 32, side: int = 64,
               channels: int = 192, rank: int = 6, n_state: int = 16) -> dict:
    """The fused four-direction scan (``triton``'s selective_scan_2d) at the same stage-0 shape:
    bytes = the activation and its pixel projections read once, the float32 result written
    once (the least any form of the four-direction scan must move)."""
    from napari_vmunet.ops.scan import selective_scan_2d

    g = torch.Generator(device="cuda").manual_seed(0)
    k = 4
    params = (torch.randn(k, channels, rank, device="cuda", generator=g) / rank**0.5,
              torch.randn(k, channels, device="cuda", generator=g) - 2,
              -torch.exp(torch.randn(k, channels, n_state, device="cuda", generator=g)),
              torch.randn(k, channels, device="cuda", generator=g))
    results = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        for b in (batch, 1):
            x = torch.randn(b, side, side, channels, device="cuda", generator=g).to(dtype)
            proj = torch.randn(b, side, side, k, rank + 2 * n_state, device="cuda",
                               generator=g).to(dtype)
            with torch.no_grad():
                seconds = timed(lambda x=x, proj=proj: selective_scan_2d(
                    x, proj, *params, backend="triton"), repeats)
            moved = (x.numel() + proj.numel()) * x.element_size() + x.numel() * 4
            results[f"b{b} {name} ms"] = seconds * 1000
            if b == batch:
                results[f"b{b} {name} % copy"] = 100 * moved / seconds / 1e9 / copy_gbs
                # training: forward (keeping checkpoints) and the fused backward
                inputs = [t.detach().requires_grad_() for t in (x, proj, *params)]
                grad_y = torch.randn(x.shape, device="cuda", generator=g)

                def train_step(inputs=inputs, grad_y=grad_y):
                    y = selective_scan_2d(*inputs, backend="triton")
                    torch.autograd.grad(y, inputs, grad_y)

                results[f"b{b} {name} fwd+bwd ms"] = timed(train_step, repeats) * 1000
    return results


def bench_model(model, logits, repeats: int, reference_outputs: dict | None = None) -> dict:
    """Latency, throughput, a bf16 training step and its peak memory of ``model``;
    ``logits(x)`` is its forward returning logits (the same for every model compared)."""
    from napari_vmunet.engine.cuda_graphs import GraphedForward
    from napari_vmunet.engine.training.losses import segmentation_loss

    model = model.cuda().eval()
    results = {}
    g = torch.Generator(device="cuda").manual_seed(1)
    x1 = torch.rand(1, 3, 256, 256, device="cuda", generator=g)
    x32 = torch.rand(32, 3, 256, 256, device="cuda", generator=g)
    x8 = torch.rand(8, 3, 512, 512, device="cuda", generator=g)
    with torch.no_grad():
        results["256² b1 fp32 ms"] = timed(lambda: logits(x1), repeats) * 1000
        graphed = GraphedForward(logits)
        results["256² b1 fp32 ms, CUDA graph"] = timed(lambda: graphed(x1), repeats) * 1000
        seconds = timed(lambda: logits(x32), repeats)
        results["256² b32 fp32 img/s"] = 32 / seconds
        results["256² b32 fp32 img/s, CUDA graph"] = 32 / timed(lambda: graphed(x32), repeats)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            seconds = timed(lambda: logits(x32), repeats)
            results["256² b32 bf16 img/s"] = 32 / seconds
            seconds = timed(lambda: logits(x8), repeats)
            results["512² b8 bf16 img/s"] = 8 / seconds
        # as the Segmenter runs batches: bf16, replayed as a CUDA graph (no launch overhead)
        graphed_bf16 = GraphedForward(logits, bf16=True)
        try:
            seconds = timed(lambda: graphed_bf16(x32), repeats)
            results["256² b32 bf16 img/s, CUDA graph"] = 32 / seconds
        except RuntimeError as error:  # a model whose kernels cannot be captured
            print(f"  (no CUDA graph: {error})")
        graphed = graphed_bf16 = None  # their graphs hold memory the training step must not see
        torch.cuda.empty_cache()
        if reference_outputs is not None:
            out = logits(x32[:4]).float()
            if "out" in reference_outputs:
                ref = reference_outputs["out"]
                results["max |Δ logits| vs first"] = float((out - ref).abs().max())
            else:
                reference_outputs["out"] = out

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    labels = (torch.rand(32, 256, 256, device="cuda", generator=g) > 0.5).long()

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = segmentation_loss(logits(x32).float(), labels)
        loss.backward()
        optimizer.step()

    train_step()
    torch.cuda.reset_peak_memory_stats()
    results["train 256² b32 bf16 ms"] = timed(train_step, max(3, repeats // 2)) * 1000
    results["train peak GiB"] = torch.cuda.max_memory_allocated() / 2**30
    optimizer = None
    results.update(bench_graphed_training(model, logits, x32, labels, repeats))
    model.cpu()
    torch.cuda.empty_cache()
    return results


def bench_graphed_training(model, logits, x, labels, repeats: int) -> dict:
    """The same training step as our Trainer runs it on CUDA: fused AdamW (its learning rate a
    tensor), replayed as one CUDA graph (``engine.cuda_graphs.GraphedStep``)."""
    from napari_vmunet.engine.cuda_graphs import GraphedStep
    from napari_vmunet.engine.training.losses import segmentation_loss

    optimizer = torch.optim.AdamW(model.parameters(), lr=torch.tensor(1e-4, device="cuda"),
                                  fused=True)

    def update(x, y):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = segmentation_loss(logits(x).float(), y)
        loss.backward()
        for group in optimizer.param_groups:
            group["capturable"] = torch.cuda.is_current_stream_capturing()
        optimizer.step()
        return loss.detach()

    graphed = GraphedStep(update)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(graphed.warmup + 1):  # the eager warm-up, then the capture
        graphed(x, labels)
    if graphed.eager_because:
        print(f"  (no CUDA graph for the training step: {graphed.eager_because})")
        return {}
    seconds = timed(lambda: graphed(x, labels), max(3, repeats // 2))
    results = {"train 256² b32 bf16 ms, CUDA graph": seconds * 1000,
               "train peak GiB, CUDA graph": torch.cuda.max_memory_allocated() / 2**30}
    graphed.release()
    optimizer.zero_grad(set_to_none=True)
    return results


def ours(backend: str):
    from napari_vmunet.model import build_model

    torch.manual_seed(0)
    model = build_model("isic")
    model.set_scan_backend(backend)
    return model, model.forward_logits


def authors(repo: str, state_dict):
    """The authors' VMUNet (their code, mamba-ssm's kernel), with our model's weights."""
    sys.path.insert(0, str(Path(__file__).parent))
    from authors_parity import _import_authors

    model = _import_authors(Path(repo))(num_classes=1, input_channels=3, depths=[2, 2, 2, 2],
                                        depths_decoder=[2, 2, 2, 1])
    model.load_state_dict(state_dict)
    # their forward ends in a sigmoid for one class; .vmunet gives the logits before it
    return model, model.vmunet


def nnunet_2d():
    """nnU-Net's 2D PlainConvUNet in the 7-stage 32-512 configuration nnU-Net plans for 256²
    images (package dynamic-network-architectures)."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    nn = torch.nn
    model = PlainConvUNet(3, 7, (32, 64, 128, 256, 512, 512, 512), nn.Conv2d, 3,
                          (1, 2, 2, 2, 2, 2, 2), (2,) * 7, 1, (2,) * 6, False,
                          nn.InstanceNorm2d, {"eps": 1e-5, "affine": True}, None, None,
                          nn.LeakyReLU, {"inplace": True})
    return model, model


def profile(backend: str, rows: int = 25) -> None:
    """The GPU kernels of our model at 256² batch 32 bf16, most time first: five forwards, then
    five training steps."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from napari_vmunet.engine.training.losses import segmentation_loss

    model, logits = ours(backend)
    model = model.cuda().eval()
    x = torch.rand(32, 3, 256, 256, device="cuda")
    labels = (torch.rand(32, 256, 256, device="cuda") > 0.5).long()

    def forward():
        with torch.no_grad():
            logits(x)

    def train_step():
        loss = segmentation_loss(logits(x).float(), labels)
        loss.backward()
        model.zero_grad(set_to_none=True)

    for title, step in [("forward", forward), ("training step (no optimizer)", train_step)]:
        model.train(step is train_step)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            for _ in range(3):
                step()
            torch.cuda.synchronize()
            with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(5):
                    step()
                torch.cuda.synchronize()
        print(f"\n{title}, 5 times:")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows,
                                        max_name_column_width=100))
    model.cpu()


def main(argv=None) -> int:
    from napari_vmunet.ops.scan import unavailable_reason

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="triton,mamba")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--model-backends", help="backends to run our whole model with "
                        "(default: --backends)")
    parser.add_argument("--skip-model", action="store_true")
    parser.add_argument("--profile", action="store_true",
                        help="print where our model's GPU time goes (256² batch 32, bf16: "
                        "forward and training step)")
    parser.add_argument("--authors-repo", help="a checkout of JCruan519/VM-UNet (needs "
                        "mamba-ssm's kernel): their model in the same run")
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
    if "triton" in backends:
        for key, value in bench_ss2d(copy_gbs, args.repeats).items():
            print(f"triton  ss2d   {key:34s} {value:10.2f}")
    if args.profile and backends:
        profile(backends[0])
    if args.skip_model:
        return 0
    model_backends = args.model_backends.split(",") if args.model_backends else backends
    models = [(f"ours/{name}", lambda name=name: ours(name)) for name in model_backends]
    if args.authors_repo:
        state = ours(backends[0] if backends else "reference")[0].state_dict()
        models.append(("authors", lambda: authors(args.authors_repo, state)))
    try:
        import dynamic_network_architectures  # noqa: F401

        models.append(("nnU-Net", nnunet_2d))
    except ImportError:
        print("nnU-Net 2D: skipped (pip install dynamic-network-architectures)")
    for label, build in models:
        model, logits = build()
        parameters = sum(p.numel() for p in model.parameters())
        print(f"{label:13s} model  parameters {parameters / 1e6:.1f} M")
        shared = reference_outputs if label != "nnU-Net" else None
        for key, value in bench_model(model, logits, args.repeats, shared).items():
            print(f"{label:13s} model  {key:34s} {value:10.4g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
