"""Gradient reach: how far back each prediction's gradient influence reaches, by any registered method.

The method (lm/infer/methods: saliency, gradient x input, occlusion, and
whatever else is registered there) gives each context unit an influence on
each prediction; everything after that is done here the same way for every
method: the reach figures, the aggregation to words and sentences, the cost in
milliseconds, the text cache's pointer and the faithfulness check. With a
`foil` word the objective is log P(word) - log P(foil) ("why this word rather
than the foil"), for every method. The gradient methods, as today's default:

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
(lm/infer/word_gradients.py and lm/infer/context_grad.py: cheaper than
autograd through k copies of the text, and checked against it in the tests).
Parameter `.grad` is never touched, so a model can serve other requests at
the same time.

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

With `verify`, each prediction also says how far its log-probability moves
when the text beyond its reach is replaced or cut (lm/infer/faithfulness.py).
The result types are in lm/infer/attributed.py; the methods' contract in lm/infer/methods/__init__.py.
"""

from __future__ import annotations

import math
import time

from lm.infer.attributed import Attribution, AttributedPrediction, Cost, Foil
from lm.infer.faithfulness import faithfulness
from lm.infer.methods import MethodContext, MethodFigures, MethodOptions, get_method, method_names
from lm.infer.pointer import CacheExplainer, cache_pointer, deletion_reach
from lm.infer.predictor import Predictor, WordPrediction
from lm.infer.query import keep_last_units
from lm.infer.reach import reach_figures, sentences_of, unit_words, widest, word_sentences, words_of
from lm.infer.scoring import NEG, score_words
from lm.infer.textcache import read_memory

# The result types are re-exported: callers that attribute read them from here.
__all__ = ["Attribution", "AttributedPrediction", "HOW", "attribute", "method_names"]

# How the gradient is taken, as every attributed answer states it.
HOW = {
    "model_mode": "evaluation (no dropout)",
    "initial_state": "zero state at the start of the text",
    "gradient_of": "log P(word | text) as served (mixed with the continuous cache when 'cache' is true): the word's "
                   "units and the boundary after them, every spelling summed",
}


def _foil(predictor: Predictor, result, foil: str | None) -> WordPrediction | None:
    """The foil word scored exactly after the text, as the predictions were (same mixture, same reads), with its
    spellings; None without a foil (one of only whitespace is none)."""
    word = (foil or "").strip()
    if not word:
        return None
    (spelling,), _ = score_words(predictor.units, result.reads, result.line_start, result.query, [word])
    remainder = word[len(result.query.partial):] if result.query.completing else word
    return WordPrediction(word, spelling.logprob, remainder, spelling.paths, spelling.path_logprobs)


def attribute(predictor: Predictor, text: str, k: int = 5, method: str = "saliency", threshold: float = 0.01,
              verify: bool = False, max_units: int | None = None, beam_width: int = 16, temperature: float = 1.0,
              text_cache: bool | None = None, foil: str | None = None,
              options: MethodOptions | None = None) -> Attribution:
    """Predict the next words after `text` and attribute each to the text's positions with `method` (see the module
    docstring); `text_cache`: predict and differentiate the mixture with the continuous cache (see
    `Predictor.uses_text_cache`); `foil`: explain each word against this one (log P(word) - log P(foil));
    `options`: the methods' options (integrated gradients' steps and baseline, occlusion's rungs)."""
    chosen = get_method(method)  # ValueError naming the registered methods
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be between 0 and 1, not {threshold}")
    options = options or MethodOptions()
    started = time.perf_counter()
    tokenizer = predictor.tokenizer
    # The input limit: the model reads only the last max_units units, exactly as Predictor.predict does with it.
    query, cut = keep_last_units(text, tokenizer, max_units)
    ids, spans = tokenizer.encode_with_offsets(query.context)
    units = tuple(ids)
    # One read of the text serves the prediction and the gradients (see lm/infer/context_grad.py).
    trace = predictor.trace(units)
    settings = predictor.text_cache_settings if predictor.uses_text_cache(text_cache) else None
    memory = None
    if settings is not None:  # the cache's keys are the read's top-layer outputs, as a served prediction's are
        memory = read_memory(None, None, trace.outputs[-1], [tokenizer.newline_id, *units], settings.window)
    context = predictor.context_from(units, trace.final, trace.logits, memory)
    result = predictor.predict_from(context, query, k=k, beam_width=beam_width, temperature=temperature,
                                    text_cache=settings is not None)
    result.cut = cut
    predicted = time.perf_counter()
    unit_list = [(query.context[s:e], s, e) for s, e in spans]
    words = words_of(query.context)
    unit_word = unit_words(unit_list, words)
    sentences = sentences_of(query.context, words)
    attribution = Attribution(result, chosen.name, threshold, unit_list, words, unit_word, sentences=sentences,
                              word_sentence=word_sentences(words, sentences), options=options,
                              description=chosen.description)
    foil_word = _foil(predictor, result, foil)
    if foil_word is not None:
        attribution.foil = Foil(foil_word.word, foil_word.logprob if foil_word.logprob > NEG else None)
    if not result.predictions:
        attribution.cost = Cost((predicted - started) * 1e3, 0.0)
        return attribution
    ctx = MethodContext(predictor, trace, result, query, spans, temperature, options, foil_word)
    output = chosen.compute(ctx)
    attribution.cost = Cost((predicted - started) * 1e3, (time.perf_counter() - predicted) * 1e3)
    if output.influence.shape != (len(result.predictions), len(spans)):
        raise ValueError(f"method {chosen.name!r} gave influence of shape {output.influence.shape}, not "
                         f"{(len(result.predictions), len(spans))}")
    explainer = CacheExplainer(predictor, result, spans, query.context, temperature) if result.text_cache else None
    for row, prediction in enumerate(result.predictions):
        influence_np = output.influence[row]
        gradient_reach = reach_figures(influence_np, spans, unit_word, len(query.context), len(words), threshold)
        figures = output.figures[row] if output.figures else MethodFigures()
        item = AttributedPrediction(prediction, influence_np, gradient_reach, gradient_reach, figures=figures)
        if result.text_cache:
            explanation = explainer.explain(prediction)
            item.pointer = cache_pointer(explanation, spans, unit_word, len(query.context), threshold)
            item.reach = widest(gradient_reach, deletion_reach(explanation.logprob_change, -math.log1p(-threshold)),
                                item.pointer.deletion_tokens("90"), item.pointer.deletion_tokens("99"), spans, unit_word,
                                len(query.context))
        if verify:
            item.faithfulness = faithfulness(predictor, query, spans, item.reach, prediction, temperature, result.text_cache)
        attribution.predictions.append(item)
    return attribution
