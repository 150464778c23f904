"""House rules that keep the code readable, checked on the source: no import cycle inside jobs/ or congweb/
(imports inside functions count: such a cycle breaks as soon as one of them moves to the top), and no module
over 500 lines in ml/, jobs/ or congweb/ (migrations aside)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 500


def _modules(pkg: str) -> dict[str, Path]:
    out = {}
    for p in (ROOT / pkg).rglob("*.py"):
        if "migrations" in p.parts:
            continue
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _imports(name: str, path: Path, mods: set[str]) -> set[str]:
    """The modules of `mods` that module `name` imports (resolving relative imports)."""
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if is_pkg else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = (
                ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else []))
                if node.level
                else (node.module or "")
            )
            # `from pkg import sub` imports the submodule; `from mod import name` imports the module.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in mods and t != name}
    return found


@pytest.mark.parametrize("pkg", ["jobs", "congweb"])
def test_no_import_cycles(pkg):
    mods = _modules(pkg)
    edges = {m: _imports(m, p, set(mods)) for m, p in mods.items()}

    def cycle_from(start: str, path: list[str]) -> list[str] | None:
        for nxt in sorted(edges[path[-1]]):
            if nxt == start:
                return [*path, nxt]
            if nxt not in path and (found := cycle_from(start, [*path, nxt])):
                return found
        return None

    cycles = [c for m in sorted(mods) if (c := cycle_from(m, [m]))]
    assert not cycles, f"import cycles in {pkg}/: {cycles[:5]}"
    real = {
        "jobs": ("jobs.runner", {"jobs.services", "jobs.progress"}),
        "congweb": ("congweb.launcher", {"congweb.supervisor", "congweb.demo"}),
    }
    module, imports = real[pkg]
    assert edges[module] >= imports, edges[module]  # the graph is read, not empty


def test_no_module_over_500_lines():
    long = {
        str(p.relative_to(ROOT)): n
        for pkg in ("ml", "jobs", "congweb")
        for p in _modules(pkg).values()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines (split them along a seam): {long}"


def test_ml_tests_run_without_django():
    """ml never needs Django, nor do its tests: the GPU check runs tests/ml with `-p no:django` on images that
    have no Django. Any session-wide fixture that imports Django unconditionally fails this (it did once)."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['django'] = None\n"  # `import django` now raises ImportError
        "import pytest\n"
        "sys.exit(pytest.main(['-p', 'no:django', '-o', 'addopts=', '-q', '-p', 'no:cacheprovider',"
        " 'tests/ml/test_stats.py']))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout, proc.stdout[-3000:]  # exit 0 with nothing collected would not prove it
