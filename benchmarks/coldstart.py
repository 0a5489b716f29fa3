"""How long the first GPU segmentation and fine-tune take on a fresh machine, against warm runs.

Every row is a whole command in a fresh process (imports, reading, the work, writing), timed
from outside, twice: first with an empty Triton cache (``TRITON_CACHE_DIR`` pointing at a new
folder: what a new GPU machine or a first napari session sees, Triton compiling and tuning each
kernel for each new shape), then again on the cache the first run filled. Rows:

- ``demo``: ``napari-vmunet demo`` (the bundled model on the bundled T1 sample);
- ``new size HxW``: ``segment`` of a volume whose slices have a size the demo did not see, on the
  cache the demo left (the issue's "a new image size"): the T1 sample cropped or padded to it;
- ``finetune``: ``finetune ... --apply`` on the CT sample's lung tumour, three corrected slices
  (the README's loop), with an empty cache, then warm.

    python benchmarks/coldstart.py [--device cuda] [--sizes 181x217,256x256,512x512]
        [--rows demo,sizes,finetune] [--out DIR]

Needs a CUDA GPU; on the CPU the rows still run (numba's cache plays Triton's part), which is
how the test suite checks this script.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "src" / "napari_vmunet" / "samples"


def timed(command: list[str], cache: Path) -> float:
    """Wall seconds of ``napari-vmunet COMMAND...`` in a fresh process on Triton cache ``cache``;
    a failure stops the benchmark with the command's output."""
    env = {**os.environ, "TRITON_CACHE_DIR": str(cache)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "napari_vmunet.cli", *command], env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n"
                         f"{done.stderr}")
    return seconds


def resized_volume(size: tuple[int, int], folder: Path) -> Path:
    """The T1 sample (slicing axis 0) cropped or zero-padded in-plane to ``size``."""
    from napari_vmunet.io import read_image, write_labels

    head = read_image(SAMPLES / "t1_head_image.nii.gz")
    data = head.data
    out = np.zeros((data.shape[0], *size), data.dtype)
    h, w = (min(a, b) for a, b in zip(size, data.shape[1:], strict=True))
    out[:, :h, :w] = data[:, :h, :w]
    path = folder / f"t1_{size[0]}x{size[1]}.nii.gz"
    write_labels(out, path, head.geometry, overwrite=True)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--sizes", default="181x217,256x256,512x512",
                        help="in-plane sizes of the new-size rows, HxW,...")
    parser.add_argument("--rows", default="demo,sizes,finetune",
                        help="which rows to run (default: all)")
    parser.add_argument("--out", type=Path, help="a folder for the runs' files (default: a "
                        "temporary one)")
    args = parser.parse_args(argv)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    wanted = set(args.rows.split(","))
    with tempfile.TemporaryDirectory() as scratch:
        work = args.out or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        device = ["--device", args.device]
        rows = []

        cache = work / "cache-demo"
        if "demo" in wanted:
            demo = ["demo", "--out-dir", str(work / "demo"), *device]
            rows.append(("demo", timed(demo, cache), timed(demo, cache)))
        for size in sizes if "sizes" in wanted else ():
            volume = resized_volume(size, work)
            seg = ["segment", str(volume), "--axis", "0", "-o",
                   str(work / f"labels_{size[0]}x{size[1]}.nii.gz"), "--overwrite", "-q",
                   *device]
            rows.append((f"new size {size[0]}x{size[1]}", timed(seg, cache), timed(seg, cache)))
        if "finetune" in wanted:
            tune_cache = work / "cache-finetune"
            tune = ["finetune", str(SAMPLES / "ct_lung_image.nrrd"),
                    str(SAMPLES / "ct_lung_tumour.nrrd"), "--slices", "4,7,10", "--axis", "0",
                    "--recipe", "ct", "-o", str(work / "tuned.safetensors"), "--apply",
                    str(work / "applied.nii.gz"), "--overwrite", "-q", *device]
            rows.append(("finetune --apply, CT sample", timed(tune, tune_cache),
                         timed(tune, tune_cache)))

    print(f"fresh processes, {args.device}; seconds (first: empty Triton cache, or the demo's "
          "for a new size; then warm)")
    print(f"{'what':32s} {'first':>8s} {'warm':>8s} {'first - warm':>13s}")
    for name, first, warm in rows:
        print(f"{name:32s} {first:8.1f} {warm:8.1f} {first - warm:13.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
