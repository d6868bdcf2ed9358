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

The votes (`cache_votes`) and the mixture (`mix_distributions`) are plain
differentiable torch functions: attribution (lm/infer/attribution.py) runs
the same code with gradients on the queries and the keys.

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

__all__ = ["Memory", "TextCache", "cache_votes", "empty_memory", "mix_distributions", "read_memory"]


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
        queries = rows.states[-1, :, : self.hidden_dim]  # (N, H)
        depths = torch.tensor([len(path.values) for path in paths], dtype=torch.long)  # (N,)
        path_keys = pad_sequence([path.keys for path in paths], batch_first=True)  # (N, M, H)
        path_values = pad_sequence([path.values for path in paths], batch_first=True)  # (N, M), 0 where padded
        votes, values = cache_votes(self.settings, queries, self.memory, path_keys, path_values, depths)
        mixed = mix_distributions(self.settings, torch.from_numpy(rows.scaled), votes, values, depths + len(self.memory.values) > 0)
        boundaries = torch.log(mixed @ self.ends_mask)
        return StepRows(rows.states, rows.logits, torch.log(mixed).numpy(), np.zeros(len(paths)), boundaries.numpy())


def cache_votes(settings: CacheConfig, queries: Tensor, memory: Memory, path_keys: Tensor, path_values: Tensor,
                depths: Tensor) -> tuple[Tensor, Tensor]:
    """Each query's votes over the keys it sees: the context's (`memory`, n keys) and its own path's.

    queries (N, H); path_keys (N, M, H) and path_values (N, M), of which row i's first depths[i] are its path's.
    Returns votes (N, n + M) float64 (softmax_i(theta * q . h_i) over the visible keys, 0 elsewhere and on rows
    that see no key) and the value (unit) of each column (N, n + M). Differentiable in the queries and keys
    (attribution goes through it): no in-place operation on anything autograd keeps.
    """
    count, size = queries.size(0), len(memory.values)
    first_visible = size + depths - settings.window  # (N,): older keys are beyond the window
    scores = (settings.theta * (queries @ memory.keys.T)).double()  # (N, n)
    place = torch.arange(path_keys.size(1))[None, :]
    path_scores = (settings.theta * torch.einsum("nh,nmh->nm", queries, path_keys)).double()  # (N, M)
    visible = torch.cat([torch.arange(size)[None, :] >= first_visible[:, None],
                         (place < depths[:, None]) & (size + place >= first_visible[:, None])], dim=1)  # (N, n + M)
    # A row with no visible key (the empty context's first unit) would be all -inf: it votes nowhere instead.
    has_keys = visible.any(dim=1, keepdim=True)  # (N, 1)
    scores = torch.cat([scores, path_scores], dim=1).masked_fill(~visible, -math.inf).masked_fill(~has_keys, 0.0)
    votes = torch.softmax(scores, dim=-1) * has_keys
    values = torch.cat([memory.values[None, :].expand(count, size), path_values], dim=1)  # (N, n + M)
    return votes, values


def mix_distributions(settings: CacheConfig, scaled: Tensor, votes: Tensor, values: Tensor, has_keys: Tensor) -> Tensor:
    """(1 - weight) p_model + weight p_cache (N, V) float64, from tempered logits (N, V), votes and their values
    (N, K) (see `cache_votes`); rows where has_keys (N,) is false are p_model."""
    # p_model as in Predictor._normalized (exponentials in the logits' precision, within an ulp), normalised in float64.
    model = (scaled - scaled.amax(dim=-1, keepdim=True)).exp().double()
    model = model / model.sum(dim=-1, keepdim=True)  # (N, V) p_model
    cached = torch.zeros_like(model).scatter_add(1, values, votes)  # (N, V) p_cache
    weight = has_keys.double()[:, None] * settings.weight  # (N, 1): 0 where no key is visible
    return model * (1 - weight) + cached * weight
