"""The recurrent language model: embedding, stacked RNN/LSTM/GRU layers, softmax.

Tensor layout, used everywhere in Reach:
- unit ids: (B, T), batch first;
- embeddings and layer outputs: (B, T, C);
- logits: (B, T, V);
- carried state: (L, B, S), one row per layer, where S is the cell's state
  width (`lm/cells`): the hidden size H, or 2H for an LSTM with h in the
  first half and c in the second. One tensor for every cell keeps
  detaching, saving and slicing the state uniform.

This module is the portable network only: it runs on any device, knows no
loss, reads no files and uses no CPU-only kernels. The cell equations come
from the cell's family (`lm/cells`); the fast CPU single step used for
prediction and attribution is `lm/infer/engine.py`.

Regularisation follows AWD-LSTM (Merity, Keskar and Socher 2017): locked
(variational) dropout whose mask is shared across time steps, embedding
dropout that removes whole units, and DropConnect on the hidden-to-hidden
weights. All of them are off in `eval()` mode.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from lm.cells import RECURRENT_WEIGHT, get_cell, layer_weights
from lm.config import ModelConfig

__all__ = ["RNNLanguageModel", "count_parameters"]


def locked_dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Dropout with one mask per sequence, shared by all its time steps. x: (B, T, C)."""
    if not training or p == 0.0:
        return x
    mask = x.new_empty(x.size(0), 1, x.size(2)).bernoulli_(1 - p).div_(1 - p)  # (B, 1, C)
    return x * mask


def count_parameters(model: nn.Module) -> int:
    """Number of distinct trainable parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# cuDNN's fused RNN wants a layer's weights in one flat buffer and warns at every call when they are not. With
# DropConnect W_hh is a fresh tensor at every forward, so the weights cannot be in that buffer: cuDNN copies them
# into a new one (the size of the layer's weights, once per call), which is the price of a new mask per call.
_NOT_FLAT = "RNN module weights are not part of single contiguous chunk of memory"


def _call_with_recurrent(layer: nn.Module, recurrent: Tensor, inputs: Tensor, init):
    """Run `layer` with `recurrent` in place of its W_hh (the cuDNN flat-weights warning, expected here, silenced)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_NOT_FLAT, category=UserWarning)
        return functional_call(layer, {RECURRENT_WEIGHT: recurrent}, (inputs, init))


class RNNLanguageModel(nn.Module):
    """Predicts the next unit at every position; `forward` returns logits and the final state."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.vocab_size < 2:
            raise ValueError("ModelConfig.vocab_size must be set from the tokenizer before building a model")
        self.config = config
        self.cell = get_cell(config.cell)  # the cell family: its layer, state layout and equations
        hidden = config.hidden_dim
        self.embedding = nn.Embedding(config.vocab_size, config.embed_dim)
        self.layers = nn.ModuleList(
            self.cell.make_layer(config.embed_dim if index == 0 else hidden, hidden)
            for index in range(config.num_layers)
        )
        out_dim = hidden
        self.projection: nn.Linear | None = None
        if config.tie_weights and hidden != config.embed_dim:
            self.projection = nn.Linear(hidden, config.embed_dim)
        if config.tie_weights:
            out_dim = config.embed_dim
        self.decoder: nn.Linear | None = None
        self.adaptive: nn.AdaptiveLogSoftmaxWithLoss | None = None
        if config.adaptive_cutoffs:
            # Frequent units get a full-width output, rare ones narrower clusters:
            # most of the softmax cost goes (Grave et al. 2017).
            self.adaptive = nn.AdaptiveLogSoftmaxWithLoss(out_dim, config.vocab_size, list(config.adaptive_cutoffs),
                                                          div_value=config.adaptive_div)
        else:
            self.decoder = nn.Linear(out_dim, config.vocab_size)
        self._init_weights()
        if config.tie_weights:
            # Press and Wolf 2017; Inan et al. 2017: one matrix for input and output.
            self.decoder.weight = self.embedding.weight

    def _init_weights(self) -> None:
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        if self.decoder is not None:
            nn.init.zeros_(self.decoder.bias)
            if not self.config.tie_weights:
                nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        for layer in self.layers:
            self.cell.init_layer(layer, self.config.hidden_dim)

    def init_state(self, batch_size: int) -> Tensor:
        """The zero state, (L, B, S)."""
        weight = self.embedding.weight
        return weight.new_zeros(self.config.num_layers, batch_size, self.config.state_dim)

    def embed(self, ids: Tensor) -> Tensor:
        """Embeddings of unit ids, (B, T) -> (B, T, E), with embedding dropout when training."""
        p = self.config.embed_dropout
        if not self.training or p == 0.0:
            return self.embedding(ids)
        weight = self.embedding.weight
        mask = weight.new_empty(weight.size(0), 1).bernoulli_(1 - p).div_(1 - p)  # (V, 1)
        return F.embedding(ids, weight * mask)

    def run_layer(self, index: int, x: Tensor, state: Tensor, lengths: Tensor | None = None,
                   split_at: int | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        """One recurrent layer over (B, T, C) from state (B, S): outputs, final state, and the state after
        `split_at` steps (None without `split_at`).

        With `lengths` (B,), row b is only `lengths[b]` steps long (right-padded)
        and its final state is the one after its last real step.
        """
        layer, cell, hidden = self.layers[index], self.cell, self.config.hidden_dim
        if lengths is not None:
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            out, final = layer(packed, cell.to_torch_state(state, hidden))
            out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.size(1))
            return out, cell.from_torch_state(final, hidden), None
        run = layer
        p = self.config.weight_dropout
        if self.training and p > 0.0:
            # DropConnect (Wan et al. 2013) on W_hh, one mask per forward call.
            dropped = F.dropout(layer_weights(layer).recurrent, p=p, training=True)
            run = lambda inputs, init: _call_with_recurrent(layer, dropped, inputs, init)  # noqa: E731
        if split_at is None:
            out, final = run(x, cell.to_torch_state(state, hidden))
            return out, cell.from_torch_state(final, hidden), None
        head, middle = run(x[:, :split_at], cell.to_torch_state(state, hidden))
        middle = cell.from_torch_state(middle, hidden)
        tail, final = run(x[:, split_at:], cell.to_torch_state(middle, hidden))
        return torch.cat([head, tail], dim=1), cell.from_torch_state(final, hidden), middle

    def step(self, ids: Tensor, state: Tensor, parents: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One time step in evaluation mode, with autograd everywhere: ids (N,), state (L, N, S) -> logits (N, V),
        new state (L, N, S). With `parents` (N,), state holds M states (L, M, S) and input i continues
        state[:, parents[i]].

        The reference single step, on any device; the CPU inference engine
        (`lm/infer/engine.py`) computes the same equations faster.
        """
        if parents is not None:
            state = state.index_select(1, parents)
        hidden, cell = self.config.hidden_dim, self.cell
        x = self.embedding(ids)  # (N, E)
        finals = []
        for index, layer in enumerate(self.layers):
            weights = layer_weights(layer)
            h = state[index, :, :hidden]  # (N, H)
            from_x = torch.addmm(weights.input_bias, x, weights.input.t())  # (N, G)
            from_h = torch.addmm(weights.recurrent_bias, h, weights.recurrent.t())
            final = cell.step(from_x, from_h, h, state[index, :, hidden:] if cell.state_factor > 1 else None, None)  # (N, S)
            x = final[:, :hidden]
            finals.append(final)
        return self.output(x), torch.stack(finals)

    def output(self, x: Tensor) -> Tensor:
        """Logits over units from top-layer features (..., H). With an adaptive softmax they are
        log-probabilities already (log_softmax leaves them unchanged)."""
        if self.projection is not None:
            x = self.projection(x)  # (..., E)
        if self.adaptive is not None:
            return self.adaptive.log_prob(x.reshape(-1, x.size(-1))).view(*x.shape[:-1], -1)
        return self.decoder(x)

    def output_from_state(self, state: Tensor) -> Tensor:
        """Logits (N, V) after the step that left `state` (L, N, S): the top layer's output is its h."""
        return self.output(state[-1, :, : self.config.hidden_dim])

    def target_logprobs(self, x: Tensor, targets: Tensor) -> Tensor:
        """log P(target) at each position from features (B, T, H) and targets (B, T); cheap with an adaptive softmax."""
        if self.projection is not None:
            x = self.projection(x)
        if self.adaptive is not None:
            return self.adaptive(x.reshape(-1, x.size(-1)), targets.reshape(-1)).output.view(targets.shape)
        logits = self.decoder(x)
        return -F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none").view(targets.shape)

    def features(self, ids: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """Top-layer outputs (B, T, H) and the final state (L, B, S) after ids (B, T): `forward` without the output
        layer, for evaluation (call in `eval()` mode)."""
        x = self.embed(ids)
        finals = []
        for index in range(self.config.num_layers):
            x, final, _ = self.run_layer(index, x, state[index])  # (B, T, H), (B, S)
            finals.append(final)
        return x, torch.stack(finals)

    def forward(self, ids: Tensor | None = None, state: Tensor | None = None, *, embeds: Tensor | None = None,
                lengths: Tensor | None = None, split_at: int | None = None, targets: Tensor | None = None,
                score_from: int = 0):
        """Logits (B, T, V) and final state (L, B, S) from ids (B, T) or embeddings (B, T, E).

        `lengths` (B,) marks right-padded rows: each row's final state is taken after its own last step.
        With `split_at` (0 < split_at < T), also returns the state after that many steps, from the
        same pass (one dropout mask), as a third value: TBPTT(k1, k2) carries it to the next window.
        Scores only positions score_from.. (logits (B, T - score_from, V)): attribution needs only the
        last one. With `targets` (B, T - score_from), returns log P(target) there instead of logits:
        training needs no more, and an adaptive softmax then skips most of its work.
        """
        if embeds is None:
            if ids is None:
                raise ValueError("forward needs ids or embeds")
            embeds = self.embed(ids)
        if state is None:
            state = self.init_state(embeds.size(0))
        x = locked_dropout(embeds, self.config.input_dropout, self.training)  # (B, T, E)
        finals, middles = [], []
        for index in range(self.config.num_layers):
            x, final, middle = self.run_layer(index, x, state[index], lengths, split_at)  # (B, T, H), (B, S)
            x = locked_dropout(x, self.config.dropout, self.training)
            finals.append(final)
            middles.append(middle)
        scores = self.output(x[:, score_from:]) if targets is None else self.target_logprobs(x[:, score_from:], targets)
        if split_at is not None:
            return scores, torch.stack(finals), torch.stack(middles)
        return scores, torch.stack(finals)
