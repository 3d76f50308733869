"""The lock files agree with pyproject.toml: `make lock` was run after the ranges changed.

requirements/test.txt pins every dependency of the package and of its dev and test extras,
requirements/runtime.txt the package's own; both hash every pin, and the two never pin the
same package differently.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
_PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)")


def _pins(name: str) -> dict[str, str]:
    """Package -> pinned version; asserts each pin carries at least one sha256 hash."""
    text = (REPO / "requirements" / name).read_text()
    pins: dict[str, str] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        match = _PIN.match(block)
        if match:
            assert "--hash=sha256:" in block, f"{name}: {match.group(1)} has no hash"
            pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def _requirements(*extras: str) -> list[Requirement]:
    wanted = [Requirement(line) for line in PROJECT["dependencies"]]
    for extra in extras:
        wanted += [Requirement(line) for line in PROJECT["optional-dependencies"][extra]]
    return [r for r in wanted if canonicalize_name(r.name) != canonicalize_name(PROJECT["name"])]


@pytest.mark.parametrize(("lock", "extras"), [("runtime.txt", ()), ("test.txt", ("dev", "test"))])
def test_every_range_is_pinned_within_it(lock: str, extras: tuple[str, ...]) -> None:
    pins = _pins(lock)
    for requirement in _requirements(*extras):
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is not in requirements/{lock}: run `make lock`"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"requirements/{lock} pins {name}=={pins[name]} outside {requirement}: "
            "run `make lock`")


def test_the_runtime_lock_agrees_with_the_test_lock() -> None:
    runtime, test = _pins("runtime.txt"), _pins("test.txt")
    assert {name: (version, test.get(name)) for name, version in runtime.items()
            if test.get(name) != version} == {}


def test_the_new_issues_dependencies_are_locked() -> None:
    """Later work relies on them (signed checkpoints; architecture and type checks)."""
    assert "cryptography" in _pins("runtime.txt")
    assert {"cryptography", "import-linter", "mypy", "build"} <= set(_pins("test.txt"))
