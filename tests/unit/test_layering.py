"""The imports flow one way (DESIGN.md): cli -> mount -> fs -> oss; server -> oss (a few modules).

Each module is imported alone in a fresh interpreter too, so that no module works only because
another one happened to be imported first.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "ossmount"
MODULES = sorted(
    ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    for path in PACKAGE.rglob("*.py")
)

# What each layer may import from ossmount (prefixes); anything else of ossmount is refused.
ALLOWED: dict[str, tuple[str, ...]] = {
    "ossmount.oss": ("ossmount.oss",),
    "ossmount.server": (
        "ossmount.server",
        "ossmount.oss.signer",
        "ossmount.oss.xml",
        "ossmount.oss.crc64",
        "ossmount.oss.model",
    ),
    "ossmount.fs": ("ossmount.fs", "ossmount.oss", "ossmount.config"),
}


def imported_modules(module: str) -> set[str]:
    path = PACKAGE.parent / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = PACKAGE.parent / module.replace(".", "/") / "__init__.py"
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    package_parts = module.split(".")
    if path.name != "__init__.py":
        package_parts = package_parts[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package_parts[: len(package_parts) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "ossmount" or name.startswith("ossmount.")}


def is_module(name: str) -> bool:
    return name in MODULES or f"{name}.__init__" in MODULES


LAYERED = [m for m in MODULES if any(m.startswith(prefix) for prefix in ALLOWED)]


@pytest.mark.parametrize("module", LAYERED)
def test_imports_flow_one_way(module: str) -> None:
    layer = next(prefix for prefix in ALLOWED if module.startswith(prefix))
    for name in imported_modules(module):
        if not is_module(name):
            continue  # a name imported from a module, already checked as the module
        assert name.startswith(ALLOWED[layer]), f"{module} imports {name}"


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_alone(module: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", f"import {module.removesuffix('.__init__')}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
