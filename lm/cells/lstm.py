"""The LSTM (Hochreiter and Schmidhuber 1997, with a forget gate: Gers et al. 2000), as torch.nn.LSTM computes it:

    i, f, g, o = sigmoid, sigmoid, tanh, sigmoid of x W_ih^T + b_ih + h W_hh^T + b_hh
    c' = f * c + i * g,   h' = o * tanh(c')
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from lm.cells.base import BlockRows, Cell, InputGradients, LayerWeights, layer_weights, step_rows

__all__ = ["LSTMCell"]

# Steps per block of the backward's set-up (`LSTMCell.backward`): its temporaries are this many steps long.
_SET_UP_BLOCK = 64


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

    def backward(self, weights: LayerWeights, back: Callable[..., Tensor], input_part: Callable[[], Tensor],
                 outputs: Tensor, seed: Tensor, injected: Tensor | BlockRows | None, sum_reads: bool = False) -> Tensor:
        """Gates recomputed from the outputs in one product, the cell state rebuilt (nn.LSTM returns only its last
        value), then per step: dc += dh o tanh'(c); d pre = [dc g i', dc c_prev f', dc i g', dh tanh(c) o'].

        The gates, then their scales, are computed in place in the input part's (T, B, 4H) tensor, with two
        (T, B, H) beside it (the forget gates, and the cell state that becomes tanh'(c) o) and temporaries a
        block of steps long: fresh memory this size costs page faults beyond its arithmetic (integrated
        gradients reads 17 texts side by side: gigabytes a call at 1,000 words when every term was its own
        tensor)."""
        h = outputs  # (T, B, H)
        steps, reads, hidden = h.shape
        gates = 4 * hidden
        pre = input_part().reshape(steps, reads, gates)  # fresh: ours to overwrite
        if steps > 1:  # h_0 = 0: the first step has no recurrent part
            pre[1:].view(-1, gates).addmm_(h[:-1].reshape(-1, hidden), weights.recurrent.t())
        i, f, g, o = pre.chunk(4, dim=-1)  # views, each (T, B, H)
        i.sigmoid_(), f.sigmoid_(), g.tanh_(), o.sigmoid_()
        forget = f.clone()  # the backward steps' forget gates; f's place becomes its scale
        c = torch.mul(i, g)  # each step's update, made the cell state in place: c_t = f_t c_(t-1) + i_t g_t
        c_rows, f_rows = c.unbind(0), forget.unbind(0)
        for t in range(1, steps):
            c_rows[t].addcmul_(f_rows[t], c_rows[t - 1])
        # d pre / d [c, c, c, h], in the gates' places: input, forget, cell and output gates. (T, B, 4H)
        f.addcmul_(f, f, value=-1)  # f (1 - f) ...
        f[1:].mul_(c[:-1])  # ... times c_(t-1), which is 0 before the first step
        f[0].zero_()
        # The other scales a block of steps at a time, in place, so that their temporaries stay a block long: the
        # cell state, used up, becomes tanh(c) and then d c_t / d h_t's path, tanh'(c) o (dc += dh * that).
        for start in range(0, steps, _SET_UP_BLOCK):
            part = slice(start, start + _SET_UP_BLOCK)
            tanh_c = c[part].tanh_()
            through = torch.mul(tanh_c, tanh_c).neg_().add_(1).mul_(o[part])  # tanh'(c) o
            o[part].addcmul_(o[part], o[part], value=-1).mul_(tanh_c)  # tanh(c) o (1 - o)
            tanh_c.copy_(through)
            kept_g = g[part].clone()  # for the input gate's scale
            g[part].mul_(g[part]).neg_().add_(1).mul_(i[part])  # i (1 - g^2)
            i[part].addcmul_(i[part], i[part], value=-1).mul_(kept_g)  # g i (1 - i)
        through_h = c
        scale = pre
        rows = seed.size(1)
        sink = InputGradients(steps, (reads, rows), gates, weights.input, sum_reads=sum_reads)
        # Per step, every tensor is written into memory made once, in place or with out=: allocating each step's few
        # small results cost more than their arithmetic. Views made once per step row or buffer slot (one call each):
        # the gate gradients [dc s_i, dc s_f, dc s_g, dh s_o] are two products into a slot seen as (B, k, 4, H).
        through_rows, forget_rows = (x.unsqueeze(2).unbind(0) for x in (through_h, forget))  # (B, 1, H) each
        scale4 = scale.view(steps, reads, 1, 4, hidden)
        cell_scales, out_scales = scale4[:, :, :, :3].unbind(0), scale4[:, :, :, 3].unbind(0)  # (B, 1, 3, H), (B, 1, H)
        slots4 = [slot.view(reads, rows, 4, hidden) for slot in sink.slots]
        cell_slots, out_slots = [slot[:, :, :3] for slot in slots4], [slot[:, :, 3] for slot in slots4]
        flat_slots = [slot.view(-1, gates) for slot in sink.slots]
        injected_rows = step_rows(injected)
        dh = seed[..., :hidden].clone(memory_format=torch.contiguous_format)  # (B, k, H)
        dc = seed[..., hidden:].clone(memory_format=torch.contiguous_format)
        dc_wide, dh_flat = dc.unsqueeze(2), dh.view(-1, hidden)  # (B, k, 1, H) and (B k, H): views of the two
        for t in range(steps - 1, -1, -1):
            j = sink.slot(t)
            if injected_rows is not None:
                dh.add_(injected_rows[t])
            dc.addcmul_(dh, through_rows[t])
            torch.mul(dc_wide, cell_scales[t], out=cell_slots[j])
            torch.mul(dh, out_scales[t], out=out_slots[j])
            dc.mul_(forget_rows[t])
            back(flat_slots[j], dh_flat)  # dh for step t - 1, in place
            sink.written(t)
        return sink.result
