"""``napari-vmunet info``: the install doctor and what a checkpoint holds."""

import torch

from napari_vmunet import cli
from napari_vmunet.checkpoint import file_sha256, save_checkpoint
from napari_vmunet.recipes import RECIPES


def test_info_reports_versions_and_the_scan_backend(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"torch         {torch.__version__}" in out
    assert "* cpu        compiled CPU kernel (numba); available" in out
    # mamba-ssm installed or not, it never runs on the CPU
    assert "mamba      mamba-ssm's CUDA kernel; unavailable: runs on cuda only" in out


def test_info_describes_a_checkpoint(tmp_path, tiny_model, capsys):
    path = save_checkpoint(tiny_model, tmp_path / "m.safetensors", class_names=["lesion"],
                           recipe=RECIPES["isic"])
    assert cli.main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"parameters    {tiny_model.num_parameters():,}" in out
    assert "classes       1: lesion (sigmoid probability)" in out
    assert "dims [8, 16, 32, 64]" in out
    assert f"recipe        isic: {RECIPES['isic'].description}" in out
    assert f"sha256        {file_sha256(path)}" in out
    assert "pixel classifier" not in out
    tiny_model.attach_pixel_head(hidden=8, priors=1)  # as fine-tuning leaves it
    headed = save_checkpoint(tiny_model, tmp_path / "headed.safetensors", recipe=RECIPES["isic"])
    assert cli.main(["info", str(headed)]) == 0
    assert ("output        a pixel classifier on the network's features (8 hidden, 1 "
            "shape-prior channel(s))") in capsys.readouterr().out


def test_info_on_a_bad_file_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "x.pth").write_text("not weights")
    assert cli.main(["info", str(tmp_path / "x.pth")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("napari-vmunet info: error: x.pth is not a checkpoint")
    assert "Traceback" not in err
