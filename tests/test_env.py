"""Set-up facing behaviour: a missing dependency is one line; the env report names versions."""
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("script", ["train_net.py", "demo/demo.py"])
@pytest.mark.slow
def test_missing_detectron2_is_one_clear_line_from_the_entry_points(script):
    # the library raises; the command-line entry points turn that into one line
    code = (f"import runpy, sys; sys.modules['detectron2'] = None; sys.argv = [{script!r}, '--config-file', 'x', "
            f"'--input', 'x.png', '--output', 'out']; runpy.run_path({script!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "needs detectron2" in lines[0] and "make setup" in lines[0]


def test_missing_dependency_can_still_be_caught_as_import_error():
    code = ("import sys; sys.modules['detectron2'] = None\n"
            "try:\n    import maskformer_d2\nexcept ImportError as e:\n    print('caught', type(e).__name__)")
    proc = _run("-c", code)
    assert proc.returncode == 0 and "caught MissingDependencyError" in proc.stdout


@pytest.mark.slow
def test_env_report_lists_versions_and_passes_check():
    import detectron2
    import torch

    proc = _run("-m", "maskformer_d2.utils.env", "--check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "torch" in proc.stdout and torch.__version__ in proc.stdout
    assert detectron2.__version__ in proc.stdout
    assert any(line.startswith("torchvision ops") and line.endswith("ok") for line in proc.stdout.splitlines())
    assert "MISSING" not in proc.stdout
