"""Whether this machine can run the GUI tests, asked once in a child process.

A napari viewer needs Qt's xcb platform plugin on an X display (Xvfb here: pytest-xvfb starts
it) with OpenGL. Where the display or one of the plugin's libraries is missing, Qt does not
raise: it aborts the process, and with it the whole pytest run, while pytest swallows Qt's
explanation. So the suite first starts a QApplication in a child process; if that dies, the GUI
tests are skipped with Qt's reason and the one line that installs what is missing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

# Debian/Ubuntu packages for the GUI tests: the virtual display, the libraries Qt's xcb plugin
# links against (PyQt5 and PyQt6), and OpenGL for napari's canvas. README.md shows the same line.
SYSTEM_PACKAGES = (
    "xvfb libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-cursor0 libxkbcommon-x11-0 "
    "libgl1 libegl1 libgl1-mesa-dri libfontconfig1 libdbus-1-3 libglib2.0-0"
)
INSTALL_LINE = f"sudo apt-get update && sudo apt-get install -y {SYSTEM_PACKAGES}"

_PROBE = (
    "import sys\n"
    "from qtpy import API_NAME, QT_VERSION\n"
    "from qtpy.QtWidgets import QApplication\n"
    "app = QApplication(sys.argv[:1])\n"
    "print(app.platformName(), API_NAME, QT_VERSION)\n"
)
_HEADLESS_PLATFORMS = {"offscreen", "minimal"}


def probe_display(env: dict[str, str] | None = None) -> tuple[str | None, str]:
    """(None, what runs) when a QApplication starts on a display napari can draw on, else
    (why not, in one sentence, ""). ``env`` defaults to this process's environment, which
    holds pytest-xvfb's DISPLAY once it has started Xvfb."""
    env = dict(os.environ if env is None else env, QT_DEBUG_PLUGINS="1")
    try:
        run = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                             env=env, timeout=120)
    except subprocess.TimeoutExpired:
        return "starting a QApplication did not finish within 120 s", ""
    if run.returncode == 0:
        platform, *binding = run.stdout.split()
        if platform in _HEADLESS_PLATFORMS:
            return (f"Qt runs on the '{platform}' platform (QT_QPA_PLATFORM), which has no "
                    "OpenGL for napari's canvas; unset it and use an X display"), ""
        return None, f"{' '.join(binding)} on {platform}, DISPLAY={env.get('DISPLAY', '')}"
    return _why_qt_failed(run.stderr, env), ""


def _why_qt_failed(stderr: str, env: dict[str, str]) -> str:
    missing = re.findall(r"(lib[\w.+-]+\.so[.\d]*): cannot open shared object file", stderr)
    if missing:
        # The loader names only the first library it missed; ldd names them all.
        plugin = re.search(r"Cannot load library (\S+libqxcb\.so)", stderr)
        if plugin and shutil.which("ldd"):
            ldd = subprocess.run(["ldd", plugin.group(1)], capture_output=True, text=True)
            missing += re.findall(r"^\s*(\S+) => not found", ldd.stdout, re.MULTILINE)
        missing = sorted(set(missing))
        return f"Qt's xcb platform plugin cannot load {', '.join(missing)}"
    if "could not connect to display" in stderr:
        display = env.get("DISPLAY")
        return (f"Qt could not connect to the X display {display}" if display else
                "there is no X display (DISPLAY is unset and Xvfb is not installed)")
    last = [line for line in stderr.splitlines() if line.strip()][-1:] or ["no message"]
    return f"a QApplication could not start ({last[0].strip()})"
