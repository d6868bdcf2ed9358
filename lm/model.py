"""The recurrent language model: embedding, stacked RNN/LSTM/GRU layers, softmax.

Tensor layout, used everywhere in Reach:
- unit ids: (B, T), batch first;
- embeddings and layer outputs: (B, T, C);
- logits: (B, T, V);
- carried state: (L, B, S), one row per layer, where S is the hidden size H,
  or 2H for an LSTM with h in the first half and c in the second. One tensor
  for every cell keeps detaching, saving and slicing the state uniform.

Regularisation follows AWD-LSTM (Merity, Keskar and Socher 2017): locked
(variational) dropout whose mask is shared across time steps, embedding
dropout that removes whole units, and DropConnect on the hidden-to-hidden
weights. All of them are off in `eval()` mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from lm.config import ModelConfig
from lm.fastlinear import constant_weight_linear, packed_linear

__all__ = ["RNNLanguageModel", "count_parameters"]

# The first layer's input product for every unit, (V, G), is kept for step-by-step inference when it fits in this
# many bytes (32 MB for the default model: 4,000 units x 2,048 gate rows).
INPUT_TABLE_BYTES = 256 * 2**20

_RNN_CLASSES = {
    "rnn_tanh": lambda i, h: nn.RNN(i, h, nonlinearity="tanh", batch_first=True),
    "rnn_relu": lambda i, h: nn.RNN(i, h, nonlinearity="relu", batch_first=True),
    "lstm": lambda i, h: nn.LSTM(i, h, batch_first=True),
    "gru": lambda i, h: nn.GRU(i, h, batch_first=True),
}


def locked_dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Dropout with one mask per sequence, shared by all its time steps. x: (B, T, C)."""
    if not training or p == 0.0:
        return x
    mask = x.new_empty(x.size(0), 1, x.size(2)).bernoulli_(1 - p).div_(1 - p)  # (B, 1, C)
    return x * mask


def count_parameters(model: nn.Module) -> int:
    """Number of distinct trainable parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class RNNLanguageModel(nn.Module):
    """Predicts the next unit at every position; `forward` returns logits and the final state."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.vocab_size < 2:
            raise ValueError("ModelConfig.vocab_size must be set from the tokenizer before building a model")
        self.config = config
        hidden = config.hidden_dim
        self.embedding = nn.Embedding(config.vocab_size, config.embed_dim)
        self.layers = nn.ModuleList(
            _RNN_CLASSES[config.cell](config.embed_dim if index == 0 else hidden, hidden)
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
        if self.config.cell == "lstm":
            hidden = self.config.hidden_dim
            for layer in self.layers:
                # Forget-gate bias 1 (Jozefowicz et al. 2015): remember by default.
                nn.init.ones_(layer.bias_ih_l0[hidden : 2 * hidden])
                nn.init.zeros_(layer.bias_hh_l0[hidden : 2 * hidden])

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

    def _to_init(self, state: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """A (B, S) state row as nn.RNN/GRU's h0 or nn.LSTM's (h0, c0), each (1, B, H)."""
        if self.config.cell == "lstm":
            hidden = self.config.hidden_dim
            return state[:, :hidden].unsqueeze(0).contiguous(), state[:, hidden:].unsqueeze(0).contiguous()
        return state.unsqueeze(0).contiguous()

    def _from_final(self, final: Tensor | tuple[Tensor, Tensor]) -> Tensor:
        """nn.RNN/GRU's h_n or nn.LSTM's (h_n, c_n) as one (B, S) state row."""
        if self.config.cell == "lstm":
            return torch.cat([final[0][0], final[1][0]], dim=-1)
        return final[0]

    def _run_layer(self, index: int, x: Tensor, state: Tensor, lengths: Tensor | None = None,
                   split_at: int | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        """One recurrent layer over (B, T, C) from state (B, S): outputs, final state, and the state after
        `split_at` steps (None without `split_at`).

        With `lengths` (B,), row b is only `lengths[b]` steps long (right-padded)
        and its final state is the one after its last real step.
        """
        layer = self.layers[index]
        if lengths is not None:
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            out, final = layer(packed, self._to_init(state))
            out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.size(1))
            return out, self._from_final(final), None
        run = layer
        p = self.config.weight_dropout
        if self.training and p > 0.0:
            # DropConnect (Wan et al. 2013) on W_hh, one mask per forward call.
            dropped = F.dropout(layer.weight_hh_l0, p=p, training=True)
            run = lambda inputs, init: functional_call(layer, {"weight_hh_l0": dropped}, (inputs, init))  # noqa: E731
        if split_at is None:
            out, final = run(x, self._to_init(state))
            return out, self._from_final(final), None
        head, middle = run(x[:, :split_at], self._to_init(state))
        middle = self._from_final(middle)
        tail, final = run(x[:, split_at:], self._to_init(middle))
        return torch.cat([head, tail], dim=1), self._from_final(final), middle

    def step(self, ids: Tensor, state: Tensor, constant_weights: bool = False,
             parents: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One time step in evaluation mode: ids (N,), state (L, N, S) -> logits (N, V), new state (L, N, S).

        The cell equations written out (the same as torch.nn's), because for
        a single step they run several times faster on a CPU than the fused
        kernels, which are built for long sequences. Without autograd the
        products use prepacked weights (`lm/fastlinear.py`). With autograd and
        `constant_weights`, they do too, both ways: gradients reach the state
        and the embeddings but never the weights (what attribution needs).

        With `parents` (N,), state holds M states (L, M, S) and input i continues
        state parents[i]: the same result as state[:, parents], but each layer's
        recurrent product runs once per distinct state, not once per input (a
        search steps many units from the same state).
        """
        mode = "fast" if not torch.is_grad_enabled() else "constant" if constant_weights else "plain"
        new_state = self._cell_step(state, mode, ids=ids, parents=parents)
        return self.output(new_state[-1, :, : self.config.hidden_dim], mode), new_state

    def read_steps(self, ids: Tensor, state: Tensor) -> Tensor:
        """The state (L, N, S) after reading ids (N, T) one cell step at a time, without autograd.

        For the few units of a word typed after a cached prefix this beats the
        fused layers, whose set-up costs about as much as several steps.
        """
        for t in range(ids.size(1)):
            state = self._cell_step(state, "fast", ids=ids[:, t])
        return state

    def _input_table(self) -> Tensor | None:
        """The first layer's input product for every unit, embedding(v) @ W_ih.T + biases (V, G), or None when it
        would exceed INPUT_TABLE_BYTES. The biases are b_ih (a GRU's b_hh stays with its h product, inside r * hn)
        and, for the other cells, b_hh as well. Kept until the weights change.

        A step then gathers N rows of it instead of streaming W_ih through a product: for the default LSTM
        that is a third of each step's gate arithmetic.
        """
        layer, embedding = self.layers[0], self.embedding.weight
        if embedding.size(0) * layer.weight_ih_l0.size(0) * embedding.element_size() > INPUT_TABLE_BYTES:
            return None
        w_ih, b_ih, b_hh = layer.weight_ih_l0, layer.bias_ih_l0, layer.bias_hh_l0

        def build() -> Tensor:
            with torch.no_grad():
                bias = b_ih if self.config.cell == "gru" else b_ih + b_hh
                return F.linear(embedding, w_ih, bias)

        return self._packed("input_table", (embedding, w_ih, b_ih, b_hh), build)

    def _cell_step(self, state: Tensor, mode: str, ids: Tensor | None = None, x: Tensor | None = None,
                   parents: Tensor | None = None) -> Tensor:
        """Every layer's cell once on unit ids (N,) or embeddings x (N, E): state (L, N, S) -> new state (L, N, S),
        or with `parents` (N,) from state (L, M, S) as `step` describes.

        mode: "plain" (autograd everywhere), "fast" (no autograd, prepacked products) or "constant"
        (prepacked products with autograd for their inputs only; see `step`). Given ids, the fast modes take
        the first layer's input product from `_input_table` and never embed them; the gradient then reaches
        the state but not the embeddings, which is all "constant" promises.

        Each layer splits its pre-activations into an input part and a recurrent part, biases as in
        `_input_table`: both of them with the input part, except a GRU's b_hh, which r gates with the rest
        of the recurrent part.
        """
        hidden, cell = self.config.hidden_dim, self.config.cell
        if parents is not None and mode == "plain":
            state, parents = state.index_select(1, parents), None
        table = self._input_table() if mode != "plain" and ids is not None else None
        if table is None and x is None:
            x = self.embedding(ids)
        finals = []
        for index, layer in enumerate(self.layers):
            h = state[index, :, :hidden]  # (N, H), or (M, H) with parents
            w_ih, w_hh, b_ih, b_hh = layer.weight_ih_l0, layer.weight_hh_l0, layer.bias_ih_l0, layer.bias_hh_l0
            recurrent_bias = (b_hh,) if cell == "gru" else ()
            if mode == "plain":
                from_x, from_h = torch.addmm(b_ih, x, w_ih.t()), torch.addmm(b_hh, h, w_hh.t())
            elif cell != "gru" and parents is None and (index > 0 or table is None):
                # One product for both inputs: [x, h] (N, E + H) against [W_ih, W_hh] (G, E + H).
                gates = self._linear(f"gates{index}", (w_ih, w_hh, b_ih, b_hh), lambda: torch.cat([w_ih, w_hh], dim=1),
                                     lambda: b_ih + b_hh, mode)
                from_x, from_h = gates(torch.cat([x, h], dim=1)), None
            else:
                if index == 0 and table is not None:
                    from_x = table.index_select(0, ids)  # (N, G)
                else:
                    from_x = self._linear(f"input{index}", (w_ih, b_ih, b_hh), lambda: w_ih,
                                          lambda: b_ih if cell == "gru" else b_ih + b_hh, mode)(x)
                from_h = self._linear(f"recurrent{index}", (w_hh, *recurrent_bias), lambda: w_hh,
                                      lambda: recurrent_bias[0] if recurrent_bias else None, mode)(h)
            if parents is not None:  # from each parent to its inputs
                from_h = from_h.index_select(0, parents)
            if cell == "gru":
                if parents is not None:
                    h = h.index_select(0, parents)  # z keeps part of it
                xr, xz, xn = from_x.chunk(3, dim=-1)
                hr, hz, hn = from_h.chunk(3, dim=-1)
                r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
                n = torch.tanh(xn + r * hn)
                x = (1 - z) * n + z * h
                finals.append(x)
                continue
            pre = from_x if from_h is None else from_x + from_h  # (N, G)
            if cell == "lstm":
                c = state[index, :, hidden:]
                if parents is not None:
                    c = c.index_select(0, parents)
                i, f, g, o = pre.chunk(4, dim=-1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                x = torch.sigmoid(o) * torch.tanh(c)
                finals.append(torch.cat([x, c], dim=-1))
                continue
            x = torch.tanh(pre) if cell == "rnn_tanh" else torch.relu(pre)
            finals.append(x)
        return finals[0].unsqueeze(0) if len(finals) == 1 else torch.stack(finals)

    def _linear(self, name: str, sources: tuple[Tensor, ...], weight, bias, mode: str):
        """x -> x @ weight().T + bias(), prepacked ("fast"), or prepacked both ways with autograd for x
        alone ("constant"); both kept until a source changes."""
        forward = self._packed(name, sources, lambda: packed_linear(weight(), bias()))
        if mode == "fast":
            return forward
        backward = self._packed(f"{name}^T", sources, lambda: packed_linear(weight().t(), None))
        return lambda x: constant_weight_linear(x, forward, backward)

    def _packed(self, name: str, sources: tuple[Tensor, ...], build):
        """The prepacked linear map `build()` made from `sources`, rebuilt whenever one of them changes
        (an optimiser step, a reload)."""
        key = tuple((id(t), t.data_ptr(), t._version) for t in sources)
        cache = self.__dict__.setdefault("_packed_linears", {})
        entry = cache.get(name)
        if entry is None or entry[0] != key:
            entry = (key, build())
            cache[name] = entry
        return entry[1]

    def output(self, x: Tensor, mode: str = "plain") -> Tensor:
        """Logits over units from top-layer features (..., H). With an adaptive softmax they are
        log-probabilities already (log_softmax leaves them unchanged). mode "fast": inference with
        prepacked weights, for features (N, H); "constant": the same with autograd for x only
        (see `step`)."""
        if mode != "plain" and self.adaptive is None:
            projection, decoder = self.projection, self.decoder
            if projection is not None:
                x = self._linear("projection", (projection.weight, projection.bias), lambda: projection.weight,
                                 lambda: projection.bias, mode)(x)
            return self._linear("decoder", (decoder.weight, decoder.bias), lambda: decoder.weight, lambda: decoder.bias, mode)(x)
        if self.projection is not None:
            x = self.projection(x)  # (..., E)
        if self.adaptive is not None:
            return self.adaptive.log_prob(x.reshape(-1, x.size(-1))).view(*x.shape[:-1], -1)
        return self.decoder(x)

    def output_from_state(self, state: Tensor, mode: str = "plain") -> Tensor:
        """Logits (N, V) after the step that left `state` (L, N, S): the top layer's output is its h.
        `mode` as in `output`."""
        return self.output(state[-1, :, : self.config.hidden_dim], mode)

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
            x, final, _ = self._run_layer(index, x, state[index])  # (B, T, H), (B, S)
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
            x, final, middle = self._run_layer(index, x, state[index], lengths, split_at)  # (B, T, H), (B, S)
            x = locked_dropout(x, self.config.dropout, self.training)
            finals.append(final)
            middles.append(middle)
        scores = self.output(x[:, score_from:]) if targets is None else self.target_logprobs(x[:, score_from:], targets)
        if split_at is not None:
            return scores, torch.stack(finals), torch.stack(middles)
        return scores, torch.stack(finals)
