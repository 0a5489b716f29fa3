"""NIfTI (.nii, .nii.gz) through nibabel, keeping the stored voxel order, affine and header."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .geometry import Geometry


def read(path: Path) -> tuple[np.ndarray, Geometry]:
    import nibabel as nib

    img = nib.load(path)
    data = np.asanyarray(img.dataobj)  # applies the header's scaling, if any
    # Files written as 4D/5D with singleton trailing axes (e.g. ROBEX's atlas) are volumes.
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    zooms = tuple(float(z) for z in img.header.get_zooms()[: min(data.ndim, 3)])
    unit = img.header.get_xyzt_units()[0] or "mm"
    geometry = Geometry(
        affine=np.asarray(img.affine, dtype=float),
        spacing=zooms,
        spatial_axes=tuple(range(min(data.ndim, 3))),
        world="RAS",
        units={"unknown": "mm", "meter": "m", "micron": "um"}.get(unit, unit),
        axis_names=("i", "j", "k")[: min(data.ndim, 3)],
        source_format="nifti",
        header=img.header.copy(),
    )
    return data, geometry


def write(array: np.ndarray, path: Path, geometry: Geometry) -> None:
    import nibabel as nib

    header = geometry.header.copy() if isinstance(geometry.header, nib.Nifti1Header) else None
    img = nib.Nifti1Image(array, geometry.affine, header=header)
    img.set_data_dtype(array.dtype)
    img.header.set_slope_inter(1.0, 0.0)  # labels are stored as they are, never rescaled
    if header is None:
        img.header.set_xyzt_units("mm")
    nib.save(img, str(path))
