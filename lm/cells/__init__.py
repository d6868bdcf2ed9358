"""Recurrent cells, one module per family, and the registry that the rest of Reach asks.

To add a cell: write a `Cell` subclass in a module here (its layer, state
width, bias split, single-step equations and their backward; see
`lm/cells/base.py`), and register an instance below. `--cell`, the model,
the CPU engine, attribution and the lab then know it.
"""

from __future__ import annotations

from lm.cells.base import Cell, LayerWeights, RECURRENT_WEIGHT, layer_weights
from lm.cells.elman import ElmanCell
from lm.cells.gru import GRUCell
from lm.cells.lstm import LSTMCell

__all__ = ["Cell", "LayerWeights", "RECURRENT_WEIGHT", "cell_names", "get_cell", "layer_weights", "register"]

_REGISTRY: dict[str, Cell] = {}


def register(cell: Cell) -> Cell:
    """Make `cell` available under `cell.name` (the `--cell` value)."""
    if cell.name in _REGISTRY:
        raise ValueError(f"a cell named {cell.name!r} is registered already")
    _REGISTRY[cell.name] = cell
    return cell


def cell_names() -> tuple[str, ...]:
    """The registered names, in registration order (rnn_tanh, rnn_relu, lstm, gru, then any added)."""
    return tuple(_REGISTRY)


def get_cell(name: str) -> Cell:
    """The registered cell family called `name`."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"cell must be one of {', '.join(_REGISTRY)}, not {name!r}") from None


for _cell in (ElmanCell("tanh"), ElmanCell("relu"), LSTMCell(), GRUCell()):
    register(_cell)
