"""The faithfulness check: the text beyond a reach replaced by filler or cut off, the word scored again as served."""

import numpy as np
import pytest

from lm.checkpoint import load_checkpoint
from lm.infer.faithfulness import FILLER, faithfulness
from lm.infer.predictor import Predictor
from lm.infer.query import make_query
from lm.infer.reach import reach_figures, unit_words, words_of

TEXT = "The album was released in the United States.\nIn 1998 it was "


@pytest.fixture(scope="module")
def predictor(tiny_run):
    checkpoint = load_checkpoint(tiny_run.out)
    return Predictor(checkpoint.model, checkpoint.tokenizer)


def _reach(predictor, query, keep_units):
    """A reach whose 99% mass covers the last `keep_units` units of the query's context."""
    ids, spans = predictor.tokenizer.encode_with_offsets(query.context)
    units = [(query.context[s:e], s, e) for s, e in spans]
    words = words_of(query.context)
    influence = np.zeros(len(spans))
    influence[len(spans) - keep_units:] = 1.0
    reach = reach_figures(influence, spans, unit_words(units, words), len(query.context), len(words), 0.01)
    return spans, reach


def test_text_beyond_the_reach_is_replaced_by_filler_of_its_length_and_cut(predictor):
    query = make_query(TEXT, predictor.tokenizer)
    word = predictor.predict(TEXT, k=1).predictions[0]
    spans, reach = _reach(predictor, query, keep_units=12)
    check = faithfulness(predictor, query, spans, reach, word)
    keep_from = spans[len(spans) - reach.mass99_tokens][0]
    assert check["replaced_chars"] == keep_from == check["cut"]["removed_chars"] > 0
    kept = query.text[keep_from:]
    assert check["cut"]["logprob"] == pytest.approx(predictor.score_word(kept, word.word), abs=1e-9)
    assert check["cut"]["logprob_change"] == pytest.approx(check["cut"]["logprob"] - word.logprob)
    # The replaced text: filler words of the same length, the line break where it was, a space before the kept part.
    head = query.text[:keep_from]
    filler = "".join("\n" if a == "\n" else b for a, b in zip(head, (FILLER * len(head))[: len(head)]))
    filler = filler if kept[0].isspace() or filler[-1].isspace() else filler[:-1] + " "
    assert len(filler) == len(head) and filler.index("\n") == head.index("\n")
    assert check["logprob"] == pytest.approx(predictor.score_word(filler + kept, word.word), abs=1e-9)
    assert check["logprob_change"] == pytest.approx(check["logprob"] - word.logprob)


def test_a_reach_over_the_whole_text_changes_nothing(predictor):
    query = make_query(TEXT, predictor.tokenizer)
    word = predictor.predict(TEXT, k=1).predictions[0]
    spans, reach = _reach(predictor, query, keep_units=len(predictor.tokenizer.encode(query.context)))
    check = faithfulness(predictor, query, spans, reach, word)
    assert check == {"replaced_chars": 0, "logprob": word.logprob, "logprob_change": 0.0,
                     "cut": {"removed_chars": 0, "logprob": word.logprob, "logprob_change": 0.0}}
