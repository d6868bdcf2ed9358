"""The floors of docs/ARCHITECTURE.md hold: imports only go down, and nothing imports another module's private names.

Scanned: lm/, corpora/, and the entry floors above them: server/, bench/ and train.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A module's floor; a module may import from its own floor (when `SIDE` allows) and from any floor below.
FLOORS = {
    "corpora": 0, "lm.config": 0, "lm.tokenizers": 0, "lm.cells": 0,
    "lm.model": 1,
    "lm.checkpoint": 2,
    "lm.eval": 3, "lm.infer": 3, "lm.train": 4,
    "lm.reports": 5, "lm.cli_support": 5, "lm.answers": 5, "lm.__main__": 6,
    # The entry floors: they may import lm and corpora (and bench may drive the server and train.py); nothing below
    # imports them.
    "server": 7, "train": 7, "bench": 7,
}
# Packages side by side on floor 3 do not import each other; lm.train sits above lm.eval only.
FORBIDDEN = {("lm.eval", "lm.infer"), ("lm.infer", "lm.eval"), ("lm.train", "lm.infer"), ("lm.infer", "lm.train"),
             ("lm.eval", "lm.train"), ("lm.cells", "lm.config"), ("lm.cells", "lm.tokenizers"),
             ("lm.config", "lm.tokenizers"), ("lm.tokenizers", "lm.config"),
             ("server", "bench"), ("server", "train"), ("train", "bench"), ("train", "server")}
BENCHES = {path.stem for path in (ROOT / "bench").glob("*.py")}  # a bench imports its siblings by their bare names


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported_name(module: str, importer: str) -> str:
    """The module an import names, as this tree spells it: a bench's sibling (`from predict_speed import ...`, found
    through the bench's own sys.path entry) is bench.<name>."""
    if importer.startswith("bench.") and module.split(".")[0] in BENCHES:
        return "bench." + module
    return module


def _floor_key(name: str) -> str | None:
    for key in sorted(FLOORS, key=len, reverse=True):
        if name == key or name.startswith(key + "."):
            return key
    return None


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names imported from it) for every import in the file, lazy ones inside functions included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [alias.name for alias in node.names]))
    return found


MODULES = sorted(path for package in ("lm", "corpora") for path in (ROOT / package).rglob("*.py"))
ENTRY_MODULES = sorted([*(ROOT / "server").rglob("*.py"), *(ROOT / "bench").glob("*.py"), ROOT / "train.py"])


@pytest.mark.parametrize("path", MODULES + ENTRY_MODULES, ids=lambda path: str(path.relative_to(ROOT)))
def test_imports_only_go_down_the_floors(path):
    here = _module_name(path)
    if here in ("lm", "corpora"):
        return  # the packages' own __init__ files: docstrings and re-exports of their floor
    here_key = _floor_key(here)
    assert here_key is not None, f"{here} has no floor in docs/ARCHITECTURE.md (add it to FLOORS)"
    for module, names in _imports(path):
        module = _imported_name(module, here)
        key = _floor_key(module)
        if key is None:
            continue  # not this project's
        private = [name for name in names if name.startswith("_") and not name.startswith("__")]
        assert not private, f"{here} imports private names {private} from {module}"
        if key == here_key:
            continue
        assert FLOORS[key] <= FLOORS[here_key], f"{here} (floor {FLOORS[here_key]}) imports {module} (floor {FLOORS[key]})"
        assert (here_key, key) not in FORBIDDEN, f"{here} imports {module}: {here_key} and {key} stay apart"


def test_corpora_never_imports_torch():
    for path in (ROOT / "corpora").rglob("*.py"):
        assert all(not module.startswith("torch") for module, _ in _imports(path)), path


def test_no_module_branches_on_a_cells_name_outside_the_registry():
    """Adding a cell means adding one module under lm/cells: nothing else compares `cell` with a name."""
    names = ("rnn_tanh", "rnn_relu", "lstm", "gru")
    for path in MODULES:
        if "cells" in path.relative_to(ROOT).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Compare):
                constants = [c.value for c in [node.left, *node.comparators] if isinstance(c, ast.Constant)]
                assert not any(value in names for value in constants), f"{path}:{node.lineno} compares with a cell's name"
