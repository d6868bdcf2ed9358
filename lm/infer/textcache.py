"""The continuous cache over a request's own text (Grave, Joulin and Usunier 2017), in prediction.

lm/eval/cache.py scores a whole split with the cache; here the same mixture
enters every next-unit distribution a prediction reads. The keys are the
top-layer outputs h_i at the positions of the request's text, the values the
units that followed them; a distribution read at a state with top-layer
output q becomes

    p_cache(u) = sum over visible keys i with value u of softmax_i(theta * q . h_i)
    p(u)       = (1 - weight) * p_model(u) + weight * p_cache(u)

The text is read as a stream, as evaluation reads a split: a unit sequence
that the beam search or exact scoring reads past the context (the units that
spell a word) also joins the memory, so the state after " capit" is a query
against the context's keys and against the outputs after the context and
after " c", " ca", ... (their values: the units that followed them on that
path). A key is visible when it lies at most `window` positions before the
query. A row with no visible key (the empty context's first unit) is the
model's own distribution. Each mixed row is a normalised distribution: the
model's sums to 1 and so does the cache's.

`temperature` (when not 1) divides the model's logits before the mixture;
the cache's share is not tempered.

Nothing is kept across requests: a `Memory` belongs to one context state
(the prefix cache keeps it beside the state, see `Predictor.context_state`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from lm.config import CacheConfig
from lm.infer.reads import StepRows

__all__ = ["Memory", "TextCache", "empty_memory", "read_memory"]


class Memory(NamedTuple):
    """Keys and values of the cache: top-layer outputs and the unit that followed each, oldest first."""

    keys: Tensor  # (n, H) float32
    values: Tensor  # (n,) long

    def extended(self, keys: Tensor, values: Tensor, window: int | None = None) -> Memory:
        """This memory followed by `keys` (m, H) and `values` (m,), keeping only the last `window` entries."""
        keys, values = torch.cat([self.keys, keys]), torch.cat([self.values, values])
        if window is not None and len(values) > window:
            keys, values = keys[-window:], values[-window:]
        return Memory(keys, values)


def empty_memory(hidden_dim: int) -> Memory:
    """A memory with no position in it."""
    return Memory(torch.empty(0, hidden_dim), torch.empty(0, dtype=torch.long))


def read_memory(memory: Memory | None, previous: Tensor | None, outputs: Tensor, inputs: list[int],
                window: int) -> Memory:
    """The memory after reading `inputs` whose top-layer outputs are `outputs` (T, H).

    From a zero state (`memory` None) the first input is the leading line break: output t is followed by
    input t + 1. After an earlier read, `previous` (H,) is that read's last output, now followed by inputs[0].
    """
    if memory is None:
        return Memory(outputs[:-1], torch.tensor(inputs[1:], dtype=torch.long)).extended(
            outputs[:0], torch.empty(0, dtype=torch.long), window)
    assert previous is not None
    keys = torch.cat([previous[None], outputs[:-1]])  # (T, H)
    return memory.extended(keys, torch.tensor(inputs, dtype=torch.long), window)


class TextCache:
    """One request's cache: the settings, the context's memory, and how a batch of read rows is mixed."""

    def __init__(self, settings: CacheConfig, memory: Memory, hidden_dim: int, ends_mask: Tensor):
        self.settings = settings
        self.memory = memory  # the context's keys and values (the last `window` at most)
        self.hidden_dim = hidden_dim
        self.ends_mask = ends_mask  # (V,) float64: units that begin with a word boundary
        self.empty = empty_memory(hidden_dim)

    def path_after(self, parent: Memory, parent_state: Tensor, unit: Tensor) -> Memory:
        """The path memory of a sequence one unit (`unit`, a (1,) tensor) past its parent, whose state (L, S) is
        `parent_state`."""
        return Memory(torch.cat([parent.keys, parent_state[-1, None, : self.hidden_dim]]), torch.cat([parent.values, unit]))

    def mix(self, rows: StepRows, paths: list[Memory]) -> StepRows:
        """The mixed rows: row i read at the end of a path past the context whose own keys are paths[i].

        Returns float64 log-probabilities in `scaled` with normalisers 0 (log P(u) = scaled[u]) and the
        boundary mass of the mixed distribution.
        """
        settings = self.settings
        queries = rows.states[-1, :, : self.hidden_dim]  # (N, H)
        count = queries.size(0)
        size = len(self.memory.values)
        depths = torch.tensor([len(path.values) for path in paths], dtype=torch.long)  # (N,)
        first_visible = size + depths - settings.window  # (N,): older keys are beyond the window
        scores = (settings.theta * (queries @ self.memory.keys.T)).double()  # (N, n)
        if int(first_visible.max()) > 0:
            scores.masked_fill_(torch.arange(size)[None, :] < first_visible[:, None], -math.inf)
        values = self.memory.values[None, :].expand(count, size)  # (N, n)
        longest = int(depths.max()) if count else 0
        if longest:
            path_keys = pad_sequence([path.keys for path in paths], batch_first=True)  # (N, M, H)
            path_values = pad_sequence([path.values for path in paths], batch_first=True)  # (N, M), 0 where padded
            path_scores = settings.theta * torch.einsum("nh,nmh->nm", queries, path_keys)
            place = torch.arange(longest)[None, :]
            visible = (place < depths[:, None]) & (size + place >= first_visible[:, None])
            scores = torch.cat([scores, path_scores.double().masked_fill_(~visible, -math.inf)], dim=1)
            values = torch.cat([values, path_values], dim=1)
        has_keys = (size + depths) > 0  # (N,): the nearest key is always within the window (window >= 1)
        votes = torch.softmax(scores, dim=-1).nan_to_num_(nan=0.0)  # rows without keys: all -inf -> nan -> 0
        # p_model as in Predictor._normalized (exponentials in float32, within an ulp), normalised in float64.
        scaled = torch.from_numpy(rows.scaled)  # (N, V) float32, tempered logits
        model = (scaled - scaled.amax(dim=-1, keepdim=True)).exp_().double()
        model /= model.sum(dim=-1, keepdim=True)  # (N, V) p_model
        cached = torch.zeros_like(model).scatter_add_(1, values, votes)  # (N, V) p_cache
        weight = has_keys.double()[:, None] * settings.weight  # (N, 1), float64: 0 where no key is visible
        mixed = model.mul_(1 - weight).add_(cached.mul_(weight))
        boundaries = torch.log(mixed @ self.ends_mask)
        return StepRows(rows.states, rows.logits, torch.log_(mixed).numpy(), np.zeros(count), boundaries.numpy())
