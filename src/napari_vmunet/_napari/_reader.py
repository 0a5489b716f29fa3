"""Open NIfTI, TIFF and NRRD files in napari with their geometry (the layer's affine)."""

from __future__ import annotations

import re

from ..io import ImageReadError, image_format, read_image
from ._layers import image_layer_data

# An integer file whose name says it is a segmentation opens as a Labels layer.
_LABEL_NAMES = re.compile(r"(label|mask|seg|tumou?r|lesion|brain_?mask)", re.IGNORECASE)


def get_reader(path):
    if isinstance(path, list):
        if not all(isinstance(p, str) and image_format(p) for p in path):
            return None
    elif not (isinstance(path, str) and image_format(path)):
        return None
    return read_layers


def read_layers(path):
    paths = path if isinstance(path, list) else [path]
    layers = []
    for p in paths:
        try:
            image = read_image(p)
        except ImageReadError as exc:
            raise ValueError(str(exc)) from None  # napari shows the message
        kind = "labels" if _looks_like_labels(image) else "image"
        layers.append(image_layer_data(image, kind=kind))
    return layers


def _looks_like_labels(image) -> bool:
    data = image.data
    if data.dtype.kind not in "iub" or image.geometry.channel_axis is not None:
        return False
    if not _LABEL_NAMES.search(image.name):
        return False
    return data.min() >= 0 and data.max() < 65536
