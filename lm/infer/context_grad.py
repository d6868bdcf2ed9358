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
layer's input part is gathered from the engine's per-unit table), and each backward
step is a few element-wise operations and one (k, G) x (G, H) product with
the recurrent weight, every one written in place or into memory made once
before the loop (a fresh small tensor per operation cost about as much as
its arithmetic; `lm/infer/packed.py`: `product_into`). Measured on the default
model (LSTM 1x512) for a 1,922-unit text and k = 5: 546 ms, the read
included, against 769 ms for autograd through five copies (2 CPU cores).
The per-step product is the floor: 10.5 MFLOP, about 120 us here, against
about 60 us per step for the batch-1 read. The result equals autograd's to
float32 rounding (tests/test_context_grad.py checks every cell type with two
layers).

Integrated gradients needs the same for B reads of one length (the text's
embeddings scaled towards a baseline): `trace_embeddings` reads them as one
batch and `backward_reads` carries k seeds per read back, all B x k side by
side, so each backward step is still one product, (B k, G) x (G, H), and
the per-step Python work is the same as for one read.

Each cell family's backward lives beside its forward equations in
`lm/cells` (torch.nn's equations: gate order i, f, g, o for the LSTM; r, z,
n for the GRU). Shapes: T context positions, k seeds, C a layer's input
width, H its hidden size, G = gates x H.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import torch
from torch import Tensor

from lm.cells import layer_weights
from lm.cells.base import BlockRows
from lm.infer.engine import StepEngine

__all__ = ["ContextTrace", "InputLine", "ReadsTrace", "backward_context", "backward_reads", "trace_context",
           "trace_embeddings"]


@dataclass
class ContextTrace:
    """What one read of a context leaves for the backward pass."""

    ids: Tensor  # (T,): the units read
    inputs: list[Tensor]  # per layer, its input (T, C): the embeddings for layer 0
    outputs: list[Tensor]  # per layer, its outputs h_1..h_T (T, H)
    final: Tensor  # (L, 1, S): the state after the context
    logits: Tensor  # (V,): the model's output after the last position


def trace_context(model, ids: Tensor) -> ContextTrace:
    """Read ids (T,) from a zero state in evaluation mode with the model's fused layers, keeping every layer's
    inputs and outputs."""
    if model.training:
        raise ValueError("trace_context needs the model in evaluation mode (no dropout)")
    with torch.inference_mode():
        x = model.embedding(ids[None])  # (1, T, E)
        state = model.init_state(1)
        inputs, outputs, finals = [], [], []
        for index in range(model.config.num_layers):
            inputs.append(x[0])
            x, final, _ = model.run_layer(index, x, state[index])  # (1, T, H), (1, S)
            outputs.append(x[0])
            finals.append(final)
        logits = model.output(x[0, -1])  # (V,)
    return ContextTrace(ids, inputs, outputs, torch.stack(finals), logits)


class InputLine(NamedTuple):
    """Reads whose embeddings are points on one line: read b's are start + alphas[b] * direction."""

    start: Tensor  # (T, E)
    direction: Tensor  # (T, E)
    alphas: Tensor  # (B,)


@dataclass
class ReadsTrace:
    """What B reads of one length, read side by side from input embeddings, leave for the backward pass."""

    inputs: list[Tensor]  # per layer, its input (T, B, C), time first (a view): the embeddings for layer 0
    outputs: list[Tensor]  # per layer, its outputs h_1..h_T (T, B, H)
    final: Tensor  # (L, B, S): each read's state after it
    logits: Tensor  # (B, V): the model's output after each read's last position
    # When the reads' embeddings lie on one line (integrated gradients' path), the backward's first-layer input
    # part is two products, not B (`StepEngine.input_part_on_line`); inputs[0] must be those points.
    line: InputLine | None = None


def trace_embeddings(model, embeds: Tensor) -> ReadsTrace:
    """Read embeddings (B, T, E) from a zero state in evaluation mode with the model's fused layers, one batch,
    keeping every layer's inputs and outputs (time first). The inputs are views, not copies: the first layer's
    of `embeds` (which the trace keeps alive), each later layer's the layer below's outputs (integrated gradients'
    17 reads of 8,000 units: 142 MB a copy)."""
    if model.training:
        raise ValueError("trace_embeddings needs the model in evaluation mode (no dropout)")
    with torch.inference_mode():
        x = embeds
        state = model.init_state(embeds.size(0))
        inputs, outputs, finals = [], [], []
        for index in range(model.config.num_layers):
            inputs.append(outputs[-1] if outputs else x.transpose(0, 1))
            x, final, _ = model.run_layer(index, x, state[index])  # (B, T, H), (B, S)
            outputs.append(x.transpose(0, 1).contiguous())
            finals.append(final)
        logits = model.output(x[:, -1])  # (B, V)
    return ReadsTrace(inputs, outputs, torch.stack(finals), logits)


def backward_context(engine: StepEngine, trace: ContextTrace, seeds: Tensor,
                     on_top: Tensor | BlockRows | None = None) -> Tensor:
    """Gradients (k, T, E) with respect to the context's input embeddings, from seeds (L, k, S) on the final state
    and, when given, gradients `on_top` (T, k, H) on the top layer's outputs from whatever else read them (the
    continuous cache's keys: lm/infer/textcache.py), or a `BlockRows` of them as (T, 1, k, H).

    Each layer's backward is its cell family's (`Cell.backward` in `lm/cells`), top layer first; the
    engine supplies the W_hh products and the input products (from its input table for layer 0).
    """
    if isinstance(on_top, Tensor):
        on_top = on_top[:, None]  # (T, 1, k, H)
    grad = _backward(engine, trace.ids, [x[:, None] for x in trace.inputs], [h[:, None] for h in trace.outputs],
                     seeds[:, None], on_top)  # (T, 1, k, E)
    return grad[:, 0].transpose(0, 1)


def backward_reads(engine: StepEngine, trace: ReadsTrace, seeds: Tensor, on_top: Tensor | BlockRows | None = None,
                   sum_reads: bool = False) -> Tensor:
    """Gradients (B, k, T, E) with respect to each of B traced reads' input embeddings, from seeds (L, B, k, S) on
    their final states and, when given, gradients `on_top` (T, B, k, H) on their top layer's outputs (a tensor or
    `BlockRows`): the B x k
    gradients carried back side by side (`backward_context` for many reads). With `sum_reads`, only their sum over
    the B reads (1, k, T, E): the last product, gate gradients to input gradients, then runs once, not B times."""
    grad = _backward(engine, None, trace.inputs, trace.outputs, seeds, on_top, sum_reads,
                     trace.line)  # (T, B or 1, k, E)
    return grad.permute(1, 2, 0, 3)


def _backward(engine: StepEngine, ids: Tensor | None, inputs: list[Tensor], outputs: list[Tensor], seeds: Tensor,
              on_top: Tensor | BlockRows | None, sum_reads: bool = False, line: InputLine | None = None) -> Tensor:
    """The layers' backward, top first: inputs (T, B, C) and outputs (T, B, H) per layer, seeds (L, B, k, S), on_top
    (T, B, k, H) or None -> (T, B, k, E), or summed over the reads (T, 1, k, E) with `sum_reads`; `ids` (T,) when
    B = 1 and the inputs are those units' embeddings; `line` when the first layer's inputs lie on it."""
    model, cell = engine.model, engine.cell
    injected = on_top  # (T, B, k, C): the gradients on the layer's outputs from outside its recurrence
    with torch.no_grad():
        for index in reversed(range(model.config.num_layers)):
            seed = seeds[index].to(outputs[index].dtype)
            if index == 0 and line is not None:
                input_part = partial(engine.input_part_on_line, *line)
            else:
                input_part = partial(engine.input_part, index, ids, inputs[index])
            # Only the first layer's gradients may be summed over the reads: the layers above need each read's.
            injected = cell.backward(layer_weights(model.layers[index]), engine.recurrent_backward(index), input_part,
                                     outputs[index], seed, injected, sum_reads=sum_reads and index == 0)
    return injected
