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

Two codes compute this mixture. `TextCache.mix` serves predictions: sparse
and in numpy, for speed (its docstring says what it assumes). The votes
(`cache_votes`) and the mixture (`mix_distributions`) are plain
differentiable torch functions over whole rows: attribution
(lm/infer/attribution.py) takes gradients through them, and its tests check
that the probability it differentiates is the one served.

Nothing is kept across requests: a `Memory` belongs to one context state
(the prefix cache keeps it beside the state, see `Predictor.context_state`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from lm.config import CacheConfig
from lm.infer.reads import StepRows

__all__ = ["CachePath", "Memory", "TextCache", "cache_votes", "mix_distributions", "read_memory"]


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


class CachePath(NamedTuple):
    """The keys a sequence read past the context adds: the outputs along it and the units that followed them.

    Tuples, so that a child's path is its parent's plus one entry without copying a tensor."""

    keys: tuple[np.ndarray, ...]  # (H,) float32 each, oldest first
    values: tuple[int, ...]


class TextCache:
    """One request's cache: the settings, the context's memory, and how a batch of read rows is mixed.

    The arithmetic runs in numpy on the few hundred keys a request has: a
    mix is a dozen small array operations, where torch's per-operation cost
    would exceed the work (what `mix` assumes: one request's keys, tens of
    rows at a time)."""

    root = CachePath((), ())  # the path of the context itself: nothing past it

    def __init__(self, settings: CacheConfig, memory: Memory, hidden_dim: int, ends_mask: Tensor):
        self.settings = settings
        self.memory = memory  # the context's keys and values (the last `window` at most)
        self.hidden_dim = hidden_dim
        self.keys = memory.keys.numpy()  # (n, H) float32
        values = memory.values.numpy()
        self.support, slots = np.unique(values, return_inverse=True)  # the units the context's keys vote for
        self.slots = slots.reshape(-1)  # (n,): each key's place in `support`
        self.ends = ends_mask.numpy()  # (V,) float64: units that begin with a word boundary

    def path_after(self, parent: CachePath, parent_state: Tensor, unit: int) -> CachePath:
        """The path of a sequence one unit (`unit`) past its parent, whose state (L, S) is `parent_state`."""
        return CachePath(parent.keys + (parent_state[-1, : self.hidden_dim].numpy(),), parent.values + (unit,))

    def memory_after(self, path: CachePath) -> Memory:
        """The context's memory followed by `path`'s keys and values (the last `window` kept)."""
        if not path.values:
            return self.memory
        keys = torch.from_numpy(np.stack(path.keys))
        return self.memory.extended(keys, torch.tensor(path.values, dtype=torch.long), self.settings.window)

    def mix(self, rows: StepRows, paths: list[CachePath]) -> StepRows:
        """The mixed rows: row i read at the end of `paths[i]` past the context.

        The cache votes only for the units its keys were followed by (the
        support, a few hundred at most), so the mixture is kept sparse: for a
        unit outside the support, log P(u) = log(1 - weight) + log p_model(u),
        which is the model's row with its normaliser raised by -log(1 - weight);
        the support's units get their mixed log-probabilities in `overrides`.
        No (N, V) float64 array is made (`Reads.logprobs` makes a row on use).
        The boundary mass is the mixture's: (1 - weight) times the model's plus
        weight times the cache's votes for units that begin with a boundary.
        """
        settings = self.settings
        queries = np.ascontiguousarray(rows.states[-1, :, : self.hidden_dim].numpy())  # (N, H)
        count, size = len(paths), len(self.slots)
        depths = np.array([len(path.values) for path in paths])  # (N,)
        has_keys = (size + depths) > 0  # the nearest key is always within the window (window >= 1)
        if not has_keys.any():  # the empty context's first unit: the model alone
            return rows
        first_visible = size + depths - settings.window  # (N,): older keys are beyond the window
        scores = (settings.theta * (queries @ self.keys.T)).astype(np.float64)  # (N, n)
        if first_visible.max() > 0:
            scores[np.arange(size)[None, :] < first_visible[:, None]] = -np.inf
        longest = int(depths.max())
        path_scores = np.full((count, longest), -np.inf)  # (N, M)
        path_units = np.zeros((count, longest), dtype=np.int64)
        if longest:  # every path key of every row at once: row i's query against its own path's keys
            rows_of = np.repeat(np.arange(count), depths)
            places = np.arange(len(rows_of)) - np.repeat(np.cumsum(depths) - depths, depths)  # 0, 1, .. along each path
            keys = np.stack([key for path in paths for key in path.keys])  # (sum of depths, H)
            path_scores[rows_of, places] = settings.theta * np.einsum("kh,kh->k", keys, queries[rows_of]).astype(np.float64)
            path_units[rows_of, places] = [unit for path in paths for unit in path.values]
            path_scores[(size + np.arange(longest))[None, :] < first_visible[:, None]] = -np.inf
        # The softmax over every visible key (the context's and the path's) of each row.
        top = np.maximum(scores.max(axis=1, initial=-np.inf), path_scores.max(axis=1, initial=-np.inf))
        top[~has_keys] = 0.0
        context_votes = np.exp(scores - top[:, None])
        path_votes = np.exp(path_scores - top[:, None])
        totals = context_votes.sum(axis=1) + path_votes.sum(axis=1)
        totals[~has_keys] = 1.0
        # p_cache on the support: the context's units and the units fed along the paths.
        support = np.union1d(self.support, path_units[path_scores > -np.inf])
        width = len(support)
        context_places = np.searchsorted(support, self.support)[self.slots]  # (n,)
        flat = (np.arange(count)[:, None] * width + context_places[None, :]).ravel()
        cached = np.zeros(count * width)  # (np.bincount of nothing would be an integer array)
        if size:
            cached += np.bincount(flat, weights=context_votes.ravel(), minlength=count * width)
        if longest:
            flat = (np.arange(count)[:, None] * width + np.searchsorted(support, path_units)).ravel()
            cached += np.bincount(flat, weights=path_votes.ravel(), minlength=count * width)
        cached = cached.reshape(count, width) / totals[:, None]  # (N, S)
        weight = has_keys * settings.weight  # (N,) float64: 0 where no key is visible
        model = np.exp(rows.scaled[:, support].astype(np.float64) - rows.normalisers[:, None])  # (N, S) p_model
        overrides = np.log((1 - weight)[:, None] * model + weight[:, None] * cached)
        boundaries = np.log((1 - weight) * np.exp(rows.boundaries) + weight * (cached @ self.ends[support]))
        return StepRows(rows.states, rows.logits, rows.scaled, rows.normalisers - np.log1p(-weight), boundaries,
                        support, overrides)


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
