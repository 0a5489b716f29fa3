"""Between an :class:`~napari_vmunet.io.Image` and napari layer data.

napari shows the array axes as stored, scaled by the voxel size (a full affine with the axis
permutations and flips of medical files would make napari slice "non-orthogonally"). The exact
geometry travels in the layer's metadata, so labels saved from a layer land on the source's
grid with its affine and header."""

from __future__ import annotations

import numpy as np

from ..io import Geometry, Image

GEOMETRY_KEY = "napari_vmunet_geometry"
# On a Labels layer made by the Segment widget: the labels as predicted, before any correction
# (the Fine-tune widget finds the corrected slices by comparing against it).
PREDICTION_KEY = "napari_vmunet_prediction"


def as_labels(data) -> np.ndarray:
    """Label values as uint8, or uint16 when they do not fit."""
    data = np.asarray(data)
    return data.astype(np.uint8 if data.max() < 256 else np.uint16, copy=False)


def image_layer_data(image: Image, name: str | None = None, kind: str = "image") -> tuple:
    """(data, kwargs, layer type) for napari. Channels (RGB) stay as napari's rgb axis."""
    g = image.geometry
    data = image.data
    kwargs = {"name": name or image.name, "metadata": {GEOMETRY_KEY: g},
              "scale": tuple(g.spacing)}
    if g.channel_axis is not None:
        data = np.moveaxis(data, g.channel_axis, -1)
        if kind == "image" and data.shape[-1] in (3, 4) and len(g.spatial_axes) == 2:
            kwargs["rgb"] = True
        else:  # other channel counts: one layer per channel would be napari's way; keep first
            data = data[..., 0]
    if g.units and g.units != "pixel":
        kwargs["units"] = g.units if g.units != "um" else "micrometer"
    if kind == "labels":
        data = as_labels(data)
    return data, kwargs, kind


def geometry_of_layer(meta: dict, shape: tuple[int, ...]) -> Geometry:
    """The geometry to save a layer with: the source's (from its metadata) when it fits the
    data's shape, else the layer's own affine."""
    stored = (meta.get("metadata") or {}).get(GEOMETRY_KEY)
    if isinstance(stored, Geometry) and len(stored.spatial_axes) == len(shape):
        return stored.for_labels()
    n = len(shape)
    scale = [float(s) for s in (meta.get("scale") or [1.0] * n)][-n:]
    translate = [float(t) for t in (meta.get("translate") or [0.0] * n)][-n:]
    affine = np.eye(4)
    for i in range(min(n, 3)):
        affine[i, i], affine[i, 3] = scale[i], translate[i]
    return Geometry(affine, tuple(scale), tuple(range(n)))


def layer_spacing_mm(layer) -> tuple[float, ...] | None:
    """The voxel size of a layer's spatial axes in millimetres: from the source file when the
    layer came from one, else from napari's scale and units; None when its units are pixels
    (napari's default) or not lengths."""
    stored = layer.metadata.get(GEOMETRY_KEY)
    if isinstance(stored, Geometry):
        return stored.spacing_mm()
    units = getattr(layer, "units", None)
    if not units:
        return None
    try:
        factors = [float((1 * unit).to("mm").magnitude) for unit in units]
    except Exception:  # pint's DimensionalityError for pixels: no physical size known
        return None
    return tuple(float(s) * f for s, f in zip(layer.scale, factors, strict=True))


def viewer_slicing_axis(viewer, layer) -> int:
    """The data axis of ``layer`` that the viewer is stepping through (the first one not
    displayed), so that "slice" means what the user sees."""
    displayed = set(viewer.dims.displayed)
    offset = viewer.dims.ndim - layer.ndim
    for world_axis in viewer.dims.not_displayed:
        if world_axis not in displayed and world_axis - offset >= 0:
            return world_axis - offset
    return 0
