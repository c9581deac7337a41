"""The Python examples in the project's documents use names the package really has: a user pastes them into
3D Slicer's console, where a renamed module is an ImportError the documents never mention."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [
    "README.md",
    "DEVELOPERS.md",
    *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md")),
]
PYTHON_BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def _examples() -> list[tuple[str, str]]:
    found = []
    for name in DOCUMENTS:
        for i, block in enumerate(PYTHON_BLOCK.findall((ROOT / name).read_text(encoding="utf-8"))):
            if "LegSegNetLib" in block:
                found.append((f"{name}#{i + 1}", block))
    return found


def _package_names(tree: ast.AST) -> dict[str, object]:
    """What the example's LegSegNetLib imports bind, imported for real."""
    bound: dict[str, object] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("LegSegNetLib"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                value = getattr(module, alias.name, None)
                if value is None:  # a submodule, not yet imported by its package
                    value = importlib.import_module(f"{node.module}.{alias.name}")
                bound[alias.asname or alias.name] = value
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("LegSegNetLib"):
                    module = importlib.import_module(alias.name)  # `import a.b` binds `a`, `import a.b as c` binds a.b
                    top = alias.asname or alias.name.split(".")[0]
                    bound[top] = module if alias.asname else importlib.import_module(top)
    return bound


def test_the_documents_have_python_examples_to_check():
    assert _examples(), "no ```python block naming LegSegNetLib found: the check below would check nothing"


@pytest.mark.parametrize("where,code", _examples(), ids=[w for w, _ in _examples()])
def test_example_imports_and_attributes_exist(where, code):
    tree = ast.parse(code)
    bound = _package_names(tree)
    assert bound, f"{where}: names LegSegNetLib but imports nothing from it"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound:
            owner = bound[node.value.id]
            assert hasattr(owner, node.attr), f"{where}: {node.value.id}.{node.attr} does not exist"
