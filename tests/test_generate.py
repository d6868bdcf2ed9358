"""Text generation (lm/infer/generate.py and `python -m lm generate`) on real tiny trained models."""

import json
import random
from dataclasses import replace

import pytest

from lm.__main__ import main as lm_main
from lm.checkpoint import load_checkpoint
from lm.infer.generate import GenerationSettings, generate, sample_index
from lm.infer.predictor import Predictor


@pytest.fixture(scope="module")
def predictor(tiny_run):
    checkpoint = load_checkpoint(str(tiny_run.out))
    return Predictor(checkpoint.model, checkpoint.tokenizer)


@pytest.fixture(scope="module")
def subword_predictor(tiny_subword_run):
    checkpoint = load_checkpoint(str(tiny_subword_run.out))
    return Predictor(checkpoint.model, checkpoint.tokenizer)


@pytest.fixture(scope="module")
def cached_predictor(tiny_run):
    """The tiny char model with the continuous cache its run tuned and stored."""
    checkpoint = load_checkpoint(str(tiny_run.out))
    assert checkpoint.text_cache_settings is not None and checkpoint.text_cache_settings.weight > 0
    return Predictor(checkpoint.model, checkpoint.tokenizer, text_cache_settings=checkpoint.text_cache_settings)


REPEATED = "Mr. Qwixby spoke to Qwixby. Then Qwixby left, and Mr. "


def test_generation_uses_the_model_alone_by_default_and_mixes_the_stored_cache_in_when_asked(cached_predictor, predictor):
    settings = GenerationSettings(words=10)
    on = generate(cached_predictor, REPEATED, settings, seed=3, text_cache=True)
    off = generate(cached_predictor, REPEATED, settings, seed=3, text_cache=False)
    default = generate(cached_predictor, REPEATED, settings, seed=3)  # the cache repeats text: not by default
    alone = generate(predictor, REPEATED, settings, seed=3)  # a predictor without settings
    assert on.text_cache
    assert not off.text_cache and not alone.text_cache and not default.text_cache
    assert default == off
    # Off is the model alone (the context read through the fused layers' outputs there, its logits alone here).
    assert off.continuation == alone.continuation
    assert [w.logprob for w in off.words] == pytest.approx([w.logprob for w in alone.words], abs=1e-5)
    # On, the same first word is worth another probability under the mixed model, and the draws part ways.
    first = on.words[0].word
    assert on.words[0].logprob == pytest.approx(cached_predictor.score_word(REPEATED, first), abs=1e-6)
    assert abs(on.words[0].logprob - cached_predictor.score_word(REPEATED, first, text_cache=False)) > 1e-3
    assert on.continuation != off.continuation or [w.logprob for w in on.words] != pytest.approx(
        [w.logprob for w in off.words], abs=1e-3)


def test_a_cache_of_weight_zero_generates_what_the_model_alone_does(tiny_run, predictor):
    checkpoint = load_checkpoint(str(tiny_run.out))
    zero = Predictor(checkpoint.model, checkpoint.tokenizer, text_cache_settings=replace(checkpoint.text_cache_settings, weight=0.0,
                                                                                        size_weights=((1, 0.0),)))
    settings = GenerationSettings(words=10)
    mixed, alone = generate(zero, REPEATED, settings, seed=5, text_cache=True), generate(predictor, REPEATED, settings, seed=5)
    assert mixed.text_cache and mixed.continuation == alone.continuation
    assert [w.logprob for w in mixed.words] == pytest.approx([w.logprob for w in alone.words], abs=1e-5)


def test_with_the_cache_the_same_seed_gives_the_same_continuation(cached_predictor):
    settings = GenerationSettings(words=15)
    first = generate(cached_predictor, REPEATED, settings, seed=7, text_cache=True)
    cached_predictor.clear_prefix_cache()  # cold contexts rebuild the same memory
    assert generate(cached_predictor, REPEATED, settings, seed=7, text_cache=True) == first
    assert {generate(cached_predictor, REPEATED, settings, seed=seed, text_cache=True).continuation
            for seed in (8, 9, 10)} - {first.continuation}


def test_with_the_cache_each_probability_is_the_mixed_models_over_the_text_generated_so_far(cached_predictor):
    # The cache reads the prompt and every word generated before each one: score_word with the cache over exactly
    # that text (its memory holds the generated words too) gives each reported figure; the model alone does not.
    generation = generate(cached_predictor, REPEATED, GenerationSettings(words=20), seed=4, text_cache=True)
    checked, moved = 0, 0
    for before, word in _prefixes(generation):
        if before[-1].isspace():
            assert word.logprob == pytest.approx(cached_predictor.score_word(before, word.word), abs=1e-6)
            moved += abs(word.logprob - cached_predictor.score_word(before, word.word, text_cache=False)) > 1e-3
            checked += 1
    assert checked >= 5 and moved >= 1


def _prefixes(generation):
    """(text before each word, its whitespace included; the word) for every generated word."""
    text = generation.text
    for word in generation.words:
        separator = word.text[: len(word.text) - len(word.word)] if word.text.endswith(word.word) else ""
        yield text + separator, word
        text += word.text


def test_the_same_seed_gives_the_same_continuation_and_another_seed_another(predictor):
    settings = GenerationSettings(words=15)
    first = generate(predictor, "The film was ", settings, seed=7)
    predictor.clear_prefix_cache()  # a cold predictor must not change the sample
    again = generate(predictor, "The film was ", settings, seed=7)
    assert len(first.words) == 15 and first.stopped == "words"
    assert again == first
    others = {generate(predictor, "The film was ", settings, seed=seed).continuation for seed in (8, 9, 10)}
    assert others - {first.continuation}


def test_a_missing_seed_is_drawn_and_reported_so_that_it_can_be_replayed(predictor):
    drawn = generate(predictor, "It was ", GenerationSettings(words=6))
    assert generate(predictor, "It was ", GenerationSettings(words=6), seed=drawn.seed).continuation == drawn.continuation


def test_top_k_1_is_greedy_whatever_the_seed(predictor):
    settings = GenerationSettings(words=10, top_k=1)
    runs = [generate(predictor, "The album was released in ", settings, seed=seed) for seed in (1, 2, 3)]
    assert runs[0].continuation == runs[1].continuation == runs[2].continuation
    checked = 0
    for before, word in _prefixes(runs[0]):
        if before[-1].isspace():
            assert word.word == predictor.predict(before, k=1).predictions[0].word
            checked += 1
    assert checked >= 3


def test_with_top_k_2_every_word_after_whitespace_is_among_the_top_two(predictor):
    checked = 0
    for seed in range(6):
        generation = generate(predictor, "In the United States, the ", GenerationSettings(words=12, top_k=2, temperature=2.0), seed=seed)
        for before, word in _prefixes(generation):
            if before[-1].isspace():
                assert word.word in [p.word for p in predictor.predict(before, k=2).predictions]
                checked += 1
    assert checked >= 30


def test_reported_probabilities_are_the_predictors_exact_ones_untempered(predictor):
    generation = generate(predictor, "The first ", GenerationSettings(words=8, temperature=3.0), seed=4)
    for before, word in _prefixes(generation):
        if before[-1].isspace():
            assert word.logprob == pytest.approx(predictor.score_word(before, word.word), abs=1e-6)


def test_sampling_follows_the_tempered_top_k_top_p_weights():
    rng = random.Random(0)
    probabilities = [0.5, 0.3, 0.15, 0.05]
    draws = [sample_index(probabilities, GenerationSettings(top_k=4), rng) for _ in range(4000)]
    assert [draws.count(i) / 4000 for i in range(4)] == pytest.approx(probabilities, abs=0.03)
    # top_p=0.7: the nucleus is the first two (0.5 + 0.3 >= 0.7), renormalised.
    draws = [sample_index(probabilities, GenerationSettings(top_p=0.7), rng) for _ in range(4000)]
    assert set(draws) == {0, 1} and draws.count(0) / 4000 == pytest.approx(0.5 / 0.8, abs=0.03)
    # temperature 0.5 squares the weights: 0.25 : 0.09 among the top two.
    draws = [sample_index(probabilities, GenerationSettings(top_k=2, temperature=0.5), rng) for _ in range(4000)]
    assert draws.count(0) / 4000 == pytest.approx(0.25 / 0.34, abs=0.03)
    assert sample_index([0.0, 0.0], GenerationSettings(), rng) is None


def test_top_p_respected_statistically_on_the_model(predictor):
    text = "The album was released in the "
    predictions = predictor.predict(text, k=20).predictions
    total = sum(p.probability for p in predictions)
    nucleus, mass = [], 0.0
    for p in predictions:
        nucleus.append(p.word)
        mass += p.probability / total
        if mass >= 0.5:
            break
    seen = {generate(predictor, text, GenerationSettings(words=1, top_p=0.5), seed=seed).words[0].word for seed in range(40)}
    assert seen <= set(nucleus)
    assert len(nucleus) == 1 or len(seen) > 1


def test_stops_after_n_words_and_at_a_line_break(predictor):
    assert len(generate(predictor, "The ", GenerationSettings(words=3), seed=0).words) == 3
    # Right after a title line's closing "=" the tiny model puts most of its mass on a line break.
    stopped = [generate(predictor, "= Valkyria Chronicles =", GenerationSettings(words=30, stop_at_newline=True), seed=seed)
               for seed in range(5)]
    assert any(g.stopped == "newline" for g in stopped)
    for generation in stopped:
        assert "\n" not in generation.continuation
        assert generation.stopped == "newline" or len(generation.words) == 30
    running = generate(predictor, "= Valkyria Chronicles =", GenerationSettings(words=30), seed=stopped[0].seed)
    assert running.stopped == "words" and len(running.words) == 30


def test_a_prompt_ending_inside_a_word_is_completed_first(predictor, subword_predictor):
    for model in (predictor, subword_predictor):
        generation = generate(model, "The capi", GenerationSettings(words=4), seed=1)
        first = generation.words[0]
        assert first.word.startswith("capi") and first.text == first.word[len("capi"):]
        assert (generation.text + generation.continuation).startswith("The " + first.word)


def test_subword_generation_is_reproducible_and_words_are_words(subword_predictor):
    settings = GenerationSettings(words=12)
    first = generate(subword_predictor, "The film was ", settings, seed=3)
    assert generate(subword_predictor, "The film was ", settings, seed=3).continuation == first.continuation
    assert len(first.words) == 12
    assert all(word.text.endswith(word.word) and word.text[: len(word.text) - len(word.word)] in ("", " ", "\n")
               for word in first.words)
    assert all(0 < word.probability <= 1 for word in first.words)


@pytest.mark.parametrize("settings", [dict(words=0), dict(top_k=0), dict(temperature=0.0), dict(temperature=float("inf")),
                                      dict(top_p=0.0), dict(top_p=1.5), dict(words=True)])
def test_bad_settings_are_refused(settings):
    with pytest.raises(ValueError):
        GenerationSettings(**settings)


def test_cli_json_gives_each_word_with_its_probability(tiny_run, capsys):
    argv = ["generate", "--model", str(tiny_run.out), "--words", "6", "--seed", "5", "--json", "The film was "]
    assert lm_main(argv) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["seed"] == 5 and body["text"] == "The film was " and len(body["words"]) == 6
    assert body["text_cache"] is False  # the run stores text-cache settings, but generation uses the model alone by default
    assert body["continuation"] == "".join(word["text"] for word in body["words"])
    assert all(0 < word["probability"] <= 1 and word["word"] for word in body["words"])
    assert lm_main(argv) == 0
    assert json.loads(capsys.readouterr().out) == body
    assert lm_main(argv[:-2] + ["The film was "]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == (body["text"] + body["continuation"]).strip() and "seed 5" in out.err
    assert "the model alone" in out.err
    assert lm_main(argv[:-2] + ["--text-cache", "The film was "]) == 0
    assert "with the continuous cache" in capsys.readouterr().err


def test_cli_no_cache_generates_with_the_model_alone(tiny_run, predictor, capsys):
    argv = ["generate", "--model", str(tiny_run.out), "--words", "6", "--seed", "5", "--json", "--no-text-cache", REPEATED]
    assert lm_main(argv) == 0
    body = json.loads(capsys.readouterr().out)
    alone = generate(predictor, REPEATED, GenerationSettings(words=6), seed=5)
    assert body["text_cache"] is False and body["continuation"] == alone.continuation
    assert lm_main(argv[:-3] + ["--json", REPEATED]) == 0
    assert json.loads(capsys.readouterr().out) == body  # the default
    assert lm_main(argv[:-3] + ["--json", "--text-cache", REPEATED]) == 0
    assert json.loads(capsys.readouterr().out)["text_cache"] is True


@pytest.mark.parametrize("flags", [["--top-p", "1.5"], ["--top-k", "0"], ["--temperature", "0"], ["--words", "x"]])
def test_cli_bad_values_exit_2_with_an_error_line(tiny_run, capsys, flags):
    with pytest.raises(SystemExit) as stop:
        lm_main(["generate", "--model", str(tiny_run.out), *flags, "x"])
    assert stop.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_cli_infinite_temperature_is_one_error_line(tiny_run, capsys):
    assert lm_main(["generate", "--model", str(tiny_run.out), "--temperature", "inf", "x"]) == 2
    assert capsys.readouterr().err.strip() == "lm generate: error: temperature must be positive and finite, not inf"
