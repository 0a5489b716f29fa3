"""Images and volumes with their geometry: read NIfTI, TIFF and NRRD; write labels back.

Arrays are kept in the order the file stores them (no reorientation), so that labels written
back line up voxel for voxel with the source and keep its affine and header. The
:class:`Geometry` says how array indices map to the world (millimetres), which axes are
spatial, which holds channels, and which axis is "axial" (the default slicing axis).

No torch, no Qt here.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .geometry import Geometry

__all__ = ["Geometry", "Image", "ImageReadError", "atomic_write", "image_format", "read_image",
           "strip_suffix", "write_labels"]

SUFFIXES = {
    ".nii": "nifti", ".nii.gz": "nifti", ".tif": "tiff", ".tiff": "tiff",
    ".nrrd": "nrrd", ".nhdr": "nrrd",
}


class ImageReadError(ValueError):
    """A file that cannot be read as an image; the message says why and what to do."""


@dataclass
class Image:
    data: np.ndarray
    geometry: Geometry
    path: Path | None = None

    @property
    def name(self) -> str:
        if self.path is None:
            return "image"
        return strip_suffix(self.path.name)


def image_format(path: str | os.PathLike) -> str | None:
    name = Path(path).name.lower()
    for suffix, fmt in sorted(SUFFIXES.items(), key=lambda kv: -len(kv[0])):
        if name.endswith(suffix):
            return fmt
    return None


def strip_suffix(name: str) -> str:
    lower = name.lower()
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def read_image(path: str | os.PathLike) -> Image:
    """Read a NIfTI, TIFF or NRRD file into an :class:`Image` (array as stored + geometry)."""
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: no such file")
    if path.is_dir():
        raise ImageReadError(f"{path} is a folder; give an image file (.nii.gz, .tif, .nrrd)")
    fmt = image_format(path)
    if fmt is None:
        raise ImageReadError(
            f"{path.name}: unsupported file type; napari-vmunet reads "
            f"{', '.join(sorted(SUFFIXES))}"
        )
    reader = _module(fmt).read
    try:
        data, geometry = reader(path)
    except ImageReadError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # each library has its own error types for a damaged file
        raise ImageReadError(f"{path.name} could not be read as {fmt.upper()}: {exc}") from exc
    if data.size == 0:
        raise ImageReadError(f"{path.name} contains an empty image (shape {data.shape})")
    return Image(data, geometry, path)


def write_labels(
    labels: np.ndarray,
    path: str | os.PathLike,
    geometry: Geometry,
    *,
    overwrite: bool = False,
) -> Path:
    """Write a label (or probability) array next to its source's geometry, atomically.

    The format follows the suffix (.nii.gz, .nii, .tif, .nrrd). An existing file is replaced only
    with ``overwrite=True``.
    """
    path = Path(path)
    fmt = image_format(path)
    if fmt is None:
        raise ValueError(f"{path.name}: choose an output ending in .nii.gz, .nii, .tif or .nrrd")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; choose another name or use --overwrite")
    writer = _module(fmt).write
    return atomic_write(path, lambda tmp: writer(labels, tmp, geometry))


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Run ``write(temporary path)`` in the target folder, then rename over ``path``: a reader
    never sees half a file, and a failure leaves nothing behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Keep the real suffix last: writers pick the format (and compression) from it.
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=f"-{path.name}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; outputs are ordinary files
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _module(fmt: str):
    from importlib import import_module

    return import_module(f"{__name__}.{fmt}")
