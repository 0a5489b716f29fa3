"""The suite's own guard for the GUI tests (tests/display.py): where Qt cannot open a display it
says why and what to install, instead of letting Qt abort the whole run."""

import os
from pathlib import Path

from .display import INSTALL_LINE, SYSTEM_PACKAGES, probe_display

README = Path(__file__).parents[1] / "README.md"


def test_a_display_that_is_not_there_is_named():
    env = {k: v for k, v in os.environ.items() if k != "QT_QPA_PLATFORM"}
    problem, running = probe_display({**env, "DISPLAY": ":987"})
    assert running == ""
    # Where Qt's xcb libraries are installed it reaches the display and finds none there;
    # where they are not, it says which library is missing first.
    assert ("could not connect to the X display :987" in problem
            or "xcb platform plugin cannot load" in problem), problem


def test_a_platform_without_opengl_is_refused():
    problem, _ = probe_display({**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    assert problem is not None and "'offscreen' platform" in problem


def test_the_readme_gives_the_line_the_suite_prints():
    readme = README.read_text(encoding="utf-8")
    assert INSTALL_LINE in readme
    assert INSTALL_LINE.endswith(SYSTEM_PACKAGES)
