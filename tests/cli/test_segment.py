"""`napari-vmunet segment` on real files: names, geometry, refusals, failures, torchrun."""

import shutil
import subprocess
import sys

import numpy as np
import pytest

from napari_vmunet import cli
from napari_vmunet.io import read_image

from ..conftest import DATA


@pytest.fixture
def inputs(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("robex_t1_3mm.nii.gz", "lung2_ct_crop.nrrd"):
        shutil.copy(DATA / name, folder / name)
    return folder


def test_segment_writes_labels_with_the_inputs_geometry(inputs, tiny_checkpoint, capsys):
    files = [str(inputs / "robex_t1_3mm.nii.gz"), str(inputs / "lung2_ct_crop.nrrd")]
    assert cli.main(["segment", *files, "--checkpoint", str(tiny_checkpoint), "-q"]) == 0
    out = capsys.readouterr().out
    assert "2 of 2 files segmented" in out
    for source, labels in (("robex_t1_3mm.nii.gz", "robex_t1_3mm_labels.nii.gz"),
                           ("lung2_ct_crop.nrrd", "lung2_ct_crop_labels.nrrd")):
        image, result = read_image(inputs / source), read_image(inputs / labels)
        assert result.data.shape == image.data.shape and result.data.dtype == np.uint8
        assert np.allclose(result.geometry.affine, image.geometry.affine)
        assert result.geometry.world == image.geometry.world


def test_output_options(inputs, tiny_checkpoint, tmp_path):
    head = str(inputs / "robex_t1_3mm.nii.gz")
    ckpt = ["--checkpoint", str(tiny_checkpoint), "-q"]
    assert cli.main(["segment", head, "-o", str(tmp_path / "mask.nii.gz"), *ckpt]) == 0
    assert read_image(tmp_path / "mask.nii.gz").data.shape == (58, 75, 77)
    assert cli.main(["segment", head, "--out-dir", str(tmp_path / "out"),
                     "--probabilities", str(tmp_path / "p.nii.gz"), "--axis", "0", *ckpt]) == 0
    assert (tmp_path / "out" / "robex_t1_3mm_labels.nii.gz").exists()
    probabilities = read_image(tmp_path / "p.nii.gz").data
    assert probabilities.dtype == np.float32 and probabilities.shape == (58, 75, 77)
    assert 0.0 <= probabilities.min() and probabilities.max() <= 1.0


def test_existing_output_is_refused_and_kept(inputs, tiny_checkpoint, capsys):
    head = inputs / "robex_t1_3mm.nii.gz"
    existing = inputs / "robex_t1_3mm_labels.nii.gz"
    existing.write_bytes(b"my corrections")
    assert cli.main(["segment", str(head), "--checkpoint", str(tiny_checkpoint), "-q"]) == 1
    assert "already exists; use --overwrite" in capsys.readouterr().err
    assert existing.read_bytes() == b"my corrections"
    assert cli.main(["segment", str(head), "--checkpoint", str(tiny_checkpoint), "-q",
                     "--overwrite"]) == 0
    assert read_image(existing).data.shape == (58, 75, 77)


def test_a_failing_file_does_not_stop_the_others(inputs, tiny_checkpoint, capsys):
    (inputs / "broken.nii.gz").write_bytes(b"\x1f\x8b\x08 truncated")
    files = [str(inputs / "broken.nii.gz"), str(inputs / "missing.nrrd"),
             str(inputs / "lung2_ct_crop.nrrd")]
    assert cli.main(["segment", *files, "--checkpoint", str(tiny_checkpoint), "-q"]) == 1
    captured = capsys.readouterr()
    assert "1 of 3 files segmented" in captured.out
    assert "FAILED  " + files[0] + ": broken.nii.gz could not be read as NIFTI" in captured.err
    assert "missing.nrrd: no such file" in captured.err
    assert (inputs / "lung2_ct_crop_labels.nrrd").exists()


@pytest.mark.parametrize("argv, message", [
    (["a.nii.gz", "b.nii.gz", "-o", "x.nii.gz"], "-o/--output names one file"),
    (["a.nii.gz", "--window", "wide"], "a CT window is LEVEL,WIDTH in HU"),
    (["a.nii.gz", "--window", "40,-1"], "width must be positive"),
    (["a.nii.gz", "--recipe", "xray"], "unknown recipe 'xray'"),
    (["a.nii.gz", "--device", "tpu"], "unknown device 'tpu'"),
])
def test_bad_arguments_are_one_line_errors(argv, message, tiny_checkpoint, capsys):
    if "--checkpoint" not in argv:
        argv = [*argv, "--checkpoint", str(tiny_checkpoint)]
    assert cli.main(["segment", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_segment_suggests_the_slices_to_correct_first(tmp_path, capsys):
    head = str(DATA / "robex_t1_3mm.nii.gz")
    assert cli.main(["segment", head, "--out-dir", str(tmp_path), "--axis", "2",
                     "--suggest", "3", "-q"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("suggest"))
    slices = [int(s) for s in line.split("correct slices ")[1].split(" first")[0].split(", ")]
    assert len(slices) == 3 and all(0 <= s < 77 for s in slices)


def test_the_help_lists_every_recipe_window_and_architecture(capsys):
    from napari_vmunet.model.config import PRESETS
    from napari_vmunet.recipes import CT_WINDOWS, RECIPES

    helps = {}
    for command in ("segment", "finetune", "train"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        helps[command] = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for name in RECIPES:
        assert all(name in text for text in helps.values()), name
    assert all(name in helps["segment"] for name in CT_WINDOWS)
    assert all(name in helps["train"] for name in PRESETS)
    assert "(300 for the classifier, 200 for the network)" in helps["finetune"]  # the defaults
    assert "(2000)" in helps["train"]


def test_torchrun_shares_files_and_matches_one_process(inputs, tiny_checkpoint, tmp_path):
    """Two CPU processes (gloo) under torchrun: disjoint shares, one summary, same labels."""
    import tifffile

    head = read_image(inputs / "robex_t1_3mm.nii.gz").data
    for k in range(2):  # two more real inputs, as TIFF stacks
        tifffile.imwrite(inputs / f"head{k}.tif", np.ascontiguousarray(np.roll(head, k, 0)))
    files = sorted(str(p) for p in inputs.iterdir())
    args = ["segment", *files, "--checkpoint", str(tiny_checkpoint), "-q", "--device", "cpu"]

    assert cli.main([*args, "--out-dir", str(tmp_path / "one")]) == 0
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "napari_vmunet.cli", *args, "--out-dir", str(tmp_path / "two")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("files segmented") == 1
    assert "4 of 4 files segmented by 2 processes" in result.stdout
    one = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert one == sorted(p.name for p in (tmp_path / "two").iterdir()) and len(one) == 4
    for name in one:
        assert np.array_equal(read_image(tmp_path / "one" / name).data,
                              read_image(tmp_path / "two" / name).data), name


def test_non_axial_storage_keeps_shape_dtype_and_affine(tmp_path, tiny_checkpoint):
    """A head stored sagittal-first (permuted axes and affine): labels match it exactly."""
    from ..io.test_io import _reoriented_head

    path, _ = _reoriented_head(tmp_path)
    assert cli.main(["segment", str(path), "--checkpoint", str(tiny_checkpoint), "-q"]) == 0
    image, labels = read_image(path), read_image(tmp_path / "head_permuted_labels.nii.gz")
    assert labels.data.shape == image.data.shape and labels.data.dtype == np.uint8
    assert np.array_equal(labels.geometry.affine, image.geometry.affine)
