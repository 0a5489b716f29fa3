"""The benchmark scripts' own logic, where it runs without a GPU."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COMPARE = [sys.executable, str(REPO / "benchmarks" / "compare.py"), "--device", "cpu",
           "--rounds", "1", "--repeats", "1", "--skip-training"]


def test_compare_measures_each_version_in_its_own_process(tmp_path):
    """benchmarks/compare.py with the baseline given as an exported src/ folder (as on a machine
    without git history) and the candidate exported from git: each is measured in a process
    that imports its own copy (the script refuses a measurement of any other copy), and the
    same code gives the same logits to the bit; the table has the metric and ratio."""
    archive = subprocess.run(["git", "archive", "--format=tar", "HEAD", "src"], cwd=REPO,
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tmp_path)], input=archive, check=True)
    done = subprocess.run([*COMPARE, "--baseline-src", str(tmp_path / "src"),
                           "--candidate", "HEAD"], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"baseline {tmp_path / 'src'}, candidate HEAD" in done.stdout
    assert done.stdout.count("round 1 ") == 2
    table = done.stdout.split("cand/base", 1)[1]
    assert "256² b1 fp32 ms" in table
    assert "max |difference| 0, relative (norm) 0" in done.stdout


def test_compare_names_a_revision_it_cannot_export():
    done = subprocess.run([*COMPARE, "--baseline", "no-such-revision"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "cannot export src/ of 'no-such-revision'" in done.stderr


def test_compare_refuses_a_baseline_folder_without_the_package(tmp_path):
    done = subprocess.run([*COMPARE, "--baseline-src", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "holds no napari_vmunet package" in done.stderr


def test_coldstart_times_fresh_processes_first_and_warm(tmp_path):
    """benchmarks/coldstart.py runs each command twice in a fresh process on one cache and
    prints a row with both times (here on the CPU, one small new size)."""
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "coldstart.py"),
                           "--device", "cpu", "--rows", "sizes", "--sizes", "40x48",
                           "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    row = done.stdout.splitlines()[-1].split()
    assert row[:3] == ["new", "size", "40x48"] and len(row) == 6
    assert all(float(v) > 0 for v in row[3:5])
    assert (tmp_path / "labels_40x48.nii.gz").exists()
