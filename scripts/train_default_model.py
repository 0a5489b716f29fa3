"""Train and evaluate the bundled default model (T1 brain extraction) in one command.

1. Leave-one-head-out: for each head, ``napari-vmunet train`` on the others, then
   ``napari-vmunet segment`` the held-out head and compute Dice against its reference mask,
   next to a classical baseline (Otsu threshold + morphology, scikit-image) on the same head.
2. The shipped model: ``napari-vmunet train`` on all heads, weights stored in float16.
3. A Markdown table for docs/model-card.md.

    python scripts/train_default_model.py --data data/brains --out data/model [--steps 1500]

When ``--data`` holds no heads yet, they are built first with build_brain_data.py (Colin27,
ROBEX and the MNI152 template, downloaded from PyPI/Debian into ``--packages``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from napari_vmunet.metrics import dice


def otsu_baseline(volume: np.ndarray) -> np.ndarray:
    """Threshold at Otsu, open (cut the thin links to skull and neck), keep the largest
    component, fill holes: the classical one-liner people try first."""
    from scipy import ndimage
    from skimage.filters import threshold_otsu
    from skimage.morphology import ball, binary_opening

    mask = volume > threshold_otsu(volume)
    mask = binary_opening(mask, ball(3))
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum(mask, labels, range(1, n + 1))
        mask = labels == (1 + int(np.argmax(sizes)))
    return ndimage.binary_fill_holes(mask)


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "napari_vmunet.cli", *args], check=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="from build_brain_data.py")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--final-steps", type=int)
    parser.add_argument("--config", default="small")
    parser.add_argument("--skip-loho", action="store_true")
    parser.add_argument("--packages", type=Path, default=Path("data/packages"),
                        help="registry packages for building --data when it is empty")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if not any(args.data.glob("*_t1.nii.gz")):
        sys.path.insert(0, str(Path(__file__).parent))
        from build_brain_data import build

        build(args.packages, args.data, with_mni=True)
    heads = sorted(p.name.removesuffix("_t1.nii.gz") for p in args.data.glob("*_t1.nii.gz"))
    skull_stripped = {"mni152"}  # a brain without a head: training data only, not a test case

    def pair(name):
        return args.data / f"{name}_t1.nii.gz", args.data / f"{name}_brain.nii.gz"

    train_args = ["--config", args.config, "--recipe", "t1-brain", "--size", "256",
                  "--batch-size", "16",
                  "--validate-every", "100", "--fp16", "--overwrite", "-q"]
    rows = []
    for held in ([] if args.skip_loho else [h for h in heads if h not in skull_stripped]):
        others = [h for h in heads if h != held]
        model = args.out / f"without_{held}.safetensors"
        start = time.perf_counter()
        cli("train", "--images", *[str(pair(h)[0]) for h in others],
            "--labels", *[str(pair(h)[1]) for h in others], "-o", str(model),
            "--steps", str(args.steps), *train_args)
        seconds = time.perf_counter() - start
        labels = args.out / f"{held}_labels.nii.gz"
        cli("segment", str(pair(held)[0]), "--checkpoint", str(model), "-o", str(labels),
            "--overwrite", "-q")
        reference = np.asanyarray(nib.load(pair(held)[1]).dataobj) > 0
        predicted = np.asanyarray(nib.load(labels).dataobj) > 0
        baseline = otsu_baseline(np.asanyarray(nib.load(pair(held)[0]).dataobj).astype(float))
        rows.append((held, ", ".join(others), dice(predicted, reference),
                     dice(baseline, reference), seconds))
        print(f"held out {held}: VM-UNet Dice {rows[-1][2]:.4f}, Otsu+morphology "
              f"{rows[-1][3]:.4f} (trained {seconds:.0f} s)", flush=True)

    final = args.out / "t1_brain.safetensors"
    cli("train", "--images", *[str(pair(h)[0]) for h in heads],
        "--labels", *[str(pair(h)[1]) for h in heads], "-o", str(final),
        "--steps", str(args.final_steps or args.steps), *train_args)
    print(f"shipped model: {final} ({final.stat().st_size / 2**20:.1f} MB), trained on "
          f"{', '.join(heads)}")
    if rows:
        print("\n| held-out head | trained on | VM-UNet Dice | Otsu + morphology Dice | "
              "training time |")
        print("|---|---|---|---|---|")
        for held, others, ours, otsu, seconds in rows:
            print(f"| {held} | {others} | {ours:.4f} | {otsu:.4f} | {seconds:.0f} s |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
