"""The LSTM (Hochreiter and Schmidhuber 1997, with a forget gate: Gers et al. 2000), as torch.nn.LSTM computes it:

    i, f, g, o = sigmoid, sigmoid, tanh, sigmoid of x W_ih^T + b_ih + h W_hh^T + b_hh
    c' = f * c + i * g,   h' = o * tanh(c')
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from lm.cells.base import Cell, InputGradients, LayerWeights, layer_weights, zeros_before

__all__ = ["LSTMCell"]


class LSTMCell(Cell):
    """Its state is h and c side by side (S = 2H), h first."""

    name = "lstm"
    title = "LSTM"
    gates = 4
    state_factor = 2

    def make_layer(self, input_size: int, hidden: int) -> nn.Module:
        return nn.LSTM(input_size, hidden, batch_first=True)

    def init_layer(self, layer: nn.Module, hidden: int) -> None:
        # Forget-gate bias 1 (Jozefowicz et al. 2015): remember by default.
        weights = layer_weights(layer)
        nn.init.ones_(weights.input_bias[hidden : 2 * hidden])
        nn.init.zeros_(weights.recurrent_bias[hidden : 2 * hidden])

    def to_torch_state(self, state: Tensor, hidden: int):
        """(B, 2H) -> nn.LSTM's (h0, c0), each (1, B, H)."""
        return state[:, :hidden].unsqueeze(0).contiguous(), state[:, hidden:].unsqueeze(0).contiguous()

    def from_torch_state(self, final, hidden: int) -> Tensor:
        """nn.LSTM's (h_n, c_n) -> (B, 2H)."""
        return torch.cat([final[0][0], final[1][0]], dim=-1)

    def step(self, from_x: Tensor, from_h: Tensor | None, h: Tensor, rest: Tensor | None,
             parents: Tensor | None) -> Tensor:
        pre = from_x if from_h is None else from_x + from_h  # (N, 4H)
        c = rest  # (M, H)
        if parents is not None:
            c = c.index_select(0, parents)
        i, f, g, o = pre.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return torch.cat([h, c], dim=-1)

    def backward(self, weights: LayerWeights, back: Callable[[Tensor], Tensor], input_part: Callable[[], Tensor],
                 outputs: Tensor, seed: Tensor, injected: Tensor | None, sum_reads: bool = False) -> Tensor:
        """Gates recomputed from the outputs in one product, the cell state rebuilt (nn.LSTM returns only its last
        value), then per step: dc += dh o tanh'(c); d pre = [dc g i', dc c_prev f', dc i g', dh tanh(c) o']."""
        h = outputs  # (T, B, H)
        steps, reads, hidden = h.shape
        gates = 4 * hidden
        h_prev = zeros_before(h)
        pre = torch.addmm(input_part().reshape(-1, gates), h_prev.reshape(-1, hidden), weights.recurrent.t())
        i, f, g, o = pre.view(steps, reads, gates).chunk(4, dim=-1)  # each (T, B, H)
        i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
        c = torch.empty_like(h)
        running = h.new_zeros(reads, hidden)
        update = i * g
        for update_t, forget_t, c_t in zip(update.unbind(0), f.unbind(0), c.unbind(0)):
            running = torch.addcmul(update_t, forget_t, running, out=c_t)
        tanh_c = c.tanh()
        through_h = o * (1 - tanh_c * tanh_c)  # d c_t / d h_t's path: dc += dh * o * tanh'(c)
        # d pre / d [c, c, c, h]: input, forget, cell and output gates. (T, B, 4H)
        scale = torch.cat([g * i * (1 - i), zeros_before(c) * f * (1 - f), i * (1 - g * g), tanh_c * o * (1 - o)], dim=-1)
        rows = seed.size(1)
        sink = InputGradients(steps, (reads, rows), gates, weights.input, sum_reads=sum_reads)
        # Rows as (B, 1, *) views made in one call each (they broadcast over the k seeds): indexing in the loop would
        # cost a Python call per tensor per step.
        through_rows, scale_rows, forget_rows = (x.unsqueeze(2).unbind(0) for x in (through_h, scale, f))
        injected_rows = injected.unbind(0) if injected is not None else None
        dh, dc = seed[..., :hidden], seed[..., hidden:]  # (B, k, H)
        for t in range(steps - 1, -1, -1):
            if injected_rows is not None:
                dh = dh + injected_rows[t]
            dc = torch.addcmul(dc, dh, through_rows[t])
            step = torch.mul(torch.cat([dc, dc, dc, dh], dim=-1), scale_rows[t], out=sink.row(t))  # (B, k, 4H)
            dc = dc * forget_rows[t]
            dh = back(step.view(-1, gates)).view(reads, rows, hidden)
            sink.written(t)
        return sink.result
