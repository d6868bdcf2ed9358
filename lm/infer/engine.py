"""The CPU step engine: a model's cells one unit at a time, fast, for prediction and attribution.

A search steps many short unit sequences (a beam, the spellings of a word)
and attribution steps its word paths with gradients for the states; for a
single step the fused torch layers, built for long sequences, are several
times slower on a CPU than the equations written out. The engine runs them
with two speed tricks, each behind one method:

- prepacked weights (`lm/infer/packed.py`): every product of a step uses a
  weight packed once for oneDNN (`packed`);
- the input table: the first layer's input product for every unit,
  embedding(u) W_ih^T + biases (V, G), gathered instead of multiplied
  (`input_table`; a third of the default LSTM's gate arithmetic per step).

Both are kept until a weight they were made from changes (an optimiser
step, a reload): each use compares the source tensors' identity, storage
and version counter with those they were made from.

Two numerical modes, each its own method:
- `step` / `read_steps`: inference, no autograd at all;
- `differentiable_step` / `differentiable_cells`: the same products with
  autograd for their inputs alone (the weights constants), so gradients
  reach the states but never the weights: what attribution needs.

Assumes: the model is in evaluation mode (no dropout), float32, on the CPU.
The equations themselves are the cell family's (`lm/cells`); the portable
reference for them is `RNNLanguageModel.step`.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from lm.cells import layer_weights
from lm.infer.packed import constant_weight_linear, packed_linear, product_into
from lm.model import RNNLanguageModel

__all__ = ["INPUT_TABLE_BYTES", "StepEngine"]

# The first layer's input product for every unit, (V, G), is kept when it fits in this many bytes
# (32 MB for the default model: 4,000 units x 2,048 gate rows).
INPUT_TABLE_BYTES = 256 * 2**20


class StepEngine:
    """Single steps of one model on the CPU, with prepacked weights and the per-unit input table."""

    def __init__(self, model: RNNLanguageModel):
        self.model = model
        self.cell = model.cell
        self._packed: dict[str, tuple[tuple, object]] = {}  # name -> (sources' key, packed product or table)

    def step(self, ids: Tensor, state: Tensor, parents: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One step without autograd: ids (N,), state (L, N, S) -> logits (N, V), new state (L, N, S).

        With `parents` (N,), state holds M states (L, M, S) and input i continues
        state parents[i]: the same result as state[:, parents], but each layer's
        recurrent product runs once per distinct state, not once per input (a
        search steps many units from the same state).
        """
        if not torch.is_inference_mode_enabled():  # searches call this thousands of times, already in inference mode
            with torch.inference_mode():
                return self.step(ids, state, parents)
        new_state = self._cell_step(state, False, ids=ids, parents=parents)
        return self.output(new_state[-1, :, : self.model.config.hidden_dim]), new_state

    def differentiable_step(self, ids: Tensor, state: Tensor, parents: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """`step` with autograd for the state: gradients reach `state` (and nothing else; the weights and the
        input table are constants). Call with gradients enabled."""
        new_state = self.differentiable_cells(ids, state, parents)
        return self.output(new_state[-1, :, : self.model.config.hidden_dim], differentiable=True), new_state

    def differentiable_cells(self, ids: Tensor, state: Tensor, parents: Tensor | None = None) -> Tensor:
        """`differentiable_step`'s new state alone, without the output layer: for callers that need no logits
        after this step, or that put many steps' states through the output layer in one product."""
        return self._cell_step(state, True, ids=ids, parents=parents)

    def read_steps(self, ids: Tensor, state: Tensor) -> Tensor:
        """The state (L, N, S) after reading ids (N, T) one cell step at a time, without autograd.

        For the few units of a word typed after a cached prefix this beats the
        fused layers, whose set-up costs about as much as several steps.
        """
        with torch.inference_mode():
            for t in range(ids.size(1)):
                state = self._cell_step(state, False, ids=ids[:, t])
            return state

    def read_states(self, ids: Tensor, state: Tensor) -> Tensor:
        """Every state along a read, without autograd: (T, L, N, S), the state after each of ids (N, T) from `state`
        (L, N, S), one cell step at a time (what `read_steps` computes, every step kept)."""
        with torch.inference_mode():
            states = []
            for t in range(ids.size(1)):
                state = self._cell_step(state, False, ids=ids[:, t])
                states.append(state)
            return torch.stack(states) if states else state.new_zeros(0, *state.shape)

    def output(self, x: Tensor, differentiable: bool = False) -> Tensor:
        """Logits (N, V) from top-layer features (N, H) through prepacked products (the model's own output layer
        for an adaptive softmax); `differentiable` as in `differentiable_step`."""
        model = self.model
        if model.adaptive is not None:
            return model.output(x)
        projection, decoder = model.projection, model.decoder
        if projection is not None:
            x = self._linear("projection", (projection.weight, projection.bias), lambda: projection.weight,
                             lambda: projection.bias, differentiable)(x)
        return self._linear("decoder", (decoder.weight, decoder.bias), lambda: decoder.weight, lambda: decoder.bias,
                            differentiable)(x)

    def output_from_state(self, state: Tensor, differentiable: bool = False) -> Tensor:
        """Logits (N, V) after the step that left `state` (L, N, S); `differentiable` as in `output`."""
        return self.output(state[-1, :, : self.model.config.hidden_dim], differentiable)

    def input_table(self) -> Tensor | None:
        """The first layer's input product for every unit, embedding(v) @ W_ih.T + the cell's input biases (V, G),
        or None when it would exceed INPUT_TABLE_BYTES. Kept until the weights change.

        A step then gathers N rows of it instead of streaming W_ih through a product.
        """
        model = self.model
        weights, embedding = layer_weights(model.layers[0]), model.embedding.weight
        if embedding.size(0) * weights.input.size(0) * embedding.element_size() > INPUT_TABLE_BYTES:
            return None

        def build() -> Tensor:
            with torch.no_grad():
                return torch.nn.functional.linear(embedding, weights.input, self.cell.input_bias(weights))

        return self.packed("input_table", (embedding, weights.input, weights.input_bias, weights.recurrent_bias), build)

    def input_part(self, index: int, ids: Tensor | None, inputs: Tensor) -> Tensor:
        """Layer `index`'s input product for whole reads, x_t @ W_ih.T + the cell's input biases (T, B, G), from
        their inputs (T, B, C); layer 0 gathers the rows of the units `ids` (T,) from the input table when there is
        one (B = 1; ids None: the inputs are not units' embeddings, so always the product)."""
        table = self.input_table() if index == 0 and ids is not None else None
        if table is not None:
            return table.index_select(0, ids).unsqueeze(1)
        weights = layer_weights(self.model.layers[index])
        return torch.nn.functional.linear(inputs, weights.input, self.cell.input_bias(weights))

    def input_part_on_line(self, start: Tensor, direction: Tensor, alphas: Tensor) -> Tensor:
        """The first layer's input part (T, B, G), fresh, for B reads whose inputs are points on one line,
        start + alphas[b] * direction (start and direction (T, E), alphas (B,)): what `input_part(0, None, inputs)`
        gives for those inputs (T, B, E), to float32 rounding.

        It assumes the reads lie on that line (integrated gradients' path from a baseline to the text): the
        product is affine in alpha, x W^T + b = (start W^T + b) + alpha (direction W^T), so two (T, E) x (E, G)
        products and one pass over the (T, B, G) result replace B products (16 reads of 1,300 units: 0.07 s
        against 0.20 s on 2 cores)."""
        weights = layer_weights(self.model.layers[0])
        at_start = torch.nn.functional.linear(start, weights.input, self.cell.input_bias(weights))  # (T, G)
        along = torch.nn.functional.linear(direction, weights.input)  # (T, G)
        part = torch.mul(along.unsqueeze(1), alphas.to(along.dtype)[None, :, None])  # (T, B, G)
        return part.add_(at_start.unsqueeze(1))

    def recurrent_backward(self, index: int) -> Callable[..., Tensor]:
        """back(g, out=None): g (k, G) -> g @ W_hh (k, H) for layer `index`, into `out` when given
        (`packed.product_into`): a backward pass through a long read makes thousands of these products, each
        written into the same memory."""
        weight = layer_weights(self.model.layers[index]).recurrent
        return self.packed(f"backward{index}", (weight,), lambda: product_into(weight))

    def packed(self, name: str, sources: tuple[Tensor, ...], build):
        """`build()`, made from `sources` and kept under `name` until one of them changes (an optimiser step, a
        reload): checked by each tensor's identity, storage and version counter."""
        key = tuple((id(t), t.data_ptr(), t._version) for t in sources)
        entry = self._packed.get(name)
        if entry is None or entry[0] != key:
            entry = (key, build())
            self._packed[name] = entry
        return entry[1]

    def _linear(self, name: str, sources: tuple[Tensor, ...], weight, bias, differentiable: bool):
        """x -> x @ weight().T + bias(), prepacked, or prepacked both ways with autograd for x alone
        (`differentiable`); both kept until a source changes."""
        forward = self.packed(name, sources, lambda: packed_linear(weight(), bias()))
        if not differentiable:
            return forward
        backward = self.packed(f"{name}^T", sources, lambda: packed_linear(weight().t(), None))
        return lambda x: constant_weight_linear(x, forward, backward)

    def _cell_step(self, state: Tensor, differentiable: bool, ids: Tensor, parents: Tensor | None = None) -> Tensor:
        """Every layer's cell once on unit ids (N,): state (L, N, S) -> new state (L, N, S), or with `parents` (N,)
        from state (L, M, S) as `step` describes.

        The first layer's input product comes from `input_table` when there is
        one (the units are then never embedded). For cells that fuse their
        products (every bias with the input part), the other layers compute
        [x, h] (N, C + H) against [W_ih, W_hh] (G, C + H) in one product.
        """
        model, cell = self.model, self.cell
        hidden = model.config.hidden_dim
        table = self.input_table()
        x = model.embedding(ids) if table is None else None
        finals = []
        last = len(model.layers) - 1
        wide = cell.state_factor > 1
        for index, layer in enumerate(model.layers):
            h = state[index, :, :hidden]  # (N, H), or (M, H) with parents
            w = layer_weights(layer)
            if cell.fuses_products and parents is None and (index > 0 or table is None):
                gates = self._linear(f"gates{index}", tuple(w), lambda: torch.cat([w.input, w.recurrent], dim=1),
                                     lambda: cell.input_bias(w), differentiable)
                from_x, from_h = gates(torch.cat([x, h], dim=1)), None
            else:
                if index == 0 and table is not None:
                    from_x = table.index_select(0, ids)  # (N, G)
                else:
                    from_x = self._linear(f"input{index}", (w.input, w.input_bias, w.recurrent_bias), lambda: w.input,
                                          lambda: cell.input_bias(w), differentiable)(x)
                recurrent_bias = cell.recurrent_bias(w)
                recurrent_sources = (w.recurrent,) if recurrent_bias is None else (w.recurrent, recurrent_bias)
                from_h = self._linear(f"recurrent{index}", recurrent_sources, lambda: w.recurrent,
                                      lambda: recurrent_bias, differentiable)(h)
                if parents is not None:  # from each parent to its inputs
                    from_h = from_h.index_select(0, parents)
            final = cell.step(from_x, from_h, h, state[index, :, hidden:] if wide else None, parents)  # (N, S)
            if index < last:
                x = final[:, :hidden]  # the next layer's input
            finals.append(final)
        return finals[0].unsqueeze(0) if len(finals) == 1 else torch.stack(finals)
