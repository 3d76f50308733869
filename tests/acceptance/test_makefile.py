"""Acceptance: the Makefile finds Python 3.11+ quietly, and installs from the lock.

The interpreter search must say nothing when it succeeds, even with pyenv shims on PATH
for versions that are not installed (a shim exists, but running it prints "pyenv:
python3.13: command not found" and fails).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MAKE_TIMEOUT_S = 30.0
PRINT_PYTHON = "print-python: ; @echo $(PYTHON)"


def _fake(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def _make(bin_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    make = shutil.which("make")
    assert make is not None, "make is required"
    env = {key: value for key, value in os.environ.items() if key != "PYTHON"}
    env["PATH"] = str(bin_dir)  # nothing else: the only interpreters are the fakes
    return subprocess.run([make, "--no-print-directory", "-C", str(REPO), *args], env=env,
                          capture_output=True, text=True, timeout=MAKE_TIMEOUT_S, check=False)


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    """The whole PATH: a broken pyenv-style shim for 3.14 and 3.13, a Python 3.10 for 3.12
    and the interpreter running these tests as python3.11 (what the search settles on)."""
    path = tmp_path / "bin"
    path.mkdir()
    echo = shutil.which("echo")
    assert echo is not None
    (path / "echo").symlink_to(echo)  # make runs a recipe's `echo` itself, not via sh
    for version in ("3.14", "3.13"):
        _fake(path, f"python{version}",
              f'echo "pyenv: python{version}: command not found" >&2\n'
              f'echo "The \\`python{version}\' command exists in these Python versions:" >&2\n'
              "exit 127")
    _fake(path, "python3.12", "echo 'Python 3.10 pretending' >&2; exit 1")
    _fake(path, "python3.11", f'exec "{sys.executable}" "$@"')
    return path


def test_the_interpreter_search_is_silent_and_skips_what_does_not_run(bin_dir: Path) -> None:
    result = _make(bin_dir, "--eval", PRINT_PYTHON, "print-python")
    assert (result.returncode, result.stdout, result.stderr) == (0, "python3.11\n", "")


def test_without_a_usable_python_make_says_what_is_needed(bin_dir: Path) -> None:
    (bin_dir / "python3.11").unlink()
    _fake(bin_dir, "python3", "exit 1")
    result = _make(bin_dir, "--eval", PRINT_PYTHON, "print-python", "venv",
                   "VENV=/nonexistent/venv")
    assert result.returncode != 0
    assert result.stdout.splitlines()[0] == ""  # print-python: nothing found
    assert "Python 3.11+ is required" in result.stdout + result.stderr
    assert "pyenv" not in result.stdout + result.stderr


def test_make_installs_the_locked_set_then_the_project_without_dependencies(
    bin_dir: Path,
) -> None:
    result = _make(bin_dir, "--dry-run", "--always-make", "venv", "VENV=/nonexistent/venv")
    assert result.returncode == 0, result.stderr
    commands = result.stdout
    assert "install --require-hashes -r requirements/test.txt" in commands
    assert "install --no-deps --no-build-isolation -e ." in commands
    assert commands.index("--require-hashes") < commands.index("--no-deps")
