"""The gradient of each predicted word's log-probability with respect to every input of its text.

For a predicted word w after a text, `prediction_gradients` gives
d log P(w | text) / d x_t for every input embedding x_t (the word's units and
the boundary after them included, every spelling of the word summed, the
healed part of the text divided out). The k predictions of one text are
differentiated together: autograd differentiates the k words' unit paths
from the state after the text (`path_logprobs`, one row per word), and the
hand-written backward pass of lm/infer/context_grad.py (`Predictor.backward`)
carries the k gradients on that state back through the whole text side by
side. Parameter `.grad` is never touched, so a model can serve other
requests at the same time.

With the continuous cache over the text (lm/infer/textcache.py) the word
paths' distributions are the served mixture's (`CacheMix`): autograd also
gives each word's gradient on the cache's keys (the top-layer outputs of the
text), and the backward pass injects those at their positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from lm.cells.base import BlockRows
from lm.config import TextCacheConfig
from lm.infer.context_grad import ContextTrace
from lm.infer.predictor import PredictionResult, Predictor
from lm.infer.reads import Normalised
from lm.infer.scoring import SPELLING_TOLERANCE
from lm.infer.textcache import Memory, cache_votes, mix_distributions

__all__ = ["CacheMix", "KeyGradients", "KeyRow", "WordSeeds", "boundary_logprobs", "path_logprobs", "prediction_gradients",
           "significant_paths", "target_logprobs", "word_seeds"]


class CacheMix:
    """The continuous cache mixed into attribution's distributions, differentiably (lm/infer/textcache.py's
    `cache_votes` and `mix_distributions`, the served mixture's own code).

    Every row (read, word) needs its own gradient on its read's context keys,
    but the rows of one read share those keys. So the keys are constants
    here, and each query's products with them, q . h_i, are recorded
    (`products`): autograd gives d objective / d (q . h_i) for every query,
    and the gradient on row r's keys is the sum over r's queries of that
    times q (`key_gradients`), one product per row. The path keys (the
    states along each spelling) are differentiable through the state after
    the context, as any state is.
    """

    def __init__(self, settings: TextCacheConfig, keys: torch.Tensor, values: torch.Tensor, hidden: int,
                 row_read: torch.Tensor):
        self.settings = settings
        self.keys = keys  # (B, n, H), constants: each read's context keys, its top-layer outputs (the last `window`)
        self.values = values  # (n,) long: the unit that followed each key
        self.hidden = hidden
        self.row_read = row_read  # (rows,) long: the read of each row
        # Every (products (N, n) in the graph, queries (N, H) as values, rows (N,)) the distributions used.
        self.products: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def logprobs(self, scaled: torch.Tensor, queries: torch.Tensor, path_keys: torch.Tensor, path_values: torch.Tensor,
                 depths: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """log of the mixed distributions (M, V) float64 after M paths: tempered logits (M, V), queries (M, H), each
        path's keys (M, D, H) and values (M, D) of which row i's first depths[i] (M,) are its own, and each path's
        row (M,).

        Only the products with the context's keys differ by read (each read has its own keys; their values, the
        text's units, are the same): they are made a read at a time, and the votes and the mixture then run once
        for every row. A pass per read picked each read's rows by index, and autograd filled a zero tensor the
        size of every input per read (integrated gradients' 17 reads: a third of a served short prompt's time)."""
        reads = self.row_read[rows]
        if self.keys.size(0) == 1:
            products = queries @ self.keys[0].T  # (M, n)
        else:
            order = torch.argsort(reads, stable=True)
            runs, counts = torch.unique_consecutive(reads[order], return_counts=True)
            parts = [part @ self.keys[read].T
                     for read, part in zip(runs.tolist(), torch.split(queries.index_select(0, order), counts.tolist()))]
            products = torch.cat(parts).index_select(0, torch.argsort(order))  # (M, n), in the rows' order
        self.products.append((products, queries.detach(), rows))
        # The keys themselves are not read when the products are given: any read's stand in for the Memory.
        votes, values = cache_votes(self.settings, queries, Memory(self.keys[0], self.values), path_keys, path_values,
                                    depths, context_products=products)
        seen = torch.clamp(depths + len(self.values), max=self.settings.window)  # the keys each row sees
        return torch.log(mix_distributions(self.settings, scaled, votes, values, seen))

    def key_gradients(self, product_grads: list[torch.Tensor | None], places: list[tuple[int, slice]], count: int,
                      words: int) -> "KeyGradients":
        """d objective / d the context keys from the gradients on `products` (in their order), for the backward
        pass to inject: row r's belong to read and words places[r] = (b, a slice of the k = `words` words: a healed
        text's required row belongs to every word of its read, so its queries join each word's own); the reads'
        outputs are `count` long, the keys the `window` of them before the last."""
        used = [(grad, queries, owner) for grad, (_, queries, owner) in zip(product_grads, self.products)
                if grad is not None]  # a product autograd found unused adds nothing
        parts: dict[tuple[int, int], list[int]] = {}  # (read, word) -> the rows whose products it takes
        if used:
            grad = torch.cat([grad for grad, _, _ in used])  # (N, n)
            queries = torch.cat([queries for _, queries, _ in used])  # (N, H)
            owners = torch.cat([owner for _, _, owner in used])  # (N,)
            for row in torch.unique(owners).tolist():
                read, chosen = places[row]
                for word in range(*chosen.indices(words)):  # a required row joins each word of its read
                    parts.setdefault((read, word), []).append(row)
        rows = []
        for (read, word), owned in parts.items():
            chosen = torch.nonzero(torch.isin(owners, torch.tensor(owned)))[:, 0]
            rows.append(KeyRow(grad[chosen].float(), queries[chosen].float(), read, word))
        return KeyGradients(rows, count, self.keys.size(1), words, self.hidden)

    def first(self, scaled: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """The mixed log-probabilities (rows, V) of the first unit after the context: row i queries with states[:, i]."""
        count = states.size(1)
        queries = states[-1, :, : self.hidden]  # (rows, H)
        return self.logprobs(scaled, queries, queries.new_zeros(count, 0, self.hidden),
                             torch.zeros(count, 0, dtype=torch.long), torch.zeros(count, dtype=torch.long),
                             torch.arange(count))

    def after_paths(self, scaled: torch.Tensor, states: torch.Tensor, path_states: torch.Tensor,
                    nodes: list[tuple[int, tuple[int, ...]]]) -> torch.Tensor:
        """The mixed log-probabilities (M, V) after each prefix `nodes` (row, prefix), whose states are path_states
        (L, M, S) in that order (every shorter prefix of a node is one of them); states (L, rows, S) after the
        context. A path's keys are the outputs before each of its units: the context's last, then its own
        prefixes'; its values, its units."""
        where = {node: place for place, node in enumerate(nodes)}
        outputs = torch.cat([states[-1, :, : self.hidden], path_states[-1, :, : self.hidden]])  # (rows + M, H)
        first_path = states.size(1)  # where path_states' outputs begin in `outputs`
        longest = max(len(prefix) for _, prefix in nodes)
        places, values = [], []
        for row, prefix in nodes:
            depth = len(prefix)
            keys = [row] + [first_path + where[(row, prefix[:length])] for length in range(1, depth)]
            places.extend(keys + [0] * (longest - depth))  # padding, hidden by the depth
            values.append(list(prefix) + [0] * (longest - depth))
        path_keys = outputs.index_select(0, torch.tensor(places, dtype=torch.long)).view(len(nodes), longest, -1)
        return self.logprobs(scaled, path_states[-1, :, : self.hidden], path_keys,
                             torch.tensor(values, dtype=torch.long),
                             torch.tensor([len(prefix) for _, prefix in nodes], dtype=torch.long),
                             torch.tensor([row for row, _ in nodes], dtype=torch.long))


class KeyRow(NamedTuple):
    """The queries of the text cache that one word's objective on one read made, and d objective / d each query's
    product with each key."""

    grads: torch.Tensor  # (N_r, n) float32
    queries: torch.Tensor  # (N_r, H) float32
    read: int
    word: int


class KeyGradients:
    """d objective / d the text's top-layer outputs through the text cache's keys, for every read and word: what the
    backward pass injects on those outputs, made a block of positions at a time as it walks back (`rows`).

    A word's gradient on key i of a read is the sum over its queries q of d objective / d (q . h_i) times q: for a
    block of keys, grads[:, block]^T (block, N) x queries (N, H), one product per (read, word) and block. In full
    it is (T, B, k, H), zeros before the window: for integrated gradients' 16 reads of a 1,000-word text 330 MB,
    zeroed, then added to a row at a time (its largest tensor, and a tenth of its time); a block is tens of MB."""

    def __init__(self, rows: list[KeyRow], count: int, window: int, words: int, hidden: int):
        self.key_rows, self.count, self.window, self.words, self.hidden = rows, count, window, words, hidden

    def block(self, start: int, stop: int, reads: range, buffer: torch.Tensor | None = None) -> torch.Tensor:
        """Positions start..stop - 1 of the outputs (of `count`), for `reads`: (stop - start, len(reads), k, H),
        written into `buffer` when given (its first stop - start rows; memory made once and zeroed only where no
        row writes: a fresh zeroed block each time cost more than its products)."""
        shape = (stop - start, len(reads), self.words, self.hidden)
        out = torch.empty(shape) if buffer is None else buffer[: shape[0]]
        first = self.count - 1 - self.window  # the position of key 0: the keys are outputs first..count - 2
        low, high = max(start, first), min(stop, self.count - 1)
        if low >= high:
            return out.zero_()
        out[: low - start].zero_()
        out[high - start :].zero_()
        keyed = out[low - start : high - start]  # (high - low, B', k, H)
        written = set()
        for row in self.key_rows:  # each (read, word)'s product written in place
            if row.read in reads:
                place = (row.read - reads.start, row.word)
                torch.mm(row.grads[:, low - first : high - first].T, row.queries, out=keyed[:, place[0], place[1]])
                written.add(place)
        for read in range(len(reads)):  # a word that made no query has nothing there
            for word in range(self.words):
                if (read, word) not in written:
                    keyed[:, read, word].zero_()
        return out

    def rows(self, reads: range, block_bytes: int = 32 * 2**20) -> BlockRows:
        """The injected rows (T, len(reads), k, H) of `reads` as `BlockRows`, each block about `block_bytes` (at
        most 256 positions), in memory made once."""
        per_step = len(reads) * self.words * self.hidden * 4
        block = max(16, min(256, block_bytes // max(per_step, 1)))
        buffer = torch.empty(min(block, self.count), len(reads), self.words, self.hidden)
        return BlockRows(self.count, block, lambda start, stop: self.block(start, stop, reads, buffer))


def path_logprobs(predictor: Predictor, states: torch.Tensor, first_logprobs: torch.Tensor, rows: list[int],
                  paths: list[tuple[tuple[int, ...], bool]], ends: torch.Tensor, temperature: float = 1.0,
                  mix: CacheMix | None = None) -> torch.Tensor:
    """Log-probability of each unit path after the context of its row, the boundary mass included where flagged.

    states: (L, k, S) after each row's context; first_logprobs: (k, V) for the first unit.
    Returns (P,) differentiable with respect to both, in the dtype of first_logprobs (attribution
    passes the model's float32: these values only seed gradients; exact scoring reports the figures).
    With `mix` (the continuous cache), every distribution after a path's first unit is the mixed one,
    its keys the context's and the path's own (differentiable too); first_logprobs is then mixed already. The steps
    are `predictor.differentiable_cells`, then one `output_from_state` for them all.

    Every term is gathered at once (one autograd node per kind of term: a
    required space alone can have thousands of one-unit spellings), and the
    model runs only where a distribution after a path's first unit is used:
    on each distinct (row, prefix) that a path goes on from or ends at with
    its boundary, one batched step per depth. Paths share prefixes ("▁",
    "▁t" ...), so that is about half the rows of stepping every path to the
    longest one's length.
    """
    count = len(paths)
    row_index = torch.tensor(rows, dtype=torch.long)
    lengths = torch.tensor([len(units) for units, _ in paths], dtype=torch.long)
    flagged = torch.tensor([boundary for _, boundary in paths], dtype=torch.bool)
    has_units = lengths > 0
    starts = torch.tensor([units[0] if units else 0 for units, _ in paths], dtype=torch.long)
    zeros = first_logprobs.new_zeros(count)
    total = torch.where(has_units, first_logprobs[row_index, starts], zeros)  # gathers P numbers, copies no rows
    straight = flagged & ~has_units  # a boundary straight after the context
    if straight.any():
        total = total + torch.where(straight, boundary_logprobs(first_logprobs, ends)[row_index].to(total.dtype), zeros)
    # The trie of prefixes that need the distribution after them: levels[d - 1] maps (row, prefix of length d)
    # to its place in that level's step.
    levels: list[dict[tuple[int, tuple[int, ...]], int]] = []
    later: list[tuple[int, int, int, int]] = []  # (depth, place, next unit, path): log P(next unit | prefix)
    bounded: list[tuple[int, int, int]] = []  # (depth, place, path): log P(a boundary | the whole path)
    for path, ((units, boundary), row) in enumerate(zip(paths, rows)):
        for depth in range(1, len(units) + (1 if boundary else 0)):
            if len(levels) < depth:
                levels.append({})
            place = levels[depth - 1].setdefault((row, units[:depth]), len(levels[depth - 1]))
            if depth < len(units):
                later.append((depth, place, units[depth], path))
            else:
                bounded.append((depth, place, path))
    if not levels:
        return total
    # Paths are a few units long: single cell steps beat the fused layers' set-up, forward and backward. The cells
    # step one depth at a time; the output layer (and the cache's mixture) then runs once over every depth's states:
    # one product each way and one normalisation, where a step per depth made as many, each with its fixed costs.
    level_states, parents = [], None
    for depth, level in enumerate(levels, start=1):
        keys = list(level)  # in place order
        if depth == 1:
            source = torch.tensor([row for row, _ in keys], dtype=torch.long)  # the context's state of each row
        else:
            source = torch.tensor([parents[(row, prefix[:-1])] for row, prefix in keys], dtype=torch.long)
        units = torch.tensor([prefix[-1] for _, prefix in keys], dtype=torch.long)
        level_states.append(predictor.differentiable_cells(units, level_states[-1] if level_states else states,
                                                           parents=source))  # (L, M_d, S)
        parents = level
    offsets = [0]
    for level in levels:
        offsets.append(offsets[-1] + len(level))
    path_states = torch.cat(level_states, dim=1)  # (L, M, S): every depth's, in level and place order
    scores = predictor.output_from_state(path_states, differentiable=True) / temperature  # temperature scales every step
    if mix is not None:  # the mixed log-probabilities (M, V) float64 instead of the tempered logits
        scores = mix.after_paths(scores, states, path_states, [key for level in levels for key in level])
    rows = None if mix is not None else Normalised.of(scores)
    if later:
        node, unit, owner = (torch.tensor(column, dtype=torch.long) for column in
                             zip(*((offsets[depth - 1] + place, unit, path) for depth, place, unit, path in later)))
        picked = scores[node, unit] if rows is None else scores[node, unit].double() - rows.normalisers[node]
        total = total.index_add(0, owner, picked.to(total.dtype))
    if bounded:
        node, owner = (torch.tensor(column, dtype=torch.long) for column in
                       zip(*((offsets[depth - 1] + place, path) for depth, place, path in bounded)))
        if rows is None:
            masses = boundary_logprobs(scores, ends)[node]
        else:
            masses = rows.boundaries(ends.double(), node)
        total = total.index_add(0, owner, masses.to(total.dtype))
    return total


Spellings = list[tuple[tuple[int, ...], bool]]  # a target's unit paths, each with its boundary flag


def significant_paths(paths: Spellings, logprobs: list[float] | None, tolerance: float = SPELLING_TOLERANCE
                      ) -> Spellings:
    """The spellings of one target worth differentiating: its least probable paths of two or more units (or with a
    boundary) are dropped for as long as their summed probability stays within `tolerance` of the whole (`logprobs`,
    each path's log P as exact scoring found it; None: every path is kept).

    The log-probability differentiated is then within a factor (1 - tolerance) of the scored one, the rule exact
    scoring already applies to unfinished spellings (docs/PREDICTION.md). One-unit spellings are kept: they cost one
    product together (`target_logprobs`), where each longer path costs rows of model steps, the output layer and the
    cache's mixture in both directions. An unfinished word has thousands of those, nearly all with almost no
    probability: served on runs/base, integrated gradients of "The lung disease is internationa" took 8.0 s with
    every one and 1.0 s with these ("...internationaliza": 29.4 s and 3.1 s). Returns `paths` itself when nothing is
    dropped."""
    if logprobs is None or len(logprobs) != len(paths):
        return paths
    longer = np.array([index for index, (units, boundary) in enumerate(paths) if boundary or len(units) != 1],
                      dtype=np.int64)
    if longer.size < 2:
        return paths
    values = np.asarray(logprobs, dtype=np.float64)
    top = values.max()
    if not np.isfinite(top):
        return paths
    shares = np.exp(values - top)
    shares /= shares.sum()  # each path's share of the target's probability
    order = longer[np.argsort(shares[longer], kind="stable")]  # the least probable first
    dropped = int(np.searchsorted(np.cumsum(shares[order]), tolerance, side="right"))
    if dropped == 0:
        return paths
    keep = np.ones(len(paths), dtype=bool)
    keep[order[:dropped]] = False
    return [path for path, kept in zip(paths, keep.tolist()) if kept]


def target_logprobs(predictor: Predictor, states: torch.Tensor, first_logprobs: torch.Tensor,
                    targets: list[tuple[int, Spellings]], ends: torch.Tensor, temperature: float = 1.0,
                    mix: CacheMix | None = None) -> torch.Tensor:
    """log P of each target (row, spellings): the log-sum over its spellings of `path_logprobs`, (T,) differentiable
    like it (a target with no spelling is -inf).

    Assumes what `path_logprobs` does, and that a one-unit spelling without a
    boundary is log P(that unit) in its row's first distribution and nothing
    else, so those spellings of a target are one gather and one log-sum-exp
    rather than a path each. A healed text's required part is thousands of
    them (every unit that begins a word), so this takes the per-path Python
    work off attribution's every call; spellings of two or more units, or
    with a boundary, go through `path_logprobs`. Targets sharing one spellings
    list (one per rung or read) are split once."""
    split: dict[int, tuple[torch.Tensor, Spellings]] = {}  # id(spellings) -> (first units, the other spellings)
    for _, spellings in targets:
        if id(spellings) not in split:
            single = [units[0] for units, boundary in spellings if len(units) == 1 and not boundary]
            split[id(spellings)] = (torch.tensor(single, dtype=torch.long),
                                    [path for path in spellings if len(path[0]) != 1 or path[1]])
    rows, paths, owners = [], [], []
    for index, (row, spellings) in enumerate(targets):
        others = split[id(spellings)][1]
        paths.extend(others)
        rows.extend([row] * len(others))
        owners.extend([index] * len(others))
    if not targets:
        return first_logprobs.new_zeros(0)
    # Every term of every target: the probability of its one-unit spellings, then its paths. The one-unit spellings
    # of a list are a mask over the units, so each row's sum over them is one product, (rows, V) x (V, lists):
    # gathering them one by one (thousands a row) cost a scatter of each in the backward pass.
    lists = {key: place for place, key in enumerate(key for key, (units, _) in split.items() if len(units))}
    terms, term_owners = [], []
    if lists:
        masks = first_logprobs.new_zeros(first_logprobs.size(1), len(lists), dtype=torch.float64)
        for key, place in lists.items():  # a unit listed twice counts twice, as two terms would
            units = split[key][0]
            masks.index_put_((units, torch.full_like(units, place)), torch.ones(len(units), dtype=torch.float64),
                             accumulate=True)
        owners_with = [index for index, (_, spellings) in enumerate(targets) if id(spellings) in lists]
        picked_rows = torch.tensor([targets[index][0] for index in owners_with], dtype=torch.long)
        picked_lists = torch.tensor([lists[id(targets[index][1])] for index in owners_with], dtype=torch.long)
        sums = torch.exp(first_logprobs.double()) @ masks  # (rows, lists)
        terms.append(torch.log(sums[picked_rows, picked_lists]).to(first_logprobs.dtype))
        term_owners.append(torch.tensor(owners_with, dtype=torch.long))
    if paths:
        terms.append(path_logprobs(predictor, states, first_logprobs, rows, paths, ends, temperature, mix))
        term_owners.append(torch.tensor(owners, dtype=torch.long))
    if not terms:
        return first_logprobs.new_full((len(targets),), float("-inf"))
    return _log_sums(torch.cat(terms), torch.cat(term_owners), len(targets))


def boundary_logprobs(logprobs: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """log P(the next unit begins with a boundary) (R,) float64 for rows of log-probabilities (R, V); ends (V,) bool
    marks those units. One product of the probabilities with the mask: gathering the marked columns (half the
    vocabulary) cost a scatter of every one of them in the backward pass."""
    return torch.log(torch.exp(logprobs.double()) @ ends.double())


def _log_sums(values: torch.Tensor, owners: torch.Tensor, count: int) -> torch.Tensor:
    """log sum exp of the values of each owner (count,), differentiable: one pass for every target, where a
    log-sum-exp per target cost tens of small operations a call. An owner of no value (or only -inf) gets -inf."""
    top = torch.full((count,), float("-inf"), dtype=values.dtype).scatter_reduce(0, owners, values.detach(), "amax")
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))  # a constant for autograd, as in logsumexp
    sums = values.new_zeros(count).index_add(0, owners, torch.exp(values - top[owners]))
    return top + torch.log(sums)


@dataclass
class WordSeeds:
    """What the word paths give the backward pass for B reads of one text (one read: B = 1)."""

    seeds: torch.Tensor  # (L, B, k, S): d log P(word_j | read b) / d the state after read b
    on_top: KeyGradients | None  # on the reads' top-layer outputs (the continuous cache's keys), or None
    values: torch.Tensor  # (B, k) float32: log P(word_j | read b) as differentiated (the healed part divided out)


def word_seeds(predictor: Predictor, final: torch.Tensor, result: PredictionResult, temperature: float,
               top_outputs: torch.Tensor | None = None, ids: torch.Tensor | None = None) -> WordSeeds:
    """The gradient of each predicted word's log-probability on the state after each of B reads, final (L, B, S):
    autograd through the words' unit paths, one row per (read, word).

    When the result was mixed with the continuous cache, the paths' distributions are the mixed ones, with each
    read's own keys: its top-layer outputs, top_outputs (T, B, H), after units `ids` (T,) (the leading line break
    first); their gradients come back as `on_top`.
    """
    settings = predictor.text_cache_settings if result.text_cache else None  # the served distribution: mixed, or the model's
    k = len(result.predictions)
    reads = final.size(1)
    ends = torch.from_numpy(predictor.units.ends)
    required = bool(result.query.required)
    # Row j < k of a read carries word j's paths; with a healed text, one more row carries the required part's
    # spellings, the same for every word (often thousands of one-unit paths: read them once, not k times).
    per_read = k + 1 if required else k
    rows_count = reads * per_read
    with torch.enable_grad():
        states = final.detach().repeat_interleave(per_read, dim=1).requires_grad_(True)  # (L, rows, S)
        scaled = predictor.output_from_state(states, differentiable=True) / temperature  # (rows, V)
        mix = None
        if settings is None:
            first = torch.log_softmax(scaled, dim=-1)
        else:
            # The keys the served mixture saw: the context's top-layer outputs before each unit, the last `window`.
            # (B, n', H): one copy per read (the trace's tensors come from inference mode, which autograd refuses).
            keys = top_outputs[:-1][-settings.window :].transpose(0, 1).clone()
            mix = CacheMix(settings, keys, ids[1:][-keys.size(1) :], predictor.model.config.hidden_dim,
                           torch.arange(rows_count) // per_read)
            first = mix.first(scaled, states)  # (rows, V) float64
        spellings = [significant_paths(prediction.paths, prediction.path_logprobs) for prediction in result.predictions]
        if required:
            spellings.append(significant_paths(result.required_paths, result.required_path_logprobs))
        targets = [(read * per_read + row, paths) for read in range(reads) for row, paths in enumerate(spellings)]
        totals = target_logprobs(predictor, states, first, targets, ends, temperature, mix).view(reads, per_read)
        # log P(word_j | text) = totals[j] - totals[k] when healed: the required row's gradient joins every word's.
        words = totals[:, :k] - totals[:, k:] if required else totals  # (B, k)
        objective = totals[:, :k].sum() - (totals[:, k].sum() if required else 0.0)
        on_top = None
        if mix is None:
            (seeds,) = torch.autograd.grad(objective, states)  # (L, rows, S)
        else:
            seeds, *product_grads = torch.autograd.grad(objective, [states, *(p for p, _, _ in mix.products)],
                                                        allow_unused=True)  # (L, rows, S), then (N, n') each
            places = [(read, slice(row, row + 1) if row < k else slice(0, k))  # the required row: every word's
                      for read in range(reads) for row in range(per_read)]
            on_top = mix.key_gradients(product_grads, places, len(ids), k)
    seeds = seeds.view(seeds.size(0), reads, per_read, -1)
    if required:
        seeds = seeds[:, :, :k] + seeds[:, :, k:]  # d(-log P(required)) / d state belongs to every word
    return WordSeeds(seeds, on_top, words.detach().float())


def prediction_gradients(predictor: Predictor, trace: ContextTrace, result: PredictionResult, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """d log P(word_j | text) / d x_t for every prediction j and context unit t: (k, n, E), and x: (n, E).

    Autograd differentiates each word's paths from the state after the text,
    one row per word (`word_seeds`); the hand-written pass of `Predictor.backward`
    carries the k gradients on that state back through the text. When the result was
    mixed with the continuous cache, the paths' distributions are the mixed
    ones: autograd also gives each word's gradient on the cache's keys (the
    context's top-layer outputs), which the backward pass injects at their
    positions, so the gradient is that of the log-probability served.
    """
    found = word_seeds(predictor, trace.final, result, temperature, trace.outputs[-1][:, None], trace.ids)
    on_top = None if found.on_top is None else found.on_top.rows(range(1))
    grad = predictor.backward(trace, found.seeds[:, 0], on_top)  # (k, n + 1, E)
    return grad[:, 1:], trace.inputs[0][1:]
