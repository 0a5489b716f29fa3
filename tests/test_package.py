"""What napari and users see first: a cheap import, a valid manifest, a working CLI."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from napari_vmunet import cli
from napari_vmunet.checkpoint import save_checkpoint


def _run_python(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_importing_the_package_does_not_import_torch():
    result = _run_python("import sys, napari_vmunet; print(napari_vmunet.__version__); "
                         "sys.exit('torch' in sys.modules)")
    assert result.returncode == 0, "importing napari_vmunet imported torch"


def test_the_manifest_is_valid_and_reading_it_does_not_import_torch():
    result = _run_python(
        "import sys; from npe2 import PluginManifest; "
        "m = PluginManifest.from_distribution('napari-vmunet'); m.validate_imports(); "
        "print(m.name); sys.exit('torch' in sys.modules)"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "napari-vmunet"


def test_lazy_names_resolve():
    import napari_vmunet

    assert napari_vmunet.load_checkpoint.__module__ == "napari_vmunet.checkpoint"
    with pytest.raises(AttributeError):
        napari_vmunet.no_such_thing  # noqa: B018


def test_info_reports_versions_and_the_scan_backend(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"torch         {torch.__version__}" in out
    assert "* cpu        compiled CPU kernel (numba); available" in out
    assert "mamba      mamba-ssm's CUDA kernel; unavailable" in out


def test_info_describes_a_checkpoint(tmp_path, tiny_model, capsys):
    path = save_checkpoint(tiny_model, tmp_path / "m.safetensors", class_names=["lesion"],
                           recipe={"name": "isic"})
    assert cli.main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"parameters    {tiny_model.num_parameters():,}" in out
    assert "classes       1: lesion (sigmoid probability)" in out
    assert "dims [8, 16, 32, 64]" in out
    assert "recipe        {'name': 'isic'}" in out


def test_info_on_a_bad_file_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "x.pth").write_text("not weights")
    assert cli.main(["info", str(tmp_path / "x.pth")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("napari-vmunet info: error: x.pth is not a checkpoint")
    assert "Traceback" not in err


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "napari-vmunet"
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("napari-vmunet ")
