"""Save a Labels layer as NIfTI, NRRD or TIFF on its source image's grid."""

from __future__ import annotations

from ..io import image_format, write_labels
from ._layers import as_labels, geometry_of_layer


def write_labels_layer(path: str, data, meta: dict) -> list[str]:
    if image_format(path) is None or path.lower().endswith(".nhdr"):
        return []
    labels = as_labels(data)
    # napari's save dialog has already asked before replacing an existing file
    written = write_labels(labels, path, geometry_of_layer(meta, labels.shape), overwrite=True)
    return [str(written)]
