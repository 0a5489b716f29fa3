"""``napari-vmunet finetune`` and ``train`` on a real head: new files, never over the parent,
resuming, torchrun."""

import subprocess
import sys

from napari_vmunet import cli
from napari_vmunet.checkpoint import file_sha256, load_checkpoint
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
