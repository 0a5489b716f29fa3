"""The model and samples that ship in the package, and the README's demo command."""

import numpy as np
import pytest

from napari_vmunet import cli
from napari_vmunet.bundled import SAMPLES, default_checkpoint, load_sample, sample_paths
from napari_vmunet.checkpoint import load_checkpoint


def test_the_default_model_is_small_and_describes_itself():
    path = default_checkpoint()
    assert path.stat().st_size <= 16 * 2**20
    model = load_checkpoint(path)
    assert model.config.num_classes == 1 and model.info.class_names == ("brain",)
    assert model.info.recipe.name == "t1-brain" and model.info.recipe.pixel_size == 1.0
    assert model.info.provenance["data"] == ["colin_t1.nii.gz", "mni152_t1.nii.gz",
                                             "robex_t1.nii.gz"]


def test_samples_load_with_their_geometry_and_stay_small():
    total = sum(p.stat().st_size for name in SAMPLES for p in sample_paths(name))
    assert total <= 5 * 2**20
    head, brain = load_sample("t1-head")
    assert head.data.shape == brain.data.shape == (116, 150, 155)
    assert np.allclose(head.geometry.spacing, 1.5) and head.geometry.world == "RAS"
    assert 0.1 < (brain.data > 0).mean() < 0.2
    ct, tumour = load_sample("ct-lung")
    assert ct.data.shape == tumour.data.shape and ct.data.min() < -900  # HU
    assert tumour.data.sum() == 24644  # every voxel of pyradiomics' lung2 tumour


def test_demo_segments_the_sample_head_and_never_overwrites(tmp_path, capsys):
    for _ in range(2):
        assert cli.main(["demo", "--out-dir", str(tmp_path), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    dice = float(out.split("Dice    ")[1].split()[0])
    assert dice > 0.93, out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t1_head_labels-2.nii.gz",
                                                         "t1_head_labels.nii.gz"]


def test_the_default_model_follows_the_voxel_size():
    """A head at another resolution (the ROBEX head at 3 mm, half its sample's 1.5 mm) is
    resampled to the model's 1 mm pixels; run on its raw pixels, the brain looks three times
    smaller than anything the model saw and the result is far worse."""
    from napari_vmunet.engine import Segmenter
    from napari_vmunet.io import read_image
    from napari_vmunet.metrics import dice

    from .conftest import DATA

    head = read_image(DATA / "robex_t1_3mm.nii.gz")
    reference = read_image(DATA / "robex_brainmask_3mm.nii.gz").data > 0
    segmenter = Segmenter(load_checkpoint(default_checkpoint()), device="cpu")
    axis = head.geometry.axial_axis()
    resampled = segmenter.segment(head.data, axis=axis, spacing=head.geometry.spacing_mm())
    raw = segmenter.segment(head.data, axis=axis)
    assert any("voxel size is unknown" in note for note in raw.notes)
    assert dice(resampled.labels > 0, reference) > 0.9
    assert dice(resampled.labels > 0, reference) > dice(raw.labels > 0, reference) + 0.1


@pytest.mark.gpu
def test_the_sample_head_on_the_gpu_matches_the_cpu():
    """bf16 autocast, the fused Triton scan and batches replayed as CUDA graphs (batch size 8:
    the sample's slices come as several batches of one shape) give the CPU's labels."""
    from napari_vmunet.engine import Segmenter
    from napari_vmunet.metrics import dice

    head, brain = load_sample("t1-head")
    model = load_checkpoint(default_checkpoint())
    axis = head.geometry.axial_axis()
    kwargs = dict(axis=axis, spacing=head.geometry.spacing_mm())
    cpu = Segmenter(model, device="cpu", batch_size=8).segment(head.data, **kwargs)
    gpu_segmenter = Segmenter(model, device="cuda", batch_size=8)
    gpu = gpu_segmenter.segment(head.data, **kwargs)
    assert len(gpu_segmenter._forward._graphs) == 1  # the full batches' shape was replayed
    assert dice(gpu.labels > 0, cpu.labels > 0) > 0.995
    assert dice(gpu.labels > 0, brain.data > 0) > 0.93
