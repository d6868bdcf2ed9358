"""Every answer Reach gives, as pydantic models: one contract for HTTP and the command line.

`/v1/predict` and `python -m lm predict --json` / `attribute --json` answer
with a `PredictResponse`; `/v1/generate` and `python -m lm generate --json`
with a `GenerateResponse`; `/v1/models` lists `ModelCard`s. The server and
the CLI build these with the functions below and print `to_json`, so their
answers cannot differ, and /openapi.json takes its response schemas from the
same classes (server/openapi.py).

Optional blocks are present only when the request asked for them
(`attribution`, each prediction's `reach`, `pointer`, `faithfulness`,
`influence` ...): a field whose default is None is left out of the answer
until it is set, so a field set to null on purpose (a prediction's
`pointer` without the text cache) stays in the answer as null.

Offsets (`start`, `end`) always index the response's `text`, the whole text
as normalised, also when an input limit left its start unread
(`context.dropped_chars`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer

from lm.checkpoint import Checkpoint
from lm.infer.attributed import Attribution, AttributedPrediction
from lm.infer.generate import Generation
from lm.infer.pointer import Pointer as PointerFigures
from lm.infer.predictor import PredictionResult, WordPrediction
from lm.infer.methods import MethodFigures
from lm.infer.reach import Reach as ReachFigures
from lm.tokenizers import Tokenizer

__all__ = ["Answer", "AttributionInfo", "Completeness", "ContextSummary", "Cost", "Distance", "Foil", "OcclusionReach",
           "Rung", "SentenceInfluence", "GenerateResponse", "GeneratedWord", "ModelCard",
           "PredictResponse", "Prediction", "Reach", "attribution_answer", "generation_answer", "model_card",
           "prediction_answer", "to_json"]


class Answer(BaseModel):
    """An answer's part: no field beyond those declared; an optional field (default None) appears only once set."""

    model_config = ConfigDict(extra="forbid")

    @model_serializer(mode="wrap")
    def _leave_out_unset_options(self, handler):
        data = handler(self)
        for name, field in type(self).model_fields.items():
            if field.default is None and name not in self.model_fields_set:
                data.pop(field.alias or name, None)
        return data


class FixedAnswer(BaseModel):
    """An answer's part with no optional field: nothing to leave out, so no serialiser hook. `Answer`'s runs in
    Python for every object, about 4 us each, and a 200-word answer has thousands of units (12 ms a request)."""

    model_config = ConfigDict(extra="forbid")

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs):
        super().__pydantic_init_subclass__(**kwargs)
        optional = [name for name, field in cls.model_fields.items() if field.default is None]
        if optional:
            raise TypeError(f"{cls.__name__} has optional fields {optional}: derive it from Answer, which leaves "
                            "them out until set")


# Reach ---------------------------------------------------------------------


class Reach(Answer):
    """How far back influence reaches from the prediction point (the last unit read is at distance 1)."""

    tokens: int = Field(ge=0, description="threshold reach: distance to the farthest unit whose influence is at least "
                                          "`threshold` times the largest, in units")
    words: int = Field(ge=0, description="the threshold reach in words")
    chars: int = Field(ge=0, description="the threshold reach in characters")
    mass90_tokens: int = Field(ge=0, description="the smallest distance covering 90% of the total influence, in units")
    mass99_tokens: int = Field(ge=0, description="the same for 99%")
    mass90_words: int = Field(ge=0)
    mass99_words: int = Field(ge=0)
    mass90_chars: int = Field(ge=0)
    mass99_chars: int = Field(ge=0)
    threshold: float = Field(gt=0, lt=1)

    @classmethod
    def of(cls, reach: ReachFigures) -> Reach:
        return cls(tokens=reach.tokens, words=reach.words, chars=reach.chars, mass90_tokens=reach.mass90_tokens,
                   mass99_tokens=reach.mass99_tokens, mass90_words=reach.mass90_words, mass99_words=reach.mass99_words,
                   mass90_chars=reach.mass90_chars, mass99_chars=reach.mass99_chars, threshold=reach.threshold)


class Distance(Answer):
    """A distance back from the prediction point in units, words and characters."""

    tokens: int = Field(ge=0)
    words: int = Field(ge=0)
    chars: int = Field(ge=0)


class PointerReach(Distance):
    """Distance back to the farthest position whose share of the copies is at least `threshold` times the largest
    (0: the text cache copies from nowhere in the text)."""

    threshold: float = Field(gt=0, lt=1)


class DeletionReach(Distance):
    """Cutting the text to its last `tokens` units moves log P(word) through the text cache by at most `tolerance`
    nats, the model's own distributions held fixed."""

    tolerance: float = Field(gt=0)


class DeletionLevels(Answer):
    """The deletion reach at the 99% (0.01 nats) and 90% (0.105 nats) tolerances."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)

    level_99: DeletionReach = Field(alias="99")
    level_90: DeletionReach = Field(alias="90")


class PointerPosition(Answer):
    """A unit the text cache copies (at least 0.1% of the copies), with its share."""

    text: str
    start: int = Field(ge=0)
    end: int = Field(ge=0)
    share: float = Field(ge=0, le=1)


class Pointer(Answer):
    """The text cache's pointer: where in the text it copies the word from, how likely it copied, and how far back
    cutting the text would change it."""

    reach: PointerReach
    copy_probability: float = Field(ge=0, le=1, description="the probability, given the word, that the mixture copied "
                                    "at least one of its units (or the boundary after it) from the text cache's memory")
    entries: int = Field(ge=0, description="memory entries of the text that vote for one of the word's units")
    own_share: float = Field(ge=0, le=1, description="share of the copies made from the word's own earlier units")
    deletion_reach: DeletionLevels
    positions: list[PointerPosition] | None = Field(None, description="only with attribution full; in text order")

    @classmethod
    def of(cls, pointer: PointerFigures, full: bool, shift: int) -> Pointer:
        levels = {level: DeletionReach(**{key: pointer.deletion[level][key] for key in ("tokens", "words", "chars", "tolerance")})
                  for level in ("99", "90")}
        answer = cls(reach=PointerReach(tokens=pointer.tokens, words=pointer.words, chars=pointer.chars,
                                        threshold=pointer.threshold),
                     copy_probability=pointer.copy_probability, entries=pointer.entries, own_share=pointer.own_share,
                     deletion_reach=DeletionLevels(**levels))
        if full:
            answer.positions = [PointerPosition(text=p.text, start=p.start + shift, end=p.end + shift, share=p.share)
                                for p in pointer.positions]
        return answer


# Predictions ---------------------------------------------------------------


class ContextSummary(Answer):
    """What was read: the context's units, words and characters, what an input limit left unread, and what the model
    never saw."""

    tokens: int = Field(ge=0, description="units of context read (characters or subword pieces)")
    words: int = Field(ge=0)
    chars: int = Field(ge=0)
    truncated: bool = Field(description="whether an input limit (REACH_MAX_CONTEXT_UNITS) left the start of the text unread")
    dropped_chars: int = Field(ge=0, description="characters at the start of the text not read; offsets still index the "
                                                 "whole text")
    dropped_units: int = Field(ge=0)
    unknown_units: int = Field(ge=0, description="units of the read context the model reads as unknown (char models) or "
                                                 "spells as UTF-8 bytes (subword models)")
    unknown_chars: int = Field(ge=0, description="characters of the whole text covered by such units")


class CutFigures(Answer):
    removed_chars: int = Field(ge=0)
    logprob: float | None = Field(description="null: the word has probability 0 in the cut text")
    logprob_change: float | None


class Faithfulness(Answer):
    """How far log P(word) moves when the text beyond the 99% mass reach is replaced by neutral filler
    (`logprob_change`) or cut off (`cut`); characters count from the start of the text read."""

    replaced_chars: int = Field(ge=0)
    logprob: float | None = Field(description="null: the word has probability 0 after the filler (log 0)")
    logprob_change: float | None
    cut: CutFigures


class UnitInfluence(FixedAnswer):
    """A unit read, with its character offsets and its influence on the prediction."""

    text: str
    start: int = Field(ge=0)
    end: int = Field(ge=0)
    score: float
    word: int = Field(description="index into word_influence (-1: a unit of whitespace between words)")


class WordInfluence(FixedAnswer):
    """A whitespace-separated word read, with its offsets and its units' influence summed."""

    text: str
    start: int = Field(ge=0)
    end: int = Field(ge=0)
    score: float


class SentenceInfluence(FixedAnswer):
    """A sentence of the context (ended by ".", "!" or "?" or a line break), with its words' influence summed."""

    text: str
    start: int = Field(ge=0)
    end: int = Field(ge=0)
    score: float


class Completeness(Answer):
    """Integrated gradients' completeness check: the signed attributions sum to the objective's change from the
    baseline to the input (Sundararajan et al. 2017); `gap` is how far they miss."""

    attribution_sum: float
    input_value: float = Field(description="the objective at the input: log P(word), less log P(foil) with a foil")
    baseline_value: float = Field(description="the objective at the baseline")
    gap: float = Field(description="attribution_sum - (input_value - baseline_value)")


class Rung(Answer):
    """One rung of occlusion's ladder: the text farther back than `distance` units replaced by neutral filler."""

    distance: int = Field(ge=0, description="units kept, counted back from the prediction point")
    value: float | None = Field(description="the objective after the replacement: log P(word), less log P(foil) with "
                                            "a foil (null: probability 0)")
    change: float | None = Field(description="value minus the objective on the unchanged text")


class OcclusionReach(Distance):
    """The shortest kept distance from which on every rung of the ladder moves the objective by less than `tolerance`
    nats (0: even replacing the whole text does not)."""

    tolerance: float = Field(gt=0)


class Prediction(Answer):
    """One predicted word; the attribution fields only when the request asked for attribution."""

    word: str
    probability: float = Field(ge=0, le=1)
    logprob: float = Field(le=0)
    remainder: str = Field(description="what is still to type when completing a word (the whole word otherwise)")
    reach: Reach | None = Field(None, description="what holds for the prediction as served: the gradient's reach, "
                                "widened by the text cache's exact deletion reach when the text cache is mixed in")
    gradient_reach: Reach | None = Field(None, description="the gradient's reach alone")
    pointer: Pointer | None = Field(None, description="the text cache's pointer; null when the text cache is not mixed in")
    faithfulness: Faithfulness | None = Field(None, description="only with verify")
    influence: list[UnitInfluence] | None = Field(None, description="only with attribution full")
    word_influence: list[WordInfluence] | None = Field(None, description="only with attribution full")
    sentence_influence: list[SentenceInfluence] | None = Field(None, description="only with attribution full")
    completeness: Completeness | None = Field(None, description="integrated_gradients only")
    ladder: list[Rung] | None = Field(None, description="occlusion only: every rung, nearest first")
    occlusion_reach: OcclusionReach | None = Field(None, description="occlusion only: how far back replacing the "
                                                   "text moves the objective by at least `tolerance` nats")
    profile: list[float] | None = Field(None, description="only with attribution full: influence by distance 1, 2, ... "
                                                          "divided by its maximum")


class Foil(Answer):
    """The foil of a contrastive attribution."""

    word: str
    logprob: float | None = Field(description="exact log P(foil | text), scored as the predictions were; null: "
                                              "probability 0, so there is no contrast (every influence is 0)")


class Cost(Answer):
    """What this answer's attribution cost, in milliseconds of wall time for the whole answer (all k predictions)."""

    prediction_ms: float = Field(ge=0, description="the read of the text, the search and the exact scoring")
    method_ms: float = Field(ge=0, description="the method: every prediction's influence together (not the pointer "
                                               "or the faithfulness check)")
    ratio: float | None = Field(description="method_ms / prediction_ms (null when prediction_ms is 0)")


class AttributionInfo(Answer):
    """How the influence was computed."""

    method: str
    description: str = Field(description="what a unit's influence is under this method")
    threshold: float = Field(gt=0, lt=1)
    model_mode: str
    initial_state: str
    gradient_of: str
    foil: Foil | None = Field(None, description="only with a foil: the objective is log P(word) - log P(foil)")
    cost: Cost


class PredictResponse(Answer):
    """The next words after a text (`/v1/predict`, `lm predict --json`, `lm attribute --json`)."""

    model: str = Field(description="the served model's name (the CLI: the checkpoint directory)")
    text: str = Field(description="the whole text as normalised; every offset indexes it")
    context: ContextSummary
    completing: bool = Field(description="whether the text ends inside a word, whose completions are predicted")
    partial: str = Field(description="the unfinished word being completed ('' for a next word)")
    predictions: list[Prediction]
    text_cache: bool = Field(description="whether the continuous cache over the text was mixed in")
    attribution: AttributionInfo | None = Field(None, description="absent with attribution none")


def _unknown_units(tokenizer: Tokenizer, text: str) -> int:
    """Units of `text` the model reads as unknown (char models) or spells as bytes (subword models)."""
    return sum(tokenizer.unit_text(unit) is None for unit in tokenizer.encode(text))


def _unknown_chars(tokenizer: Tokenizer, text: str) -> int:
    """Characters of `text` covered by an unknown or byte unit (2-4 byte units are one character)."""
    units, spans = tokenizer.encode_with_offsets(text)
    return len({position for unit, (start, end) in zip(units, spans) if tokenizer.unit_text(unit) is None
                for position in range(start, end)})


def _context(tokenizer: Tokenizer, result: PredictionResult) -> ContextSummary:
    context = result.query.context
    return ContextSummary(tokens=result.context_units, words=len(context.split()), chars=len(context),
                          truncated=result.cut.truncated, dropped_chars=result.cut.chars, dropped_units=result.cut.units,
                          unknown_units=_unknown_units(tokenizer, context),
                          unknown_chars=_unknown_chars(tokenizer, result.cut.text))


def _prediction(prediction: WordPrediction) -> Prediction:
    return Prediction(word=prediction.word, probability=prediction.probability, logprob=prediction.logprob,
                      remainder=prediction.remainder)


def prediction_answer(model: str, tokenizer: Tokenizer, result: PredictionResult) -> PredictResponse:
    """The answer for a prediction without attribution."""
    return PredictResponse(model=model, text=result.cut.text, context=_context(tokenizer, result),
                           completing=result.completing, partial=result.query.partial,
                           predictions=[_prediction(p) for p in result.predictions], text_cache=result.text_cache)


def _attributed(attribution: Attribution, item: AttributedPrediction, full: bool) -> Prediction:
    shift = attribution.result.cut.chars  # attribution's offsets index the read text, which starts there
    answer = _prediction(item.prediction)
    answer.reach = Reach.of(item.reach)
    answer.gradient_reach = Reach.of(item.gradient_reach)
    answer.pointer = Pointer.of(item.pointer, full, shift) if item.pointer is not None else None
    if item.faithfulness is not None:
        answer.faithfulness = Faithfulness(**item.faithfulness)
    if full:
        answer.influence = [UnitInfluence(text=text, start=start + shift, end=end + shift, score=float(score), word=word)
                            for (text, start, end), score, word in zip(attribution.units, item.influence,
                                                                       attribution.unit_word)]
        answer.word_influence = [WordInfluence(text=text, start=start + shift, end=end + shift, score=score)
                                 for (text, start, end), score in zip(attribution.words,
                                                                      attribution.word_scores(item.influence))]
        answer.sentence_influence = [SentenceInfluence(text=text, start=start + shift, end=end + shift, score=score)
                                     for (text, start, end), score in zip(attribution.sentences,
                                                                          attribution.sentence_scores(item.influence))]
        answer.profile = item.profile()
    _method_figures(answer, attribution, item.figures)
    return answer


def _method_figures(answer: Prediction, attribution: Attribution, figures: MethodFigures) -> None:
    """A method's own figures on a prediction's answer (integrated gradients' completeness, occlusion's ladder)."""
    if figures.completeness is not None:
        check = figures.completeness
        answer.completeness = Completeness(attribution_sum=check.attribution_sum, input_value=check.input_value,
                                           baseline_value=check.baseline_value, gap=check.gap)
    if figures.ladder is not None:
        answer.ladder = [Rung(distance=rung.distance, value=rung.value, change=rung.change) for rung in figures.ladder]
    if figures.exact_reach is not None:
        words, chars = attribution.distance(figures.exact_reach)
        answer.occlusion_reach = OcclusionReach(tokens=figures.exact_reach, words=words, chars=chars,
                                                tolerance=figures.tolerance)


def attribution_answer(model: str, tokenizer: Tokenizer, attribution: Attribution, full: bool,
                       how: dict[str, str]) -> PredictResponse:
    """The answer for an attributed prediction (`full`: per-unit and per-word influence, the decay profile, the
    pointer's positions); `how` says how the gradient was taken (lm/infer/attribution.py's HOW)."""
    answer = prediction_answer(model, tokenizer, attribution.result)
    answer.predictions = [_attributed(attribution, item, full) for item in attribution.predictions]
    cost = attribution.cost
    info = AttributionInfo(method=attribution.method, description=attribution.description,
                           threshold=attribution.threshold, **how,
                           cost=Cost(prediction_ms=cost.prediction_ms, method_ms=cost.method_ms,
                                     ratio=cost.method_ms / cost.prediction_ms if cost.prediction_ms > 0 else None))
    if attribution.foil is not None:
        info.foil = Foil(word=attribution.foil.word, logprob=attribution.foil.logprob)
        info.gradient_of = f"{info.gradient_of}, less log P(foil | text) scored the same way"
    answer.attribution = info
    return answer


# Generation ----------------------------------------------------------------


class GeneratedWord(Answer):
    """One generated word."""

    word: str
    text: str = Field(description="what this word appended: the whitespace before it and the word")
    probability: float = Field(ge=0, le=1, description="exact P(this word, then a boundary | the text before it), "
                               "untempered; the mixed model's when the response's text_cache is true")
    logprob: float = Field(le=0)


class GenerateResponse(Answer):
    """A continuation (`/v1/generate`, `lm generate --json`)."""

    model: str
    text: str = Field(description="the text as normalised and read by the model")
    continuation: str = Field(description="the generated text, to append to `text`")
    seed: int = Field(description="the seed used")
    stopped: Literal["words", "newline", "no_words"]
    words: list[GeneratedWord]
    text_cache: bool = Field(description="whether the continuous cache over the text was mixed in")


def generated_word(word) -> GeneratedWord:
    """The answer's form of one lm/infer/generate.py GeneratedWord."""
    return GeneratedWord(word=word.word, text=word.text, probability=word.probability, logprob=word.logprob)


def generation_answer(model: str, generation: Generation) -> GenerateResponse:
    return GenerateResponse(model=model, text=generation.text, continuation=generation.continuation, seed=generation.seed,
                            stopped=generation.stopped, words=[generated_word(word) for word in generation.words],
                            text_cache=generation.text_cache)


# Model cards ---------------------------------------------------------------


class TokenizerCard(Answer):
    kind: str | None
    vocab_size: int | None


class BpttCard(Answer):
    k1: int | None = Field(description="units between truncations (the stride)")
    k2: int | None = Field(description="units backpropagated through")
    variable: bool | None


class ClippingCard(Answer):
    clip_norm: float | None
    clip_value: float | None
    threshold_used: float | None
    clipped_steps: int | None
    skipped_steps: int | None


class HeldoutFigures(Answer):
    bpc: float | None
    word_ppl: float | None


class HeldoutCard(Answer):
    test: HeldoutFigures
    valid: HeldoutFigures
    next_word_accuracy: dict | None = Field(description="top-1/3/5 next-word accuracy on the test split, as trained")


class TextCacheCard(Answer):
    """The continuous cache's settings tuned on the valid split, and the held-out figures with it."""

    window: int | None
    theta: float | None
    weight: float | None
    chosen: str | None = None
    size_weights: list[list[float]] | None = Field(None, description="(keys in memory, weight) anchors: the weight by "
                                                   "memory size tuned on prompts; null: tuned on one stream only")
    test: HeldoutFigures
    valid: HeldoutFigures


class ModelCard(Answer):
    """What a client needs to know about a served model, from its checkpoint's config.json."""

    name: str
    cell: str | None
    layers: int | None
    hidden_dim: int | None
    embed_dim: int | None
    tokenizer: TokenizerCard
    parameters: int | None
    training_tokens: int | None
    training_steps: int | None
    bptt: BpttCard
    clipping: ClippingCard
    corpus: str | None
    heldout: HeldoutCard
    text_cache: TextCacheCard | None = Field(description="null: predictions use the model alone")
    created: str | None


def _figures(split: dict) -> HeldoutFigures:
    return HeldoutFigures(bpc=split.get("bpc"), word_ppl=split.get("word_ppl"))


def model_card(name: str, checkpoint: Checkpoint) -> ModelCard:
    """The card of a checkpoint served as `name`."""
    meta = checkpoint.meta
    train, model, metrics = meta.get("train", {}), meta.get("model", {}), meta.get("metrics", {})
    tuned = metrics.get("text_cache", metrics.get("cache"))  # checkpoints before the naming pass wrote "cache"
    stride = train.get("bptt_stride") or train.get("bptt")
    sizes = tuned.get("size_weights") if tuned else None
    return ModelCard(
        name=name, cell=model.get("cell"), layers=model.get("num_layers"), hidden_dim=model.get("hidden_dim"),
        embed_dim=model.get("embed_dim"),
        tokenizer=TokenizerCard(kind=meta.get("tokenizer", {}).get("kind"), vocab_size=meta.get("tokenizer", {}).get("vocab_size")),
        parameters=meta.get("parameters"), training_tokens=metrics.get("training_tokens"),
        training_steps=metrics.get("steps"),
        bptt=BpttCard(k1=stride, k2=train.get("bptt"), variable=train.get("variable_bptt")),
        clipping=ClippingCard(clip_norm=train.get("clip_norm"), clip_value=train.get("clip_value"),
                              threshold_used=metrics.get("clip_threshold"), clipped_steps=metrics.get("clipped_steps"),
                              skipped_steps=metrics.get("skipped_steps")),
        corpus=meta.get("corpus", {}).get("name"),
        heldout=HeldoutCard(test=_figures(metrics.get("test", {})), valid=_figures(metrics.get("valid", {})),
                            next_word_accuracy=metrics.get("accuracy")),
        text_cache=None if not tuned else TextCacheCard(
            window=tuned.get("window"), theta=tuned.get("theta"), weight=tuned.get("weight"), chosen=tuned.get("chosen"),
            size_weights=[list(map(float, pair)) for pair in sizes] if sizes else None,
            test=_figures(tuned.get("test", {})), valid=_figures(tuned.get("valid", {}))),
        created=meta.get("created"))


def to_json(answer: BaseModel, indent: int | None = None) -> str:
    """The answer as JSON: options never set left out, non-ASCII kept, NaN and infinities as null."""
    return answer.model_dump_json(indent=indent)
