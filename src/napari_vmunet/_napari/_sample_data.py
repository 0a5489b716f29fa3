"""napari's File > Open Sample > VM-UNet: the bundled real images with their reference labels
(hidden until the user shows them, to compare)."""

from __future__ import annotations

from ..bundled import SAMPLES, load_sample
from ._layers import image_layer_data


def _sample(name: str) -> list[tuple]:
    image, labels = load_sample(name)
    sample = SAMPLES[name]
    reference, kwargs, kind = image_layer_data(labels, name=f"{sample.name} {sample.labels_name}",
                                               kind="labels")
    # Hidden: shown, it would make the image look segmented before Segment was clicked.
    return [image_layer_data(image, name=sample.name),
            (reference, {**kwargs, "visible": False}, kind)]


def t1_head() -> list[tuple]:
    return _sample("t1-head")


def ct_lung() -> list[tuple]:
    return _sample("ct-lung")
