"""Module docstrings are short headers (what the module is, how to call it); the rationale lives in docs/."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "megatron_ultralong"
MAX_LINES = 12  # a package __init__ may list its modules instead (one line each)
MODULES = sorted(p for p in ROOT.rglob("*.py") if p.name != "__init__.py")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_module_docstring_is_a_short_header(path):
    doc = ast.get_docstring(ast.parse(path.read_text()), clean=False) or ""
    lines = doc.count("\n") + 1
    assert lines <= MAX_LINES, (f"{path.relative_to(ROOT.parent)}: module docstring of {lines} lines; keep what it is "
                                f"and how to call it (<= {MAX_LINES} lines), move the rationale to docs/")


def test_the_modules_are_found():
    assert len(MODULES) > 30
