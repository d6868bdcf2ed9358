"""Next-word prediction: probabilities by hand, merging, boundaries, completion, cache, unknown units, CLI."""

import json
import math

import numpy as np
import pytest
import torch

from lm.__main__ import main as lm_main
from lm.config import ModelConfig
from lm.model import RNNLanguageModel
from lm.answers import prediction_answer
from lm.infer.predictor import Predictor
from lm.infer.query import keep_last_units, make_query, word_at
from lm.infer.scoring import logsumexp, spell_many, word_targets
from lm.tokenizers import CharTokenizer, is_word_char


class PieceTokenizer:
    """A hand-made subword vocabulary with overlapping pieces, so that one word has several spellings.

    Pieces stand for their text; a leading space is dropped at a line start
    (like SentencePiece's dummy prefix). Encoding is greedy longest match.
    """

    kind = "subword"
    heals_words = True
    PIECES = ["<unk>", " ab", " a", " b", " ", "a", "b", ",", "\n"]

    def __init__(self):
        self.vocab_size = len(self.PIECES)
        self.unk_id = 0
        self.newline_id = self.PIECES.index("\n")

    def encode(self, text):
        ids, position = [], 0
        line_start = True
        while position < len(text):
            best = None
            for unit, piece in enumerate(self.PIECES[1:], 1):
                surface = piece[1:] if line_start and piece.startswith(" ") else piece
                if surface and text.startswith(surface, position) and (best is None or len(surface) > len(best[1])):
                    best = (unit, surface)
            unit, surface = best if best else (0, text[position])
            ids.append(unit)
            position += len(surface)
            line_start = surface == "\n"
        return ids

    def unit_text(self, unit, line_start=False):
        if unit == 0:
            return None
        piece = self.PIECES[unit]
        return piece[1:] if line_start and piece.startswith(" ") else piece


def _model(vocab_size, seed=3, unk_bias=None):
    torch.manual_seed(seed)
    model = RNNLanguageModel(ModelConfig(cell="gru", vocab_size=vocab_size, embed_dim=6, hidden_dim=10, num_layers=1,
                                         dropout=0.0, input_dropout=0.0, tie_weights=False))
    with torch.no_grad():
        model.decoder.weight.mul_(8)  # sharper distributions than the tiny init gives
        if unk_bias is not None:
            model.decoder.bias[0] = unk_bias
    return model.eval()


def _next_logprobs(model, inputs):
    """log P(next unit) after feeding `inputs` (the leading line break included)."""
    with torch.no_grad():
        logits, _ = model(torch.tensor([inputs]))
    return torch.log_softmax(logits[0, -1].double(), -1)


def test_char_word_probability_equals_the_product_by_hand():
    tokenizer = CharTokenizer(list("ab ,\n"))
    model = _model(tokenizer.vocab_size)
    predictor = Predictor(model, tokenizer)
    context = [tokenizer.newline_id] + tokenizer.encode("ab ba ")
    a, b = tokenizer.encode("ab")
    boundary = tokenizer.encode(" ,\n")
    # P("ab" + boundary) = P(a) P(b | a) sum over boundary characters P(c | a b)
    by_hand = (_next_logprobs(model, context)[a] + _next_logprobs(model, context + [a])[b]
               + torch.logsumexp(_next_logprobs(model, context + [a, b])[boundary], 0)).item()
    assert predictor.score_word("ab ba ", "ab") == pytest.approx(by_hand, abs=1e-6)
    result = predictor.predict("ab ba ", k=30, beam_width=64, max_word_length=8)
    found = {p.word: p.logprob for p in result.predictions}
    assert found["ab"] == pytest.approx(by_hand, abs=1e-6)
    # Punctuation is a word of its own and needs no boundary after it.
    comma = tokenizer.encode(",")[0]
    assert found[","] == pytest.approx(_next_logprobs(model, context)[comma].item(), abs=1e-6)
    assert sum(p.probability for p in result.predictions) <= 1 + 1e-9
    for prediction in result.predictions:
        assert prediction.logprob == pytest.approx(predictor.score_word("ab ba ", prediction.word), abs=1e-6)
        assert all(is_word_char(c) for c in prediction.word) or len(prediction.word) == 1


def test_several_spellings_of_one_word_are_summed_and_divided_by_the_healed_part():
    tokenizer = PieceTokenizer()
    model = _model(tokenizer.vocab_size, seed=5)
    predictor = Predictor(model, tokenizer)
    unit = {piece: index for index, piece in enumerate(tokenizer.PIECES)}
    ends = [unit[p] for p in (" ab", " a", " b", " ", ",", "\n")]  # units that begin with a boundary
    context = [tokenizer.newline_id] + tokenizer.encode("ab")  # "ab " is read as "ab", then " " must be spelled

    def spelled(path):
        total, inputs = 0.0, list(context)
        for piece in path:
            total += _next_logprobs(model, inputs)[unit[piece]].item()
            inputs.append(unit[piece])
        return total + torch.logsumexp(_next_logprobs(model, inputs)[ends], 0).item()

    spellings = [[" ab"], [" a", "b"], [" ", "a", "b"], [" ", "ab"]]  # the last one is not a piece: skipped
    paths = [path for path in spellings if all(piece in unit for piece in path)]
    numerator = math.log(sum(math.exp(spelled(path)) for path in paths))
    first = _next_logprobs(model, context)
    required = torch.logsumexp(first[[unit[p] for p in (" ab", " a", " b", " ")]], 0).item()  # P(next starts with " ")
    expected = numerator - required
    assert predictor.score_word("ab ", "ab") == pytest.approx(expected, abs=1e-6)
    result = predictor.predict("ab ", k=20, beam_width=32, max_word_length=6)
    found = {p.word: p for p in result.predictions}
    assert found["ab"].logprob == pytest.approx(expected, abs=1e-6)
    assert len(found["ab"].paths) == 3
    assert sum(p.probability for p in result.predictions) <= 1 + 1e-9


def test_mid_word_completion_reports_the_part_still_to_type(tiny_run):
    from lm.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(tiny_run.out)
    predictor = Predictor(checkpoint.model, checkpoint.tokenizer)
    result = predictor.predict("The first of the")
    assert result.completing and result.query.partial == "the"
    for prediction in result.predictions:
        assert prediction.word.startswith("the") and prediction.remainder == prediction.word[3:]
    assert prediction_answer("m", predictor.tokenizer, result).completing is True
    whole = predictor.predict("The first of the ")
    assert not whole.completing and all(p.remainder == p.word for p in whole.predictions)


def test_empty_text_predicts_a_first_word(tiny_run):
    from lm.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(tiny_run.out)
    result = Predictor(checkpoint.model, checkpoint.tokenizer).predict("")
    assert result.context_units == 0 and not result.completing and len(result.predictions) == 5
    assert result.predictions[0].word == "="  # articles start with "= Title ="


def test_the_prefix_cache_gives_the_cold_answers_and_reads_only_the_new_words(tiny_subword_run, monkeypatch):
    from lm.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(tiny_subword_run.out)
    warm = Predictor(checkpoint.model, checkpoint.tokenizer)
    cold = Predictor(checkpoint.model, checkpoint.tokenizer, prefix_cache_size=0)
    first = "The album was released in the United States and"
    warm.predict(first + " ")
    read = []
    forward, steps = checkpoint.model.forward, warm.step_engine.read_steps  # the fused read and the few-units one
    monkeypatch.setattr(checkpoint.model, "forward", lambda ids=None, state=None, **kw: (read.append(ids.shape[1]), forward(ids, state, **kw))[1])
    monkeypatch.setattr(warm.step_engine, "read_steps", lambda ids, state: (read.append(ids.shape[1]), steps(ids, state))[1])
    again = warm.predict(first + " it was a")
    encode = checkpoint.tokenizer.encode
    assert read == [len(encode(first + " it was")) - len(encode(first))]  # only the new words are read
    monkeypatch.undo()
    reference = cold.predict(first + " it was a")
    assert [p.word for p in again.predictions] == [p.word for p in reference.predictions]
    for a, b in zip(again.predictions, reference.predictions):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-5)


def test_typing_a_word_the_last_prediction_read_needs_no_model_read(tiny_subword_run, monkeypatch):
    from lm.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(tiny_subword_run.out)
    warm = Predictor(checkpoint.model, checkpoint.tokenizer)
    cold = Predictor(checkpoint.model, checkpoint.tokenizer, prefix_cache_size=0)
    first = "The album was released in the United States and"
    # The most probable word (not punctuation, which normalisation would glue to "and"): exact scoring read its units.
    top = next(p.word for p in warm.predict(first + " ").predictions if p.word[0].isalnum())
    read = []
    forward, steps = checkpoint.model.forward, warm.step_engine.read_steps
    monkeypatch.setattr(checkpoint.model, "forward", lambda ids=None, state=None, **kw: (read.append(ids.shape[1]), forward(ids, state, **kw))[1])
    monkeypatch.setattr(warm.step_engine, "read_steps", lambda ids, state: (read.append(ids.shape[1]), steps(ids, state))[1])
    typed = f"{first} {top} "
    again = warm.predict(typed)
    assert read == []  # the context's state came from the previous prediction's reads
    other = warm.predict(f"{first} {top} zzqx ")  # a word nobody predicted is read as usual
    assert read and read[-1] == len(checkpoint.tokenizer.encode(f"{first} {top} zzqx")) - len(checkpoint.tokenizer.encode(f"{first} {top}"))
    monkeypatch.undo()
    for result, text in ((again, typed), (other, f"{first} {top} zzqx ")):
        reference = cold.predict(text)
        assert [p.word for p in result.predictions] == [p.word for p in reference.predictions]
        for a, b in zip(result.predictions, reference.predictions):
            assert a.logprob == pytest.approx(b.logprob, abs=1e-5)
    warm.clear_prefix_cache()
    read.clear()
    monkeypatch.setattr(checkpoint.model, "forward", lambda ids=None, state=None, **kw: (read.append(ids.shape[1]), forward(ids, state, **kw))[1])
    warm.predict(typed)
    assert read == [len(checkpoint.tokenizer.encode(f"{first} {top}")) + 1]  # cleared: read from the start


def test_warm_up_changes_no_answer_and_caches_no_context(tiny_subword_run):
    from lm.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(tiny_subword_run.out)
    warmed = Predictor(checkpoint.model, checkpoint.tokenizer)
    warmed.warm_up(rows=6)
    assert warmed.prefix_cache_contexts == 0  # nothing a user typed is remembered
    fresh = Predictor(checkpoint.model, checkpoint.tokenizer, prefix_cache_size=0)
    text = "The album was released in "
    for a, b in zip(warmed.predict(text).predictions, fresh.predict(text).predictions):
        assert a.word == b.word and a.logprob == pytest.approx(b.logprob, abs=1e-6)


def test_the_unknown_unit_is_never_a_word():
    tokenizer = CharTokenizer(list("ab \n"))
    model = _model(tokenizer.vocab_size, unk_bias=12.0)  # the unknown unit takes almost all the mass
    result = Predictor(model, tokenizer).predict("ab ", k=5, beam_width=32)
    assert result.predictions and all("<unk>" not in p.word and "\x00" not in p.word for p in result.predictions)
    assert all(set(p.word) <= set("ab") for p in result.predictions)
    assert sum(p.probability for p in result.predictions) < 0.01


@pytest.mark.parametrize("text, context, required, completing, partial", [
    ("The capi", "The", " capi", True, "capi"),
    ("The capital of ", "The capital of", " ", False, ""),
    ("Hello,", "Hello,", "", False, ""),
    ("", "", "", False, ""),
    ("One.\nTwo", "One.", "\nTwo", True, "Two"),
    ("He said , \" yes", 'He said, "', "yes", True, "yes"),  # normalised as in training
])
def test_where_the_next_word_starts(subword_tokenizer, char_tokenizer, text, context, required, completing, partial):
    query = make_query(text, subword_tokenizer)
    assert (query.context, query.required, query.completing, query.partial) == (context, required, completing, partial)
    char_query = make_query(text, char_tokenizer)
    assert char_query.context == query.text and char_query.required == ""


def test_a_long_unfinished_word_heals_only_its_last_units(subword_tokenizer, char_tokenizer, tiny_subword_run):
    """Past MAX_HEALED_CHARS, the word's start is read as context (from one of its own units' starts) and only the
    rest is healed; the words predicted still complete the whole unfinished word."""
    from lm.checkpoint import load_checkpoint
    from lm.infer.query import MAX_HEALED_CHARS

    short = make_query("The " + "international"[:MAX_HEALED_CHARS - 3], subword_tokenizer)
    assert short.context == "The" and short.required == " " + short.partial  # healed whole, as before
    word = "pneumonoultramicroscopicsilicovolcanoconiosis"
    query = make_query("The lung disease is " + word, subword_tokenizer)
    assert query.completing and query.partial == word and query.start == ("word", word)
    assert 0 < len(query.required) <= MAX_HEALED_CHARS and word.endswith(query.required)
    assert query.context == "The lung disease is " + word[: len(word) - len(query.required)]
    _, spans = subword_tokenizer.encode_with_offsets(query.text)
    assert len(query.context) in {start for start, _ in spans}  # a unit of the word starts where healing does
    assert make_query("The " + word, char_tokenizer).required == ""  # one unit per character: nothing to heal

    checkpoint = load_checkpoint(tiny_subword_run.out)
    predictor = Predictor(checkpoint.model, checkpoint.tokenizer)
    result = predictor.predict("x" * 5000, k=3)  # healed whole, its spellings would grow with all 5,000
    assert len(result.query.required) <= MAX_HEALED_CHARS and result.predictions
    assert all(p.word.startswith("x" * 5000) and p.remainder == p.word[5000:] for p in result.predictions)


def test_word_at():
    assert word_at("the cat, sat", 4) == "cat"
    assert word_at("the cat, sat", 7) == ","
    assert word_at("x", 5) == ""


def test_bad_options_are_value_errors(tiny_run):
    from lm.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(tiny_run.out)
    predictor = Predictor(checkpoint.model, checkpoint.tokenizer)
    with pytest.raises(ValueError):
        predictor.predict("a ", k=0)
    with pytest.raises(ValueError):
        predictor.predict("a ", temperature=0.0)


def test_temperature_flattens_the_distribution(tiny_run):
    from lm.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(tiny_run.out)
    predictor = Predictor(checkpoint.model, checkpoint.tokenizer)
    sharp = predictor.predict("It was the ", temperature=0.5).predictions[0].probability
    flat = predictor.predict("It was the ", temperature=2.0).predictions[0].probability
    assert sharp > flat


def test_predict_cli_prints_a_table_and_json(tiny_run, capsys):
    assert lm_main(["predict", "--model", str(tiny_run.out), "The capi"]) == 0
    table = capsys.readouterr().out
    assert "completing 'capi'" in table and "to type" in table
    assert "on the CPU engine" in table.splitlines()[0]  # the header says where it predicts
    assert lm_main(["predict", "--model", str(tiny_run.out), "--json", "-k", "3", "In the "]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert len(payload["predictions"]) == 3
    assert set(payload["predictions"][0]) >= {"word", "probability", "logprob", "remainder"}
    assert payload["completing"] is False
    assert payload["text_cache"] is True  # the run stored tuned text-cache settings
    assert lm_main(["predict", "--model", str(tiny_run.out), "--json", "--no-text-cache", "-k", "3", "In the "]) == 0
    assert json.loads(capsys.readouterr().out)["text_cache"] is False
    assert lm_main(["predict", "--model", str(tiny_run.out), "--no-text-cache", "In the "]) == 0
    assert "the model alone" in capsys.readouterr().out.splitlines()[0]


class OffsetPieceTokenizer(PieceTokenizer):
    """PieceTokenizer with offsets: the line start's missing space makes a suffix spell its start differently."""

    def encode_with_offsets(self, text):
        ids, spans, position, line_start = [], [], 0, True
        for unit in self.encode(text):
            surface = self.unit_text(unit, line_start) or text[position]
            ids.append(unit)
            spans.append((position, position + len(surface)))
            position += len(surface)
            line_start = surface == "\n"
        return ids, spans


@pytest.mark.parametrize("text", ["a ab ab b, ab a b ", "ab, b a ab", " ab ab a"])
def test_a_limit_keeps_a_suffix_of_at_most_that_many_units(text):
    tokenizer = OffsetPieceTokenizer()
    whole = make_query(text, tokenizer)
    units = len(tokenizer.encode(whole.context))
    for max_units in range(1, units + 2):
        kept, cut = keep_last_units(text, tokenizer, max_units)
        assert cut.text == whole.text and kept.text == whole.text[cut.chars:]  # the read text is the whole text's end
        assert len(tokenizer.encode(kept.context)) <= max_units
        assert cut.truncated == (max_units < units) and cut.units >= units - max_units
        assert (kept.partial, kept.required) == (whole.partial, whole.required)
    assert keep_last_units(text, tokenizer, None) == (whole, keep_last_units(text, tokenizer, units)[1])


def test_predict_with_a_limit_reads_the_suffix_and_says_what_it_left_unread(tiny_subword_run, capsys):
    from lm.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(tiny_subword_run.out)
    predictor = Predictor(checkpoint.model, checkpoint.tokenizer, text_cache_settings=checkpoint.text_cache_settings)
    text = "The album was released in the United States in 1998, and it was a success in the United "
    result = predictor.predict(text, k=3, max_units=12)
    cut = result.cut
    assert cut.truncated and cut.text == make_query(text, predictor.tokenizer).text and 0 < cut.chars < len(text)
    assert result.context_units <= 12 and result.query.text == cut.text[cut.chars:]
    units = tuple(predictor.tokenizer.encode(result.query.context))
    suffix = predictor.predict_from(predictor.context_state(units, use_prefix_cache=False), result.query, k=3)  # read cold
    assert [p.word for p in suffix.predictions] == [p.word for p in result.predictions]
    assert [p.logprob for p in suffix.predictions] == pytest.approx([p.logprob for p in result.predictions], abs=1e-9)
    context = prediction_answer("m", predictor.tokenizer, result).context.model_dump()
    assert context == {"tokens": result.context_units, "words": len(result.query.context.split()),
                       "chars": len(result.query.context), "truncated": True, "dropped_chars": cut.chars,
                       "dropped_units": cut.units, "unknown_units": context["unknown_units"],
                       "unknown_chars": context["unknown_chars"]}
    assert not predictor.predict(text, k=3).cut.truncated  # no limit: the whole text


def test_predict_cli_reads_at_most_max_units(tiny_run, capsys):
    text = "The album was released in the United States in 1998, and it was "
    assert lm_main(["predict", "--model", str(tiny_run.out), "--json", "--max-units", "20", text]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["text"] == text and payload["context"]["tokens"] == 20
    assert payload["context"]["dropped_chars"] == len(text) - 20 and payload["context"]["truncated"] is True
    assert lm_main(["predict", "--model", str(tiny_run.out), "--max-units", "20", text]) == 0
    assert f"the first {len(text) - 20} characters not read" in capsys.readouterr().out.splitlines()[0]


def test_cli_refuses_a_missing_model_in_one_line(tmp_path, capsys):
    assert lm_main(["predict", "--model", str(tmp_path / "none"), "x"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err


def test_evaluate_cli_reports_bpc_perplexity_and_accuracy(tiny_run, corpus_dir, corpus, capsys):
    assert lm_main(["evaluate", "--model", str(tiny_run.out), "--corpus", str(corpus_dir), "--positions", "60", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["words"] == corpus.test.raw_words and report["bpc"] == pytest.approx(tiny_run.test.bpc, rel=1e-6)
    accuracy = report["accuracy"]
    assert accuracy["positions"] == 60 and 0 < accuracy["top1"] <= accuracy["top3"] <= accuracy["top5"] <= 1
    assert accuracy["cache"] is False and report["accuracy_with_cache"]["cache"] is True
    assert report["accuracy_with_cache"]["positions"] == 60 and 0 < report["accuracy_with_cache"]["top5"] <= 1
    assert report["stored_cache"]["test"]["bpc"] > 0 and report["stored_cache"]["window"] >= 1
    assert "ranks" not in accuracy and "ranks" not in report["accuracy_with_cache"]
    # Position by position: the counts of disagreements agree with the two percentages.
    for comparison in report["cache_against_alone"]:
        k = comparison["k"]
        difference = round((report["accuracy_with_cache"][f"top{k}"] - accuracy[f"top{k}"]) * 60)
        assert comparison["gained"] - comparison["lost"] == difference and 0 < comparison["p_value"] <= 1
    assert [comparison["k"] for comparison in report["cache_against_alone"]] == [1, 3, 5]
    assert lm_main(["evaluate", "--model", str(tiny_run.out), "--corpus", str(corpus_dir), "--positions", "20"]) == 0
    printed = capsys.readouterr().out
    assert "top-1: the cache finds the true word where the model alone misses it at" in printed and "sign test p =" in printed
    assert lm_main(["evaluate", "--model", str(tiny_run.out), "--corpus", str(corpus_dir), "--positions", "20", "--no-text-cache"]) == 0
    printed = capsys.readouterr().out
    assert "stored text cache (window" in printed and "with the stored text cache, same positions" not in printed
    assert "sign test" not in printed
    # Other cache settings for the accuracy pass: a lighter weight, compared with the model alone the same way.
    assert lm_main(["evaluate", "--model", str(tiny_run.out), "--corpus", str(corpus_dir), "--positions", "20",
                    "--predict-text-cache", "300,2,0.05", "--json"]) == 0
    lighter = json.loads(capsys.readouterr().out)
    assert lighter["accuracy_cache"] == {"window": 300, "theta": 2.0, "weight": 0.05, "size_weights": [], "given": True}
    assert lighter["stored_cache"]["weight"] != 0.05 and len(lighter["cache_against_alone"]) == 3
    assert lm_main(["evaluate", "--model", str(tiny_run.out), "--corpus", str(corpus_dir), "--positions", "20",
                    "--predict-text-cache", "300,2,0.05"]) == 0
    assert "with the text cache window 300, theta 2, weight 0.05 (--predict-text-cache), same positions" in capsys.readouterr().out
    assert lm_main(["evaluate", "--model", "/nonexistent", "--predict-text-cache", "300,2,0.05", "--no-text-cache"]) == 2
    assert "contradict" in capsys.readouterr().err  # refused before the model is looked for
    with pytest.raises(SystemExit):
        lm_main(["evaluate", "--model", str(tiny_run.out), "--predict-text-cache", "tune"])
    assert "'tune' is for --text-cache" in capsys.readouterr().err


def test_paired_accuracy_counts_disagreements_and_tests_their_sign():
    from lm.infer.accuracy import paired_accuracy, sign_test

    alone = [1, 0, 2, 0, 4, 1, 0, 3]
    cached = [1, 1, 0, 0, 2, 0, 5, 3]
    top1, top3 = paired_accuracy(alone, cached, ks=(1, 3))
    assert (top1.k, top1.gained, top1.lost) == (1, 1, 1)  # position 1 gained, position 5 lost
    assert (top3.k, top3.gained, top3.lost) == (3, 2, 2)  # positions 1 and 4 gained, 2 and 5 lost
    assert top1.p_value == 1.0
    # Exact binomial tails: 0 of 5 each way has probability 2 / 32; 1 of 10: 2 * 11 / 1024.
    assert sign_test(0, 5) == pytest.approx(2 / 32) and sign_test(5, 0) == sign_test(0, 5)
    assert sign_test(9, 1) == pytest.approx(22 / 1024) and sign_test(0, 0) == 1.0 and sign_test(3, 3) == 1.0
    assert sign_test(2000, 1800) < 0.01 < sign_test(2000, 1950)  # large counts stay exact (integers) and finite
    with pytest.raises(ValueError, match="cannot be paired"):
        paired_accuracy([1], [1, 2])


def test_predicting_many_texts_in_one_batch_equals_one_by_one(tiny_subword_run):
    from lm.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(tiny_subword_run.out)
    predictor = Predictor(checkpoint.model, checkpoint.tokenizer, prefix_cache_size=0)
    texts = ["The album was released in ", "", "He said, \"It", "In 1990 the band toured Europe and the United States with "]
    batched = predictor.predict_many(texts, k=3)
    for text, result in zip(texts, batched):
        alone = predictor.predict(text, k=3)
        assert [p.word for p in result.predictions] == [p.word for p in alone.predictions]
        for a, b in zip(result.predictions, alone.predictions):
            assert a.logprob == pytest.approx(b.logprob, abs=1e-5)


def test_exact_scoring_drops_only_spellings_within_the_tolerance(tiny_subword_run):
    from lm.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(tiny_subword_run.out)
    predictor = Predictor(checkpoint.model, checkpoint.tokenizer)
    steps = []
    step = predictor.step
    predictor.step = lambda ids, *rest, **kw: (steps.append(len(ids)), step(ids, *rest, **kw))[1]
    tolerance = 1e-2
    for text in ("The album was released in the United States and ", "In 1990 the band rele"):
        query = make_query(text, checkpoint.tokenizer)
        context = predictor.context_state(tuple(checkpoint.tokenizer.encode(query.context)))
        words = ["international", "released", "the", "television", "a", "relegated"]
        targets = [(target, True) for word in words for target in word_targets(query, word)]
        steps.clear()
        full = spell_many(predictor.units, predictor.reads_after(context), context.line_start, targets, tolerance=0.0)
        full_steps = sum(steps)
        steps.clear()
        pruned = spell_many(predictor.units, predictor.reads_after(context), context.line_start, targets, tolerance=tolerance)
        assert sum(steps) < full_steps  # odd segmentations were dropped
        for whole, part in zip(full, pruned):
            exact, approximate = whole.logprob, part.logprob
            for spelling in (whole, part):  # each path's own log-probability, summing to the spelling's
                assert len(spelling.path_logprobs) == len(spelling.paths)
                assert logsumexp(np.array(spelling.path_logprobs)) == pytest.approx(spelling.logprob, abs=1e-9)
            if exact > -math.inf:
                # Never more than the full sum, never less than (1 - tolerance) of it (float32 noise aside).
                assert exact + 1e-5 >= approximate >= exact + math.log(1 - tolerance) - 1e-5


def _mixed_logprobs(model, inputs, settings):
    """log P(next unit) under the model mixed with a continuous cache over `inputs` read as one stream (by hand):
    each earlier position's top-layer output is a key, the input that followed it the value."""
    with torch.no_grad():
        outputs, _ = model.features(torch.tensor([inputs]), model.init_state(1))  # (1, T, H)
        outputs = outputs[0].double()
        model_p = torch.softmax(model.decoder(outputs[-1].float()).double(), -1)
    keys, values = outputs[:-1][-settings.window:], torch.tensor(inputs[1:])[-settings.window:]
    if not len(values):
        return model_p.log()
    votes = torch.softmax(settings.theta * (keys @ outputs[-1]), -1)
    cache_p = torch.zeros_like(model_p).index_add_(0, values, votes)
    return ((1 - settings.weight) * model_p + settings.weight * cache_p).log()


@pytest.mark.parametrize("window", [50, 4])
def test_the_text_cache_mixes_every_unit_distribution_and_words_equal_a_brute_force(window):
    from lm.config import TextCacheConfig

    settings = TextCacheConfig(window=window, theta=2.0, weight=0.4, size_weights=((1, 0.4),))  # 0.4 at every size, served
    tokenizer = CharTokenizer(list("ab ,\n"))
    model = _model(tokenizer.vocab_size)
    predictor = Predictor(model, tokenizer, text_cache_settings=settings)
    text = "ab ba ab "
    context = [tokenizer.newline_id] + tokenizer.encode(text)
    a, b = tokenizer.encode("ab")
    boundary = tokenizer.encode(" ,\n")
    # The units spelled past the context join the stream: P(b | ... a) is read with the key after the context.
    by_hand = (_mixed_logprobs(model, context, settings)[a] + _mixed_logprobs(model, context + [a], settings)[b]
               + torch.logsumexp(_mixed_logprobs(model, context + [a, b], settings)[boundary], 0)).item()
    alone = Predictor(model, tokenizer).score_word(text, "ab")
    assert by_hand != pytest.approx(alone, abs=1e-3)  # the cache matters here
    assert predictor.score_word(text, "ab") == pytest.approx(by_hand, abs=1e-6)
    result = predictor.predict(text, k=30, beam_width=64, max_word_length=8)
    assert result.text_cache
    found = {p.word: p.logprob for p in result.predictions}
    assert found["ab"] == pytest.approx(by_hand, abs=1e-6)
    assert sum(p.probability for p in result.predictions) <= 1 + 1e-9
    reads = predictor._lookahead
    for units in [(), (a,), (a, b)]:
        # Each mixed row is normalised, up to the model normaliser's float32 exponentials (as without a cache).
        assert np.exp(reads.logprobs(units)).sum() == pytest.approx(1, abs=1e-7)
        mixed = _mixed_logprobs(model, context + list(units), settings).numpy()
        assert reads.logprobs(units) == pytest.approx(mixed, abs=1e-6)


def test_the_text_cache_sums_spellings_and_divides_the_healed_part_by_hand():
    from lm.config import TextCacheConfig

    settings = TextCacheConfig(window=100, theta=3.0, weight=0.3, size_weights=((1, 0.3),))
    tokenizer = PieceTokenizer()
    model = _model(tokenizer.vocab_size, seed=5)
    predictor = Predictor(model, tokenizer, text_cache_settings=settings)
    unit = {piece: index for index, piece in enumerate(tokenizer.PIECES)}
    ends = [unit[p] for p in (" ab", " a", " b", " ", ",", "\n")]
    text = "ab a b ab "
    context = [tokenizer.newline_id] + tokenizer.encode(text.rstrip(" "))  # the trailing space is healed

    def spelled(path):
        total, inputs = 0.0, list(context)
        for piece in path:
            total += _mixed_logprobs(model, inputs, settings)[unit[piece]].item()
            inputs.append(unit[piece])
        return total + torch.logsumexp(_mixed_logprobs(model, inputs, settings)[ends], 0).item()

    numerator = math.log(sum(math.exp(spelled(path)) for path in ([" ab"], [" a", "b"], [" ", "a", "b"])))
    first = _mixed_logprobs(model, context, settings)
    required = torch.logsumexp(first[[unit[p] for p in (" ab", " a", " b", " ")]], 0).item()
    assert predictor.score_word(text, "ab") == pytest.approx(numerator - required, abs=1e-6)
    result = predictor.predict(text, k=20, beam_width=32, max_word_length=6)
    found = {p.word: p for p in result.predictions}
    assert found["ab"].logprob == pytest.approx(numerator - required, abs=1e-6)
    assert sum(p.probability for p in result.predictions) <= 1 + 1e-9


def test_the_text_cache_raises_a_word_the_text_repeats(tiny_run):
    from lm.config import TextCacheConfig
    from lm.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(tiny_run.out)
    text = "Mr. Qwixby spoke. Mr. Qwixby left. Mr. Qwixby came back. Mr. Qwi"  # a name the model never saw
    alone = Predictor(checkpoint.model, checkpoint.tokenizer)
    cached = Predictor(checkpoint.model, checkpoint.tokenizer, text_cache_settings=TextCacheConfig(window=2000, theta=1.0, weight=0.5,
                                                                                        size_weights=((1, 0.5),)))
    # e^4 (55) times more probable: e^4.8 for the model trained on the shipped excerpt, more on the whole subset.
    assert cached.score_word(text, "Qwixby") > alone.score_word(text, "Qwixby") + 4.0
    off, before = cached.predict(text, k=3, text_cache=False), alone.predict(text, k=3)
    assert not off.text_cache and [p.word for p in off.predictions] == [p.word for p in before.predictions]
    # The context is read through the fused layers' outputs here, not its last logits alone: float32 rounding apart.
    assert [p.logprob for p in off.predictions] == pytest.approx([p.logprob for p in before.predictions], abs=1e-5)


def test_with_the_text_cache_warm_predictions_equal_cold_ones(tiny_subword_run):
    from lm.config import TextCacheConfig
    from lm.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(tiny_subword_run.out)
    predictor = Predictor(checkpoint.model, checkpoint.tokenizer, text_cache_settings=TextCacheConfig(window=40, theta=1.0, weight=0.3,
                                                                                                size_weights=((1, 0.3),)))
    words = "The film was released in the United States and the film was a success in the United".split()
    for count in range(1, len(words)):
        text = " ".join(words[:count]) + " "
        warm = predictor.predict(text, k=5)  # reuses the prefix cache and the latest prediction's reads
        cold = predictor.predict(text, k=5, use_prefix_cache=False)
        assert [p.word for p in warm.predictions] == [p.word for p in cold.predictions]
        assert [p.logprob for p in warm.predictions] == pytest.approx([p.logprob for p in cold.predictions], abs=1e-5)


def test_the_prefix_cache_is_bounded_in_bytes_and_keeps_the_latest_context(tiny_subword_run):
    from lm.config import TextCacheConfig
    from lm.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(tiny_subword_run.out)
    settings = TextCacheConfig(window=400, theta=1.0, weight=0.3, size_weights=((1, 0.3),))
    texts = [f"The film number {n} was released in the United States and " * 3 for n in range(6)]
    roomy = Predictor(checkpoint.model, checkpoint.tokenizer, prefix_cache_size=64, text_cache_settings=settings)
    for text in texts:
        roomy.predict(text, k=3)
    assert roomy.prefix_cache_contexts == len(texts)
    each = roomy.prefix_cache_bytes_used / len(texts)
    # Each context keeps its text-cache memory: its keys (one top-layer output per unit) dominate its bytes.
    one = Predictor(checkpoint.model, checkpoint.tokenizer, text_cache_settings=settings).context_state(
        tuple(checkpoint.tokenizer.encode(texts[0])))
    assert one.nbytes > one.memory.keys.nelement() * 4 > one.nbytes / 2 and one.nbytes == pytest.approx(each, rel=0.2)
    bound = int(2.5 * each)
    tight = Predictor(checkpoint.model, checkpoint.tokenizer, prefix_cache_size=64, text_cache_settings=settings,
                      prefix_cache_bytes=bound)
    for text in texts:
        answer = tight.predict(text, k=3)
        assert 1 <= tight.prefix_cache_contexts <= 2 and tight.prefix_cache_bytes_used <= bound
        assert [p.word for p in answer.predictions] == [p.word for p in roomy.predict(text, k=3).predictions]
    # Smaller than one context: the latest one is still kept, so typing on from it stays warm.
    tiny = Predictor(checkpoint.model, checkpoint.tokenizer, text_cache_settings=settings, prefix_cache_bytes=0)
    tiny.predict(texts[0], k=3)
    assert tiny.prefix_cache_contexts == 1 and tiny.prefix_cache_bytes_used > 0
    tiny.clear_prefix_cache()
    assert tiny.prefix_cache_contexts == 0 and tiny.prefix_cache_bytes_used == 0


def test_a_checkpoint_without_cache_settings_predicts_as_before(tiny_run, tmp_path):
    import shutil

    from lm.checkpoint import load_checkpoint

    old = tmp_path / "old"
    shutil.copytree(tiny_run.out / "best", old)
    meta = json.loads((old / "config.json").read_text())
    assert meta["metrics"]["text_cache"]["window"] >= 1  # what a run stores now
    del meta["metrics"]["text_cache"]
    (old / "config.json").write_text(json.dumps(meta))
    checkpoint = load_checkpoint(old)
    assert checkpoint.text_cache_settings is None
    before = Predictor(checkpoint.model, checkpoint.tokenizer).predict("The film was ", k=5)
    assert not before.text_cache
    assert load_checkpoint(tiny_run.out).text_cache_settings is not None
