"""End-to-end segmentation speed: napari-vmunet's Segmenter against the authors' pipeline.

CPU (``--device cpu``): slices per second of the released configuration at 256² and 512²
(native resolution, the MRI recipe) through the Segmenter, next to the bare model forward on
the same batches in the same run (the engine's overhead).

GPU (``--device cuda``): a 512x512xZ CT volume (HU) with the Synapse configuration (9 classes,
224²) and the ``synapse-ct`` recipe, in host memory -> uint8 labels in host memory:
- the authors' ``test_single_volume`` logic (per slice: scipy zoom to 224 with order 3, batch 1,
  fp32, softmax/argmax, zoom back with order 0) with their model code (``--authors-repo``,
  which needs mamba-ssm's kernel importable: their code imports it itself);
- their model with slices resized on the GPU, batch 32, bf16 autocast;
- ours: ``Segmenter`` (GPU resize, batching, bf16), weights copied from their model;
- ours from a .nii.gz file on disk: read + segment + write, next to the time to read it alone;
- with ``--head``/``--head-mask``: bf16 against fp32 on a real T1 head, with the released
  configuration fitted briefly to that head so that its labels mean something.

    python benchmarks/inference.py --device cpu
    python benchmarks/inference.py --device cuda --authors-repo DIR [--slices 200]

Prints medians; record them in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))


def _timed(fn, repeats: int, sync: bool) -> tuple[float, list[float]]:
    fn()  # warm-up: kernels compiled, caches filled
    times = []
    for _ in range(repeats):
        if sync:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def cpu(args) -> None:
    from napari_vmunet.engine import Segmenter
    from napari_vmunet.model import build_model
    from napari_vmunet.recipes import RECIPES

    model = build_model("isic").eval()
    rng = np.random.default_rng(0)
    print(f"CPU: {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'size':>6s} {'slices':>6s} {'engine s/slice':>15s} {'slices/s':>9s} "
          f"{'bare forward s/slice':>21s}")
    for side, slices in ((256, args.cpu_slices), (512, max(2, args.cpu_slices // 2))):
        volume = (rng.random((slices, side, side), dtype=np.float32) * 1000).astype(np.int16)
        segmenter = Segmenter(model, RECIPES["mri"], device="cpu")
        engine, _ = _timed(lambda v=volume, s=segmenter: s.segment(v, axis=0), args.repeats,
                           False)
        x = torch.randn(1, 3, side, side)

        def bare(x=x, n=slices):
            with torch.inference_mode():
                for _ in range(n):
                    model.forward_logits(x)

        forward, _ = _timed(bare, args.repeats, False)
        print(f"{side:>5d}² {slices:>6d} {engine / slices:>15.3f} {slices / engine:>9.2f} "
              f"{forward / slices:>21.3f}")


def _ct_volume(slices: int, source: Path | None) -> np.ndarray:
    """(Z, 512, 512) int16 HU: the real lung CT repeated to ``slices`` if given, else a
    synthetic body-like phantom."""
    if source is not None:
        from napari_vmunet.io import read_image

        image = read_image(source)
        data = np.moveaxis(image.data, image.geometry.axial_axis(), 0)
        reps = -(-slices // data.shape[0])
        return np.ascontiguousarray(np.concatenate([data] * reps)[:slices]).astype(np.int16)
    yy, xx = np.mgrid[:512, :512]
    body = ((yy - 256) / 200) ** 2 + ((xx - 256) / 230) ** 2 < 1
    rng = np.random.default_rng(0)
    vol = np.where(body, 40, -1000)[None] + rng.normal(0, 20, (slices, 512, 512))
    return vol.astype(np.int16)


def gpu(args) -> None:
    from scipy.ndimage import zoom

    from napari_vmunet.engine import Segmenter
    from napari_vmunet.model import PRESETS, VMUNet
    from napari_vmunet.recipes import RECIPES

    device = torch.device("cuda")
    props = torch.cuda.get_device_properties(device)
    print(f"GPU: {props.name}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    volume = _ct_volume(args.slices, args.volume)
    print(f"volume {volume.shape} {volume.dtype}")
    results = {}

    ours_model = VMUNet(PRESETS["synapse"]).eval()
    theirs = None
    if args.authors_repo:
        from authors_parity import _import_authors

        authors = _import_authors(args.authors_repo)
        theirs = authors(num_classes=9, input_channels=3, depths=[2, 2, 2, 2],
                         depths_decoder=[2, 2, 2, 1]).eval().to(device)
        ours_model.load_state_dict(theirs.state_dict())
    print("our scan backend on cuda:", ours_model.scan_backend_for(device))

    def authors_single_volume():
        """utils.test_single_volume: per slice zoom -> model -> argmax -> zoom back."""
        windowed = (np.clip(volume, -125, 275) + 125) / 400.0
        prediction = np.zeros(volume.shape, np.uint8)
        for i in range(volume.shape[0]):
            s = windowed[i]
            x, y = s.shape
            s = zoom(s, (224 / x, 224 / y), order=3)
            inp = torch.from_numpy(s).unsqueeze(0).unsqueeze(0).float().to(device)
            with torch.no_grad():
                out = torch.argmax(torch.softmax(theirs(inp), dim=1), dim=1).squeeze(0)
                out = out.cpu().numpy()
            prediction[i] = zoom(out, (x / 224, y / 224), order=0)
        return prediction

    def authors_batched_gpu():
        prediction = np.zeros(volume.shape, np.uint8)
        for s in range(0, volume.shape[0], 32):
            x = torch.from_numpy(volume[s:s + 32]).to(device).float()[:, None]
            x = (x.clamp(-125, 275) + 125) / 400
            x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bicubic")
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                lab = theirs(x).float().argmax(1, keepdim=True).float()
            lab = torch.nn.functional.interpolate(lab, size=volume.shape[1:], mode="nearest")
            prediction[s:s + 32] = lab[:, 0].to(torch.uint8).cpu().numpy()
        return prediction

    segmenter = Segmenter(ours_model, RECIPES["synapse-ct"], device=device)
    fp32_segmenter = Segmenter(ours_model, RECIPES["synapse-ct"], device=device, bf16=False)
    outputs = {}

    def ours():
        outputs["ours"] = segmenter.segment(volume, axis=0).labels

    cases = [("ours: Segmenter, synapse-ct, bf16 (memory -> memory)", ours, args.repeats)]
    if theirs is not None:
        cases.insert(0, ("authors: test_single_volume (scipy zoom, batch 1, fp32)",
                         lambda: outputs.__setitem__("single", authors_single_volume()), 1))
        cases.insert(1, ("authors' model, GPU resize, batch 32, bf16",
                         lambda: outputs.__setitem__("batched", authors_batched_gpu()),
                         args.repeats))
    for name, fn, repeats in cases:
        results[name] = _timed(fn, repeats, True)[0]
        print(f"{name:60s} {results[name]:8.3f} s")

    fp32 = fp32_segmenter.segment(volume, axis=0).labels
    agree = float((fp32 == outputs["ours"]).mean())
    print(f"ours bf16 vs fp32: {agree * 100:.3f}% of voxels agree")
    if "single" in outputs:
        print(f"ours vs authors' pipeline: {(outputs['single'] == fp32).mean() * 100:.3f}% agree "
              "(fp32; cubic resize differs: scipy spline vs torch bicubic)")

    import nibabel as nib

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ct.nii.gz"
        nib.save(nib.Nifti1Image(np.moveaxis(volume, 0, -1), np.diag([0.7, 0.7, 2.5, 1])), path)
        from napari_vmunet.io import read_image, write_labels

        read_only, _ = _timed(lambda: read_image(path).data.sum(), args.repeats, False)

        def from_disk():
            image = read_image(path)
            done = segmenter.segment(image.data, axis=image.geometry.axial_axis())
            write_labels(done.labels, Path(tmp) / "labels.nii.gz", image.geometry, overwrite=True)

        disk, _ = _timed(from_disk, args.repeats, True)
        print(f"{'ours from .nii.gz: read + segment + write':60s} {disk:8.3f} s "
              f"(reading alone {read_only:.3f} s)")


def bf16_agreement(args) -> None:
    """bf16 autocast against fp32 on real data with a model that actually segments: fit the
    released configuration briefly to a real T1 head (brain vs not, slices along all three
    axes), then segment the head with both precisions and compare (Dice)."""
    import torch.nn.functional as F

    from napari_vmunet.engine import Segmenter
    from napari_vmunet.engine.preprocess import intensity_map, normalise
    from napari_vmunet.engine.training.losses import segmentation_loss
    from napari_vmunet.io import read_image
    from napari_vmunet.metrics import dice
    from napari_vmunet.model import build_model
    from napari_vmunet.recipes import RECIPES

    device = torch.device("cuda")
    head, mask = read_image(args.head), read_image(args.head_mask)
    recipe = RECIPES["mri"]
    mapping, _ = intensity_map(head.data, recipe)
    volume = torch.from_numpy(head.data.astype(np.float32))
    target = torch.from_numpy((mask.data > 0).astype(np.float32))
    torch.manual_seed(0)
    model = build_model("isic").to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=1e-2)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(args.fit_steps):
        axis = int(rng.integers(3))
        idx = rng.integers(head.data.shape[axis], size=16)
        x = volume.movedim(axis, 0)[idx][:, None]
        y = target.movedim(axis, 0)[idx][:, None]
        h, w = x.shape[-2:]
        pad = (0, (-w) % 32, 0, (-h) % 32)
        x = F.pad(normalise(x.to(device), mapping, recipe), pad, mode="replicate")
        y = F.pad(y.to(device), pad)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model.forward_logits(x).float()
        loss = segmentation_loss(logits, y[:, 0].long())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    torch.cuda.synchronize()
    print(f"fitted {args.fit_steps} steps in {time.perf_counter() - start:.1f} s, "
          f"last loss {loss.item():.3f}")
    model.eval()
    reference = mask.data > 0

    labels = {}
    for name, bf16 in (("bf16", True), ("fp32", False)):
        seg = Segmenter(model, recipe, device=device, bf16=bf16)
        labels[name] = seg.segment(head.data, axis=head.geometry.axial_axis()).labels > 0
        print(f"{name}: Dice vs the reference brain mask {dice(labels[name], reference):.4f}")
    print(f"bf16 vs fp32 labels: Dice {dice(labels['bf16'], labels['fp32']):.4f}, "
          f"{(labels['bf16'] == labels['fp32']).mean() * 100:.3f}% of voxels agree")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cpu-slices", type=int, default=8)
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--volume", type=Path, help="a CT file (HU) to repeat to --slices")
    parser.add_argument("--authors-repo", type=Path)
    parser.add_argument("--head", type=Path, help="a T1 head (e.g. ROBEX's atlas.nii.gz) for the "
                        "bf16-vs-fp32 check on real data, with --head-mask")
    parser.add_argument("--head-mask", type=Path)
    parser.add_argument("--fit-steps", type=int, default=300)
    args = parser.parse_args(argv)
    (cpu if args.device == "cpu" else gpu)(args)
    if args.device == "cuda" and args.head and args.head_mask:
        bf16_agreement(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
