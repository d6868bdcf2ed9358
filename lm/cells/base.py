"""What every recurrent cell family provides, and the pieces their backward passes share.

A cell family owns everything that differs between an Elman RNN, an LSTM
and a GRU: the width of its carried state, the torch layer that runs it over
whole sequences (training, long reads), how that layer's state converts to
Reach's one-tensor state, how its biases split between the input product and
the recurrent product, its single-step equations, and the hand-written
backward of those equations for attribution (`lm/infer/context_grad.py`).
Everything above the cells asks the registry (`lm.cells.get_cell`) and
never branches on a cell's name.

Shapes: N rows, H hidden size, S state width (`state_width(H)`), G gate rows
(`gates x H`), T time steps, k seed rows, C a layer's input width. Torch's
gate order: i, f, g, o for the LSTM; r, z, n for the GRU.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import torch
from torch import Tensor, nn

__all__ = ["BlockRows", "Cell", "InputGradients", "LayerWeights", "RECURRENT_WEIGHT", "layer_weights", "step_rows",
           "zeros_before"]

# torch.nn's name for a one-layer module's hidden-to-hidden weight (DropConnect replaces it by name).
RECURRENT_WEIGHT = "weight_hh_l0"


class LayerWeights(NamedTuple):
    """One layer's parameters under Reach's names: W_ih (G, C), W_hh (G, H), b_ih (G,), b_hh (G,)."""

    input: Tensor
    recurrent: Tensor
    input_bias: Tensor
    recurrent_bias: Tensor


def layer_weights(layer: nn.Module) -> LayerWeights:
    """The parameters of a one-layer torch.nn.RNN/LSTM/GRU, by name (the only place torch's names are spelled)."""
    return LayerWeights(layer.weight_ih_l0, layer.weight_hh_l0, layer.bias_ih_l0, layer.bias_hh_l0)


class Cell:
    """One family of recurrent cells. Subclasses set the class attributes and write the equations."""

    name: str  # the `--cell` value
    title: str  # its name in prose ("LSTM", "tanh RNN")
    gates: int  # G = gates x H rows in W_ih and W_hh
    state_factor: int = 1  # S = state_factor x H: an LSTM carries h and c side by side
    # Whether every bias can go with the input product, so that a step may compute [x, h] x [W_ih, W_hh] as one
    # product. A GRU cannot: r gates the recurrent part of n, its bias included.
    fuses_products: bool = True

    def state_width(self, hidden: int) -> int:
        """S, the width of one layer's carried state."""
        return self.state_factor * hidden

    def make_layer(self, input_size: int, hidden: int) -> nn.Module:
        """The torch layer that runs this cell over (B, T, C) sequences, batch first."""
        raise NotImplementedError

    def init_layer(self, layer: nn.Module, hidden: int) -> None:
        """Initialise a fresh layer beyond torch's defaults (nothing unless the family says so)."""

    def to_torch_state(self, state: Tensor, hidden: int):
        """A (B, S) state as the torch layer's initial state: h0 (1, B, H) by default."""
        return state.unsqueeze(0).contiguous()

    def from_torch_state(self, final, hidden: int) -> Tensor:
        """The torch layer's final state as one (B, S) tensor."""
        return final[0]

    def input_bias(self, weights: LayerWeights) -> Tensor:
        """The biases added to the input product x W_ih^T (G,): both of them unless the family keeps b_hh apart."""
        return weights.input_bias + weights.recurrent_bias

    def recurrent_bias(self, weights: LayerWeights) -> Tensor | None:
        """The bias added to the recurrent product h W_hh^T, or None when it went with the input product."""
        return None

    def step(self, from_x: Tensor, from_h: Tensor | None, h: Tensor, rest: Tensor | None,
             parents: Tensor | None) -> Tensor:
        """One step of the equations: the new state (N, S).

        from_x (N, G) is the input product with `input_bias`; from_h (N, G) the
        recurrent product with `recurrent_bias`, or None when both products were
        computed as one and from_x holds their sum. The layer's previous state
        is h (M, H) and, for a state wider than h, the rest of it (M, S - H),
        else None. With `parents` (N,), row i continues previous state
        parents[i] (from_h is already per row), else M = N.
        """
        raise NotImplementedError

    def backward(self, weights: LayerWeights, back: Callable[..., Tensor], input_part: Callable[[], Tensor],
                 outputs: Tensor, seed: Tensor, injected: Tensor | BlockRows | None, sum_reads: bool = False) -> Tensor:
        """Gradients (T, B, k, C) with respect to one layer's inputs over B reads of T steps side by side, k seeds
        per read (B x k gradients at once; a single read is B = 1); with `sum_reads`, their sum over the B reads
        (T, 1, k, C), for B times fewer input products (integrated gradients needs only the mean over its path).

        back(g, out): g (B k, G) -> g W_hh (B k, H), the recurrent weight's transpose product, written into
        `out` (B k, H) when given; input_part(): the input product of every step (T, B, G) with `input_bias`,
        a fresh tensor the backward may overwrite (called only by families that need the gate values); outputs: the
        layer's h_1..h_T of each read (T, B, H); seed (B, k, S): gradients on
        each read's final state; injected (T, B, k, H) or None: gradients
        arriving on each output from the layer above, a tensor or `BlockRows`
        (`step_rows` gives its steps).
        """
        raise NotImplementedError


class BlockRows:
    """Rows (T, B, k, H) made a block of steps at a time, for a backward pass that walks from the last step down:
    `make(start, stop)` gives rows start..stop - 1 as (stop - start, B, k, H), and only the block being walked is
    held (make may reuse one block's memory for the next: a row is valid until another block is made).

    Gradients arriving on every output from outside the recurrence (the text
    cache's keys: lm/infer/word_gradients.py) are T x B x k x H numbers: for
    integrated gradients' 16 reads of a 4,000-unit text, 700 MB, the largest
    tensor of the request, where a block of them is tens of MB at most. Indexing with
    t outside the current block makes t's block; asking for steps in any order
    works, but each jump back into an earlier block remakes it."""

    def __init__(self, steps: int, block: int, make: Callable[[int, int], Tensor]):
        self.steps, self.block, self.make = steps, max(1, block), make
        self._start, self._rows = -1, ()

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, t: int) -> Tensor:
        if not self._start <= t < self._start + len(self._rows):
            self._start = t - t % self.block
            self._rows = self.make(self._start, min(self._start + self.block, self.steps)).unbind(0)
        return self._rows[t - self._start]


def step_rows(injected: Tensor | BlockRows | None) -> Sequence[Tensor] | None:
    """Each step's rows of the gradients injected into a layer's outputs: a tensor (T, ...) unbound, or a
    `BlockRows` as it is."""
    if injected is None or isinstance(injected, BlockRows):
        return injected
    return injected.unbind(0)


def zeros_before(values: Tensor) -> Tensor:
    """values (T, ...) shifted one step later, zeros first: each step's previous values (a read starts from zeros)."""
    return torch.cat([values.new_zeros(1, *values.shape[1:]), values[:-1]])


class InputGradients:
    """Collects d/d pre-activations step by step (latest first) and turns them into d/d inputs, a block at a time.

    Keeping every step's (B, k, G) rows for one product at the end would write
    T x B x k x G floats to fresh memory (80 MB for 2,000 steps of a 512-unit
    LSTM and k = 5), and page faults then cost more than the arithmetic. A
    block of `block` steps stays in cache; each full block becomes inputs'
    gradients with one (block x B x k, G) x (G, C) product.
    """

    def __init__(self, steps: int, rows: tuple[int, int], width: int, weight_ih: Tensor, block: int = 64,
                 sum_reads: bool = False):
        self.weight = weight_ih  # (G, C)
        self.block = min(block, steps)
        self.buffer = weight_ih.new_empty(self.block, *rows, width)  # (block, B, k, G)
        self.slots = self.buffer.unbind(0)
        # With sum_reads, the B reads' gate gradients are summed before the product (it is linear): (T, 1, k, C).
        self.sum_reads = sum_reads
        self.result = weight_ih.new_empty(steps, 1 if sum_reads else rows[0], rows[1], weight_ih.size(1))

    def slot(self, t: int) -> int:
        """The index in `slots` (and in views made of them) where step t's gradients go."""
        return t % self.block

    def row(self, t: int) -> Tensor:
        """Where step t's (B, k, G) gradients go."""
        return self.slots[t % self.block]

    def written(self, t: int) -> None:
        """Step t is in place; steps t..(the end of its block) are complete when t starts a block."""
        if t % self.block == 0:
            count = min(self.block, self.result.size(0) - t)
            done = self.buffer[:count]
            if self.sum_reads:
                done = done.sum(dim=1)  # (count, k, G)
            torch.mm(done.reshape(-1, done.size(-1)), self.weight,
                     out=self.result[t : t + count].view(-1, self.weight.size(1)))
