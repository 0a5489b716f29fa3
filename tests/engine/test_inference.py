"""The Segmenter: layouts, streaming, cancel, bad input and memory, on real volumes."""

import dataclasses
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_vmunet.checkpoint import load_checkpoint
from napari_vmunet.engine import Notice, SegmentationDone, Segmenter, SlicesDone, segment
from napari_vmunet.io import read_image
from napari_vmunet.model import VMUNet, VMUNetConfig
from napari_vmunet.recipes import RECIPES

from ..conftest import DATA, TINY, perturb


class CountingModel(torch.nn.Module):
    """A stand-in with VM-UNet's interface whose output is easy to predict: foreground where
    the (normalised) input is bright. Counts its calls."""

    def __init__(self, num_classes=1, in_chans=3):
        super().__init__()
        self.config = VMUNetConfig(num_classes=num_classes, in_chans=in_chans, **TINY)
        self.calls = 0

    def forward_logits(self, x):
        self.calls += 1
        score = x.mean(1, keepdim=True) - 0.5
        return score if self.config.num_classes == 1 else torch.cat(
            [score * k for k in range(self.config.num_classes)], 1)

    def scan_backend_for(self, device):
        return "none"


@pytest.fixture
def head():
    return read_image(DATA / "robex_t1_3mm.nii.gz")


def test_volume_labels_have_the_input_shape_along_any_axis(head, tiny_checkpoint):
    model = load_checkpoint(tiny_checkpoint)
    seg = Segmenter(model, device="cpu")
    results = {axis: seg.segment(head.data, axis=axis).labels for axis in range(3)}
    for axis, labels in results.items():
        assert labels.shape == head.data.shape and labels.dtype == np.uint8, axis
        assert set(np.unique(labels)) <= {0, 1}
    # slicing along an axis means every slice is a 2D image: check one slice of axis 1
    k = head.data.shape[1] // 2
    single = seg.segment(head.data[:, k, :]).labels
    assert np.array_equal(single, results[1][:, k, :])


def test_streaming_events_and_batch_independence(head):
    model = CountingModel()
    events = list(Segmenter(model, RECIPES["mri"], device="cpu", batch_size=7)
                  .run(head.data, axis=2))
    done = events[-1]
    assert isinstance(done, SegmentationDone)
    chunks = [e for e in events if isinstance(e, SlicesDone)]
    n = head.data.shape[2]
    assert [c.start for c in chunks] == list(range(0, n, 7))
    assert chunks[-1].stop == n and all(c.total == n for c in chunks)
    for c in chunks:  # each chunk is the finished part of the output
        assert np.array_equal(c.labels, np.moveaxis(done.labels, 2, 0)[c.start:c.stop])
    one_by_one = Segmenter(CountingModel(), RECIPES["mri"], device="cpu", batch_size=1)
    assert np.array_equal(one_by_one.segment(head.data, axis=2).labels, done.labels)
    # the stand-in marks bright voxels: the labels follow the image
    assert done.labels[head.data > np.percentile(head.data, 99)].mean() > 0.99


def test_closing_the_generator_stops_the_work(head):
    model = CountingModel()
    run = Segmenter(model, RECIPES["mri"], device="cpu", batch_size=4).run(head.data, axis=0)
    for event in run:
        if isinstance(event, SlicesDone) and event.stop >= 8:
            break
    run.close()
    assert model.calls == 2


def test_labels_out_and_probabilities(head):
    out = np.full(head.data.shape, 7, np.uint8)
    done = Segmenter(CountingModel(), RECIPES["mri"], device="cpu").segment(
        head.data, axis=0, labels_out=out, probabilities=True)
    assert done.labels is out and set(np.unique(out)) <= {0, 1}
    assert done.probabilities.shape == head.data.shape and done.probabilities.dtype == np.float32
    assert np.array_equal(done.probabilities >= 0.5, out.astype(bool))
    multi = Segmenter(CountingModel(num_classes=3), RECIPES["mri"], device="cpu").segment(
        head.data, axis=0, probabilities=True)
    assert multi.probabilities.shape == (*head.data.shape, 3)
    assert np.allclose(multi.probabilities.sum(-1), 1, atol=1e-5)


def test_more_than_255_classes_give_uint16():
    model = VMUNet(VMUNetConfig(num_classes=300, **TINY)).eval()
    labels = segment(model, np.random.rand(40, 40).astype(np.float32), RECIPES["mri"],
                     device="cpu").labels
    assert labels.dtype == np.uint16 and labels.shape == (40, 40)


@pytest.mark.parametrize("shape, kwargs", [
    ((50, 60), {}),                               # 2D grey
    ((50, 60, 3), {"rgb": True}),                 # 2D RGB
    ((50, 60, 4), {"rgb": True}),                 # RGBA: alpha dropped
    ((6, 3, 40, 50), {"channel_axis": 1}),        # volume with a channel axis
    ((3, 40, 50), {"rgb": False, "axis": 0}),     # a 3-slice volume, not colour
    ((9, 9), {}),                                 # smaller than the model's grid: padded
])
def test_layouts(shape, kwargs):
    image = np.random.default_rng(1).random(shape, dtype=np.float32)
    done = Segmenter(CountingModel(), RECIPES["mri"], device="cpu").segment(image, **kwargs)
    spatial = tuple(s for i, s in enumerate(shape) if i != kwargs.get("channel_axis"))
    if kwargs.get("rgb"):
        spatial = shape[:2]
    assert done.labels.shape == spatial


def test_isic_recipe_reads_rgb_and_resizes(tiny_config):
    model = perturb(VMUNet(tiny_config)).eval()
    photo = (np.random.default_rng(2).random((300, 400, 3)) * 255).astype(np.uint8)
    done = Segmenter(model, device="cpu").segment(photo)  # no recipe stored: guessed 'isic'
    assert done.labels.shape == (300, 400)
    assert any("guessed 'isic'" in n for n in done.notes)


@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.int32, np.float64, np.uint8])
def test_integer_and_double_inputs_match_float32(head, dtype):
    data = np.clip(head.data, 0, 255).astype(dtype)
    seg = Segmenter(CountingModel(), RECIPES["mri"], device="cpu")
    expected = seg.segment(data.astype(np.float32), axis=1).labels
    assert np.array_equal(seg.segment(data, axis=1).labels, expected)


def test_nan_and_inf_are_replaced_with_a_notice(head):
    data = head.data.astype(np.float32)
    data[10, 10:20, 10:20] = np.nan
    data[20, 5, 5] = np.inf
    events = list(Segmenter(CountingModel(), RECIPES["mri"], device="cpu").run(data, axis=0))
    notices = [e.message for e in events if isinstance(e, Notice)]
    assert any("101 NaN/Inf values were replaced" in m for m in notices)
    assert events[-1].labels.shape == data.shape


def test_constant_and_empty_images():
    done = Segmenter(CountingModel(), RECIPES["mri"], device="cpu").segment(
        np.full((4, 40, 40), 3.0), axis=0)
    assert any("constant" in n for n in done.notes)
    assert done.labels.shape == (4, 40, 40)
    with pytest.raises(ValueError, match="empty side"):
        Segmenter(CountingModel(), RECIPES["mri"], device="cpu").segment(np.zeros((4, 0, 40)))


@pytest.mark.parametrize("shape, kwargs, message", [
    ((2, 5, 40, 40), {}, "more axes than a volume: say which axis holds channels"),
    ((2, 2, 5, 40, 40), {}, "more axes than a volume"),
    ((40, 40, 2), {"channel_axis": 2}, "has 2 channels but this model takes 3"),
    ((5, 40, 40), {"axis": 3}, "slicing axis 3 does not exist"),
    ((5, 40, 40, 3), {"channel_axis": 3, "axis": 3}, "holds channels"),
    ((40,), {}, "at least 2 dimensions"),
])
def test_bad_layouts_are_explained(shape, kwargs, message):
    with pytest.raises(ValueError, match=message):
        Segmenter(CountingModel(), RECIPES["mri"], device="cpu").segment(
            np.zeros(shape, np.float32), **kwargs)


def test_bad_settings_are_explained():
    with pytest.raises(ValueError, match="batch size must be at least 1"):
        Segmenter(CountingModel(), RECIPES["mri"], device="cpu", batch_size=0)
    with pytest.raises(ValueError, match="threshold must be between 0 and 1"):
        Segmenter(CountingModel(), RECIPES["mri"], device="cpu", threshold=1.5)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU is usable"):
            Segmenter(CountingModel(), RECIPES["mri"], device="cuda")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        Segmenter(CountingModel(), RECIPES["mri"], device="gpu0")


def test_a_large_volume_needs_little_memory_beyond_its_input():
    """512x512x600 float32 (600 MB): the engine adds the uint8 labels (150 MB) and a batch."""
    code = textwrap.dedent("""
        import resource, numpy as np, torch
        from tests.engine.test_inference import CountingModel
        from napari_vmunet.engine import Segmenter
        from napari_vmunet.recipes import RECIPES
        torch.set_num_threads(2)
        volume = np.random.default_rng(0).random((600, 512, 512), dtype=np.float32)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        seg = Segmenter(CountingModel(), RECIPES["mri"], device="cpu")
        labels = seg.segment(volume, axis=0).labels
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((after - before) / 1024, labels.shape)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=DATA.parent.parent)
    assert result.returncode == 0, result.stderr
    extra_mb = float(result.stdout.split()[0])
    assert extra_mb < 1024, f"{extra_mb:.0f} MB beyond the input"


class RunsOutOfMemory(CountingModel):
    """Raises CUDA's out-of-memory error for batches above ``limit`` slices."""

    def __init__(self, limit):
        super().__init__()
        self.limit = limit

    def forward_logits(self, x):
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return super().forward_logits(x)


def test_out_of_memory_halves_the_batch_and_goes_on(head):
    expected = Segmenter(CountingModel(), RECIPES["mri"], device="cpu").segment(
        head.data, axis=0).labels
    events = list(Segmenter(RunsOutOfMemory(limit=5), RECIPES["mri"], device="cpu",
                            batch_size=16).run(head.data, axis=0))
    notices = [e.message for e in events if isinstance(e, Notice)]
    assert notices == ["out of GPU memory: continuing with batches of 8 slices",
                       "out of GPU memory: continuing with batches of 4 slices"]
    assert np.array_equal(events[-1].labels, expected)
    with pytest.raises(MemoryError, match="does not fit"):
        Segmenter(RunsOutOfMemory(limit=0), RECIPES["mri"], device="cpu",
                  batch_size=2).segment(head.data, axis=0)


def test_slices_are_resampled_to_the_recipes_pixel_size(head):
    """3 mm voxels and a 1 mm recipe: the model sees slices three times larger (padded to its
    multiple of 32), and the labels come back at the image's own shape."""
    seen = []
    model = CountingModel()
    model.forward_logits = lambda x, f=model.forward_logits: seen.append(x.shape[-2:]) or f(x)
    recipe = dataclasses.replace(RECIPES["t1-brain"], keep_largest=False)
    done = Segmenter(model, recipe, device="cpu").segment(head.data, axis=2,
                                                          spacing=(3.0, 3.0, 3.0))
    h, w = head.data.shape[:2]
    assert tuple(seen[0]) == (-(-3 * h // 32) * 32, -(-3 * w // 32) * 32)
    assert done.labels.shape == head.data.shape
    # the stand-in marks bright voxels; resampling there and back keeps that
    assert done.labels[head.data > np.percentile(head.data, 99)].mean() > 0.99
    # spacing within 2 % of the pixel size: no resampling
    seen.clear()
    Segmenter(model, recipe, device="cpu").segment(head.data[..., 0], spacing=(1.01, 0.99))
    assert tuple(seen[0]) == (-(-h // 32) * 32, -(-w // 32) * 32)
    with pytest.raises(ValueError, match="2 values for 3 spatial axes"):
        Segmenter(model, recipe, device="cpu").segment(head.data, spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match="must be positive"):
        Segmenter(model, recipe, device="cpu").segment(head.data, spacing=(1.0, 0.0, 1.0))


def test_keep_largest_removes_islands_and_fills_holes():
    """On the real ROBEX brain mask (one region, no holes): islands added outside and a
    cavity punched inside are undone exactly; another class inside is left alone."""
    from napari_vmunet.engine.postprocess import keep_largest

    reference = (read_image(DATA / "robex_brainmask_3mm.nii.gz").data > 0).astype(np.uint8)
    assert keep_largest(reference.copy(), 1) == 0
    damaged = reference.copy()
    damaged[0:2, 0:2, 0:2] = 1  # an island in a corner, far from the brain
    centre = tuple(np.argwhere(reference).mean(0).astype(int))
    z, y, x = centre
    damaged[z - 2:z + 2, y - 2:y + 2, x - 2:x + 2] = 0  # a cavity inside
    assert keep_largest(damaged, 1) == 8 + 64
    assert np.array_equal(damaged, reference)
    two = reference.copy()
    two[z - 1:z + 1, y - 1:y + 1, x - 1:x + 1] = 2
    keep_largest(two, 3)
    assert (two == 2).sum() == 8 and np.array_equal(two > 0, reference > 0)


def test_recipes_that_keep_the_largest_region_say_what_changed(head):
    model = CountingModel()
    done = Segmenter(model, RECIPES["t1-brain"], device="cpu").segment(
        head.data, axis=2, spacing=(3.0, 3.0, 3.0))
    regions = ndimage.label(done.labels)[1]
    assert regions == 1
    assert any("kept the largest region" in note for note in done.notes)


@pytest.mark.gpu
def test_cuda_graph_replays_give_the_eager_results(tiny_model):
    from napari_vmunet.engine.cuda_graphs import GraphedForward

    model = tiny_model.cuda().eval()
    forward = GraphedForward(model.forward_logits)
    g = torch.Generator(device="cuda").manual_seed(0)
    x1, x2 = (torch.rand(2, 3, 64, 96, device="cuda", generator=g) for _ in range(2))
    other = torch.rand(1, 3, 32, 32, device="cuda", generator=g)
    with torch.inference_mode():
        eager1, eager2 = model.forward_logits(x1), model.forward_logits(x2)
        first = forward(x1)  # eager: the warm-up
        assert not forward._graphs
        replayed2, replayed1 = forward(x2), forward(x1)  # captured, then replayed
        small = forward(other)  # a new shape runs eagerly
        eager_small = model.forward_logits(other)
    assert list(forward._graphs) == [((2, 3, 64, 96), torch.float32, x1.device, False)]
    for got, expected in ((first, eager1), (replayed2, eager2), (replayed1, eager1),
                          (small, eager_small)):
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.equal(replayed1, replayed2)
