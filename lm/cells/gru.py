"""The GRU (Cho et al. 2014), as torch.nn.GRU computes it:

    r, z = sigmoid(x_r + h_r), sigmoid(x_z + h_z)     where x_* = x W_i*^T + b_i*, h_* = h W_h*^T + b_h*
    n = tanh(x_n + r * h_n),   h' = (1 - z) * n + z * h
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from lm.cells.base import BlockRows, Cell, InputGradients, LayerWeights, step_rows, zeros_before

__all__ = ["GRUCell"]

# Steps per block of the backward's set-up (`GRUCell.backward`): its temporaries are this many steps long.
_SET_UP_BLOCK = 64


class GRUCell(Cell):
    """Its state is h (S = H). b_hh stays with the recurrent product: r gates h_n, bias included."""

    name = "gru"
    title = "GRU"
    gates = 3
    fuses_products = False

    def make_layer(self, input_size: int, hidden: int) -> nn.Module:
        return nn.GRU(input_size, hidden, batch_first=True)

    def input_bias(self, weights: LayerWeights) -> Tensor:
        return weights.input_bias

    def recurrent_bias(self, weights: LayerWeights) -> Tensor | None:
        return weights.recurrent_bias

    def step(self, from_x: Tensor, from_h: Tensor | None, h: Tensor, rest: Tensor | None,
             parents: Tensor | None) -> Tensor:
        if parents is not None:
            h = h.index_select(0, parents)  # z keeps part of it
        xr, xz, xn = from_x.chunk(3, dim=-1)
        hr, hz, hn = from_h.chunk(3, dim=-1)
        r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        return (1 - z) * n + z * h

    def backward(self, weights: LayerWeights, back: Callable[..., Tensor], input_part: Callable[[], Tensor],
                 outputs: Tensor, seed: Tensor, injected: Tensor | BlockRows | None, sum_reads: bool = False) -> Tensor:
        """Gates recomputed from the outputs; per step d [pre_r, pre_z, pre_n] from dh, and dh_prev through z and
        through r * (W_hn h_prev).

        The gates and their scales are made a block of steps at a time, each block's scales written over its
        input part and its recurrent products (both (T, B, 3H), fresh): only a block's temporaries sit beside
        them, where the whole-read expressions held about twice the memory the backward steps read (integrated
        gradients reads 17 texts side by side)."""
        h = outputs  # (T, B, H)
        steps, reads, hidden = h.shape
        h_prev = zeros_before(h)
        from_h = torch.addmm(weights.recurrent_bias, h_prev.reshape(-1, hidden), weights.recurrent.t())
        scale_x = input_part().reshape(steps, reads, 3 * hidden)  # dh -> d [pre_r, pre_z, pre_n], over the inputs' part
        scale_h = from_h.view(steps, reads, 3 * hidden)  # the hidden side sees r * (W_hn h_prev), over its products
        z = h.new_empty(steps, reads, hidden)
        for start in range(0, steps, _SET_UP_BLOCK):
            part = slice(start, start + _SET_UP_BLOCK)
            xr, xz, xn = scale_x[part].chunk(3, dim=-1)  # each (block, B, H)
            hr, hz, hn = scale_h[part].chunk(3, dim=-1)
            r, z_part = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
            n = torch.tanh(xn + r * hn)
            to_n = (1 - z_part) * (1 - n * n)  # dh -> d pre_n
            x_part = torch.cat([to_n * hn * r * (1 - r), (h_prev[part] - n) * z_part * (1 - z_part), to_n], dim=-1)
            h_part = torch.cat([x_part[..., : 2 * hidden], to_n * r], dim=-1)
            scale_x[part], scale_h[part], z[part] = x_part, h_part, z_part
        del h_prev
        rows = seed.size(1)
        sink = InputGradients(steps, (reads, rows), 3 * hidden, weights.input, sum_reads=sum_reads)
        # As in the LSTM's backward: every step writes into memory made once (views of it made before the loop), the
        # three gates' rows as (B, k, 3, H) products of dh with the step's scales.
        x_rows, h_rows = (x.view(steps, reads, 1, 3, hidden).unbind(0) for x in (scale_x, scale_h))  # (B, 1, 3, H)
        z_rows = z.unsqueeze(2).unbind(0)  # (B, 1, H)
        slots3 = [slot.view(reads, rows, 3, hidden) for slot in sink.slots]
        injected_rows = step_rows(injected)
        dh = seed.clone(memory_format=torch.contiguous_format)  # (B, k, H)
        spare = torch.empty_like(dh)  # the next dh, swapped with dh each step
        hidden_side = dh.new_empty(reads, rows, 3, hidden)  # d [pre_r, pre_z, pre_n] as the hidden side sees them
        hidden_flat = hidden_side.view(-1, 3 * hidden)
        for t in range(steps - 1, -1, -1):
            if injected_rows is not None:
                dh.add_(injected_rows[t])
            wide = dh.unsqueeze(2)  # (B, k, 1, H)
            torch.mul(wide, x_rows[t], out=slots3[sink.slot(t)])
            torch.mul(wide, h_rows[t], out=hidden_side)
            back(hidden_flat, spare.view(-1, hidden)).view(reads, rows, hidden).addcmul_(dh, z_rows[t])
            dh, spare = spare, dh
            sink.written(t)
        return sink.result
