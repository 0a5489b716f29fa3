"""The plugin's reader, writer and sample data, through napari itself (a real viewer, Xvfb)."""

import numpy as np
import pytest

from napari_vmunet._napari._reader import get_reader
from napari_vmunet.io import read_image

from ..conftest import DATA

HEAD, MASK = DATA / "robex_t1_3mm.nii.gz", DATA / "robex_brainmask_3mm.nii.gz"


def test_reader_claims_volumes_only():
    assert get_reader(str(HEAD)) is not None
    assert get_reader([str(HEAD), str(DATA / "lung2_ct_crop.nrrd")]) is not None
    assert get_reader("photo.png") is None
    assert get_reader([str(HEAD), "photo.png"]) is None


def test_reader_gives_layers_with_the_files_geometry():
    (image, image_kwargs, image_type), = get_reader(str(HEAD))(str(HEAD))
    (mask, _, mask_type), = get_reader(str(MASK))(str(MASK))
    source = read_image(HEAD)
    assert image_type == "image" and mask_type == "labels"  # named like a mask, integer
    assert np.array_equal(image, source.data)
    assert image_kwargs["scale"] == source.geometry.spacing
    stored = image_kwargs["metadata"]["napari_vmunet_geometry"]
    assert np.array_equal(stored.affine, source.geometry.affine)  # kept for saving
    assert mask.dtype == np.uint8 and mask.shape == image.shape


def test_a_damaged_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "scan.nii.gz"
    bad.write_bytes(b"\x1f\x8b\x08 truncated")
    with pytest.raises(ValueError, match="scan.nii.gz could not be read as NIFTI"):
        get_reader(str(bad))(str(bad))


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_open_edit_save_round_trip_in_napari(make_napari_viewer, tmp_path, suffix):
    viewer = make_napari_viewer()
    source = DATA / ("lung2_tumour_crop.nrrd" if suffix == ".nrrd" else MASK.name)
    layers = viewer.open(str(source), plugin="napari-vmunet")
    labels = layers[0]
    assert labels.__class__.__name__ == "Labels"
    labels.data[0, :3, :3] = 2  # an edit
    out = tmp_path / f"edited{suffix}"
    labels.save(str(out), plugin="napari-vmunet")
    back, original = read_image(out), read_image(source)
    assert back.data.shape == original.data.shape and back.data[0, 0, 0] == 2
    assert np.allclose(back.geometry.affine, original.geometry.affine)


def test_sample_data_menu_opens_the_bundled_samples(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-vmunet", "t1-head")
    viewer.open_sample("napari-vmunet", "ct-lung")
    kinds = [(layer.name, layer.__class__.__name__) for layer in viewer.layers]
    assert kinds == [("t1-head", "Image"), ("t1-head brain (reference)", "Labels"),
                     ("ct-lung", "Image"), ("ct-lung tumour (reference)", "Labels")]
    assert int(viewer.layers[3].data.sum()) == 24644
    # the references are there to compare with, not shown as if already segmented
    assert [layer.visible for layer in viewer.layers] == [True, False, True, False]
    assert np.allclose(viewer.layers[0].scale, 1.5)
    assert np.allclose(viewer.layers[2].scale, (5.0, 0.6269531, 0.6269531))
