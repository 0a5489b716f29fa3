"""The widgets under both Qt bindings the plugin supports: the suite runs on the binding
pytest-qt picks (PyQt6, the one napari recommends, where both are installed, as with the test
extras), and the widget tests run once more, in a child pytest, under the other one."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import qtpy

TESTS = Path(__file__).parent
WIDGET_TESTS = [
    "test_segment_widget.py", "test_napari_io.py", "test_finetune_widget.py",
    "-k", "not sample_head and not fine_tune_use_save and not stop_keeps",  # the long runs
]


@pytest.mark.gui
@pytest.mark.slow
def test_the_widgets_work_under_the_other_qt_binding():
    other = "PyQt6" if qtpy.API_NAME == "PyQt5" else "PyQt5"
    if importlib.util.find_spec(other) is None:
        pytest.skip(f"{other} is not installed (the test extras install both bindings)")
    env = {**os.environ, "QT_API": other.lower(), "PYTEST_QT_API": other.lower()}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         *(str(TESTS / t) if t.endswith(".py") else t for t in WIDGET_TESTS)],
        capture_output=True, text=True, env=env, cwd=TESTS.parents[1], timeout=900)
    summary = "\n".join(run.stdout.splitlines()[-15:])
    assert run.returncode == 0, summary
    gui = re.search(r"GUI tests: (\d+) passed, 0 failed, 0 skipped, in real napari viewers "
                    r"\((\w+) ", run.stdout)
    assert gui and int(gui.group(1)) >= 10 and gui.group(2) == other, summary
