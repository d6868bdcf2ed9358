"""Gradient reach: gradients against Captum and finite differences, batching, reach figures, text mapping, views."""

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch

from conftest import external_references
from lm.__main__ import main as lm_main
from lm.answers import attribution_answer, to_json
from lm.infer.attribution import HOW, attribute
from lm.infer.reach import reach_figures, unit_words, words_of
from lm.infer.word_gradients import path_logprobs, prediction_gradients, target_logprobs
from lm.checkpoint import load_checkpoint
from lm.infer.context_grad import trace_context
from lm.infer.predictor import PredictionResult, Predictor
from lm.reports.views import pieces, render_html, render_terminal
from lm.tokenizers import is_word_char

TEXT = "The album was released in the United States in 1998, and it was "


def _payload(predictor, result, full=True) -> dict:
    """The attribution's answer as HTTP and the CLI send it (lm/answers.py), parsed."""
    return json.loads(to_json(attribution_answer("m", predictor.tokenizer, result, full=full, how=HOW)))


@pytest.fixture(scope="module")
def char_predictor(tiny_run):
    checkpoint = load_checkpoint(tiny_run.out)
    return Predictor(checkpoint.model, checkpoint.tokenizer)


@pytest.fixture(scope="module")
def subword_predictor(tiny_subword_run):
    checkpoint = load_checkpoint(tiny_subword_run.out)
    return Predictor(checkpoint.model, checkpoint.tokenizer)


def _direct_logprob(model, tokenizer, embeds, word):
    """log P(word + boundary | context) for a char model, written directly: embeds (1, n + 1, E) of the context."""
    units = tokenizer.encode(word)
    tail = torch.nn.functional.embedding(torch.tensor([units]), model.embedding.weight)  # (1, m, E), not through the hooked layer
    logits, _ = model(embeds=torch.cat([embeds, tail], dim=1))
    logprobs = torch.log_softmax(logits[0].double(), -1)  # (n + m + 1, V)
    n = embeds.size(1)
    total = sum(logprobs[n - 1 + i, u] for i, u in enumerate(units))
    ends = torch.tensor([i for i, e in enumerate(Predictor(model, tokenizer).units.ends) if e])
    return total + torch.logsumexp(logprobs[n - 1 + len(units), ends], 0)


def test_saliency_equals_captum_and_finite_differences(char_predictor):
    from captum.attr import Saliency

    model, tokenizer = char_predictor.model, char_predictor.tokenizer
    result = attribute(char_predictor, TEXT, k=3)
    entry = result.predictions[0]
    ids = torch.tensor([[tokenizer.newline_id, *tokenizer.encode(TEXT)]])
    embeds = model.embedding(ids).detach()

    def forward(x):
        return _direct_logprob(model, tokenizer, x, entry.prediction.word).float().reshape(1)

    captum = Saliency(forward).attribute(embeds.clone().requires_grad_(True), abs=True)  # (1, n + 1, E)
    expected = captum[0, 1:].norm(dim=-1).double().numpy()
    np.testing.assert_allclose(entry.influence, expected, rtol=1e-4, atol=1e-9 * expected.max())
    # The direct function is the prediction's log-probability.
    assert forward(embeds).detach().item() == pytest.approx(entry.prediction.logprob, abs=1e-5)

    # Finite differences in float64 along the gradient at the five most influential positions.
    double = type(model)(model.config).double().eval()
    double.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    x = double.embedding(ids).detach()
    for position in np.argsort(-entry.influence)[:5]:
        t = int(position) + 1
        direction = torch.zeros_like(x)
        probe = x.clone().requires_grad_(True)
        g = torch.autograd.grad(_direct_logprob(double, tokenizer, probe, entry.prediction.word), probe)[0][0, t]
        direction[0, t] = g / g.norm()
        eps = 1e-5
        with torch.no_grad():
            slope = (_direct_logprob(double, tokenizer, x + eps * direction, entry.prediction.word)
                     - _direct_logprob(double, tokenizer, x - eps * direction, entry.prediction.word)) / (2 * eps)
        assert float(slope) == pytest.approx(entry.influence[position], rel=1e-3)


def test_grad_x_input_equals_captum_layer_gradient_x_activation(char_predictor):
    from captum.attr import LayerGradientXActivation

    model, tokenizer = char_predictor.model, char_predictor.tokenizer
    result = attribute(char_predictor, TEXT, k=2, method="grad_x_input")
    entry = result.predictions[1]
    ids = torch.tensor([[tokenizer.newline_id, *tokenizer.encode(TEXT)]])

    def forward(inputs):
        return _direct_logprob(model, tokenizer, model.embedding(inputs), entry.prediction.word).float().reshape(1)

    layer = LayerGradientXActivation(forward, model.embedding)
    expected = layer.attribute(ids)[0, 1:].sum(-1).abs().detach().double().numpy()
    np.testing.assert_allclose(entry.influence, expected, rtol=1e-4, atol=1e-9 * expected.max())


def test_the_batched_gradients_equal_k_separate_computations(subword_predictor):
    text = "In 1990 the band released a second album, and the "
    result = attribute(subword_predictor, text, k=4)
    tokenizer = subword_predictor.tokenizer
    units = tuple(tokenizer.encode(result.result.query.context))
    trace = trace_context(subword_predictor.model, torch.tensor([tokenizer.newline_id, *units]))
    batched, _ = prediction_gradients(subword_predictor, trace, result.result, 1.0)
    for row, prediction in enumerate(result.result.predictions):
        alone = PredictionResult(result.result.query, [prediction], len(units), result.result.required_logprob,
                                 result.result.required_paths,
                                 required_path_logprobs=result.result.required_path_logprobs)
        single, _ = prediction_gradients(subword_predictor, trace, alone, 1.0)
        torch.testing.assert_close(batched[row], single[0], rtol=1e-4, atol=1e-7)


def test_healed_subword_gradient_is_of_the_conditional_probability(subword_predictor):
    """With a healed unfinished word the objective divides out P(unfinished part): compare to a direct sum."""
    result = attribute(subword_predictor, "The album was rel", k=2)
    assert result.result.completing and result.result.query.required == " rel"
    for entry in result.predictions:
        exact = subword_predictor.score_word("The album was rel", entry.prediction.word)
        assert entry.prediction.logprob == pytest.approx(exact, abs=1e-6)
        assert entry.influence.shape == (len(result.units),) and np.isfinite(entry.influence).all()


def test_attribution_differentiates_the_spellings_that_carry_all_but_the_tolerance(subword_predictor):
    """Longer spellings are dropped, least probable first, while their share stays within the tolerance; one-unit
    ones are kept. On a healed unfinished word the gradient then moves by about the tolerance, with fewer rows."""
    from dataclasses import replace

    from lm.infer.word_gradients import significant_paths

    paths = [((1,), False), ((2, 3), False), ((4, 5), True), ((6,), False), ((7, 8, 9), False)]
    logprobs = [-1.0, -1.5, -30.0, -40.0, -29.0]
    assert significant_paths(paths, logprobs) == [paths[0], paths[1], paths[3]]  # shares of 4e-13 and 2e-13 go
    assert significant_paths(paths, logprobs, tolerance=3e-13) == [paths[0], paths[1], paths[3], paths[4]]
    assert significant_paths(paths, logprobs, tolerance=0.0) is paths
    assert significant_paths(paths, None) is paths
    assert significant_paths(paths, [-1.0, -1.5, -3.0, -40.0, -2.0]) is paths  # every longer path matters

    text = "The band played an internationa"
    result = attribute(subword_predictor, text, k=3).result
    assert result.query.required == " internationa" and result.required_path_logprobs is not None
    kept = significant_paths(result.required_paths, result.required_path_logprobs)
    assert len(kept) < len(result.required_paths)
    tokenizer = subword_predictor.tokenizer
    trace = trace_context(subword_predictor.model, torch.tensor([tokenizer.newline_id,
                                                                 *tokenizer.encode(result.query.context)]))
    pruned, _ = prediction_gradients(subword_predictor, trace, result, 1.0)
    every = replace(result, predictions=[replace(p, path_logprobs=None) for p in result.predictions],
                    required_path_logprobs=None)
    full, _ = prediction_gradients(subword_predictor, trace, every, 1.0)
    torch.testing.assert_close(pruned, full, rtol=1e-4, atol=1e-4 * float(full.abs().max()))


def test_reach_figures_on_hand_made_influence():
    # Units in text order; the last unit is distance 1. Six one-character units, three words "ab cd e".
    spans = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 6)]
    words = [0, 0, 1, 1, 1, 2]  # "ab", " cd" (the space goes with the next word), " e"... as unit -> word
    influence = np.array([0.001, 0.02, 0.0, 0.5, 0.2, 1.0])
    reach = reach_figures(influence, spans, words, text_length=6, word_count=3, threshold=0.01)
    # Distances: d1=1.0, d2=0.2, d3=0.5, d4=0.0, d5=0.02, d6=0.001; >= 0.01 farthest at d5.
    assert (reach.tokens, reach.words, reach.chars) == (5, 3, 5)
    total = influence.sum()  # 1.721: 90% reached at d3 (1.7/1.721), 99% at d5 (1.72/1.721 = 0.9994)
    assert total == pytest.approx(1.721)
    assert (reach.mass90_tokens, reach.mass99_tokens) == (3, 5)
    assert (reach.mass90_words, reach.mass99_words) == (2, 3)
    flat = reach_figures(np.ones(4), spans[:4], [0, 1, 2, 3], 4, 4, threshold=0.5)
    assert (flat.tokens, flat.mass90_tokens, flat.mass99_tokens) == (4, 4, 4)
    assert reach_figures(np.zeros(3), spans[:3], [0, 0, 0], 3, 1).tokens == 0


def test_units_map_to_words_and_offsets(subword_predictor):
    text = "Reach, in short: how far back?"
    words = words_of(text)
    assert [w for w, _, _ in words] == ["Reach,", "in", "short:", "how", "far", "back?"]
    ids, spans = subword_predictor.tokenizer.encode_with_offsets(text)
    units = [(text[s:e], s, e) for s, e in spans]
    owners = unit_words(units, words)
    for (unit_text, start, end), owner in zip(units, owners):
        word, word_start, word_end = words[owner]
        stripped = unit_text.strip()
        assert not stripped or (word_start <= start + unit_text.index(stripped) and end <= word_end)
    result = attribute(subword_predictor, text + " ", k=1)
    payload = _payload(subword_predictor, result)["predictions"][0]
    assert [u["text"] for u in payload["influence"]] == [u for u, _, _ in units]
    assert [w["text"] for w in payload["word_influence"]] == [w for w, _, _ in words]
    assert sum(w["score"] for w in payload["word_influence"]) == pytest.approx(sum(u["score"] for u in payload["influence"]))


def test_response_states_how_the_model_ran_and_uses_the_api_names(char_predictor):
    payload = _payload(char_predictor, attribute(char_predictor, TEXT, k=2, verify=True))
    assert payload["attribution"]["model_mode"].startswith("evaluation") and "zero state" in payload["attribution"]["initial_state"]
    assert payload["context"] == {"tokens": len(TEXT), "words": len(TEXT.split()), "chars": len(TEXT), "truncated": False, "dropped_chars": 0, "dropped_units": 0,
                                  "unknown_units": 0, "unknown_chars": 0}
    entry = payload["predictions"][0]
    assert {"word", "probability", "logprob", "reach", "influence", "word_influence", "profile", "faithfulness"} <= set(entry)
    assert set(entry["reach"]) >= {"tokens", "words", "chars", "mass90_tokens", "mass99_tokens", "threshold"}
    assert entry["profile"][0] == pytest.approx(entry["influence"][-1]["score"] / max(u["score"] for u in entry["influence"]))
    assert "logprob_change" in entry["faithfulness"]


def test_an_input_limit_is_applied_and_reported(char_predictor):
    result = attribute(char_predictor, TEXT * 4, k=1, max_units=50)
    summary = result.context_summary()
    assert summary["truncated"] and summary["tokens"] <= 50 and summary["dropped_chars"] > 0


def test_a_limited_text_is_read_as_prediction_reads_it_and_offsets_index_the_whole_text(cached_predictor):
    text = TEXT * 4
    result = attribute(cached_predictor, text, k=3, max_units=50, text_cache=True)
    predicted = cached_predictor.predict(text, k=3, max_units=50, text_cache=True)
    assert result.result.text_cache and predicted.text_cache
    assert result.result.cut == predicted.cut and predicted.cut.truncated
    assert [p.prediction.word for p in result.predictions] == [p.word for p in predicted.predictions]
    assert [p.prediction.logprob for p in result.predictions] == pytest.approx([p.logprob for p in predicted.predictions], abs=1e-5)
    payload = _payload(cached_predictor, result)
    dropped = payload["context"]["dropped_chars"]
    assert payload["text"] == text and payload["context"]["dropped_units"] == dropped == len(text) - 50  # one unit a character
    entry = payload["predictions"][0]
    assert [u["start"] for u in entry["influence"]] == list(range(dropped, len(text)))
    assert all(u["text"] == text[u["start"]:u["end"]] for u in entry["influence"])
    assert all(w["text"] == text[w["start"]:w["end"]] for w in entry["word_influence"])
    assert all(p["text"] == text[p["start"]:p["end"]] for p in entry["pointer"]["positions"])


def test_the_faithfulness_check_replaces_only_text_beyond_the_reach(char_predictor):
    entry = attribute(char_predictor, TEXT * 3, k=1, verify=True).predictions[0]
    faith = entry.faithfulness
    assert faith["replaced_chars"] == len(TEXT * 3) - entry.reach.mass99_chars
    assert abs(faith["logprob_change"]) < 0.5  # beyond the 99% mass the text barely matters


def test_attribution_never_touches_parameter_gradients(char_predictor):
    attribute(char_predictor, TEXT, k=2)
    assert all(p.grad is None for p in char_predictor.model.parameters())


def test_views_show_the_heatmap_and_reach(char_predictor):
    result = attribute(char_predictor, TEXT, k=2, verify=True)
    colour = render_terminal(result, color=True)
    assert "\x1b[48;5;" in colour and "reach" in colour and "p=" in colour
    plain = render_terminal(result, color=False)
    assert "\x1b[" not in plain and "|" in plain and "strongest words" in plain
    page = render_html(result, "tiny")
    assert page.startswith("<!doctype html>") and "<svg" in page and external_references(page) == []  # self-contained


def test_views_sum_the_influence_over_words_and_sentences(char_predictor):
    text = "The album was released. It sold well! Then the band was "
    result = attribute(char_predictor, text, k=1)
    entry = result.predictions[0]
    units, words, sentences = (pieces(result, entry, view) for view in ("units", "words", "sentences"))
    assert [text[p.start:p.end] for p in sentences] == ["The album was released.", "It sold well!", "Then the band was"]
    assert [text[p.start:p.end] for p in words] == text.split()
    assert [p.score for p in words] == pytest.approx(result.word_scores(entry.influence))
    # Each sentence is the sum of its words, and each word the sum of its units (a space goes with a word or none).
    for sentence in sentences:
        inside = [p.score for p in words if sentence.start <= p.start and p.end <= sentence.end]
        assert sentence.score == pytest.approx(sum(inside))
    for index in range(len(words) - 3, len(words)):
        owned = [p.score for p, owner in zip(units, result.unit_word) if owner == index]
        assert len(owned) >= len(text[words[index].start:words[index].end]) and words[index].score == pytest.approx(sum(owned))
    # The reach is marked before its first unit and its first word; a sentence view has no mark.
    assert [i for i, p in enumerate(units) if p.reach_mark] == [len(units) - entry.reach.tokens]
    assert [i for i, p in enumerate(words) if p.reach_mark] == [len(words) - entry.reach.words]
    assert not any(p.reach_mark for p in sentences)
    shown = render_terminal(result, color=False, view="sentences")
    assert "summed over each sentence" in shown and "strongest sentences" in shown
    assert "|" not in shown.split("):\n")[1].splitlines()[0]  # the text line, with no reach mark
    assert "|" in render_terminal(result, color=False, view="words").split("):\n")[1].splitlines()[0]
    coloured = render_terminal(result, color=True, view="sentences")
    assert coloured.count("\x1b[48;5;") - len(render_terminal(result, color=True).split("\n1e-")[1].split("\x1b[48;5;")) + 1 \
        == 3 + sum(text[p.start:p.end].count("\n") for p in sentences)  # one coloured run per sentence (and legend)
    with pytest.raises(ValueError, match="view must be one of"):
        pieces(result, entry, "paragraphs")
    page = render_html(result, "tiny")
    assert page.count('data-view="sentences"') == 1 and page.count('data-view="words"') == 1


def test_attribute_cli_json_and_html(tiny_run, tmp_path, capsys):
    page = tmp_path / "page.html"
    assert lm_main(["attribute", "--model", str(tiny_run.out), "--json", "--html", str(page), "-k", "2", TEXT]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert len(payload["predictions"]) == 2 and "influence" in payload["predictions"][0]
    assert page.read_text().count("<section>") == 2
    assert lm_main(["attribute", "--model", str(tiny_run.out), "--no-color", TEXT]) == 0
    assert "threshold reach" in capsys.readouterr().out
    assert lm_main(["attribute", "--model", str(tiny_run.out), "--no-color", "--view", "words", TEXT]) == 0
    assert "summed over each word" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit:
        lm_main(["attribute", "--model", str(tiny_run.out), "--view", "paragraphs", TEXT])
    assert exit.value.code == 2 and "invalid choice: 'paragraphs'" in capsys.readouterr().err


@pytest.mark.slow
def test_reach_profile_cli_compares_models(tiny_run, tiny_subword_run, corpus_dir, tmp_path, capsys):
    out = tmp_path / "profile"
    assert lm_main(["reach-profile", "--model", str(tiny_run.out), "--model", str(tiny_subword_run.out), "--samples", "4",
                    "--context-chars", "300", "--corpus", str(corpus_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "tiny-char" in printed and "tiny-subword" in printed
    profiles = json.loads(out.with_suffix(".json").read_text())
    assert set(profiles) == {"tiny-char", "tiny-subword"}
    for profile in profiles.values():
        assert profile["samples"] == 4 and profile["by_unit_distance"]["median"][0] > 0
        assert len(profile["faithfulness"]["values"]) == 4
        assert profile["khandelwal_2018"] == {"context_used_tokens": 200, "word_order_tokens": 50}
    assert out.with_suffix(".png").stat().st_size > 10_000


def test_path_logprobs_equal_a_path_by_path_sum(subword_predictor, monkeypatch):
    """The gathered path terms equal log-probabilities summed unit by unit, in value and in gradient."""
    model, tokenizer = subword_predictor.model, subword_predictor.tokenizer
    ends = torch.from_numpy(subword_predictor.units.ends)
    contexts = ["The album was", "In 1990 the band"]
    rows = [torch.tensor([[tokenizer.newline_id, *tokenizer.encode(text)]]) for text in contexts]
    lengths = torch.tensor([row.size(1) for row in rows])
    padded = torch.zeros(2, int(lengths.max()), dtype=torch.long)
    for index, row in enumerate(rows):
        padded[index, : row.size(1)] = row[0]
    with torch.no_grad():
        _, states = model(padded, lengths=lengths)  # (L, 2, S)
    a, b, c = 40, 41, 123
    paths = [((), True), ((), False), ((a,), False), ((a,), True), ((a, b, c), True), ((b, c), False), ((c,), False),
             ((a, b), False), ((a, b, c), False)]
    path_rows = [0, 1, 0, 1, 1, 0, 1, 1, 1]

    def fresh():
        state = states.clone().requires_grad_(True)
        first = torch.log_softmax(model.output(state[-1, :, : model.config.hidden_dim]).double(), dim=-1)
        return state, first

    state, first = fresh()
    stepped, cells, outputs = [], subword_predictor.differentiable_cells, subword_predictor.output_from_state
    monkeypatch.setattr(subword_predictor, "differentiable_cells",
                        lambda ids, *args, **kwargs: (stepped.append(ids.tolist()), cells(ids, *args, **kwargs))[1])
    monkeypatch.setattr(subword_predictor, "output_from_state",
                        lambda state, **kwargs: (stepped.append(state.size(1)), outputs(state, **kwargs))[1])
    gathered = path_logprobs(subword_predictor, state, first, path_rows, paths, ends)
    monkeypatch.undo()
    # One cell step per distinct prefix whose distribution is used: row 1's (a), (a, b), (a, b, c) and row 0's (b),
    # a depth at a time; then one output product for all four.
    assert stepped == [[a, b], [b], [c], 4]
    (gathered_grad,) = torch.autograd.grad(gathered.sum(), state)

    state, first = fresh()
    expected = []
    for (units, boundary), row in zip(paths, path_rows):
        total, lp, current = first.new_zeros(()), first[row], state[:, row : row + 1]
        for unit in units:
            total = total + lp[unit]
            logits, current = model(torch.tensor([[unit]]), current)
            lp = torch.log_softmax(logits[0, -1].double(), dim=-1)
        if boundary:
            total = total + torch.logsumexp(lp[ends], 0)
        expected.append(total)
    expected = torch.stack(expected)
    (expected_grad,) = torch.autograd.grad(expected.sum(), state)
    torch.testing.assert_close(gathered, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gathered_grad, expected_grad, rtol=1e-4, atol=1e-6)


def test_one_unit_spellings_do_not_run_the_model(subword_predictor, monkeypatch):
    """A required space has a spelling per unit that begins with one: those must cost no model pass."""
    calls = []
    for name in ("differentiable_step", "differentiable_cells", "output_from_state"):
        method = getattr(subword_predictor, name)
        monkeypatch.setattr(subword_predictor, name,
                            lambda *args, method=method, **kwargs: (calls.append(args), method(*args, **kwargs))[1])
    model = subword_predictor.model
    ends = torch.from_numpy(subword_predictor.units.ends)
    state = model.init_state(3).requires_grad_(True)
    first = torch.log_softmax(model.output(state[-1, :, : model.config.hidden_dim]).double(), dim=-1)
    units = range(model.config.vocab_size)
    paths = [((unit,), False) for unit in units for _ in range(3)]
    rows = [row for _ in units for row in range(3)]
    values = path_logprobs(subword_predictor, state, first, rows, paths, ends)
    assert not calls
    torch.testing.assert_close(values, first[torch.tensor(rows), torch.tensor([p[0][0] for p in paths])])
    (grad,) = torch.autograd.grad(values.sum(), state)
    assert torch.isfinite(grad).all()


def test_target_logprobs_equal_the_log_sum_of_each_targets_paths(subword_predictor):
    """Each target's log P is the log-sum over its spellings of their path values, in value and in gradient: one-unit
    spellings gathered, longer ones through path_logprobs, a spellings list shared by two rows, a target with no
    spelling at -inf."""
    model = subword_predictor.model
    ends = torch.from_numpy(subword_predictor.units.ends)
    line = subword_predictor.tokenizer.newline_id
    with torch.no_grad():
        _, state = model(torch.tensor([[line, 40, 41], [line, 7, 9]]))  # (L, 2, S): two different contexts
    shared = [((40,), False), ((41,), False), ((40, 41), True), ((123,), True)]
    targets = [(0, shared), (1, shared), (1, [((7, 8), False), ((9,), False)]), (0, []), (1, [((), True)])]

    def fresh():
        states = state.clone().requires_grad_(True)
        first = torch.log_softmax(model.output(states[-1, :, : model.config.hidden_dim]).double(), dim=-1)
        return states, first

    states, first = fresh()
    got = target_logprobs(subword_predictor, states, first, targets, ends)
    assert got.shape == (5,) and got[3] == float("-inf") and torch.isfinite(got[[0, 1, 2, 4]]).all()
    (got_grad,) = torch.autograd.grad(got[[0, 1, 2, 4]].sum(), states)
    states, first = fresh()
    expected = torch.stack([torch.logsumexp(path_logprobs(subword_predictor, states, first, [row] * len(spellings),
                                                          spellings, ends), 0) for row, spellings in targets if spellings])
    (expected_grad,) = torch.autograd.grad(expected.sum(), states)
    torch.testing.assert_close(got[[0, 1, 2, 4]], expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got_grad, expected_grad, rtol=1e-6, atol=1e-8)


# The continuous cache in the reach -------------------------------------------------------------------------------

CACHED_TEXT = "The cat sat on the mat. The dog saw the cat. A bird sang to the cat and the dog. The "


@pytest.fixture(scope="module")
def cached_predictor(tiny_run):
    """The tiny char model with a continuous cache that matters (weight 0.4) and a window shorter than the text."""
    from lm.config import TextCacheConfig

    checkpoint = load_checkpoint(tiny_run.out)
    return Predictor(checkpoint.model, checkpoint.tokenizer, text_cache_settings=TextCacheConfig(window=60, theta=2.0, weight=0.4,
                                                                                          size_weights=((1, 0.4),)))


def _served_logprob(model, predictor, embeds, spellings, settings):
    """log P(word | context) under the model mixed with the cache, written plainly one unit at a time (autograd
    throughout): embeds (1, n + 1, E) of the line break and the context; spellings: (units, needs a boundary)."""
    hidden = model.config.hidden_dim
    ends = torch.from_numpy(predictor.units.ends)
    ids = [predictor.tokenizer.newline_id, *predictor.tokenizer.encode(CACHED_TEXT)]
    x, finals = embeds, []
    for index in range(model.config.num_layers):
        x, final, _ = model.run_layer(index, x, model.init_state(1)[index])
        finals.append(final)
    outputs, after = x[0], torch.stack(finals)  # (n + 1, H), (L, 1, S)
    totals = []
    for units, boundary in spellings:
        keys, values = list(outputs[:-1]), ids[1:]  # output t is followed by unit t + 1
        state, total = after, embeds.new_zeros((), dtype=torch.float64)
        for step, unit in enumerate([*units, None] if boundary else units):
            query = state[-1, 0, :hidden]
            p_model = torch.softmax(model.output(query).double(), -1)
            seen = torch.stack(keys[-settings.window:])  # a key is visible at most `window` positions back
            votes = torch.softmax(settings.theta * (seen.double() @ query.double()), -1)
            p_cache = torch.zeros_like(p_model).index_add(0, torch.tensor(values[-settings.window:]), votes)
            mixed = (1 - settings.weight) * p_model + settings.weight * p_cache
            if unit is None:
                total = total + torch.log(mixed[ends].sum())
                break
            total = total + torch.log(mixed[unit])
            keys, values = keys + [query], values + [unit]
            _, state = model.step(torch.tensor([unit]), state)
        totals.append(total)
    return torch.logsumexp(torch.stack(totals), 0)


def test_cached_gradients_equal_autograd_of_the_served_mixture_and_finite_differences(cached_predictor):
    model, tokenizer, settings = cached_predictor.model, cached_predictor.tokenizer, cached_predictor.text_cache_settings
    result = attribute(cached_predictor, CACHED_TEXT, k=3)
    assert result.result.text_cache and _payload(cached_predictor, result, full=False)["text_cache"] is True
    ids = torch.tensor([[tokenizer.newline_id, *tokenizer.encode(CACHED_TEXT)]])
    for entry in result.predictions[:2]:
        spellings = entry.prediction.paths
        embeds = model.embedding(ids).detach().requires_grad_(True)
        served = _served_logprob(model, cached_predictor, embeds, spellings, settings)
        # The plain computation is the served (exactly scored, mixed) log-probability ...
        assert float(served.detach()) == pytest.approx(entry.prediction.logprob, abs=1e-4)
        (grad,) = torch.autograd.grad(served, embeds)
        expected = grad[0, 1:].norm(dim=-1).double().numpy()
        # ... and attribution's influence is the norm of its gradient, the cache's keys included.
        np.testing.assert_allclose(entry.influence, expected, rtol=1e-3, atol=1e-6 * expected.max())

    # Without the cache's keys in the gradient the influence would differ: the cache is really differentiated.
    alone = attribute(cached_predictor, CACHED_TEXT, k=3, text_cache=False)
    assert alone.result.text_cache is False
    assert not np.allclose(alone.predictions[0].influence, result.predictions[0].influence, rtol=1e-2)

    # Finite differences in float64 along the gradient at the most influential positions.
    entry = result.predictions[0]
    double = type(model)(model.config).double().eval()
    double.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    x = double.embedding(ids).detach()
    positions = [int(p) for p in np.argsort(-entry.influence)[:4]]
    for position in positions:
        t = position + 1
        probe = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(_served_logprob(double, cached_predictor, probe, entry.prediction.paths, settings), probe)
        direction = torch.zeros_like(x)
        direction[0, t] = g[0, t] / g[0, t].norm()
        eps = 1e-5
        with torch.no_grad():
            slope = (_served_logprob(double, cached_predictor, x + eps * direction, entry.prediction.paths, settings)
                     - _served_logprob(double, cached_predictor, x - eps * direction, entry.prediction.paths, settings)) / (2 * eps)
        assert float(slope) == pytest.approx(entry.influence[position], rel=1e-3)


def test_without_the_cache_attribution_is_unchanged(char_predictor, cached_predictor):
    before = attribute(char_predictor, CACHED_TEXT, k=3)
    off = attribute(cached_predictor, CACHED_TEXT, k=3, text_cache=False)
    assert [e.prediction.word for e in off.predictions] == [e.prediction.word for e in before.predictions]
    for a, b in zip(off.predictions, before.predictions):
        assert np.array_equal(a.influence, b.influence) and a.reach == b.reach and a.pointer is None
    assert all(entry["pointer"] is None for entry in _payload(cached_predictor, off, full=False)["predictions"])


def test_the_pointer_copies_from_units_the_word_needs_and_the_reach_holds_for_the_mixture(cached_predictor):
    result = attribute(cached_predictor, CACHED_TEXT, k=5, threshold=0.01)
    context = result.result.query.context
    window_start = result.units[len(result.units) - cached_predictor.text_cache_settings.window][1]
    checked = 0
    for entry in result.predictions:
        word, pointer, gradient = entry.prediction.word, entry.pointer, entry.gradient_reach
        # Each listed position is a unit inside the window that one of the word's units (or a boundary) copies.
        assert all(p.start >= window_start and context[p.start:p.end] == p.text
                   and (p.text in word or not is_word_char(p.text)) for p in pointer.positions)
        deletion99, deletion90 = pointer.deletion["99"]["tokens"], pointer.deletion["90"]["tokens"]
        assert entry.reach.mass99_tokens == max(gradient.mass99_tokens, deletion99)
        assert entry.reach.mass90_tokens == max(gradient.mass90_tokens, deletion90) and deletion90 <= deletion99
        assert entry.reach.tokens >= gradient.tokens
        if not pointer.positions:
            assert pointer.tokens == 0
            continue
        checked += 1
        assert 0 < pointer.copy_probability < 1 and sum(p.share for p in pointer.positions) <= 1 + 1e-9
        top = max(p.share for p in pointer.positions)
        farthest = min(p.start for p in pointer.positions if p.share >= 0.01 * top)
        assert pointer.chars == len(context) - farthest
        assert pointer.tokens == len(context) - farthest  # one unit per character
        body = _payload(cached_predictor, result)["predictions"][result.predictions.index(entry)]
        assert body["pointer"]["reach"] == {"tokens": pointer.tokens, "words": pointer.words, "chars": pointer.chars,
                                           "threshold": 0.01}
        assert body["pointer"]["entries"] == pointer.entries >= len(pointer.positions)
        assert body["gradient_reach"] == asdict(gradient) and body["reach"] == asdict(entry.reach)
        assert [(p["text"], p["start"]) for p in body["pointer"]["positions"]] == [(p.text, p.start) for p in pointer.positions]
        assert "positions" not in _payload(cached_predictor, result, full=False)["predictions"][0]["pointer"]
    assert checked >= 2  # " the", "cat" or "dog": words of the text are among the predictions


def test_cached_views_mark_the_pointer(cached_predictor):
    result = attribute(cached_predictor, CACHED_TEXT, k=2)
    entry = result.predictions[0]
    assert entry.pointer.positions
    colour = render_terminal(result, color=True)
    assert "\x1b[4m" in colour and "pointer reach" in colour
    plain = render_terminal(result, color=False)
    assert "cache pointer" in plain and "\x1b[" not in plain and "with the continuous cache" in plain.splitlines()[0]
    assert "the model alone" in render_terminal(attribute(cached_predictor, CACHED_TEXT, k=1, text_cache=False)).splitlines()[0]
    page = render_html(result, "tiny")
    marked = sum(len(p.text) for p in entry.pointer.positions)
    first = page.split("<section>")[1].split('data-view="units">')[1].split("</div>")[0]
    assert first.count('class="pointer"') == marked and external_references(page) == []


def test_cached_healed_subword_gradients_are_per_word_and_of_the_served_probability(subword_predictor):
    """With healing, the required part's row (and its keys' gradient) joins every word's; batched equals alone."""
    from lm.config import TextCacheConfig

    cached = Predictor(subword_predictor.model, subword_predictor.tokenizer,
                       text_cache_settings=TextCacheConfig(window=30, theta=1.0, weight=0.3, size_weights=((1, 0.3),)))
    text = "The album was released, and the album was rel"
    result = attribute(cached, text, k=3)
    assert result.result.text_cache and result.result.query.required
    tokenizer = cached.tokenizer
    units = tuple(tokenizer.encode(result.result.query.context))
    trace = trace_context(cached.model, torch.tensor([tokenizer.newline_id, *units]))
    batched, _ = prediction_gradients(cached, trace, result.result, 1.0)
    for row, entry in enumerate(result.predictions):
        # Attribution reads the text traced, score_word with the fused layers: float32 reads agreeing to about 1e-6.
        assert entry.prediction.logprob == pytest.approx(cached.score_word(text, entry.prediction.word), abs=1e-5)
        alone = PredictionResult(result.result.query, [entry.prediction], len(units), result.result.required_logprob,
                                 result.result.required_paths, text_cache=True,
                                 required_path_logprobs=result.result.required_path_logprobs)
        single, _ = prediction_gradients(cached, trace, alone, 1.0)
        torch.testing.assert_close(batched[row], single[0], rtol=1e-4, atol=1e-7)
    plain = attribute(subword_predictor, text, k=3)
    assert not np.allclose(plain.predictions[0].influence, result.predictions[0].influence, rtol=1e-2)
