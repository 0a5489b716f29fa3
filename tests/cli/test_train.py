"""``napari-vmunet finetune`` and ``train`` on a real head: new files, never over the parent,
resuming, torchrun."""

import subprocess
import sys

import numpy as np

from napari_vmunet import cli
from napari_vmunet.checkpoint import file_sha256, load_checkpoint
from napari_vmunet.io import read_image
from napari_vmunet.recipes import RECIPES

from ..conftest import DATA
from ..engine.test_training import small_model


def test_cli_finetune_saves_a_new_file_and_leaves_the_parent(tmp_path, capsys):
    from napari_vmunet.checkpoint import save_checkpoint

    parent = save_checkpoint(small_model(), tmp_path / "parent.safetensors",
                             recipe=RECIPES["mri"])
    digest = file_sha256(parent)
    image, labels = str(DATA / "robex_t1_3mm.nii.gz"), str(DATA / "robex_brainmask_3mm.nii.gz")
    out = tmp_path / "tuned.safetensors"
    args = ["finetune", image, labels, "--checkpoint", str(parent), "--slices", "20,35,50",
            "--steps", "6", "--validate-every", "3", "--batch-size", "2", "--device", "cpu", "-q"]
    assert cli.main([*args, "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "fine-tuning on 3 slice(s) along axis 2: 20, 35, 50" in printed
    assert "best validation Dice" in printed and f"saved {out}" in printed
    tuned = load_checkpoint(out)
    assert tuned.info.provenance["parent_sha256"] == digest
    assert tuned.info.provenance["fine_tuned_on_slices"] == [20, 35, 50]
    assert file_sha256(parent) == digest
    assert cli.main([*args, "-o", str(parent), "--overwrite"]) == 2  # never over the parent
    assert "is the checkpoint this model comes from" in capsys.readouterr().err
    assert file_sha256(parent) == digest
    assert cli.main([*args, "-o", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_cli_finetune_applies_the_model_and_keeps_the_corrected_slices(tmp_path, capsys):
    """--apply: the image segmented by the fine-tuned model, with the corrected slices exactly
    as painted (here: the reference's, with a stroke the model could never have predicted)."""
    from napari_vmunet.checkpoint import save_checkpoint
    from napari_vmunet.engine import Segmenter
    from napari_vmunet.engine.corrections import applied_labels
    from napari_vmunet.io import write_labels

    parent = save_checkpoint(small_model(), tmp_path / "parent.safetensors",
                             recipe=RECIPES["mri"])
    image = str(DATA / "robex_t1_3mm.nii.gz")
    mask = read_image(DATA / "robex_brainmask_3mm.nii.gz")
    painted = mask.data.astype(np.uint8)
    painted[:5, :5, 35] = 1  # a corner no model would call brain
    labels = write_labels(painted, tmp_path / "corrected.nii.gz", mask.geometry)
    out, applied = tmp_path / "tuned.safetensors", tmp_path / "applied.nii.gz"
    args = ["finetune", image, str(labels), "--checkpoint", str(parent), "--slices", "20,35,50",
            "--steps", "4", "--validate-every", "2", "--batch-size", "2", "--device", "cpu", "-q"]

    applied.write_bytes(b"precious")  # refused before any training: nothing is written
    assert cli.main([*args, "-o", str(out), "--apply", str(applied)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert not out.exists() and applied.read_bytes() == b"precious"
    assert cli.main([*args, "-o", str(out), "--apply", str(labels)]) == 2
    assert "would write over the input" in capsys.readouterr().err
    assert cli.main([*args, "-o", str(out), "--apply", str(tmp_path / "a.png")]) == 2

    applied.unlink()
    assert cli.main([*args, "-o", str(out), "--apply", str(applied), "--suggest", "4"]) == 0
    printed = capsys.readouterr().out
    assert f"applied {applied}: 74 slice(s) from the fine-tuned model, 3 corrected" in printed
    suggestion = next(ln for ln in printed.splitlines() if ln.startswith("suggest"))
    suggested = [int(s) for s in suggestion.split("slices ")[1].split(" next")[0].split(", ")]
    assert len(suggested) == 4 and not set(suggested) & {20, 35, 50}
    result = read_image(applied)
    assert np.allclose(result.geometry.affine, mask.geometry.affine)
    corrected = [20, 35, 50]
    assert (result.data[..., corrected] == painted[..., corrected]).all()
    def tuned_model_labels():
        """The fine-tuned model's labels, guided by the corrected slices' shape as in the CLI."""
        from napari_vmunet.engine.training.finetuner import FineTuner

        tuned, volume = load_checkpoint(out), read_image(image).data
        spacing = mask.geometry.spacing_mm()
        prior = FineTuner(tuned, volume, painted, corrected, 2, spacing=spacing).shape_prior()
        assert prior is not None
        return Segmenter(tuned, device="cpu").segment(volume, axis=2, spacing=spacing,
                                                      prior=prior).labels

    model = tuned_model_labels()
    expected, removed = applied_labels(model, painted, corrected, axis=2)
    assert (result.data == expected).all()  # the model's, where it reaches the corrections
    assert ("left out" in printed) == (removed > 0)

    applied.unlink()  # --keep-unconnected: every other slice exactly the model's
    assert cli.main([*args, "-o", str(out), "--overwrite", "--apply", str(applied),
                     "--keep-unconnected"]) == 0
    assert "left out" not in capsys.readouterr().out
    result = read_image(applied).data
    others = [k for k in range(painted.shape[2]) if k not in corrected]
    assert (result[..., corrected] == painted[..., corrected]).all()
    assert (result[..., others] == tuned_model_labels()[..., others]).all()


def test_cli_train_resumes_and_runs_under_torchrun(tmp_path, capsys):
    data = ["--images", str(DATA / "robex_t1_3mm.nii.gz"), "--labels",
            str(DATA / "robex_brainmask_3mm.nii.gz")]
    common = [*data, "--config", "tiny", "--size", "96", "--batch-size", "4", "--device", "cpu",
              "--validate-every", "5", "--save-every", "5", "-q"]
    out = tmp_path / "model.safetensors"
    assert cli.main(["train", *common, "--steps", "5", "-o", str(out)]) == 0
    assert cli.main(["train", *common, "--steps", "10", "-o", str(out), "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "resumed at step 5" in printed
    assert load_checkpoint(out).info.provenance["steps"] == 10

    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "napari_vmunet.cli", "train", *common, "--steps", "6",
         "-o", str(tmp_path / "ddp.safetensors")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es), batch 2 each" in result.stdout
    assert result.stdout.count("saved ") == 1  # rank 0 writes, once
    assert "Grad strides do not match" not in result.stderr
    assert load_checkpoint(tmp_path / "ddp.safetensors").info.provenance["processes"] == 2
