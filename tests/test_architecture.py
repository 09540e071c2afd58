"""The architecture holds: the import-linter contracts of pyproject.toml (layers, no cycles), no
module imports another module's private name, and the top of the package stays small."""

from __future__ import annotations

import ast
from pathlib import Path

import clozelab

PACKAGE = Path(clozelab.__file__).parent
ROOT = PACKAGE.parents[1]


def test_import_contracts_are_kept():
    from importlinter.cli import lint_imports

    assert lint_imports(config_filename=str(ROOT / "pyproject.toml")) == 0, "run lint-imports"


def _private_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("clozelab"):
            found += [
                f"{path.name}:{node.lineno} {node.module}.{alias.name}"
                for alias in node.names
                if alias.name.startswith("_") and not alias.name.startswith("__")
            ]
    return found


def test_no_module_imports_another_modules_private_names():
    found = [hit for path in sorted(PACKAGE.rglob("*.py")) for hit in _private_imports(path)]
    assert not found, f"private names imported across modules: {found}"


def test_private_import_check_sees_one(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("from clozelab.core.config import __doc__, build, _hidden\n", "utf-8")
    assert _private_imports(probe) == ["probe.py:1 clozelab.core.config._hidden"]


def test_the_top_of_the_package_is_small():
    top = sorted(
        p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py")
    )
    assert len(top) <= 12, top
