"""TIFF (.tif, .tiff) through tifffile; voxel size from ImageJ or OME metadata when present."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .geometry import Geometry

_SPATIAL = "ZYX"
_CHANNEL = "CS"  # S: samples per pixel (RGB)
_UNITS = {"micron": "um", "\\u00B5m": "um", "µm": "um", "um": "um", "mm": "mm", "nm": "nm",
          "cm": "cm", "m": "m", "pixel": "pixel", "": "pixel"}


def read(path: Path) -> tuple[np.ndarray, Geometry]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        data = series.asarray()
        axes = series.axes.upper()
        if "Z" not in axes:  # a plain page stack: ImageJ/tifffile call it I or Q
            axes = axes.replace("I", "Z", 1) if "I" in axes else axes.replace("Q", "Z", 1)
        sizes, unit = _voxel_size(tif, series)

    spatial = tuple(i for i, a in enumerate(axes) if a in _SPATIAL)
    channels = [i for i, a in enumerate(axes) if a in _CHANNEL]
    spacing = tuple(sizes.get(axes[i], 1.0) for i in spatial)
    affine = np.eye(4)
    for column, s in enumerate(spacing[:3]):
        affine[column, column] = s
    geometry = Geometry(
        affine=affine,
        spacing=spacing,
        spatial_axes=spatial,
        channel_axis=channels[0] if channels else None,
        world=None,
        units=unit,
        axis_names=tuple(axes[i].lower() for i in spatial),
        source_format="tiff",
        header={"axes": axes},
    )
    return data, geometry


def _voxel_size(tif, series) -> tuple[dict[str, float], str]:
    sizes: dict[str, float] = {}
    unit = "pixel"
    if tif.ome_metadata:
        pixels = re.search(r"<Pixels\b[^>]*>", tif.ome_metadata)
        if pixels:
            for axis in "XYZ":
                m = re.search(rf'PhysicalSize{axis}="([^"]+)"', pixels.group(0))
                if m:
                    sizes[axis] = float(m.group(1))
            m = re.search(r'PhysicalSizeXUnit="([^"]+)"', pixels.group(0))
            unit = _UNITS.get(m.group(1), m.group(1)) if m else ("um" if sizes else "pixel")
        return sizes, unit
    page = series.pages[0] if series.pages else tif.pages[0]
    for axis, tag in (("X", "XResolution"), ("Y", "YResolution")):
        value = page.tags.get(tag)
        if value is not None:
            num, den = value.value
            if num and (num, den) != (1, 1):
                sizes[axis] = den / num
    ij = tif.imagej_metadata or {}
    if "spacing" in ij:
        sizes["Z"] = float(ij["spacing"])
    if sizes:
        unit = _UNITS.get(str(ij.get("unit", "")), str(ij.get("unit", "pixel")))
    return sizes, unit


def write(array: np.ndarray, path: Path, geometry: Geometry) -> None:
    import tifffile

    spatial = len(geometry.spatial_axes)
    spacing = dict(zip("ZYX"[3 - spatial:], geometry.spacing, strict=False))
    axes = "ZYX"[3 - spatial:]
    if array.ndim > spatial:  # probabilities: classes last -> ImageJ's order, C before Y X
        array = np.moveaxis(array, -1, -3)
        axes = axes[:-2] + "C" + axes[-2:]
    metadata = {"axes": axes}
    if "Z" in spacing:
        metadata["spacing"] = spacing["Z"]
    if geometry.units not in ("pixel", ""):
        metadata["unit"] = "micron" if geometry.units == "um" else geometry.units
    resolution = (1.0 / spacing.get("X", 1.0), 1.0 / spacing.get("Y", 1.0))
    tifffile.imwrite(path, array, imagej=True, resolution=resolution, metadata=metadata)
