"""Dynamic evaluation: scores stay held out, the model learns from what it has scored, the given model never changes."""

import pytest
import torch

from lm.__main__ import main as lm_main
from lm.eval.cache import score_stream
from lm.eval.dynamic import score_stream_dynamic, tune_dynamic
from lm.eval.figures import evaluate_text
from tests.conftest import make_model


@pytest.fixture
def stream(char_tokenizer, corpus):
    return char_tokenizer.encode(corpus.valid.text[:700]), char_tokenizer.newline_id


def test_each_segment_is_scored_before_the_model_learns_from_it(char_tokenizer, stream):
    ids, first = stream
    model = make_model("lstm", vocab_size=char_tokenizer.vocab_size).eval()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    static = score_stream(model, ids, first)
    dynamic = score_stream_dynamic(model, ids, first, lr=1.0, segment=64)
    # The first segment is scored by the trained weights; later ones by weights that have learned.
    torch.testing.assert_close(dynamic.model_logprobs[:64], static.model_logprobs[:64])
    assert not torch.allclose(dynamic.model_logprobs[64:], static.model_logprobs[64:])
    # Held out: changing the text from position 300 on leaves every score of the segments before it unchanged.
    changed = ids[:300] + [(unit + 1) % char_tokenizer.vocab_size for unit in ids[300:]]
    other = score_stream_dynamic(model, changed, first, lr=1.0, segment=64)
    torch.testing.assert_close(other.model_logprobs[:256], dynamic.model_logprobs[:256])
    # The model given is never changed.
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name])


def test_learning_from_the_text_helps_on_repeated_text(char_tokenizer, corpus):
    text = corpus.valid.text[:400] * 3  # the same passage three times: a model that learns should gain
    model = make_model("lstm", vocab_size=char_tokenizer.vocab_size, embed_dim=16, hidden_dim=32).eval()
    plain = evaluate_text(model, char_tokenizer, text, raw_words=100)
    adapted = evaluate_text(model, char_tokenizer, text, raw_words=100, dynamic_lr=1.0)
    assert adapted.units == plain.units and adapted.nll < plain.nll
    lr, scores, trials = tune_dynamic(model, char_tokenizer.encode(text), char_tokenizer.newline_id, learning_rates=(0.1, 1.0))
    assert [trial["lr"] for trial in trials] == [0.1, 1.0] and scores.model_nll == min(trial["nll"] for trial in trials)
    with pytest.raises(ValueError, match="learning rate"):
        score_stream_dynamic(model, [1, 2, 3], 0, lr=0.0)


def test_evaluate_cli_reports_dynamic_evaluation(tiny_run, corpus_dir, capsys):
    assert lm_main(["evaluate", "--model", str(tiny_run.out), "--corpus", str(corpus_dir), "--positions", "5",
                    "--dynamic", "0.5", "--text-cache", "500,2,0.3", "--json"]) == 0
    import json

    adapted = json.loads(capsys.readouterr().out)["adapted"]
    assert adapted["dynamic_lr"] == 0.5 and adapted["text_cache"] == {"window": 500, "theta": 2.0, "weight": 0.3, "size_weights": []}
    assert adapted["chosen"] == "as given" and adapted["bpc"] > 0
    with pytest.raises(SystemExit):
        lm_main(["evaluate", "--model", str(tiny_run.out), "--dynamic", "-1"])
    assert "must be positive" in capsys.readouterr().err


def test_a_diverging_learning_rate_is_a_clear_error(tiny_run, corpus_dir, capsys):
    assert lm_main(["evaluate", "--model", str(tiny_run.out), "--corpus", str(corpus_dir), "--positions", "1",
                    "--dynamic", "1e9"]) == 1
    err = capsys.readouterr().err
    assert "diverged at learning rate 1e+09" in err and "Traceback" not in err
