"""NRRD (.nrrd, .nhdr) through pynrrd, keeping space directions, origin and the world frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .geometry import Geometry

_FRAMES = {"left-posterior-superior": "LPS", "right-anterior-superior": "RAS",
           "left-anterior-superior": "LAS", "scanner-xyz": "XYZ", "3d-right-handed": "XYZ"}


def read(path: Path) -> tuple[np.ndarray, Geometry]:
    import nrrd

    # index_order="C": array axes are the file's axes reversed (slowest first), like numpy.
    data, header = nrrd.read(str(path), index_order="C")
    n = data.ndim
    directions = header.get("space directions")
    spatial, channel_axis, columns = [], None, []
    for axis in range(n):
        file_axis = n - 1 - axis
        row = None if directions is None else np.asarray(directions[file_axis], dtype=float)
        if row is not None and np.all(np.isfinite(row)) and np.any(row):
            spatial.append(axis)
            columns.append(row)
        elif directions is not None:
            channel_axis = axis  # a 'none' direction: vector/colour components
    if directions is None:  # no world information: unit voxels
        spatial = list(range(n))
        columns = [np.eye(3)[min(i, 2)] for i in range(n)]
    affine = np.eye(4)
    for column, vector in enumerate(columns[:3]):
        affine[: len(vector), column] = vector
    origin = header.get("space origin")
    if origin is not None and np.all(np.isfinite(origin)):
        affine[: len(origin), 3] = origin
    geometry = Geometry(
        affine=affine,
        spacing=tuple(float(np.linalg.norm(c)) for c in columns),
        spatial_axes=tuple(spatial),
        channel_axis=channel_axis,
        world=_FRAMES.get(str(header.get("space", "")).lower()) if directions is not None else None,
        units="mm",
        axis_names=tuple(f"axis {i}" for i in spatial),
        source_format="nrrd",
        header={k: header[k] for k in ("space", "space units") if k in header},
    )
    return data, geometry


def write(array: np.ndarray, path: Path, geometry: Geometry) -> None:
    import nrrd

    if str(path).lower().endswith(".nhdr"):
        raise ValueError("write labels to a single .nrrd file, not a detached .nhdr header")
    spatial = len(geometry.spatial_axes)
    extra = array.ndim - spatial
    # pynrrd wants one row per file axis (fastest first) in the header.
    rows = [geometry.affine[:3, column].copy() for column in range(spatial)]
    directions = rows + [np.full(3, np.nan)] * extra  # array order: classes last
    header = {
        "encoding": "gzip",
        "space directions": np.array(directions[::-1]),
        "space origin": geometry.affine[:3, 3].copy(),
        "kinds": (["domain"] * spatial + ["vector"] * extra)[::-1],
    }
    if geometry.world and geometry.header and "space" in geometry.header:
        header["space"] = geometry.header["space"]
    else:
        header["space"] = "right-anterior-superior" if geometry.world == "RAS" else \
            "left-posterior-superior" if geometry.world == "LPS" else "3D-right-handed"
    nrrd.write(str(path), np.ascontiguousarray(array), header, index_order="C")
