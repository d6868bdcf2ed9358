"""The attribution methods' registry, occlusion against brute-force re-scoring, contrastive attribution, aggregation to
words and sentences, and method, foil and options over HTTP and the CLI."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lm.__main__ import main as lm_main
from lm.answers import attribution_answer, to_json
from lm.checkpoint import load_checkpoint
from lm.config import ATTRIBUTION_METHODS
from lm.infer.attribution import HOW, attribute
from lm.infer.faithfulness import FILLER
from lm.infer.methods import Method, MethodFigures, MethodOptions, MethodOutput, get_method, method_names, register, \
    unregister
from lm.infer.methods import occlusion
from lm.infer.methods.occlusion import OCCLUSION_TOLERANCE, FillerStates, influence_from_ladder, ladder
from lm.infer.predictor import Predictor
from lm.infer.reach import sentences_of, word_sentences, words_of

TEXT = "The album was released in 1998. It sold well in the United States, and it was "


@pytest.fixture(scope="module")
def char_predictor(tiny_run):
    checkpoint = load_checkpoint(tiny_run.out)
    return Predictor(checkpoint.model, checkpoint.tokenizer, text_cache_settings=checkpoint.text_cache_settings)


@pytest.fixture(scope="module")
def subword_predictor(tiny_subword_run):
    checkpoint = load_checkpoint(tiny_subword_run.out)
    return Predictor(checkpoint.model, checkpoint.tokenizer)


def _payload(predictor, attribution, full=True) -> dict:
    return json.loads(to_json(attribution_answer("m", predictor.tokenizer, attribution, full=full, how=HOW)))


def test_the_registry_and_the_configured_names_agree():
    assert set(method_names()) == set(ATTRIBUTION_METHODS)
    assert method_names()[:2] == ("saliency", "grad_x_input")
    with pytest.raises(ValueError, match="method must be one of saliency, grad_x_input"):
        get_method("lime")
    with pytest.raises(ValueError, match="registered already"):
        register(get_method("saliency"))


def test_a_method_added_to_the_registry_is_attributed_like_the_others(subword_predictor):
    """A toy method (influence = the unit's distance from the prediction point) gets reach, words, sentences, cost."""
    seen = []

    def compute(ctx):
        seen.append((len(ctx.result.predictions), len(ctx.spans), ctx.options.rungs, ctx.foil))
        n = len(ctx.spans)
        return MethodOutput(np.tile(np.arange(n, 0, -1, dtype=float), (len(ctx.result.predictions), 1)),
                            [MethodFigures(exact_reach=3, tolerance=0.5) for _ in ctx.result.predictions])

    register(Method("toy", "the unit's distance back", compute))
    try:
        assert "toy" in method_names()
        result = attribute(subword_predictor, TEXT, k=2, method="toy", options=MethodOptions(rungs=7))
        n = len(result.units)
        assert seen == [(2, n, 7, None)]
        entry = result.predictions[0]
        # Influence grows with distance: the farthest unit is the largest, so the threshold reach is the whole text.
        assert entry.reach.tokens == n and entry.influence[0] == n
        payload = _payload(subword_predictor, result)
        assert payload["attribution"]["method"] == "toy"
        assert payload["attribution"]["description"] == "the unit's distance back"
        assert payload["predictions"][0]["occlusion_reach"] == {"tokens": 3, "words": payload["predictions"][0][
            "occlusion_reach"]["words"], "chars": payload["predictions"][0]["occlusion_reach"]["chars"], "tolerance": 0.5}
        assert payload["attribution"]["cost"]["method_ms"] >= 0
    finally:
        unregister("toy")
    assert "toy" not in method_names()


def test_a_method_giving_the_wrong_shape_is_refused(subword_predictor):
    register(Method("broken", "wrong shape", lambda ctx: MethodOutput(np.zeros((1, 3)))))
    try:
        with pytest.raises(ValueError, match="gave influence of shape"):
            attribute(subword_predictor, TEXT, k=2, method="broken")
    finally:
        unregister("broken")


def test_ladder_and_influence_from_it():
    assert ladder(1000, 10) == [0, 1, 2, 5, 10, 22, 46, 100, 215, 464]  # 1000 ** (i / 9)
    assert ladder(3, 10) == [0, 1, 2]
    assert ladder(0, 10) == []
    # Changes at distances 0, 1, 4 (and 0 at n = 6): units at distance 1 get |c0 - c1|, 2..4 share |c1 - c4|, 5..6 |c4|.
    influence = influence_from_ladder([0, 1, 4], np.array([-3.0, -2.0, -0.5]), 6)
    np.testing.assert_allclose(influence, [0.25, 0.25, 0.5, 0.5, 0.5, 1.0])  # text order: distance 6 first
    assert influence.sum() == pytest.approx(3.0)  # the ladder's total variation


def _replaced(predictor, units, distance):
    """The units with those farther back than `distance` replaced by filler units, unit for unit."""
    n = len(units)
    filler = predictor.tokenizer.encode(FILLER * (n + 1))[: n - distance]
    return (*filler, *units[n - distance:])


@pytest.mark.parametrize("which", ["char", "subword", "subword-healed"])
def test_occlusion_equals_brute_force_rescoring(which, char_predictor, subword_predictor):
    """Every rung's value is the exact log P(word) of the replaced text read alone (no batch, no prefix cache): with
    the text cache (char), along the spellings batched over the rungs (subword), with a healed unfinished word."""
    predictor = char_predictor if which == "char" else subword_predictor
    text = TEXT + "rel" if which == "subword-healed" else TEXT
    result = attribute(predictor, text, k=2, method="occlusion", options=MethodOptions(rungs=6))
    if which == "subword-healed":  # the unfinished word is spelled after the context and divided out
        assert result.result.query.required == " rel" and result.result.completing
    units = tuple(predictor.tokenizer.encode(result.result.query.context))
    assert result.result.text_cache == (which == "char")  # the tiny char run's text cache is mixed in by default
    for entry in result.predictions:
        rungs = entry.figures.ladder
        assert [rung.distance for rung in rungs] == ladder(len(units), 6)
        for rung in rungs:
            context = predictor.context_state(_replaced(predictor, units, rung.distance), use_prefix_cache=False)
            exact = predictor.score_word_from(context, result.result.query, entry.prediction.word,
                                              text_cache=result.result.text_cache)
            assert rung.value == pytest.approx(exact, abs=2e-4)
            assert rung.change == pytest.approx(exact - entry.prediction.logprob, abs=2e-4)
        # The influence spreads the ladder's steps: it sums to the total variation of the changes (0 at the full text).
        changes = [rung.change for rung in rungs] + [0.0]
        assert entry.influence.sum() == pytest.approx(sum(abs(a - b) for a, b in zip(changes, changes[1:])), rel=1e-9)
        # The exact reach: every rung from it on moves log P by less than the tolerance, the rung before it does not.
        beyond = [rung for rung in rungs if rung.distance >= entry.figures.exact_reach]
        assert all(abs(rung.change) < OCCLUSION_TOLERANCE for rung in beyond)
        before = [rung for rung in rungs if rung.distance < entry.figures.exact_reach]
        assert not before or abs(before[-1].change) >= OCCLUSION_TOLERANCE


@pytest.mark.parametrize("together", [0, 4, 48])
def test_each_rung_read_equals_its_text_read_alone(together, subword_predictor, monkeypatch):
    """read_rungs, the short rungs as one batch (each reading filler up to its own text) and the longer ones alone:
    every rung's state and top-layer outputs equal a fused read of its whole text from the zero state."""
    monkeypatch.setattr(occlusion, "TOGETHER_UNITS", together)
    predictor = subword_predictor
    units = tuple(predictor.tokenizer.encode(TEXT))
    n = len(units)
    distances = ladder(n, 6)
    filler = occlusion.filler_units(SimpleNamespace(predictor=predictor), n)  # it asks the context for the predictor alone
    with torch.inference_mode():
        along = occlusion.filler_states(predictor, filler)
        reads = occlusion.read_rungs(predictor, along, filler, units, distances, with_outputs=True)
    assert len(reads) == len(distances) and distances[0] == 0
    batched = {distance <= together for distance in distances[1:]}  # read in the batch, or alone
    assert batched == {0: {False}, 4: {True, False}, 48: {True}}[together]
    for read, distance in zip(reads, distances):
        assert read.ids == [predictor.tokenizer.newline_id, *_replaced(predictor, units, distance)]
        with torch.inference_mode():
            outputs, state = predictor.model.features(torch.tensor([read.ids]), predictor.zero_state())
        torch.testing.assert_close(read.state, state, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(read.outputs, outputs[0], rtol=1e-4, atol=1e-5)


def test_the_filler_states_are_read_once_and_kept_until_a_weight_changes(subword_predictor):
    """FillerStates: the states along the filler equal a fused read of it; a shorter or equal filler reads nothing
    more, a longer one only its new units, a different one from the first difference, and a changed weight all."""
    checkpoint_model = subword_predictor.model
    predictor = Predictor(checkpoint_model, subword_predictor.tokenizer)  # its own, so read_states can be watched
    filler = predictor.tokenizer.encode(FILLER * 20)
    read = []
    original = predictor.read_states
    predictor.read_states = lambda inputs, state: read.append(len(inputs)) or original(inputs, state)
    kept = FillerStates()
    states = kept.along(predictor, filler[:30])
    assert read == [1, 30] and states.shape[0] == 31  # the line break, then the units
    for m in (0, 7, 30):
        fused, _ = Predictor(checkpoint_model, predictor.tokenizer).read([predictor.tokenizer.newline_id, *filler[:m]],
                                                                          predictor.zero_state())
        torch.testing.assert_close(states[m], fused, rtol=1e-4, atol=1e-5)
    assert torch.equal(kept.along(predictor, filler[:12]), states[:13]) and read == [1, 30]
    longer = kept.along(predictor, filler[:40])
    assert read == [1, 30, 10] and torch.equal(longer[:31], states)
    other = filler[:20] + [filler[0]] * 5
    kept.along(predictor, other)
    assert read == [1, 30, 10, 5]
    with torch.no_grad():
        checkpoint_model.decoder.bias.add_(0.0)  # a new version of a parameter: its states may differ
    kept.along(predictor, filler[:12])
    assert read == [1, 30, 10, 5, 1, 12]


@pytest.mark.parametrize("which", ["subword", "char-cached"])
def test_occlusion_searches_afresh_where_the_spellings_can_change(which, char_predictor, subword_predictor, monkeypatch):
    """The rung that replaces the whole text ends differently, so it gets a spelling search of its own; with the
    text cache every rung does (its mixture copies from its own text); the others reuse the text's spellings."""
    predictor = subword_predictor if which == "subword" else char_predictor
    searched = []  # one entry per context searched: the rungs' searches run side by side in one call
    original = occlusion.score_words_many
    monkeypatch.setattr(occlusion, "score_words_many", lambda *args: searched.extend(args[1]) or original(*args))
    result = attribute(predictor, TEXT, k=2, method="occlusion", options=MethodOptions(rungs=6))
    rungs = len(result.predictions[0].figures.ladder)
    assert result.result.text_cache == (which == "char-cached")
    assert len(searched) == (rungs if which == "char-cached" else 1)


@pytest.mark.parametrize("which", ["subword", "char-cached"])
def test_searches_side_by_side_equal_each_alone_in_fewer_steps(which, char_predictor, subword_predictor, monkeypatch):
    """score_words_many: the same words after several contexts, each round's reads of every search in one step."""
    from lm.infer.query import make_query
    from lm.infer.scoring import score_words, score_words_many

    predictor = subword_predictor if which == "subword" else char_predictor
    cached = which == "char-cached"
    texts = [TEXT, "The river flows ", "In 1990 the"]
    query = make_query(TEXT, predictor.tokenizer)
    words = [prediction.word for prediction in predictor.predict(TEXT, k=3).predictions] + ["the"]
    contexts = [predictor.context_state(tuple(predictor.tokenizer.encode(make_query(text, predictor.tokenizer).context)))
                for text in texts]
    steps = []  # one item per batched model step
    monkeypatch.setattr(predictor, "step", lambda *args, **kwargs: steps.append(1) or Predictor.step(predictor, *args, **kwargs))
    alone, steps_alone = [], []
    for context in contexts:
        before = len(steps)
        alone.append(score_words(predictor.units, predictor.reads_after(context, text_cache=cached), context.line_start,
                                 query, words))
        steps_alone.append(len(steps) - before)
    knowns = [predictor.reads_after(context, text_cache=cached) for context in contexts]
    before = len(steps)
    together = score_words_many(predictor.units, knowns, [context.line_start for context in contexts], query, words)
    assert max(steps_alone) <= len(steps) - before < sum(steps_alone)
    for (exact, required), (exact_alone, required_alone) in zip(together, alone):
        assert required.logprob == pytest.approx(required_alone.logprob, abs=1e-9)
        for spelling, spelling_alone in zip(exact, exact_alone):
            assert spelling.logprob == pytest.approx(spelling_alone.logprob, abs=1e-9)
            assert sorted(spelling.paths) == sorted(spelling_alone.paths)


def test_contrastive_occlusion_is_the_difference_of_the_two_ladders(subword_predictor):
    plain = attribute(subword_predictor, TEXT, k=2, method="occlusion", options=MethodOptions(rungs=5))
    foil = plain.predictions[1].prediction.word
    contrast = attribute(subword_predictor, TEXT, k=2, method="occlusion", options=MethodOptions(rungs=5), foil=foil)
    assert contrast.foil.word == foil and contrast.foil.logprob == pytest.approx(plain.predictions[1].prediction.logprob)
    first, second = plain.predictions[0].figures.ladder, plain.predictions[1].figures.ladder
    for rung, a, b in zip(contrast.predictions[0].figures.ladder, first, second):
        assert rung.change == pytest.approx(a.change - b.change, abs=1e-9)
    # The foil against itself: no contrast anywhere.
    assert not contrast.predictions[1].influence.any()


def _direct_logprob(model, tokenizer, ends, embeds, word):
    """log P(word + boundary | context) for a char model, written directly: embeds (1, n + 1, E) of the context."""
    units = tokenizer.encode(word)
    tail = torch.nn.functional.embedding(torch.tensor([units]), model.embedding.weight)
    logits, _ = model(embeds=torch.cat([embeds, tail], dim=1))
    logprobs = torch.log_softmax(logits[0].double(), -1)
    n = embeds.size(1)
    total = sum(logprobs[n - 1 + i, u] for i, u in enumerate(units))
    return total + torch.logsumexp(logprobs[n - 1 + len(units), ends], 0)


@pytest.mark.parametrize("method", ["saliency", "grad_x_input"])
def test_the_contrastive_gradient_equals_autograd_on_the_difference(tiny_run, method):
    checkpoint = load_checkpoint(tiny_run.out)
    predictor = Predictor(checkpoint.model, checkpoint.tokenizer)  # the model alone: the direct formula has no cache
    model, tokenizer = predictor.model, predictor.tokenizer
    plain = attribute(predictor, TEXT, k=2, text_cache=False)
    word, foil = plain.predictions[0].prediction.word, "album"
    result = attribute(predictor, TEXT, k=2, method=method, foil=foil, text_cache=False)
    assert result.foil.logprob == pytest.approx(predictor.score_word(TEXT, foil, text_cache=False), abs=1e-6)
    ends = torch.tensor([i for i, e in enumerate(predictor.units.ends) if e])
    ids = torch.tensor([[tokenizer.newline_id, *tokenizer.encode(TEXT)]])
    embeds = model.embedding(ids).detach().requires_grad_(True)
    difference = (_direct_logprob(model, tokenizer, ends, embeds, word)
                  - _direct_logprob(model, tokenizer, ends, embeds, foil))
    (gradient,) = torch.autograd.grad(difference, embeds)
    gradient = gradient[0, 1:]  # (n, E): the leading line break is not a unit of the text
    if method == "saliency":
        expected = gradient.norm(dim=-1)
    else:
        expected = (gradient * embeds[0, 1:].detach()).sum(-1).abs()
    entry = result.predictions[0]
    assert entry.prediction.word == word
    np.testing.assert_allclose(entry.influence, expected.double().numpy(), rtol=1e-3, atol=1e-6 * float(expected.max()))
    # And it is not the plain gradient: the foil's share is subtracted.
    assert not np.allclose(entry.influence, plain.predictions[0].influence, rtol=1e-2)


def test_a_foil_of_probability_zero_gives_no_contrast(subword_predictor):
    result = attribute(subword_predictor, TEXT, k=2, foil="x,y")  # not a word: probability 0
    assert result.foil.word == "x,y" and result.foil.logprob is None
    assert all(not entry.influence.any() for entry in result.predictions)
    assert attribute(subword_predictor, TEXT, k=1, foil="   ").foil is None  # only whitespace: no foil


def test_sentences_and_their_words():
    text = 'He said "Yes." Then left!\nA line without end and more. Last'
    words = words_of(text)
    sentences = sentences_of(text, words)
    assert [s for s, _, _ in sentences] == ['He said "Yes."', "Then left!", "A line without end and more.", "Last"]
    assert word_sentences(words, sentences) == [0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 2, 3]
    assert sentences_of("", []) == []


@pytest.mark.parametrize("method", ["saliency", "occlusion"])
def test_units_words_and_sentences_carry_the_same_influence(subword_predictor, method):
    payload = _payload(subword_predictor, attribute(subword_predictor, TEXT, k=2, method=method))
    for prediction in payload["predictions"]:
        units = sum(unit["score"] for unit in prediction["influence"] if unit["word"] >= 0)
        words = sum(word["score"] for word in prediction["word_influence"])
        sentences = [sentence["score"] for sentence in prediction["sentence_influence"]]
        assert units == pytest.approx(words) and words == pytest.approx(sum(sentences))
        assert [s["text"] for s in prediction["sentence_influence"]] == [
            "The album was released in 1998.", "It sold well in the United States, and it was"]
        for sentence in prediction["sentence_influence"]:
            assert payload["text"][sentence["start"]:sentence["end"]] == sentence["text"]


def test_predict_over_http_with_method_foil_and_options(client):
    body = {"text": TEXT, "k": 2, "model": "subword", "attribution": "full", "method": "occlusion", "rungs": 4}
    response = client.post("/v1/predict", json=body)
    assert response.status_code == 200, response.get_json()
    payload = response.get_json()
    info = payload["attribution"]
    assert info["method"] == "occlusion" and "filler" in info["description"]
    assert info["cost"]["prediction_ms"] > 0 and info["cost"]["method_ms"] > 0
    assert info["cost"]["ratio"] == pytest.approx(info["cost"]["method_ms"] / info["cost"]["prediction_ms"])
    first = payload["predictions"][0]
    assert [rung["distance"] for rung in first["ladder"]] == ladder(payload["context"]["tokens"], 4)
    assert first["occlusion_reach"]["tolerance"] == OCCLUSION_TOLERANCE
    assert "foil" not in info and "completeness" not in first
    foil = payload["predictions"][1]["word"]
    contrast = client.post("/v1/predict", json={**body, "method": "saliency", "foil": f" {foil} "}).get_json()
    assert contrast["attribution"]["foil"]["word"] == foil
    assert contrast["attribution"]["foil"]["logprob"] == pytest.approx(payload["predictions"][1]["logprob"])
    assert "less log P(foil" in contrast["attribution"]["gradient_of"]
    assert "ladder" not in contrast["predictions"][0]
    # Bounds and names are the request model's: clear errors naming the field (400 for a wrong JSON type, 422 else).
    for bad, field, status in [({"rungs": 1}, "rungs", 422), ({"rungs": 33}, "rungs", 422), ({"steps": 0}, "steps", 422),
                               ({"baseline": "noise"}, "baseline", 422), ({"method": "lime"}, "method", 422),
                               ({"foil": 3}, "foil", 400), ({"foil": "x" * 41}, "foil", 422)]:
        refused = client.post("/v1/predict", json={**body, **bad})
        assert refused.status_code == status, (bad, refused.get_json())
        assert refused.get_json()["error"]["param"] == field
    schema = client.get("/openapi.json").get_json()["components"]["schemas"]
    request = next(value for name, value in schema.items() if name.startswith("PredictRequest"))
    assert set(request["properties"]["method"]["enum"]) == set(method_names())
    assert request["properties"]["rungs"]["maximum"] == 32


def test_attribute_cli_takes_method_foil_and_rungs(tiny_subword_run, capsys):
    model = str(tiny_subword_run.out / "best")
    assert lm_main(["attribute", "--model", model, "--json", "-k", "2", "--method", "occlusion", "--rungs", "4",
                    "--foil", "album", TEXT]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["attribution"]["method"] == "occlusion" and payload["attribution"]["foil"]["word"] == "album"
    assert len(payload["predictions"][0]["ladder"]) == len(ladder(payload["context"]["tokens"], 4))
    assert "sentence_influence" in payload["predictions"][0]
    # The terminal view names the method, its cost, the foil and each prediction's own figures, as the JSON gives them.
    assert lm_main(["attribute", "--model", model, "--no-color", "-k", "2", "--method", "occlusion", "--rungs", "4",
                    "--foil", "album", TEXT]) == 0
    shown = capsys.readouterr().out
    reach = payload["predictions"][0]["occlusion_reach"]
    assert "method occlusion: " in shown and "x the prediction's" in shown and "against 'album'" in shown
    assert f"occlusion reach {reach['tokens']} units / {reach['words']} words" in shown
    assert lm_main(["attribute", "--model", model, "--no-color", "-k", "1", "--method", "integrated_gradients", TEXT]) == 0
    shown = capsys.readouterr().out
    assert "completeness: the attributions sum to" in shown and "(gap " in shown
    assert lm_main(["attribute", "--model", model, "--method", "occlusion", "--rungs", "1", TEXT]) == 2
    assert "rungs must be between 2 and 32" in capsys.readouterr().err
