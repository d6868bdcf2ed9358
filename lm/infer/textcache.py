"""The continuous cache over a request's own text (Grave, Joulin and Usunier 2017), in prediction.

lm/eval/cache.py scores a whole split with the cache; here the same mixture
enters every next-unit distribution a prediction reads. The keys are the
top-layer outputs h_i at the positions of the request's text, the values the
units that followed them; a distribution read at a state with top-layer
output q becomes

    p_cache(u) = sum over visible keys i with value u of softmax_i(theta * q . h_i)
    p(u)       = (1 - weight(n)) * p_model(u) + weight(n) * p_cache(u)

where n is the number of keys the row sees and weight(n) the weight tuned
for memories of that size (`TextCacheConfig.weights`: small over a short prompt,
whose few keys would otherwise take the mixture's whole share).

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
from itertools import chain
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from lm.config import TextCacheConfig
from lm.infer.reads import Normalised, StepRows

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
    """The keys a sequence read past the context adds, oldest first: places in its `TextCache`'s path store.

    Entry j of a path of depth d is the output after the path's first j units and the unit read after it
    (its (j + 1)-th). A tuple, so that a child's path is its parent's plus one entry without copying."""

    entries: tuple[int, ...]


class TextCache:
    """One request's cache: the settings, the context's memory, the keys read past the context, and how a
    batch of read rows is mixed.

    The arithmetic runs in numpy on the few hundred keys a request has: a
    mix is about fifteen small array operations, where torch's per-operation
    cost would exceed the work; the one matrix product runs in torch (numpy's
    BLAS would start threads of its own that compete with torch's). What `mix` assumes (and what keeps it fast):
    one request's keys and tens of rows at a time; every sequence read past
    the context was added through `extend` before its row is mixed; and the
    support (the units any key was followed by) only grows at its end, so
    that a row mixed earlier keeps the support it was mixed with and the
    shared unit-to-place map (`columns`) stays right for it."""

    root = CachePath(())  # the path of the context itself: nothing past it

    def __init__(self, settings: TextCacheConfig, memory: Memory, hidden_dim: int, ends_mask: Tensor):
        self.settings = settings
        self.memory = memory  # the context's keys and values (the last `window` at most)
        self.hidden_dim = hidden_dim
        self.keys = memory.keys.numpy()  # (n, H) float32, not copied
        self._keys_t = memory.keys.T  # (H, n): the products' right-hand side, a view
        self.values = memory.values.numpy()  # (n,)
        self.size = len(self.values)
        self.ends = ends_mask.numpy()  # (V,) float64: units that begin with a word boundary
        # The support: the units some key votes for, the context's first, then each new unit a path adds, at the
        # end (append-only, so every earlier row's places stay valid); each unit's place in it, -1 if none.
        self.support = _distinct(self.values, len(self.ends))
        self.columns = np.full(len(self.ends), -1, dtype=np.int64)
        self.columns[self.support] = np.arange(len(self.support))
        self._support_ends = self.ends[self.support]
        self._context_columns = self.columns[self.values]  # (n,)
        # The path store: one entry per sequence read past the context (see CachePath), grown by doubling.
        self._path_keys = np.empty((16, hidden_dim), dtype=np.float32)
        self._path_columns = np.empty(16, dtype=np.int64)  # the entry's unit, as its place in the support
        self._path_depths = np.empty(16, dtype=np.int64)  # the entry's place along its path, from 1
        self._entries = 0
        self._weights = settings.weights(np.minimum(self.size + np.arange(32), settings.window))  # by path depth

    def _weight_at(self, depths: np.ndarray) -> np.ndarray:
        """The mixture weight (float64) of rows at these path depths: looked up, as a row sees the context's keys
        and its own path's (a depth beyond the table's is computed)."""
        if depths.max(initial=0) >= len(self._weights):
            self._weights = self.settings.weights(np.minimum(self.size + np.arange(2 * depths.max() + 1), self.settings.window))
        return self._weights[depths]

    def extend(self, parents: list[CachePath], keys: np.ndarray, units: list[int]) -> list[CachePath]:
        """The paths of sequences one unit past `parents`: sequence i read units[i] after parents[i], whose
        top-layer output is keys[i] (N, H)."""
        start, count = self._entries, len(units)
        end = start + count
        if end > len(self._path_columns):
            capacity = max(2 * len(self._path_columns), end)
            for name in ("_path_keys", "_path_columns", "_path_depths"):
                old = getattr(self, name)
                grown = np.empty((capacity, *old.shape[1:]), dtype=old.dtype)
                grown[:start] = old[:start]
                setattr(self, name, grown)
        units_array = np.array(units)
        columns = self.columns[units_array]
        if (columns < 0).any():  # units no key voted for yet join the support, at its end
            new = _distinct(units_array[columns < 0], len(self.ends))
            self.columns[new] = np.arange(len(self.support), len(self.support) + len(new))
            self.support = np.concatenate([self.support, new])  # a new array: earlier rows keep theirs
            self._support_ends = self.ends[self.support]
            columns = self.columns[units_array]
        self._path_keys[start:end] = keys
        self._path_columns[start:end] = columns
        self._path_depths[start:end] = [len(parent.entries) + 1 for parent in parents]
        self._entries = end
        return [CachePath(parent.entries + (start + i,)) for i, parent in enumerate(parents)]

    def memory_after(self, path: CachePath) -> Memory:
        """The context's memory followed by `path`'s keys and values (the last `window` kept)."""
        if not path.entries:
            return self.memory
        entries = np.array(path.entries)
        units = self.support[self._path_columns[entries]]  # the support only grows at its end: places stay right
        return self.memory.extended(torch.from_numpy(self._path_keys[entries]), torch.from_numpy(units), self.settings.window)

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

        Every row is scored against every key of the request in one product
        (the context's and all the path store's), and a row's scores for the
        entries off its own path are then masked: the store holds tens of
        entries, so this costs less than gathering each row's own keys. The
        votes are exponentials in float32 (the scores' precision), summed in
        float64.
        """
        settings = self.settings
        count, size, entries = len(paths), self.size, self._entries
        depths = np.array([len(path.entries) for path in paths])  # (N,)
        has_keys = (size + depths) > 0  # the nearest key is always within the window (window >= 1)
        if not has_keys.any():  # the empty context's first unit: the model alone
            return rows
        queries = rows.states.numpy()[-1, :, : self.hidden_dim] * np.float32(settings.theta)  # (N, H)
        scores = np.empty((count, size + entries), dtype=np.float32)  # (N, n + E): theta q . h for every key
        # The products run in torch, on the model's own thread pool: numpy's BLAS keeps threads of its own that
        # spin after each product and fight torch's for the cores (warm prediction ran 4-5x slower with them).
        torch.mm(torch.from_numpy(queries), self._keys_t, out=torch.from_numpy(scores[:, :size]))
        if entries:
            torch.mm(torch.from_numpy(queries), torch.from_numpy(self._path_keys[:entries]).T,
                     out=torch.from_numpy(scores[:, size:]))
            on_path = np.zeros((count, entries), dtype=bool)
            on_path[np.repeat(np.arange(count), depths),
                    np.fromiter(chain.from_iterable(path.entries for path in paths), dtype=np.int64, count=depths.sum())] = True
            scores[:, size:][~on_path] = -np.inf
        first_visible = size + depths - settings.window  # (N,): keys before this place are beyond the window
        if first_visible.max() > 0:
            places = np.concatenate([np.arange(size), size + self._path_depths[:entries] - 1])
            scores[places[None, :] < first_visible[:, None]] = -np.inf
        top = scores.max(axis=1, initial=-np.inf)
        some_without = not has_keys.all()  # rows that see no key vote nowhere (their weight is 0 below)
        if some_without:
            top[~has_keys] = 0.0
        scores -= top[:, None]
        votes = np.exp(scores, out=scores)  # (N, n + E), 0 for keys the row does not see
        totals = votes.sum(axis=1, dtype=np.float64)
        if some_without:
            totals[~has_keys] = 1.0
        # (N,) float64: the weight for the keys each row sees (settings.weights: by memory size), 0 where none is visible
        weight = self._weight_at(depths)
        # The mixed model's normaliser: log P(u) = scaled[u] - normaliser for a unit outside the support.
        normalisers = rows.normalisers - np.log1p(-weight)
        # On the support: (1 - weight) p_model + weight p_cache, p_cache from each row's votes summed by the
        # column of the unit each key was followed by. In place, the weights folded into normaliser and totals.
        model = np.subtract(rows.scaled.take(self.support, axis=1), normalisers[:, None], dtype=np.float64)  # (N, S)
        mixed = np.exp(model, out=model)  # (1 - weight) p_model
        width = len(self.support)
        columns = np.concatenate([self._context_columns, self._path_columns[:entries]])  # (n + E,)
        flat = (np.arange(count)[:, None] * width + columns[None, :]).ravel()
        cached = np.bincount(flat, weights=votes.ravel(), minlength=count * width).reshape(count, width)
        cached *= (weight / totals)[:, None]  # weight p_cache
        boundaries = np.log((1 - weight) * np.exp(rows.boundaries) + np.einsum("ns,s->n", cached, self._support_ends))
        mixed += cached
        overrides = np.log(mixed, out=mixed)
        return StepRows(rows.states, rows.logits, rows.scaled, normalisers, boundaries, self.support, overrides, self.columns)


def _distinct(units: np.ndarray, vocabulary: int) -> np.ndarray:
    """The distinct units of `units`, ascending (np.unique's result, from a presence mask: faster on a few hundred)."""
    present = np.zeros(vocabulary, dtype=bool)
    present[units] = True
    return np.flatnonzero(present)


def cache_votes(settings: TextCacheConfig, queries: Tensor, memory: Memory, path_keys: Tensor, path_values: Tensor,
                depths: Tensor, context_products: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Each query's votes over the keys it sees: the context's (`memory`, n keys) and its own path's.

    queries (N, H); path_keys (N, M, H) and path_values (N, M), of which row i's first depths[i] are its path's.
    Returns votes (N, n + M) float64 (softmax_i(theta * q . h_i) over the visible keys, 0 elsewhere and on rows
    that see no key) and the value (unit) of each column (N, n + M). Differentiable in the queries and keys
    (attribution goes through it): no in-place operation on anything autograd keeps. `context_products`: the
    caller's queries @ memory.keys.T (N, n), when it differentiates with respect to them (attribution's CacheMix).
    """
    count, size = queries.size(0), len(memory.values)
    first_visible = size + depths - settings.window  # (N,): older keys are beyond the window
    products = queries @ memory.keys.T if context_products is None else context_products
    scores = (settings.theta * products).double()  # (N, n)
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


def mix_distributions(settings: TextCacheConfig, scaled: Tensor, votes: Tensor, values: Tensor, sizes: Tensor) -> Tensor:
    """(1 - weight) p_model + weight p_cache (N, V) float64, from tempered logits (N, V), votes and their values
    (N, K) (see `cache_votes`), the weight for the number of keys each row sees, sizes (N,) (0: p_model)."""
    weight = torch.from_numpy(settings.weights(sizes.numpy()))[:, None]  # (N, 1): 0 where no key is visible
    # p_model normalised as the served rows are (`Normalised`). Each (N, V) float64 array costs its memory and a pass
    # in both directions, so the weights are folded in and the votes added where they fall: two such arrays, not seven.
    rows = Normalised.of(scaled)
    model = rows.weights.double() * ((1 - weight) / rows.log_totals.exp()[:, None])  # (1 - weight) p_model
    return model.scatter_add(1, values, votes * weight)  # + weight p_cache
