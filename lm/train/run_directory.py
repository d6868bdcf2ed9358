"""What a run directory holds of a training run, and how a new run clears it.

A run directory (`train.py --out DIR`) holds `best/` (served and scored),
`last/` (resumed) and `metrics.jsonl`; the directory may hold other files
too (a plot, notes), which are never the run's. A crash between the two
renames of a checkpoint save leaves `best.old/` or `last.old/`, which
`lm.checkpoint.resolve_checkpoint` still serves, so they count as the run's;
a crash while writing leaves a `.best.tmp-*` or `.last.tmp-*` directory,
which nothing reads but which is the run's all the same.

A new run in a directory that holds one must clear it first: otherwise the
old `best/` is served, scored and restored until the new run's first
evaluation replaces it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from lm.checkpoint import OLD_SUFFIX  # the name a save moves the previous checkpoint aside to

__all__ = ["RUN_ENTRIES", "clear_run", "previous_run"]

# What a training run writes in its directory.
RUN_ENTRIES = ("best", "last", "metrics.jsonl")
_CHECKPOINTS = ("best", "last")


def previous_run(out: Path) -> list[str]:
    """The entries of a training run that `out` holds, as `best/`, `last/`, `metrics.jsonl`; empty when none."""
    out = Path(out)
    found = []
    for name in RUN_ENTRIES:
        candidates = [out / name] + ([out / (name + OLD_SUFFIX)] if name in _CHECKPOINTS else [])
        if any(path.exists() for path in candidates):
            found.append(name + "/" if name in _CHECKPOINTS else name)
    return found


def clear_run(out: Path) -> list[str]:
    """Delete a training run's entries from `out` (and a crashed save's leftovers), nothing else; returns what was there.

    The checkpoints go first: once `best/` is gone nothing of the old run can be served.
    """
    out = Path(out)
    found = previous_run(out)
    if not out.is_dir():
        return found
    for name in _CHECKPOINTS:
        for path in [out / name, out / (name + OLD_SUFFIX), *out.glob(f".{name}.tmp-*")]:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
    (out / "metrics.jsonl").unlink(missing_ok=True)
    return found
