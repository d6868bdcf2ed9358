"""Gradient reach: how far back each prediction's gradient influence reaches.

For a predicted word w after a text, the influence of an input position t is
the size of the gradient of log P(w | text) with respect to the input
embedding x_t (the word's units and the boundary after them included, every
spelling of the word summed, the healed part of the text divided out):

- saliency: || d log P(w | text) / d x_t ||_2 (Simonyan et al. 2014);
- gradient x input: | (d log P(w | text) / d x_t) . x_t | (Shrikumar et al. 2016).

Gradients flow through the whole text, from a zero state at its start, with
the model in evaluation mode (no dropout); nothing is truncated except by an
explicit input limit (`max_units`), which is then reported. The limit is
applied as `Predictor.predict` applies it (lm/infer/query.py:
`keep_last_units`), so a text is read one way whether or not it is
attributed: the same suffix, the same predictions. The k predictions of one text
are differentiated together: the text is read once (the same read serves the
prediction), autograd differentiates the k words' unit paths from the state
after the text, one row per word, and a hand-written backward pass carries
the k gradients on that state back through the whole text side by side
(lm/infer/context_grad.py: cheaper than autograd through k copies of the text,
and checked against it in the tests). Parameter `.grad` is never touched, so
a model can serve other requests at the same time.

With the continuous cache (lm/infer/textcache.py) the words are predicted
and differentiated under the served mixture: the word paths' distributions
are the mixed ones, autograd also gives each word's gradient on the cache's
keys (the top-layer outputs of the text), and the backward pass injects
those at their positions. Each prediction then also reports the cache's
pointer (lm/infer/pointer.py): the memory entries the cache copies the word
from, its copy probability, and its exact deletion reach.

Reach figures (lm/infer/reach.py) count back from the prediction point (the
last unit read is at distance 1), in units, words and characters: the
threshold reach, the 90% and 99% mass reach, and the decay profile
(influence by distance, divided by its maximum). The gradient is a
first-order view of the cache, whose entries are an explicit sum that
removing text changes by a finite amount; so with the cache the reported
`reach` is the wider of the gradient's (`gradient_reach`) and the cache's
exact deletion reach (the threshold reach with its tolerance
-log(1 - threshold), the 90%/99% mass reach with 0.105/0.01 nats): beyond it,
neither the gradient nor the cache's own arithmetic says the text matters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from lm.config import CacheConfig
from lm.infer.context_grad import ContextTrace, backward_context, trace_context
from lm.infer.engine import StepEngine
from lm.infer.predictor import PredictionResult, Predictor, WordPrediction
from lm.infer.query import keep_last_units, make_query
from lm.infer.pointer import Pointer, PointerPosition, cache_pointer, deletion_reach, explain_cache
from lm.infer.reach import Reach, distance_in, reach_figures, unit_words, widest, words_of
from lm.infer.textcache import Memory, cache_votes, mix_distributions, read_memory

__all__ = ["Attribution", "AttributedPrediction", "CacheMix", "METHODS", "Pointer", "PointerPosition", "Reach", "attribute",
           "distance_in", "hidden_jacobian_norms", "path_logprobs", "prediction_gradients", "reach_figures", "FILLER",
           "unit_words", "words_of"]

METHODS = ("saliency", "grad_x_input")
HOW = {
    "model_mode": "evaluation (no dropout)",
    "initial_state": "zero state at the start of the text",
    "gradient_of": "log P(word | text) as served (mixed with the continuous cache when 'cache' is true): the word's "
                   "units and the boundary after them, every spelling summed",
}
# Neutral filler for the faithfulness check: frequent function words.
FILLER = "the of and in to a was is for on as by with at from that it "


@dataclass
class AttributedPrediction:
    """A prediction with its influence over the text and its reach (and, with the cache, its pointer)."""

    prediction: WordPrediction
    influence: np.ndarray  # (n,) per context unit, in text order
    reach: Reach  # what holds for the prediction as served: the gradient's, widened by the cache's deletion reach
    gradient_reach: Reach  # the gradient's alone
    faithfulness: dict | None = None
    pointer: Pointer | None = None

    def profile(self) -> list[float]:
        """Influence by distance 1..n (the last unit first), divided by the largest."""
        top = float(self.influence.max()) if self.influence.size else 0.0
        return [float(v) / top if top > 0 else 0.0 for v in self.influence[::-1]]


@dataclass
class Attribution:
    """Every attributed prediction for one text, with the text's units and words."""

    result: PredictionResult
    method: str
    threshold: float
    units: list[tuple[str, int, int]]  # (text, start, end) of each context unit, offsets into the read text (result.query.text)
    words: list[tuple[str, int, int]]  # whitespace-separated words of the context
    unit_word: list[int]  # the word of each unit
    predictions: list[AttributedPrediction] = field(default_factory=list)

    def context_summary(self) -> dict:
        """What was read: units, words and characters of the context, and what an input limit left unread (the
        prediction's own summary: the attribution reads the same units)."""
        return self.result.context_summary()

    def word_scores(self, influence: np.ndarray) -> list[float]:
        scores = [0.0] * len(self.words)
        for unit, word in enumerate(self.unit_word):
            if word >= 0:
                scores[word] += float(influence[unit])
        return scores

    def as_dict(self, full: bool = True) -> dict:
        """The HTTP API's structure (`full` adds per-unit and per-word influence and the decay profile). Its `text`
        is the whole text and its offsets index into it, also when an input limit left its start unread."""
        shift = self.result.cut.chars  # offsets here are into the read text, which starts there in the whole text
        predictions = []
        for item in self.predictions:
            entry = {**item.prediction.as_dict(), "reach": item.reach.as_dict(), "gradient_reach": item.gradient_reach.as_dict(),
                     "pointer": item.pointer.as_dict(full, shift) if item.pointer is not None else None}
            if item.faithfulness is not None:
                entry["faithfulness"] = item.faithfulness
            if full:
                entry["influence"] = [
                    {"text": text, "start": start + shift, "end": end + shift, "score": float(score), "word": word}
                    for (text, start, end), score, word in zip(self.units, item.influence, self.unit_word)
                ]
                entry["word_influence"] = [
                    {"text": text, "start": start + shift, "end": end + shift, "score": score}
                    for (text, start, end), score in zip(self.words, self.word_scores(item.influence))
                ]
                entry["profile"] = item.profile()
            predictions.append(entry)
        return {
            "text": self.result.cut.text,
            "context": self.context_summary(),
            "completing": self.result.completing,
            "partial": self.result.query.partial,
            "attribution": {"method": self.method, "threshold": self.threshold, **HOW},
            "predictions": predictions,
            "cache": self.result.text_cache,
        }


class CacheMix:
    """The continuous cache mixed into attribution's distributions, differentiably (lm/infer/textcache.py's
    `cache_votes` and `mix_distributions`, the served mixture's own code).

    Each row (word) has its own copy of the context's keys, so that autograd
    gives every word its own gradient on them; the path keys are the states
    along each spelling, differentiable through the state after the context.
    """

    def __init__(self, settings: CacheConfig, keys: torch.Tensor, values: torch.Tensor, hidden: int):
        self.settings = settings
        self.keys = keys  # (rows, n, H), requires grad: the context's top-layer outputs (the last `window`)
        self.values = values  # (n,) long: the unit that followed each key
        self.hidden = hidden

    def logprobs(self, scaled: torch.Tensor, queries: torch.Tensor, path_keys: torch.Tensor, path_values: torch.Tensor,
                 rows: torch.Tensor) -> torch.Tensor:
        """log of the mixed distributions (M, V) float64 after M paths of one length d: tempered logits (M, V),
        queries (M, H), each path's keys (M, d, H) and values (M, d), and each path's row (M,)."""
        depth = path_values.size(1)
        pieces, order = [], []
        for row in torch.unique(rows).tolist():
            chosen = torch.nonzero(rows == row)[:, 0]
            count = len(chosen)
            votes, values = cache_votes(self.settings, queries[chosen], Memory(self.keys[row], self.values),
                                        path_keys[chosen], path_values[chosen], torch.full((count,), depth))
            sizes = torch.full((count,), min(depth + len(self.values), self.settings.window))  # the keys each row sees
            pieces.append(torch.log(mix_distributions(self.settings, scaled[chosen], votes, values, sizes)))
            order.append(chosen)
        return torch.cat(pieces)[torch.argsort(torch.cat(order))]

    def first(self, scaled: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """The mixed log-probabilities (rows, V) of the first unit after the context: row i queries with states[:, i]."""
        count = states.size(1)
        queries = states[-1, :, : self.hidden]  # (rows, H)
        return self.logprobs(scaled, queries, queries.new_zeros(count, 0, self.hidden),
                             torch.zeros(count, 0, dtype=torch.long), torch.arange(count))

    def after_paths(self, scaled: torch.Tensor, states: torch.Tensor, level_states: list[torch.Tensor],
                    levels: list[dict], keys: list[tuple[int, tuple[int, ...]]]) -> torch.Tensor:
        """The mixed log-probabilities after the prefixes `keys` ((row, prefix) of one length d, in the order of
        level_states[d - 1]); states (L, rows, S) after the context, level_states[j - 1] after the prefixes of
        length j (`levels[j - 1]` says where). A path's keys are the outputs before each of its units."""
        depth = len(keys[0][1])
        rows = torch.tensor([row for row, _ in keys], dtype=torch.long)
        columns = [states[-1, rows, : self.hidden]]  # the context's last output, followed by each prefix's first unit
        for length in range(1, depth):
            places = torch.tensor([levels[length - 1][(row, prefix[:length])] for row, prefix in keys], dtype=torch.long)
            columns.append(level_states[length - 1][-1, places, : self.hidden])
        path_keys = torch.stack(columns, dim=1)  # (M, d, H)
        path_values = torch.tensor([prefix for _, prefix in keys], dtype=torch.long)  # (M, d)
        return self.logprobs(scaled, level_states[depth - 1][-1, :, : self.hidden], path_keys, path_values, rows)


def path_logprobs(engine: StepEngine, states: torch.Tensor, first_logprobs: torch.Tensor, rows: list[int],
                   paths: list[tuple[tuple[int, ...], bool]], ends: torch.Tensor, temperature: float = 1.0,
                   mix: CacheMix | None = None) -> torch.Tensor:
    """Log-probability of each unit path after the context of its row, the boundary mass included where flagged.

    states: (L, k, S) after each row's context; first_logprobs: (k, V) for the first unit.
    Returns (P,) differentiable with respect to both, in the dtype of first_logprobs (attribution
    passes the model's float32: these values only seed gradients; exact scoring reports the figures).
    With `mix` (the continuous cache), every distribution after a path's first unit is the mixed one,
    its keys the context's and the path's own (differentiable too); first_logprobs is then mixed already.

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
    ends_first = torch.logsumexp(first_logprobs[:, ends], dim=-1)[row_index]  # (P,): a boundary straight after the context
    total = total + torch.where(flagged & ~has_units, ends_first, zeros)
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
    # Paths are a few units long: single cell steps beat the fused layers' set-up, forward and backward.
    steps, offsets, state, parents, level_states = [], [0], states, None, []
    for depth, level in enumerate(levels, start=1):
        keys = list(level)  # in place order
        if depth == 1:
            source = torch.tensor([row for row, _ in keys], dtype=torch.long)  # the context's state of each row
        else:
            source = torch.tensor([parents[(row, prefix[:-1])] for row, prefix in keys], dtype=torch.long)
        units = torch.tensor([prefix[-1] for _, prefix in keys], dtype=torch.long)
        step_logits, state = engine.differentiable_step(units, state, parents=source)  # (M_d, V)
        level_states.append(state)
        if mix is None:
            steps.append(step_logits / temperature)  # temperature scales every step
        else:
            steps.append(mix.after_paths(step_logits / temperature, states, level_states, levels, keys))
        offsets.append(offsets[-1] + len(keys))
        parents = level
    if mix is None:  # every needed distribution at once, in the precision of first_logprobs: (M, V)
        after = torch.log_softmax(torch.cat(steps).to(first_logprobs.dtype), dim=-1)
    else:
        after = torch.cat(steps)  # (M, V) float64 log-probabilities of the mixed distributions
    if later:
        node, unit, owner = (torch.tensor(column, dtype=torch.long) for column in
                             zip(*((offsets[depth - 1] + place, unit, path) for depth, place, unit, path in later)))
        total = total.index_add(0, owner, after[node, unit])
    if bounded:
        node, owner = (torch.tensor(column, dtype=torch.long) for column in
                       zip(*((offsets[depth - 1] + place, path) for depth, place, path in bounded)))
        total = total.index_add(0, owner, torch.logsumexp(after[node][:, ends], dim=-1))
    return total


def attribute(predictor: Predictor, text: str, k: int = 5, method: str = "saliency", threshold: float = 0.01,
              verify: bool = False, max_units: int | None = None, beam_width: int = 16, temperature: float = 1.0,
              text_cache: bool | None = None) -> Attribution:
    """Predict the next words after `text` and attribute each to the text's positions (see the module docstring);
    `text_cache`: predict and differentiate the mixture with the continuous cache (see `Predictor.uses_text_cache`)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be between 0 and 1, not {threshold}")
    tokenizer, model = predictor.tokenizer, predictor.model
    # The input limit: the model reads only the last max_units units, exactly as Predictor.predict does with it.
    query, cut = keep_last_units(text, tokenizer, max_units)
    ids, spans = tokenizer.encode_with_offsets(query.context)
    units = tuple(ids)
    # One read of the text serves the prediction and the gradients (see lm/infer/context_grad.py).
    trace = trace_context(model, torch.tensor([tokenizer.newline_id, *units], dtype=torch.long))
    settings = predictor.text_cache if predictor.uses_text_cache(text_cache) else None
    memory = None
    if settings is not None:  # the cache's keys are the read's top-layer outputs, as a served prediction's are
        memory = read_memory(None, None, trace.outputs[-1], [tokenizer.newline_id, *units], settings.window)
    context = predictor.context_from(units, trace.final, trace.logits, memory)
    result = predictor.predict_from(context, query, k=k, beam_width=beam_width, temperature=temperature,
                                    text_cache=settings is not None)
    result.cut = cut
    unit_list = [(query.context[s:e], s, e) for s, e in spans]
    words = words_of(query.context)
    unit_word = unit_words(unit_list, words)
    attribution = Attribution(result, method, threshold, unit_list, words, unit_word)
    if not result.predictions:
        return attribution
    gradients, embeddings = prediction_gradients(predictor, trace, result, temperature)
    for row, prediction in enumerate(result.predictions):
        grad = gradients[row]  # (n, E)
        if method == "saliency":
            influence = grad.norm(dim=-1)
        else:
            influence = (grad * embeddings).sum(-1).abs()
        influence_np = influence.double().numpy()
        gradient_reach = reach_figures(influence_np, spans, unit_word, len(query.context), len(words), threshold)
        item = AttributedPrediction(prediction, influence_np, gradient_reach, gradient_reach)
        if result.text_cache:
            explanation = explain_cache(predictor, result, prediction, spans, query.context, temperature)
            item.pointer = cache_pointer(explanation, spans, unit_word, len(query.context), threshold)
            item.reach = widest(gradient_reach, deletion_reach(explanation.logprob_change, -math.log1p(-threshold)),
                                item.pointer.deletion_tokens("90"), item.pointer.deletion_tokens("99"), spans, unit_word,
                                len(query.context))
        if verify:
            item.faithfulness = _faithfulness(predictor, query, spans, item.reach, prediction, temperature, result.text_cache)
        attribution.predictions.append(item)
    return attribution


def prediction_gradients(predictor: Predictor, trace: ContextTrace, result: PredictionResult, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """d log P(word_j | text) / d x_t for every prediction j and context unit t: (k, n, E), and x: (n, E).

    Autograd differentiates each word's paths from the state after the text,
    one row per word; the hand-written pass of `backward_context` carries the
    k gradients on that state back through the text. When the result was
    mixed with the continuous cache, the paths' distributions are the mixed
    ones: autograd also gives each word's gradient on the cache's keys (the
    context's top-layer outputs), which the backward pass injects at their
    positions, so the gradient is that of the log-probability served.
    """
    engine = predictor.engine
    settings = predictor.text_cache if result.text_cache else None  # the served distribution: mixed, or the model's
    k = len(result.predictions)
    ends = torch.from_numpy(predictor.units.ends)
    required = bool(result.query.required)
    # Row j < k carries word j's paths; with a healed text, one more row carries the required part's
    # spellings, the same for every word (often thousands of one-unit paths: read them once, not k times).
    rows_count = k + 1 if required else k
    with torch.enable_grad():
        states = trace.final.clone().expand(-1, rows_count, -1).contiguous().requires_grad_(True)  # (L, rows, S)
        scaled = engine.output_from_state(states, differentiable=True) / temperature  # (rows, V)
        mix = None
        if settings is None:
            first = torch.log_softmax(scaled, dim=-1)
        else:
            # The keys the served mixture saw: the context's top-layer outputs before each unit, the last `window`.
            keys = trace.outputs[-1][:-1][-settings.window :]  # (n', H)
            keys = keys.expand(rows_count, -1, -1).clone().requires_grad_(True)  # (rows, n', H): a copy per row
            mix = CacheMix(settings, keys, trace.ids[1:][-keys.size(1) :], engine.model.config.hidden_dim)
            first = mix.first(scaled, states)  # (rows, V) float64
        paths, rows, bounds = [], [], []
        for row, prediction in enumerate(result.predictions):
            bounds.append((len(paths), len(paths) + len(prediction.paths)))
            paths.extend(prediction.paths)
            rows.extend([row] * len(prediction.paths))
        if required:
            bounds.append((len(paths), len(paths) + len(result.required_paths)))
            paths.extend(result.required_paths)
            rows.extend([k] * len(result.required_paths))
        values = path_logprobs(engine, states, first, rows, paths, ends, temperature, mix)
        totals = torch.stack([torch.logsumexp(values[start:end], 0) for start, end in bounds])  # (rows,)
        # log P(word_j | text) = totals[j] - totals[k] when healed: the required row's gradient joins every word's.
        objective = totals[:k].sum() - (totals[k] if required else 0.0)
        if mix is None:
            (seeds,) = torch.autograd.grad(objective, states)  # (L, rows, S)
            on_keys = None
        else:
            seeds, on_keys = torch.autograd.grad(objective, [states, mix.keys])  # (L, rows, S), (rows, n', H)
    if required:
        seeds = seeds[:, :k] + seeds[:, k:]  # d(-log P(required)) / d state belongs to every word
        on_keys = on_keys[:k] + on_keys[k:] if on_keys is not None else None
    on_top = None
    if on_keys is not None:  # the keys are the top layer's outputs 0..n-1 (the last n' of them): (n + 1, k, H)
        on_top = trace.outputs[-1].new_zeros(len(trace.ids), k, on_keys.size(-1))
        on_top[len(trace.ids) - 1 - on_keys.size(1) : len(trace.ids) - 1] = on_keys.transpose(0, 1)
    grad = backward_context(engine, trace, seeds, on_top)  # (k, n + 1, E)
    return grad[:, 1:], trace.inputs[0][1:]


def _faithfulness(predictor: Predictor, query, spans, reach: Reach, prediction: WordPrediction, temperature: float,
                  text_cache: bool) -> dict:
    """How far log P(word) moves when the text beyond the 99% mass reach is replaced by neutral filler of the same
    length (`logprob_change`), and when it is cut off, the rest read from a zero state as if only it had been sent
    (`cut`). Both scored as the word was (with the text cache when it was)."""
    n = len(spans)
    keep_from = spans[n - reach.mass99_tokens][0] if reach.mass99_tokens else len(query.context)
    if keep_from <= 0:
        return {"replaced_chars": 0, "logprob": prediction.logprob, "logprob_change": 0.0,
                "cut": {"removed_chars": 0, "logprob": prediction.logprob, "logprob_change": 0.0}}
    kept = query.text[keep_from:]
    head = query.text[:keep_from]
    filler = (FILLER * (len(head) // len(FILLER) + 1))[: len(head)]
    # Keep line breaks where they were, so the text keeps its shape.
    filler = "".join("\n" if original == "\n" else new for original, new in zip(head, filler))
    if kept and not kept[0].isspace() and filler and not filler[-1].isspace():
        filler = filler[:-1] + " "
    changed = predictor.score_word(filler + kept, prediction.word, temperature, text_cache)  # as the word was scored
    cut = predictor.score_word(kept, prediction.word, temperature, text_cache)
    return {"replaced_chars": keep_from, "logprob": changed, "logprob_change": changed - prediction.logprob,
            "cut": {"removed_chars": keep_from, "logprob": cut, "logprob_change": cut - prediction.logprob}}


def hidden_jacobian_norms(predictor: Predictor, text: str, probes: int = 8, seed: int = 0, max_units: int | None = None) -> dict:
    """How fast the recurrence forgets: ||d h_T / d h_(T-d)||_F for d = 1..T, estimated with random probes.

    h is the whole carried state (every layer; h and c for an LSTM). For a
    random vector v, one backward pass of v . h_T gives v^T J_d for every d
    at once, and E ||v^T J_d||^2 = ||J_d||_F^2; `probes` vectors run side by
    side as a batch. The recurrence is stepped one unit at a time so that
    each intermediate state can be differentiated.
    """
    model, tokenizer = predictor.model, predictor.tokenizer
    ids = [tokenizer.newline_id, *tokenizer.encode(make_query(text, tokenizer).context)]
    if max_units is not None:
        ids = ids[-max_units:]
    generator = torch.Generator().manual_seed(seed)
    with torch.enable_grad():
        state = model.init_state(probes)
        taps = []
        for unit in ids:
            tap = torch.zeros_like(state, requires_grad=True)  # d(v . h_T)/d tap_t = v^T d h_T / d h_t
            state = state + tap
            taps.append(tap)
            _, state = predictor.engine.differentiable_step(torch.full((probes,), unit, dtype=torch.long), state)
        v = torch.randn(state.shape, generator=generator, dtype=state.dtype)
        grads = torch.autograd.grad((state * v).sum(), taps, allow_unused=True)
    norms = []
    for grad in reversed(grads):  # the last tap is d = 1 (the state before the last unit)
        if grad is None:
            norms.append(0.0)
            continue
        per_probe = grad.pow(2).sum(dim=(0, 2))  # (probes,)
        norms.append(math.sqrt(float(per_probe.mean())))
    return {"distance": list(range(1, len(norms) + 1)), "jacobian_norm": norms, "probes": probes,
            "state_dim": int(state.shape[0] * state.shape[2])}
