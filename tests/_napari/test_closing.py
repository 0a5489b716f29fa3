"""Closing napari while the plugin works, from a script: the workers stop, Python exits
cleanly (it used to abort with SIGABRT, exit 134), and nothing is reported from a thread."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "scripts" / "close_while_working.py"


@pytest.mark.gui
@pytest.mark.slow
def test_closing_viewers_mid_run_stops_the_workers_and_exits_cleanly():
    run = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert any(line.startswith("segmenting: closed") for line in lines), run.stdout
    assert any(line.startswith("fine-tuning: closed") for line in lines), run.stdout
    assert all(line.endswith("workers running: False") for line in lines if "closed" in line)
    for trouble in ("Traceback", "RuntimeError", "has been deleted", "Aborted"):
        assert trouble not in run.stderr, run.stderr[-3000:]
