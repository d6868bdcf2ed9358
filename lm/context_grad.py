"""Gradients of several objectives with respect to every input of one long context, by a hand-written backward pass.

Attribution needs, for each of k predicted words, the gradient of its
log-probability with respect to every input embedding of the text. Those k
objectives depend on the text only through the state after it, so the work
splits in two:

1. `trace_context` reads the text once, at batch size 1, with the model's own
   fused layers (no autograd), and keeps each layer's inputs and outputs;
2. `backward_context` carries k seed gradients (d objective_j / d final state,
   which autograd gives cheaply from the short word paths) back through the
   recurrence to every input, all k side by side.

Why not autograd through the context: it reads the text k times side by
side with grad enabled and calls `backward`, while prediction has already
read it once. Here that one read is reused, the gate activations are
recomputed from its outputs in one large matrix product (the first
layer's input part is gathered from the model's per-unit table), and each backward
step is a few element-wise operations and one (k, G) x (G, H) product with
the recurrent weight prepacked (`lm/fastlinear.py`). Measured on the default
model (LSTM 1x512) for a 1,922-unit text and k = 5: 546 ms, the read
included, against 769 ms for autograd through five copies (2 CPU cores).
The per-step product is the floor: 10.5 MFLOP, about 120 us here, against
about 60 us per step for the batch-1 read. The result equals autograd's to
float32 rounding (tests/test_context_grad.py checks every cell type with two
layers).

Cell equations are torch.nn's (gate order i, f, g, o for the LSTM; r, z, n
for the GRU). Shapes: T context positions, k seeds, C a layer's input width,
H its hidden size, G = gates x H.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from lm.fastlinear import packed_linear

__all__ = ["ContextTrace", "backward_context", "trace_context"]


@dataclass
class ContextTrace:
    """What one read of a context leaves for the backward pass."""

    ids: Tensor  # (T,): the units read
    inputs: list[Tensor]  # per layer, its input (T, C): the embeddings for layer 0
    outputs: list[Tensor]  # per layer, its outputs h_1..h_T (T, H)
    final: Tensor  # (L, 1, S): the state after the context
    logits: Tensor  # (V,): the model's output after the last position


def trace_context(model, ids: Tensor) -> ContextTrace:
    """Read ids (T,) from a zero state in evaluation mode, keeping every layer's inputs and outputs."""
    if model.training:
        raise ValueError("trace_context needs the model in evaluation mode (no dropout)")
    with torch.inference_mode():
        x = model.embedding(ids[None])  # (1, T, E)
        state = model.init_state(1)
        inputs, outputs, finals = [], [], []
        for index in range(model.config.num_layers):
            inputs.append(x[0])
            x, final, _ = model._run_layer(index, x, state[index])  # (1, T, H), (1, S)
            outputs.append(x[0])
            finals.append(final)
        logits = model.output(x[0, -1])  # (V,)
    return ContextTrace(ids, inputs, outputs, torch.stack(finals), logits)


def _product_with(model, index: int) -> Callable[[Tensor], Tensor]:
    """x (k, G) -> x @ W_hh for layer `index`'s recurrent weight (G, H), prepacked: a backward pass makes
    thousands of these products. Packed once per weight and kept on the model (packing costs a few ms)."""
    weight = model.layers[index].weight_hh_l0
    return model._packed(f"backward{index}", (weight,), lambda: packed_linear(weight.t(), None, rows=8))


class _InputGradients:
    """Collects d/d pre-activations step by step (latest first) and turns them into d/d inputs, a block at a time.

    Keeping every step's (k, G) row for one product at the end would write
    T x k x G floats to fresh memory (80 MB for 2,000 steps of a 512-unit
    LSTM), and page faults then cost more than the arithmetic. A block of
    `block` steps stays in cache; each full block becomes inputs' gradients
    with one (block x k, G) x (G, C) product.
    """

    def __init__(self, steps: int, rows: int, width: int, weight_ih: Tensor, block: int = 64):
        self.weight = weight_ih  # (G, C)
        self.block = min(block, steps)
        self.buffer = weight_ih.new_empty(self.block, rows, width)  # (block, k, G)
        self.slots = self.buffer.unbind(0)
        self.result = weight_ih.new_empty(steps, rows, weight_ih.size(1))  # (T, k, C)

    def row(self, t: int) -> Tensor:
        """Where step t's (k, G) gradients go."""
        return self.slots[t % self.block]

    def written(self, t: int) -> None:
        """Step t is in place; steps t..(the end of its block) are complete when t starts a block."""
        if t % self.block == 0:
            count = min(self.block, self.result.size(0) - t)
            done = self.buffer[:count]
            torch.mm(done.reshape(-1, done.size(2)), self.weight, out=self.result[t : t + count].view(-1, self.weight.size(1)))


def _input_part(model, index: int, trace: ContextTrace) -> Tensor:
    """Layer `index`'s input product for every position, x_t @ W_ih.T + biases (T, G), with the biases as
    RNNLanguageModel._input_table has them (b_ih, plus b_hh except for a GRU). Layer 0 gathers the rows
    from that table when the model keeps one, instead of a (T, C) x (C, G) product."""
    layer = model.layers[index]
    table = model._input_table() if index == 0 else None
    if table is not None:
        return table.index_select(0, trace.ids)
    bias = layer.bias_ih_l0 if model.config.cell == "gru" else layer.bias_ih_l0 + layer.bias_hh_l0
    return torch.addmm(bias, trace.inputs[index], layer.weight_ih_l0.t())


def _zeros_before(values: Tensor) -> Tensor:
    """values (T, D) shifted one step later, a zero row first: the previous step's values."""
    return torch.cat([values.new_zeros(1, values.size(1)), values[:-1]])


def _lstm_layer(layer, back, from_x: Tensor, h: Tensor, seed: Tensor, injected: Tensor | None) -> Tensor:
    """d/d inputs (T, k, C) of one LSTM layer, from its input product from_x (T, 4H; see `_input_part`),
    seeds (k, 2H) on (h_T, c_T) and injected (T, k, H) on its outputs."""
    hidden = h.size(1)
    h_prev = _zeros_before(h)
    pre = torch.addmm(from_x, h_prev, layer.weight_hh_l0.t())  # (T, 4H)
    i, f, g, o = pre.chunk(4, dim=-1)
    i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
    steps = h.size(0)
    c = torch.empty_like(h)  # the cell state, rebuilt: nn.LSTM returns only its last value
    running = h.new_zeros(hidden)
    update = i * g
    for update_t, forget_t, c_t in zip(update.unbind(0), f.unbind(0), c.unbind(0)):
        running = torch.addcmul(update_t, forget_t, running, out=c_t)
    tanh_c = c.tanh()
    through_h = o * (1 - tanh_c * tanh_c)  # d c_t / d h_t's path: dc += dh * o * tanh'(c)
    # d pre / d [c, c, c, h]: input, forget, cell and output gates.
    scale = torch.cat([g * i * (1 - i), _zeros_before(c) * f * (1 - f), i * (1 - g * g), tanh_c * o * (1 - o)], dim=-1)
    sink = _InputGradients(steps, seed.size(0), 4 * hidden, layer.weight_ih_l0)
    # Rows as views made in one call each: indexing in the loop would cost a Python call per tensor per step.
    through_rows, scale_rows, forget_rows = through_h.unbind(0), scale.unbind(0), f.unbind(0)
    injected_rows = injected.unbind(0) if injected is not None else None
    dh, dc = seed[:, :hidden], seed[:, hidden:]
    for t in range(steps - 1, -1, -1):
        if injected_rows is not None:
            dh = dh + injected_rows[t]
        dc = torch.addcmul(dc, dh, through_rows[t])
        step = torch.mul(torch.cat([dc, dc, dc, dh], dim=-1), scale_rows[t], out=sink.row(t))  # (k, 4H)
        dc = dc * forget_rows[t]
        dh = back(step)
        sink.written(t)
    return sink.result


def _gru_layer(layer, back, from_x: Tensor, h: Tensor, seed: Tensor, injected: Tensor | None) -> Tensor:
    """d/d inputs (T, k, C) of one GRU layer, from its input product from_x (T, 3H; see `_input_part`):
    h = (1 - z) n + z h_prev, n = tanh(x_n + r (W_hn h_prev + b_hn))."""
    hidden = h.size(1)
    h_prev = _zeros_before(h)
    from_h = torch.addmm(layer.bias_hh_l0, h_prev, layer.weight_hh_l0.t())
    xr, xz, xn = from_x.chunk(3, dim=-1)
    hr, hz, hn = from_h.chunk(3, dim=-1)
    r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    to_n = (1 - z) * (1 - n * n)  # dh -> d pre_n
    scale_x = torch.cat([to_n * hn * r * (1 - r), (h_prev - n) * z * (1 - z), to_n], dim=-1)  # dh -> d [pre_r, pre_z, pre_n]
    scale_h = torch.cat([scale_x[:, : 2 * hidden], to_n * r], dim=-1)  # the hidden side sees r * (W_hn h_prev)
    steps = h.size(0)
    sink = _InputGradients(steps, seed.size(0), 3 * hidden, layer.weight_ih_l0)
    x_rows, h_rows, z_rows = scale_x.unbind(0), scale_h.unbind(0), z.unbind(0)
    injected_rows = injected.unbind(0) if injected is not None else None
    dh = seed
    for t in range(steps - 1, -1, -1):
        if injected_rows is not None:
            dh = dh + injected_rows[t]
        wide = torch.cat([dh, dh, dh], dim=-1)  # (k, 3H)
        torch.mul(wide, x_rows[t], out=sink.row(t))
        dh = torch.addcmul(back(wide * h_rows[t]), dh, z_rows[t])
        sink.written(t)
    return sink.result


def _rnn_layer(layer, back, h: Tensor, seed: Tensor, injected: Tensor | None, relu: bool) -> Tensor:
    """d/d inputs (T, k, C) of one Elman layer: h = tanh or relu(W_ih x + W_hh h_prev + b)."""
    slope = (h > 0).to(h.dtype) if relu else 1 - h * h  # (T, H)
    steps = h.size(0)
    sink = _InputGradients(steps, seed.size(0), h.size(1), layer.weight_ih_l0)
    slope_rows = slope.unbind(0)
    injected_rows = injected.unbind(0) if injected is not None else None
    dh = seed
    for t in range(steps - 1, -1, -1):
        if injected_rows is not None:
            dh = dh + injected_rows[t]
        dh = back(torch.mul(dh, slope_rows[t], out=sink.row(t)))
        sink.written(t)
    return sink.result


def backward_context(model, trace: ContextTrace, seeds: Tensor) -> Tensor:
    """Gradients (k, T, E) with respect to the context's input embeddings, from seeds (L, k, S) on the final state."""
    cell = model.config.cell
    injected = None
    with torch.no_grad():
        for index in reversed(range(model.config.num_layers)):
            layer = model.layers[index]
            h, seed = trace.outputs[index], seeds[index].to(trace.final.dtype)
            back = _product_with(model, index)
            if cell == "lstm":
                # (T, k, C): the layer below's output gradients
                injected = _lstm_layer(layer, back, _input_part(model, index, trace), h, seed, injected)
            elif cell == "gru":
                injected = _gru_layer(layer, back, _input_part(model, index, trace), h, seed, injected)
            else:
                injected = _rnn_layer(layer, back, h, seed, injected, relu=cell == "rnn_relu")
    return injected.transpose(0, 1)
