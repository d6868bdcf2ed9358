"""The Elman RNN: h_t = tanh(W_ih x_t + b_ih + W_hh h_(t-1) + b_hh), or relu in place of tanh (Elman 1990)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from lm.cells.base import BlockRows, Cell, InputGradients, LayerWeights, step_rows

__all__ = ["ElmanCell"]


class ElmanCell(Cell):
    """A vanilla RNN with a tanh or relu nonlinearity; its state is h (S = H)."""

    gates = 1

    def __init__(self, nonlinearity: str):
        self.nonlinearity = nonlinearity
        self.name = f"rnn_{nonlinearity}"
        self.title = f"{'ReLU' if nonlinearity == 'relu' else nonlinearity} RNN"
        self.activation = torch.tanh if nonlinearity == "tanh" else torch.relu

    def make_layer(self, input_size: int, hidden: int) -> nn.Module:
        return nn.RNN(input_size, hidden, nonlinearity=self.nonlinearity, batch_first=True)

    def step(self, from_x: Tensor, from_h: Tensor | None, h: Tensor, rest: Tensor | None,
             parents: Tensor | None) -> Tensor:
        pre = from_x if from_h is None else from_x + from_h  # (N, H)
        return self.activation(pre)

    def backward(self, weights: LayerWeights, back: Callable[..., Tensor], input_part: Callable[[], Tensor],
                 outputs: Tensor, seed: Tensor, injected: Tensor | BlockRows | None, sum_reads: bool = False) -> Tensor:
        """dh_(t-1) = (dh_t * act'(pre_t)) W_hh; act' comes from the outputs alone (1 - h^2, or h > 0)."""
        h = outputs  # (T, B, H)
        steps, reads, hidden = h.shape
        slope = (h > 0).to(h.dtype) if self.nonlinearity == "relu" else 1 - h * h  # (T, B, H)
        rows = seed.size(1)
        sink = InputGradients(steps, (reads, rows), hidden, weights.input, sum_reads=sum_reads)
        slope_rows = slope.unsqueeze(2).unbind(0)  # (B, 1, H) each
        flat_slots = [slot.view(-1, hidden) for slot in sink.slots]
        injected_rows = step_rows(injected)
        dh = seed.clone(memory_format=torch.contiguous_format)  # (B, k, H), written in place (as in the LSTM's)
        dh_flat = dh.view(-1, hidden)
        for t in range(steps - 1, -1, -1):
            j = sink.slot(t)
            if injected_rows is not None:
                dh.add_(injected_rows[t])
            torch.mul(dh, slope_rows[t], out=sink.slots[j])
            back(flat_slots[j], dh_flat)
            sink.written(t)
        return sink.result
