"""A run that skipped a test ends with a message naming the skip and a failing exit status (tests/conftest.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SKIPPING_TESTS = """
import pytest

def test_runs():
    pass

def test_needs_a_tool():
    pytest.skip("no frobnicator on this machine")
"""


ROOT = Path(__file__).resolve().parents[1]  # conftest.py imports tests.support from there


def run_pytest(directory: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run pytest on *directory* with this project's conftest.py and no other plugin."""
    shutil.copy(Path(__file__).with_name("conftest.py"), directory / "conftest.py")
    (directory / "pytest.ini").write_text("[pytest]\n")
    (directory / "test_skipping.py").write_text(SKIPPING_TESTS)
    clean = {k: v for k, v in os.environ.items() if k not in ("SSE_WSGI_ALLOW_SKIPS", "PYTEST_ADDOPTS")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", str(directory)],
        cwd=directory,
        env={**clean, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_skip_fails_the_run_and_says_what_and_why(tmp_path: Path) -> None:
    run = run_pytest(tmp_path)
    assert run.returncode == pytest.ExitCode.TESTS_FAILED, run.stdout + run.stderr
    last_lines = run.stdout.strip().splitlines()[-3:]
    assert "NOT A FULL PASS: 1 skipped" in last_lines[0]
    assert last_lines[1] == "1 skipped in test_skipping.py: no frobnicator on this machine"
    assert "SSE_WSGI_ALLOW_SKIPS=1" in last_lines[2]


def test_allow_skips_lets_a_partial_run_pass(tmp_path: Path) -> None:
    run = run_pytest(tmp_path, SSE_WSGI_ALLOW_SKIPS="1")
    assert run.returncode == pytest.ExitCode.OK, run.stdout + run.stderr
    assert "SSE_WSGI_ALLOW_SKIPS is set: 1 skipped, accepted" in run.stdout
