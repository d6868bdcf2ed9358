"""Char and subword tokenizers: round trips, offsets, word starts, saving."""

import pytest

from lm.tokenizers import CharTokenizer, SubwordTokenizer, TokenizerError, is_word_char, load_tokenizer

# Each character of these is in the char tokenizer (3 times or more in the training text), the shipped excerpt too.
SAMPLES = ["Hello, world.\n  two  spaces\n", "", "\n\n", "The capi", "Café está 3.5 km — \"yes\""]


def test_char_round_trip_and_offsets(char_tokenizer):
    for text in SAMPLES:
        ids, spans = char_tokenizer.encode_with_offsets(text)
        assert char_tokenizer.decode(ids) == text
        assert spans == [(i, i + 1) for i in range(len(text))]


def test_char_rare_characters_map_to_unknown():
    tokenizer = CharTokenizer.train("aaabbbc\n", min_count=2)
    assert tokenizer.encode("abc") == [tokenizer.encode("a")[0], tokenizer.encode("b")[0], 0]
    assert tokenizer.decode(tokenizer.encode("abc")) == "ab<unk>"
    assert tokenizer.unit_text(0) is None


def test_subword_is_lossless_with_exact_offsets(subword_tokenizer, corpus):
    for text in SAMPLES + ["杜甫 x\x01y", corpus.test.text[:5000]]:
        ids, spans = subword_tokenizer.encode_with_offsets(text)
        assert subword_tokenizer.decode(ids) == text
        assert len(ids) == len(spans)
        assert subword_tokenizer.encode(text) == ids  # the fast path without spans
        # Spans are ordered, inside the text, and together cover every character.
        covered = set()
        for start, end in spans:
            assert 0 <= start <= end <= len(text)
            covered.update(range(start, end))
        assert covered == set(range(len(text)))


def test_subword_line_breaks_are_units_of_their_own(subword_tokenizer):
    ids, spans = subword_tokenizer.encode_with_offsets("ab\ncd")
    newline = subword_tokenizer.newline_id
    assert ids.count(newline) == 1 and spans[ids.index(newline)] == (2, 3)
    assert newline == subword_tokenizer.vocab_size - 1


def test_subword_vocabulary_size_includes_the_line_break(subword_tokenizer):
    assert subword_tokenizer.vocab_size == 800


def test_word_starts(char_tokenizer, subword_tokenizer):
    starts = char_tokenizer.begins_word()
    for char, expected in [(" ", True), ("a", False), (",", True), ("\n", True), ("7", False)]:
        assert starts[char_tokenizer.encode(char)[0]] is expected
    starts = subword_tokenizer.begins_word()
    ids = subword_tokenizer.encode("the cat sat,")
    texts = [subword_tokenizer.unit_text(i) for i in ids]
    for unit, text in zip(ids, texts):
        assert starts[unit] == (text[0] == " " or not is_word_char(text[0]))


def test_subword_ids_are_the_same_from_the_line_cache_and_after_pickling(subword_tokenizer, corpus):
    import pickle

    lines = corpus.valid.text.split("\n")[:300]
    text = "\n".join(lines)
    first = subword_tokenizer.encode(text)  # fills the cache
    assert subword_tokenizer.encode(text) == first
    fresh = SubwordTokenizer(subword_tokenizer.model_proto, subword_tokenizer.model_type)  # an empty cache
    assert fresh.encode(text) == first and fresh.encode_with_offsets(text)[0] == first
    copy = pickle.loads(pickle.dumps(subword_tokenizer))
    assert copy.encode(text + " more") == subword_tokenizer.encode(text + " more")


def test_save_and_load_round_trip(tmp_path, char_tokenizer, subword_tokenizer):
    for tokenizer in (char_tokenizer, subword_tokenizer):
        directory = tmp_path / tokenizer.kind
        directory.mkdir()
        tokenizer.save(directory)
        loaded = load_tokenizer(directory)
        text = "Reach, the model: 42 units.\nNext"
        assert loaded.encode_with_offsets(text) == tokenizer.encode_with_offsets(text)
        assert loaded.vocab_size == tokenizer.vocab_size


def test_damaged_tokenizer_files_are_refused(tmp_path, subword_tokenizer):
    subword_tokenizer.save(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(b"not a model")
    with pytest.raises(TokenizerError):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{")
    with pytest.raises(TokenizerError):
        load_tokenizer(tmp_path)


def test_bpe_model_trains(corpus):
    tokenizer = SubwordTokenizer.train(corpus.valid.text, vocab_size=400, model_type="bpe")
    assert tokenizer.decode(tokenizer.encode("A new line.\nAnd another")) == "A new line.\nAnd another"


def test_vocabulary_too_large_for_the_text_is_explained():
    with pytest.raises(TokenizerError, match="could not train"):
        SubwordTokenizer.train("a tiny text\n", vocab_size=5000)
