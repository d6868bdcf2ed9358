"""Every bench in bench/ still runs: each answers --help (its imports and its flags work), and every name a bench
imports from this project, lazily inside a function too, exists where it is imported from (a rename is caught here,
not when someone next runs the bench)."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHES = sorted((ROOT / "bench").glob("*.py"))
RUNNABLE = [path for path in BENCHES if 'if __name__ == "__main__":' in path.read_text(encoding="utf-8")]
PROJECT = ("lm", "corpora", "server", "train")


@pytest.mark.parametrize("path", RUNNABLE, ids=lambda path: path.name)
def test_the_bench_answers_help(path):
    done = subprocess.run([sys.executable, str(path), "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage:") and "--" in done.stdout


def _project_imports(path: Path) -> list[tuple[str, str, int]]:
    """(module, name, line) for every `from <this project's module> import name` in the file, lazy ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module.split(".")[0] in PROJECT:
            found.extend((node.module, alias.name, node.lineno) for alias in node.names)
    return found


@pytest.mark.parametrize("path", BENCHES, ids=lambda path: path.name)
def test_every_name_the_bench_imports_exists(path):
    missing = []
    for module, name, line in _project_imports(path):
        imported = importlib.import_module(module)
        if not hasattr(imported, name):
            try:  # a submodule named in `from package import submodule`
                importlib.import_module(f"{module}.{name}")
            except ModuleNotFoundError:
                missing.append(f"{path.name}:{line}: {module} has no {name}")
    assert not missing, "\n".join(missing)


def test_the_bench_list_is_not_empty():
    """Guards the parametrisations above against a moved bench/ (they would pass with no cases)."""
    assert len(RUNNABLE) >= 10 and (ROOT / "bench" / "same_answers.py") in RUNNABLE
