"""Reading and writing images with their geometry, on real volumes (tests/data/README.md)."""

import stat

import nibabel as nib
import numpy as np
import pytest
import tifffile

from napari_vmunet.io import ImageReadError, read_image, write_labels

from ..conftest import DATA


def test_nifti_head_keeps_its_stored_order_and_affine():
    image = read_image(DATA / "robex_t1_3mm.nii.gz")
    source = nib.load(DATA / "robex_t1_3mm.nii.gz")
    assert image.data.shape == source.shape[:3]
    assert np.array_equal(image.geometry.affine, source.affine)
    assert image.geometry.spacing == pytest.approx(source.header.get_zooms()[:3])
    assert image.geometry.world == "RAS"
    axcodes = nib.aff2axcodes(source.affine)
    assert axcodes[image.geometry.axial_axis()] in ("S", "I")
    assert image.name == "robex_t1_3mm"


def test_nrrd_ct_anisotropic_spacing_and_lps_frame():
    image = read_image(DATA / "lung2_ct_crop.nrrd")
    g = image.geometry
    assert image.data.dtype == np.int16 and image.data.ndim == 3
    assert g.world == "LPS"
    assert max(g.spacing) == pytest.approx(5.0) and min(g.spacing) < 1.0
    assert g.axial_axis() == int(np.argmax(g.spacing))  # slices are the 5 mm axis
    assert image.data.min() < -500  # Hounsfield units: air in the lung


def _reoriented_head(tmp_path):
    """The head stored sagittal-first with a permuted affine: same anatomy, other storage."""
    source = nib.load(DATA / "robex_t1_3mm.nii.gz")
    order = (2, 0, 1)
    data = np.transpose(np.asanyarray(source.dataobj), order)
    affine = source.affine.copy()
    affine[:3, :3] = source.affine[:3, :3][:, order]
    path = tmp_path / "head_permuted.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    return path, source


def test_non_axial_storage_still_slices_axially(tmp_path):
    path, _ = _reoriented_head(tmp_path)
    original, permuted = read_image(DATA / "robex_t1_3mm.nii.gz"), read_image(path)
    axis_world = original.geometry.affine[:3, original.geometry.axial_axis()]
    axis_world_permuted = permuted.geometry.affine[:3, permuted.geometry.axial_axis()]
    assert np.allclose(axis_world, axis_world_permuted)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".tif"])
@pytest.mark.parametrize("source", ["robex_t1_3mm.nii.gz", "lung2_ct_crop.nrrd"])
def test_labels_round_trip_keeps_shape_and_geometry(tmp_path, source, suffix):
    image = read_image(DATA / source)
    labels = (image.data > np.median(image.data)).astype(np.uint8)
    out = write_labels(labels, tmp_path / f"labels{suffix}", image.geometry.for_labels())
    back = read_image(out)
    assert back.data.shape == labels.shape and back.data.dtype == np.uint8
    assert np.array_equal(back.data, labels)
    assert back.geometry.spacing == pytest.approx(image.geometry.spacing, rel=1e-5)
    if suffix != ".tif":  # TIFF stores voxel sizes, not orientation
        assert np.allclose(back.geometry.affine, image.geometry.affine, atol=1e-4)
    mode = out.stat().st_mode
    assert mode & stat.S_IRGRP or mode & stat.S_IROTH  # an ordinary file, not mkstemp's 0600


def test_probabilities_with_a_class_axis_round_trip(tmp_path):
    image = read_image(DATA / "lung2_ct_crop.nrrd")
    probs = np.random.default_rng(0).random((*image.data.shape, 3), dtype=np.float32)
    for suffix in (".nii.gz", ".nrrd"):
        back = read_image(write_labels(probs, tmp_path / f"p{suffix}", image.geometry.for_labels()))
        assert np.allclose(back.data, probs)
    tif = read_image(write_labels(probs, tmp_path / "p.tif", image.geometry.for_labels()))
    assert tif.geometry.channel_axis is not None
    assert np.allclose(np.moveaxis(tif.data, tif.geometry.channel_axis, -1), probs)


def test_tiff_voxel_size_from_imagej_and_ome(tmp_path):
    data = np.arange(4 * 32 * 48, dtype=np.uint16).reshape(4, 32, 48)
    tifffile.imwrite(tmp_path / "ij.tif", data, imagej=True, resolution=(1 / 0.5, 1 / 0.5),
                     metadata={"spacing": 2.0, "unit": "um", "axes": "ZYX"})
    g = read_image(tmp_path / "ij.tif").geometry
    assert g.spacing == pytest.approx((2.0, 0.5, 0.5)) and g.units == "um"
    assert g.axial_axis() == 0

    tifffile.imwrite(tmp_path / "ome.ome.tif", data, ome=True, metadata={
        "axes": "ZYX", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25, "PhysicalSizeZ": 1.5})
    g = read_image(tmp_path / "ome.ome.tif").geometry
    assert g.spacing == pytest.approx((1.5, 0.25, 0.25))

    rgb = np.zeros((20, 30, 3), np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    g = read_image(tmp_path / "rgb.tif").geometry
    assert g.channel_axis == 2 and g.spatial_axes == (0, 1)


def test_existing_outputs_are_never_replaced_without_asking(tmp_path):
    image = read_image(DATA / "robex_t1_3mm.nii.gz")
    target = tmp_path / "labels.nii.gz"
    target.write_bytes(b"precious")
    labels = np.zeros(image.data.shape, np.uint8)
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_labels(labels, target, image.geometry)
    assert target.read_bytes() == b"precious"
    write_labels(labels, target, image.geometry, overwrite=True)
    assert read_image(target).data.shape == labels.shape
    assert [p.name for p in tmp_path.iterdir()] == ["labels.nii.gz"]  # no temporary left


def test_unreadable_inputs_get_one_clear_message(tmp_path):
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "absent.nii.gz")
    (tmp_path / "scan.dcm").write_bytes(b"DICM")
    with pytest.raises(ImageReadError, match="unsupported file type"):
        read_image(tmp_path / "scan.dcm")
    (tmp_path / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(ImageReadError, match="broken.nii.gz could not be read as NIFTI"):
        read_image(tmp_path / "broken.nii.gz")
    full = (DATA / "lung2_ct_crop.nrrd").read_bytes()
    (tmp_path / "cut.nrrd").write_bytes(full[: len(full) // 2])
    with pytest.raises(ImageReadError, match="cut.nrrd could not be read as NRRD"):
        read_image(tmp_path / "cut.nrrd")
    with pytest.raises(ImageReadError, match="is a folder"):
        read_image(tmp_path)
