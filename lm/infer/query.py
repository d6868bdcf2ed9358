"""What a text asks for: the normalised text, the context the model reads, and where the next word starts.

A *word* is a run of word characters (letters, digits, marks) or one
punctuation character. The continuation after a text is followed through
*phases*, plain tuples for speed (a search makes thousands):

    ("req", consumed)        still spelling the required part of the text (subword healing)
    ("before", has_space)    no word character yet; has_space: whitespace already seen
    ("word", word)           inside the word being predicted
    ("done", word)           the word is complete (emitted, not expanded)
    ("dead",)                not a continuation of this kind

See docs/PREDICTION.md for the rules (where a continuation starts, healing).
"""

from __future__ import annotations

from dataclasses import dataclass

from corpora import normalize
from lm.tokenizers import Tokenizer, is_word_char

__all__ = ["MAX_HEALED_CHARS", "Cut", "Query", "advance", "keep_last_units", "line_start_after", "make_query", "word_at"]

# The most characters healing spells: a text ending inside a longer word (a long token, a run of text without
# spaces) reads the word's start as context and heals only its last units (`_healing_start`). Every spelling of the
# healed part is followed (docs/PREDICTION.md), and their number grows fast with its length: a 400-character word,
# healed whole, took 4 s to predict and 34 s to attribute, and 20,000 characters more than 10 minutes.
MAX_HEALED_CHARS = 24


def advance(phase: tuple, text: str) -> tuple:
    """The phase after `text` is appended to a continuation in `phase` (not "req")."""
    for char in text:
        kind = phase[0]
        if kind == "before":
            if char.isspace():
                if phase[1]:
                    return ("dead",)
                phase = ("before", True)
            elif is_word_char(char):
                phase = ("word", char)
            else:
                return ("done", char)  # punctuation is a word of its own
        elif kind == "word":
            if is_word_char(char):
                phase = ("word", phase[1] + char)
            else:
                return ("done", phase[1])
    return phase


def word_at(text: str, position: int) -> str:
    """The word that starts at `position` of `text`: a run of word characters or one other character."""
    if position >= len(text):
        return ""
    if not is_word_char(text[position]):
        return text[position]
    end = position
    while end < len(text) and is_word_char(text[end]):
        end += 1
    return text[position:end]


@dataclass(frozen=True)
class Query:
    """A text turned into what the model reads and what the continuation must do."""

    text: str  # the normalised text
    context: str  # the part the model reads before predicting
    required: str  # text the continuation must spell first (subword healing), possibly "": at most the last
    # MAX_HEALED_CHARS characters of an unfinished word, or its last unit when that is longer
    start: tuple  # the phase after `required`
    completing: bool
    partial: str  # the unfinished word at the end of the text ("" when not completing)


def make_query(text: str, tokenizer: Tokenizer, normalized: bool = False) -> Query:
    """Normalise `text` exactly as in training and work out where the next word starts."""
    ends_in_space = bool(text) and text[-1].isspace()
    norm = text if normalized else normalize(text)
    if ends_in_space and norm and not norm[-1].isspace():
        norm += " "  # normalisation strips trailing spaces; the user typed one
    partial_start = len(norm)
    while partial_start > 0 and is_word_char(norm[partial_start - 1]):
        partial_start -= 1
    partial = norm[partial_start:]
    completing = bool(partial)
    cut = partial_start
    while cut > 0 and norm[cut - 1].isspace():
        cut -= 1
    if not tokenizer.heals_words:
        cut = len(norm)  # one unit per character: nothing to heal
    elif len(norm) - cut > MAX_HEALED_CHARS and completing:
        cut = _healing_start(norm, cut, partial_start, tokenizer)
    required = norm[cut:]
    if completing:
        start: tuple = ("word", partial)
    else:
        start = ("before", bool(required) and required[-1].isspace() or cut == 0 or norm[cut - 1].isspace())
    return Query(text=norm, context=norm[:cut], required=required, start=start, completing=completing, partial=partial)


def _healing_start(norm: str, cut: int, partial_start: int, tokenizer: Tokenizer) -> int:
    """Where healing starts in a text that ends inside a word whose healed part, norm[cut:], is longer than
    MAX_HEALED_CHARS: the first of the word's units (as the tokenizer segments that part) starting within the last
    MAX_HEALED_CHARS characters, or the last unit's start when none does (a unit that long). The word's earlier
    units are read as context, so its probability is conditioned on their segmentation (docs/PREDICTION.md)."""
    _, spans = tokenizer.encode_with_offsets(norm[cut:])
    starts = sorted({cut + start for start, _ in spans if cut + start > partial_start})
    if not starts:
        return cut
    return next((start for start in starts if len(norm) - start <= MAX_HEALED_CHARS), starts[-1])


@dataclass(frozen=True)
class Cut:
    """What the input limit left unread: the first `chars` characters of the normalised `text` (`units` units of
    its context as the whole text is segmented). The read text is text[chars:], so `chars` is also where it starts
    in `text`."""

    text: str  # the whole normalised text, as sent
    chars: int = 0
    units: int = 0

    @property
    def truncated(self) -> bool:
        return self.units > 0


def keep_last_units(text: str, tokenizer: Tokenizer, max_units: int | None) -> tuple[Query, Cut]:
    """The query of `text` read from the start of the last `max_units` units of its context (None: all of it), and
    what was cut. Every reading of a text (predictions, attribution) goes through here, so that one text is read
    one way: the kept suffix is read from a zero state, as a text of its own (already normalised)."""
    query = make_query(text, tokenizer)
    if max_units is None:
        return query, Cut(query.text)
    ids = tokenizer.encode(query.context)
    if len(ids) <= max_units:
        return query, Cut(query.text)
    _, spans = tokenizer.encode_with_offsets(query.context)
    # The suffix is segmented afresh: a subword model can spell its start in more units than the whole text did
    # there (a line start's "▁"), so it starts one unit later until it fits (with every unit dropped, it reads none).
    for dropped_units in range(len(spans) - max_units, len(spans) + 1):
        dropped_chars = spans[dropped_units][0] if dropped_units < len(spans) else len(query.context)
        kept = make_query(query.text[dropped_chars:], tokenizer, normalized=True)
        if len(tokenizer.encode(kept.context)) <= max_units:
            break
    return kept, Cut(query.text, dropped_chars, dropped_units)


def line_start_after(text: str | None, line_start: bool) -> bool:
    if text is None:
        return line_start
    if text == "":
        return False  # SentencePiece's dummy space at a line start
    return text.endswith("\n")

