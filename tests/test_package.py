"""What napari and users see first: a cheap import, a valid manifest, a working CLI."""

import subprocess
import sys
from pathlib import Path

import pytest


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
    for name in napari_vmunet.__all__:
        assert getattr(napari_vmunet, name) is not None, name
    assert napari_vmunet.Segmenter.__module__ == "napari_vmunet.engine.inference"
    with pytest.raises(AttributeError):
        napari_vmunet.no_such_thing  # noqa: B018


def test_what_a_python_user_reaches_for_first_needs_no_torch():
    result = _run_python(
        "import sys, napari_vmunet as vm; vm.Recipe, vm.get_recipe, vm.TrainingSettings, "
        "vm.read_image, vm.write_labels; sys.exit('torch' in sys.modules)")
    assert result.returncode == 0, result.stderr


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "napari-vmunet"
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("napari-vmunet ")


@pytest.mark.slow
def test_the_sdist_carries_its_licence_and_tests_and_they_run(tmp_path):
    """PyPI and conda-forge build from the sdist and run its tests: they must be in it, with
    their data and the files they read."""
    import shutil
    import tarfile

    # From a copy without build leftovers: setuptools would also pack what an earlier build's
    # egg-info lists.
    source = tmp_path / "source"
    shutil.copytree(Path(__file__).parents[1], source, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".tox", "*.egg-info", "build", "dist", "__pycache__", ".*_cache",
        "napari-vmunet-demo", "site", ".baseline", ".whl"))
    build = subprocess.run(
        [sys.executable, "-c", "import sys; from setuptools import build_meta; "
         "print(build_meta.build_sdist(sys.argv[1]))", str(tmp_path)],
        cwd=source, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-2000:]
    archive = tmp_path / build.stdout.strip().splitlines()[-1]
    with tarfile.open(archive) as sdist:
        sdist.extractall(tmp_path, filter="data")
    root = tmp_path / archive.name.removesuffix(".tar.gz")
    for needed in ("LICENSE", "README.md", "tests/conftest.py", "tests/display.py",
                   "tests/data/robex_t1_3mm.nii.gz", "tests/data/lung2_ct_crop.nrrd",
                   "src/napari_vmunet/napari.yaml",
                   "src/napari_vmunet/models/t1_brain.safetensors"):
        assert (root / needed).is_file(), f"{needed} is missing from the sdist"
    assert "Apache License" in (root / "LICENSE").read_text()
    assert not list(root.rglob("__pycache__"))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "tests/io", "tests/test_recipes.py", "tests/test_display.py"],
                         cwd=root, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:]


def test_the_readme_links_and_images_work_off_the_repository():
    """The napari hub and PyPI show the README away from the repository: every link and image
    is an absolute URL."""
    import re

    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)]+)\)", readme)
    assert targets and all(t.startswith(("https://", "http://")) for t in targets), [
        t for t in targets if not t.startswith("http")]
