"""audit_service.core stays pure: it imports only the standard library, `cryptography`
and its own modules, so verifiers can use it without the daemon's drivers."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import audit_service.core

CORE = Path(audit_service.core.__file__).parent
ALLOWED_THIRD_PARTY = {"cryptography"}


def imported_modules(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}: use absolute imports"
            modules.add(node.module or "")
    return modules


@pytest.mark.parametrize("path", sorted(CORE.glob("*.py")), ids=lambda p: p.name)
def test_core_imports_only_the_standard_library_cryptography_and_core(path: Path) -> None:
    for module in imported_modules(path):
        top = module.split(".")[0]
        allowed = (
            top in sys.stdlib_module_names
            or top in ALLOWED_THIRD_PARTY
            or module == "audit_service.core"
            or module.startswith("audit_service.core.")
        )
        assert allowed, f"{path.name} imports {module}"
