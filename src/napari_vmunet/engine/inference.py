"""The Segmenter: an image or volume in, labels of the same shape out, slice batch by slice batch.

The work is a generator of small events, so that a caller can show slices as they finish, draw a
progress bar, or stop at any event (closing the generator stops the work):

    for event in Segmenter(model).run(volume, axis=0):
        if isinstance(event, SlicesDone):
            ...  # event.labels are slices start..stop along the slicing axis

``Segmenter.segment(...)`` (or :func:`segment`) is the one-call form.

Memory: the input is read one batch of slices at a time; only the uint8 labels (and, on request,
the float probabilities) are allocated in full. On CUDA, a batch that does not fit is halved and
the run goes on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..recipes import Recipe, recipe_for
from .cuda_graphs import GraphedForward
from .device import resolve_device
from .events import Notice, SegmentationDone, SegmentationStarted, SlicesDone
from .memory import auto_batch_size, halved_batch
from .postprocess import keep_largest
from .preprocess import IntensityMap, Resize, in_plane_spacing, intensity_map, normalise

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class _Layout:
    spatial_axes: tuple[int, ...]
    channel_axis: int | None
    slice_axis: int | None  # None: a single 2D image


NO_PRIOR_NOTE = (
    "this model was fine-tuned to read the shapes of corrected slices, and none were given: it "
    "goes by the image alone and can miss the structure. Apply it where you corrected slices "
    "(the Fine-tune widget's Apply, or finetune --apply), or correct a few slices of this "
    "image and fine-tune again")


class Segmenter:
    """Runs a VM-UNet over images and volumes with the checkpoint's preprocessing recipe.

    ``recipe`` defaults to the model's own (or a guess for the authors' files, reported as a
    :class:`Notice`). ``batch_size`` None chooses from free memory. ``threshold`` overrides the
    recipe's for one-class models. ``bf16`` uses bfloat16 autocast on CUDA.
    """

    def __init__(self, model, recipe: Recipe | None = None, *, device="auto",
                 batch_size: int | None = None, threshold: float | None = None,
                 bf16: bool = True):
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        if recipe is None:
            recipe, self.recipe_note = recipe_for(model)
        else:
            self.recipe_note = None
        self.recipe = recipe
        self.threshold = recipe.threshold if threshold is None else float(threshold)
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be between 0 and 1, got {self.threshold}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.batch_size = batch_size
        self.bf16 = bf16 and self.device.type == "cuda"
        self.num_classes = model.config.num_classes
        # batches of a shape seen before replay as one CUDA graph (no-op on the CPU)
        self._forward = GraphedForward(self.model.forward_logits, bf16=self.bf16)
        priors = model.config.head_priors
        # with a shape prior, it travels as the last channels of the batch (one input tensor)
        self._guided = GraphedForward(
            lambda x: self.model.forward_logits(x[:, :-priors], x[:, -priors:]),
            bf16=self.bf16) if priors else None

    # -- public -----------------------------------------------------------------------------

    def segment(self, image: np.ndarray, **kwargs) -> SegmentationDone:
        """Run to the end and return the result (see :meth:`run` for the arguments)."""
        for event in self.run(image, **kwargs):
            if isinstance(event, SegmentationDone):
                return event
        raise AssertionError("the segmentation generator ended without a result")

    def run(
        self,
        image: np.ndarray,
        *,
        axis: int | None = None,
        channel_axis: int | None = None,
        rgb: bool | None = None,
        probabilities: bool = False,
        labels_out: np.ndarray | None = None,
        spacing: Sequence[float] | None = None,
        uncertainty: bool = False,
        prior=None,
    ) -> Iterator:
        """Yield events while segmenting ``image``.

        image: (H, W), (H, W, C) colour, (Z, Y, X) volume, or a volume with ``channel_axis``.
        axis: the slicing axis of a volume (default: the first spatial axis).
        rgb: whether the last axis of a 3D array is colour; None guesses from the recipe.
        probabilities: also return float32 probabilities (the image's shape for one class,
            the shape plus a class axis last otherwise).
        labels_out: write labels into this existing array (e.g. a napari layer's data)
            instead of a new one; it must have the image's spatial shape.
        uncertainty: also measure how unsure the model is of each slice (see
            :func:`uncertain_voxels`), for suggesting which slice to correct next.
        prior: the corrected slices' shapes along ``axis``
            (:class:`~.shape_prior.ShapePrior`), for a model whose pixel head reads one.
        """
        start_time = time.perf_counter()
        image = np.asanyarray(image)
        layout = _layout(image.shape, channel_axis, rgb, axis, self.recipe)
        spatial_shape = tuple(image.shape[i] for i in layout.spatial_axes)
        slices_view = _slices_view(image, layout)  # (n, h, w, c): a view, nothing copied
        n, h, w, channels = slices_view.shape
        if min(h, w) < 1:
            raise ValueError(f"the image has an empty side (shape {image.shape})")
        in_chans = self.model.config.in_chans
        if channels not in (1, 3, 4) or (channels != 1 and in_chans not in (1, 3)):
            raise ValueError(
                f"the image has {channels} channels but this model takes {in_chans} (RGB) or 1 "
                "(grey) channel; pick one channel, or pass the right channel axis"
            )

        notes: list[str] = []
        if self.recipe_note:
            notes.append(self.recipe_note)
        if channels >= 3 and self.recipe.color == "gray":
            notes.append("colour image with a greyscale recipe: converted to luminance")
        mapping, warning = intensity_map(image, self.recipe)
        if warning:
            notes.append(warning)

        dtype = np.uint8 if self.num_classes <= 256 else np.uint16
        if labels_out is not None:
            if tuple(labels_out.shape) != spatial_shape:
                raise ValueError(f"labels_out has shape {labels_out.shape}, the image's spatial "
                                 f"shape is {spatial_shape}")
            labels = labels_out
        else:
            labels = np.zeros(spatial_shape, dtype=dtype)
        labels_view = _labels_view(labels, layout)
        if prior is not None:
            _check_prior(prior, self.model.config.head_priors, (h, w), layout)
        elif self.model.config.head_priors:
            notes.append(NO_PRIOR_NOTE)
        probs = probs_view = None
        if probabilities:
            extra = () if self.num_classes == 1 else (self.num_classes,)
            probs = np.zeros(spatial_shape + extra, dtype=np.float32)
            probs_view = _labels_view(probs, layout)

        slice_position = (None if layout.slice_axis is None
                          else layout.spatial_axes.index(layout.slice_axis))
        pixel_spacing = in_plane_spacing(spacing, slice_position, len(layout.spatial_axes))
        if self.recipe.pixel_size and self.recipe.input_size is None and pixel_spacing is None:
            notes.append(f"the voxel size is unknown: segmenting the pixels as they are (this "
                         f"model expects {self.recipe.pixel_size:g} mm pixels)")
        resize = Resize.plan((h, w), self.recipe, self.model.config.size_multiple, pixel_spacing)
        batch = self.batch_size or auto_batch_size(self.model, self.device, resize.size)
        yield SegmentationStarted(n, batch, str(self.device),
                                  self.model.scan_backend_for(self.device), self.recipe)
        for note in notes:
            yield Notice(note)

        non_finite = 0
        unsure = np.zeros(n, np.float64) if uncertainty else None
        start = 0
        while start < n:
            stop = min(start + batch, n)
            chunk = _as_torch_friendly(slices_view[start:stop])
            guide = None if prior is None else prior.stack(range(start, stop))
            try:
                lab, prob, bad, doubt = self._predict(chunk, mapping, resize, (h, w),
                                                      probabilities, uncertainty, guide)
            except torch.OutOfMemoryError:
                batch, message = halved_batch(batch, self.device, f"one {h}x{w} slice")
                notes.append(message)
                yield Notice(message)
                continue
            non_finite += bad
            if unsure is not None:
                unsure[start:stop] = doubt
            labels_view[start:stop] = lab
            if probs_view is not None:
                probs_view[start:stop] = prob
            yield SlicesDone(start, stop, n, labels_view[start:stop])
            start = stop

        if non_finite:
            message = (f"{non_finite} NaN/Inf values were replaced by the intensity window's "
                       "low end before segmenting")
            notes.append(message)
            yield Notice(message)
        if self.recipe.keep_largest:
            changed = keep_largest(labels, self.num_classes)
            if changed:
                message = (f"kept the largest region of each class and filled its holes "
                           f"({changed} voxels changed)")
                notes.append(message)
                yield Notice(message)
        yield SegmentationDone(labels, probs, time.perf_counter() - start_time, notes, unsure)

    # -- one batch ---------------------------------------------------------------------------

    def _predict(self, chunk: np.ndarray, mapping: IntensityMap, resize: Resize,
                 shape: tuple[int, int], want_probabilities: bool,
                 want_uncertainty: bool = False, guide: np.ndarray | None = None):
        """(n, h, w, c) raw values -> uint8 labels (n, h, w), probabilities or None, the
        number of NaN/Inf values replaced, and each slice's uncertain voxels or None.
        ``guide``: the shape prior of these slices, (n, priors, h, w) in mm."""
        with torch.inference_mode():
            # The raw dtype travels (int16 CT is half the bytes of float32); converted there.
            x = torch.from_numpy(chunk).to(self.device, non_blocking=True).float()
            bad = 0
            if chunk.dtype.kind == "f":
                finite = torch.isfinite(x)
                bad = int(finite.numel() - finite.sum())
                if bad:
                    x = torch.where(finite, x, torch.tensor(mapping.low, device=x.device))
            x = self._channels(x.permute(0, 3, 1, 2))
            x = resize.to_model(normalise(x, mapping, self.recipe))
            if guide is None:
                logits = self._forward(x).float()
            else:
                guide = resize.to_model(torch.from_numpy(guide).to(self.device))
                logits = self._guided(torch.cat([x, guide], 1)).float()

            def probabilities(maps):
                return torch.sigmoid(maps) if self.num_classes == 1 else torch.softmax(maps, 1)

            def labels(maps_logits):
                # sigmoid(l) >= t  <=>  l >= logit(t); argmax of logits = argmax of softmax
                if self.num_classes == 1:
                    return maps_logits[:, 0] >= math.log(self.threshold / (1 - self.threshold))
                return maps_logits.argmax(1)

            p_image = None
            if self.recipe.labels_at_input_size:
                small = labels(logits)[:, None].float()
                lab = resize.to_image(small, shape, "nearest")[:, 0]
            else:
                # Probabilities, not logits, are interpolated: they are what is thresholded.
                p_image = resize.to_image(probabilities(logits), shape, "bilinear")
                lab = labels(p_image) if self.num_classes > 1 else p_image[:, 0] >= self.threshold
            prob = doubt = None
            if (want_probabilities or want_uncertainty) and p_image is None:
                p_image = resize.to_image(probabilities(logits), shape, "bilinear")
            if want_probabilities:
                prob = p_image[:, 0] if self.num_classes == 1 else p_image.permute(0, 2, 3, 1)
                prob = prob.cpu().numpy()
            if want_uncertainty:
                doubt = uncertain_voxels(p_image).cpu().numpy()
            dtype = torch.uint8 if self.num_classes <= 256 else torch.int32
            return lab.to(dtype).cpu().numpy(), prob, bad, doubt

    def _channels(self, x: torch.Tensor) -> torch.Tensor:
        """(n, c, h, w) -> the channels the recipe and model expect."""
        c = x.shape[1]
        if c == 4:  # RGBA: the alpha channel carries no image content
            x, c = x[:, :3], 3
        if c == 3 and self.recipe.color == "gray":
            return (x * torch.from_numpy(_LUMA).to(x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
        return x  # 1 channel: the model tiles it; 3 channels: RGB as is


_TORCH_DTYPES = {np.dtype(t) for t in (np.uint8, np.int8, np.int16, np.int32, np.int64,
                                       np.float16, np.float32, np.float64)}


def _check_prior(prior, priors: int, slice_shape: tuple[int, int], layout: _Layout) -> None:
    if not priors:
        raise ValueError("this model does not read a shape prior (it has no pixel head that "
                         "takes one); segment without it")
    if layout.slice_axis is None:
        raise ValueError("a shape prior needs a volume cut into slices, not a 2D image")
    if tuple(prior.shape) != (priors, *slice_shape):
        raise ValueError(f"the shape prior gives {tuple(prior.shape)} per slice, the model "
                         f"needs {(priors, *slice_shape)}")


def _as_torch_friendly(chunk: np.ndarray) -> np.ndarray:
    """A contiguous copy of a batch of slices in a dtype torch can take as is."""
    if chunk.dtype in _TORCH_DTYPES:
        return np.ascontiguousarray(chunk)
    return np.asarray(chunk, dtype=np.float32)  # uint16/uint32, bool, big-endian...


def uncertain_voxels(p: torch.Tensor) -> torch.Tensor:
    """How unsure a model is of each slice: the entropy of its probabilities ``p`` (n, classes,
    h, w; one channel: the sigmoid of one class), scaled to 1 for a voxel at even odds and
    summed over the slice. About the number of voxels it could as well have labelled
    otherwise: where a correction would change the most."""
    p = p.float().clamp(1e-6, 1 - 1e-6)
    if p.shape[1] == 1:
        bits = -(p * p.log2() + (1 - p) * (1 - p).log2())[:, 0]
    else:
        bits = -(p * p.log2()).sum(1) / math.log2(p.shape[1])
    return bits.flatten(1).sum(1).double()


def segment(model, image: np.ndarray, recipe: Recipe | None = None, *, device="auto",
            batch_size=None, **kwargs) -> SegmentationDone:
    """One call: ``Segmenter(model, recipe, ...).segment(image, **kwargs)``."""
    return Segmenter(model, recipe, device=device, batch_size=batch_size).segment(image, **kwargs)


# -- layout helpers ----------------------------------------------------------------------------


def _layout(shape, channel_axis, rgb, axis, recipe: Recipe) -> _Layout:
    ndim = len(shape)
    if ndim < 2:
        raise ValueError(f"an image needs at least 2 dimensions, got shape {shape}")
    if channel_axis is not None:
        channel_axis = _check_axis(channel_axis, ndim, "channel axis")
    elif ndim == 3 and (rgb or (rgb is None and recipe.color == "rgb" and shape[-1] in (3, 4))):
        channel_axis = 2
    spatial = tuple(i for i in range(ndim) if i != channel_axis)
    if len(spatial) > 3:
        raise ValueError(
            f"a {ndim}D array (shape {shape}) has more axes than a volume: say which axis holds "
            "channels (channel_axis / --channel-axis), or split the time points or channels "
            "into separate images"
        )
    if len(spatial) < 2:
        raise ValueError(f"shape {shape} with channel axis {channel_axis} leaves no 2D image")
    if len(spatial) == 2:
        if axis is not None and axis not in spatial:
            raise ValueError(f"a 2D image has no slicing axis {axis}")
        return _Layout(spatial, channel_axis, None)
    if axis is None:
        axis = spatial[0]
    axis = _check_axis(axis, ndim, "slicing axis")
    if axis == channel_axis:
        raise ValueError(f"axis {axis} holds channels; choose a spatial axis to slice along")
    return _Layout(spatial, channel_axis, axis)


def _check_axis(axis: int, ndim: int, what: str) -> int:
    if not -ndim <= axis < ndim:
        raise ValueError(f"{what} {axis} does not exist in a {ndim}D array")
    return axis % ndim


def _slices_view(image: np.ndarray, layout: _Layout) -> np.ndarray:
    """(n, h, w, c) view: slices along the slicing axis, in-plane axes in order, channels last."""
    view = image
    if layout.channel_axis is None:
        view = view[..., None]
        channel = view.ndim - 1
    else:
        channel = layout.channel_axis
    in_plane = [a for a in layout.spatial_axes if a != layout.slice_axis]
    if layout.slice_axis is None:
        return np.moveaxis(view, [*in_plane, channel], [0, 1, 2])[None]
    return np.moveaxis(view, [layout.slice_axis, *in_plane, channel], [0, 1, 2, 3])


def _labels_view(labels: np.ndarray, layout: _Layout) -> np.ndarray:
    """The output (spatial shape [+ classes]) seen as (n, h, w[, classes])."""
    spatial_positions = {a: i for i, a in enumerate(layout.spatial_axes)}
    if layout.slice_axis is None:
        return labels[None]
    return np.moveaxis(labels, spatial_positions[layout.slice_axis], 0)
