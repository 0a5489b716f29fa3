"""The corrected slices kept exactly as painted, the rest from the model."""

import numpy as np
import pytest

from napari_vmunet.engine.corrections import (
    applied_labels,
    connected_to_corrections,
    keep_corrections,
    slices_to_correct,
    structure_slices,
)

from ..conftest import DATA


def test_corrected_slices_are_the_users_and_the_others_the_models():
    from napari_vmunet.io import read_image

    reference = read_image(DATA / "robex_brainmask_3mm.nii.gz").data.astype(np.uint8)
    predicted = np.roll(reference, 2, axis=0)  # a model that is off by two voxels
    merged = keep_corrections(predicted, reference, [10, 40], axis=2)
    assert (merged[:, :, [10, 40]] == reference[:, :, [10, 40]]).all()
    others = [k for k in range(reference.shape[2]) if k not in (10, 40)]
    assert (merged[:, :, others] == predicted[:, :, others]).all()
    assert predicted is not merged and (predicted == np.roll(reference, 2, axis=0)).all()


def test_a_2d_image_is_the_correction_and_wider_labels_keep_their_values():
    predicted = np.zeros((4, 5), np.uint8)
    corrected = np.full((4, 5), 300, np.uint16)
    merged = keep_corrections(predicted, corrected, [0], axis=None)
    assert merged.dtype == np.uint16 and (merged == 300).all()
    with pytest.raises(ValueError, match="must cover the same voxels"):
        keep_corrections(predicted, corrected[:3], [0], axis=0)


def test_only_regions_reaching_the_corrections_are_kept_on_a_real_head():
    """A model's look-alike far from the structure goes; the structure, which the corrected
    slices cut through, stays whole, also on the slices between and beyond them."""
    from napari_vmunet.io import read_image

    brain = read_image(DATA / "robex_brainmask_3mm.nii.gz").data.astype(np.uint8)
    predicted = brain.copy()
    predicted[:4, :4, 30:34] = 1  # a blob in the corner, apart from the brain
    merged, removed = applied_labels(predicted, brain, [20, 35, 50], axis=2)
    assert removed == 4 * 4 * 4 and (merged == brain).all()
    kept, none = applied_labels(predicted, brain, [20, 35, 50], axis=2, only_connected=False)
    assert none == 0 and (kept == predicted).all()


def test_connectivity_follows_each_class_and_what_the_user_erased():
    volume = np.zeros((12, 8, 8), np.uint8)
    volume[2:9, 2:5, 2:5] = 1  # class 1 through slices 2..8, corrected on slice 4
    volume[10:12, 2:5, 2:5] = 1  # a second region of class 1, beyond a gap
    volume[0:3, 6:8, 6:8] = 2  # class 2 appears on no corrected slice: left alone
    volume[6:9, 0, 0] = 3  # class 3 on corrected slice 7 ...
    volume[5, 7, 0] = 3  # ... and a stray voxel of it elsewhere
    merged = volume.copy()
    merged[7] = 0  # slice 7 corrected: the user erased class 1 there, kept class 3's voxel
    merged[7, 0, 0] = 3
    removed = connected_to_corrections(merged, [4, 7], axis=0)
    assert (merged[2:7, 2:5, 2:5] == 1).all()  # reaches slice 4's labels
    assert not (merged[8:] == 1).any()  # beyond the erased slice 7, and the far region: gone
    assert (merged[0:3, 6:8, 6:8] == 2).all()
    assert merged[6:9, 0, 0].tolist() == [3, 3, 3] and merged[5, 7, 0] == 0
    assert removed == 9 + 18 + 1
    flat = volume[4].copy()
    assert connected_to_corrections(flat, [0], axis=None) == 0 and (flat == volume[4]).all()


def test_suggestions_stay_on_the_structure():
    labels = np.zeros((4, 10, 6), np.uint8)
    labels[:, 3:5, 2] = 1  # on slices 3 and 4 along axis 1
    assert structure_slices(labels, axis=1) == [3, 4]
    assert structure_slices(labels, axis=1, margin=1) == [2, 3, 4, 5]
    assert structure_slices(labels, axis=1, margin=3) == [0, 1, 2, 3, 4, 5, 6, 7]
    assert structure_slices(np.zeros_like(labels), axis=0) == []
    unsure = np.array([0, 9, 1, 2, 3, 8, 0, 0, 7, 0], float)  # most unsure far away: 1, 5, 8
    # 3 slices spread over 10 would be 2.5 apart: suggestions keep 2 from the others, so 5,
    # next to the corrected 4, gives way to 8
    assert slices_to_correct(unsure, 2, corrected=[4]) == [1, 8]
    assert slices_to_correct(unsure, 3, corrected=[4]) == [1, 5, 8]  # 4 spread: 2 apart
    assert slices_to_correct(unsure, 2, corrected=[4], among=[2, 3, 4, 5]) == [5, 3]
    assert slices_to_correct(unsure, 9, corrected=[4], among=[2, 3, 4, 5]) == [5, 3, 2]


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_the_slices_the_model_is_least_sure_of_are_where_it_errs(axis):
    """On a real head, each slice's uncertain voxels follow its wrong voxels (rank correlation
    0.82-0.85 measured on the three axes), and the slices suggested first hold well more
    errors than the average slice."""
    from scipy.stats import spearmanr

    from napari_vmunet.bundled import default_checkpoint
    from napari_vmunet.checkpoint import load_checkpoint
    from napari_vmunet.engine import Segmenter
    from napari_vmunet.engine.corrections import slices_to_correct
    from napari_vmunet.io import read_image

    image = read_image(DATA / "robex_t1_3mm.nii.gz")
    reference = read_image(DATA / "robex_brainmask_3mm.nii.gz").data > 0
    done = Segmenter(load_checkpoint(default_checkpoint()), device="cpu").segment(
        image.data, axis=axis, spacing=image.geometry.spacing_mm(), uncertainty=True)
    errors = np.moveaxis((done.labels > 0) != reference, axis, 0).reshape(
        reference.shape[axis], -1).sum(1)
    assert done.uncertainty.shape == (reference.shape[axis],)
    assert spearmanr(done.uncertainty, errors).correlation > 0.7
    suggested = slices_to_correct(done.uncertainty, 5)
    assert errors[suggested].mean() > 1.5 * errors.mean()
    assert not set(slices_to_correct(done.uncertainty, 5, corrected=suggested[:2])) & set(
        suggested[:2])
