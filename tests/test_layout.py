"""The code stays readable: no module over 400 lines and no function over 80 outside benchmarks/ and tests/, and
every package module's unit tests sit at tests/<package>/test_<module>.py when it has any."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "industrial_qc", "medical3d", "apps")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def package_modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def test_no_module_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in package_modules()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_no_function_over_80_lines():
    long = []
    for path in package_modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_unit_tests_are_named_for_a_module():
    """tests/<package>/test_<name>.py tests <package>/<name>.py (or a module of that name in a sub-package)."""
    stray = []
    for pkg in PACKAGES:
        modules = {p.stem for p in (ROOT / pkg).rglob("*.py")}
        for test in sorted((ROOT / "tests" / pkg).glob("test_*.py")):
            if test.stem.removeprefix("test_") not in modules:
                stray.append(str(test.relative_to(ROOT)))
    assert not stray, f"unit tests not named for a module of their package (move flows to tests/integration): {stray}"
