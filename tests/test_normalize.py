"""Normalisation of WikiText into text as people type it."""

import pytest

from corpora import normalize, normalize_line


@pytest.mark.parametrize(
    "published, natural",
    [
        ("He had a guest @-@ starring role .", "He had a guest-starring role."),
        ("about 9 @,@ 500 people , or 1 @.@ 5 %", "about 9,500 people, or 1.5%"),
        ("1 @,@ 000 @,@ 000 dollars", "1,000,000 dollars"),
        ('the episode " Teddy \'s Story " of', 'the episode "Teddy\'s Story" of'),
        ("I wouldn 't say ( it was ) [ sic ] ; no : yes !", "I wouldn't say (it was) [sic]; no: yes!"),
        ("the ships ' crews", "the ships' crews"),
        ("causing over $ 3 million", "causing over $3 million"),
        ("Apple Inc . 's iOS", "Apple Inc.'s iOS"),
    ],
)
def test_wikitext_escapes_and_spacing_are_undone(published, natural):
    assert normalize_line(published) == natural


def test_heads_stay_recognisable():
    assert normalize_line(" = Robert Boulter = ") == "= Robert Boulter ="
    assert normalize_line(" = = Early life , career = = ") == "== Early life, career =="
    assert normalize_line(" = = = Notes = = = ") == "=== Notes ==="


def test_ordinary_text_is_left_alone():
    text = 'Hello, world. She said "yes" (twice) and paid $5 for 2.5 kg.\nNext line'
    assert normalize(text) == text


def test_line_structure_and_trailing_newline_are_kept():
    assert normalize(" a , b \n\n c .\n") == "a, b\n\nc.\n"


def test_normalisation_is_idempotent_on_the_whole_corpus(corpus):
    for name in ("train", "valid", "test"):
        text = corpus.split(name).text
        assert normalize(text) == text
