"""What ships inside the package: the default model and the sample data (docs/model-card.md,
docs/data.md). Paths only; nothing here imports torch."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

DEFAULT_MODEL = "t1_brain.safetensors"


@dataclass(frozen=True)
class Sample:
    name: str
    description: str
    image: str
    labels: str
    labels_name: str


SAMPLES: dict[str, Sample] = {
    "t1-head": Sample(
        "t1-head", "T1-weighted MRI head (ROBEX atlas, 1.5 mm) with its reference brain mask",
        "t1_head_image.nii.gz", "t1_head_brain_mask.nii.gz", "brain (reference)",
    ),
    "ct-lung": Sample(
        "ct-lung", "lung CT crop (pyradiomics lung2, HU, 0.63 x 0.63 x 5 mm) with its tumour label",
        "ct_lung_image.nrrd", "ct_lung_tumour.nrrd", "tumour (reference)",
    ),
}


def default_checkpoint() -> Path:
    """The bundled T1 brain-extraction model (used when no --checkpoint is given)."""
    return Path(str(files("napari_vmunet") / "models" / DEFAULT_MODEL))


def sample_paths(name: str) -> tuple[Path, Path]:
    """(image file, reference labels file) of a bundled sample."""
    if name not in SAMPLES:
        raise ValueError(f"unknown sample {name!r}; choose one of {', '.join(SAMPLES)}")
    folder = files("napari_vmunet") / "samples"
    sample = SAMPLES[name]
    return Path(str(folder / sample.image)), Path(str(folder / sample.labels))


def load_sample(name: str):
    """(image, reference labels) of a bundled sample as :class:`napari_vmunet.io.Image`."""
    from .io import read_image

    image, labels = sample_paths(name)
    return read_image(image), read_image(labels)
