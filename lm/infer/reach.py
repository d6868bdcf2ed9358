"""Reach figures: how far back per-position influence reaches, counted from the prediction point.

Distances count back from the prediction point (the last unit read is at
distance 1), in units, words and characters:
- threshold reach: the farthest position whose influence is at least
  `threshold` times the largest;
- mass reach: the smallest distance covering 90% (99%) of the total influence.

Any per-position influence can be summarised this way (the gradient's, a
method's); `widest` combines two statements about one prediction (the
gradient's and the text cache's exact deletion reach) into the one that
holds for both.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, replace

import numpy as np

__all__ = ["Reach", "distance_in", "reach_figures", "sentences_of", "unit_words", "widest", "word_sentences", "words_of"]


@dataclass(frozen=True)
class Reach:
    """How far back influence reaches, counted from the prediction point."""

    tokens: int
    words: int
    chars: int
    mass90_tokens: int
    mass99_tokens: int
    mass90_words: int
    mass99_words: int
    mass90_chars: int
    mass99_chars: int
    threshold: float


def words_of(text: str) -> list[tuple[str, int, int]]:
    """The whitespace-separated words of `text`, each (word, start, end)."""
    words, start = [], None
    for index, char in enumerate(text + " "):
        if char.isspace():
            if start is not None:
                words.append((text[start:index], start, index))
                start = None
        elif start is None:
            start = index
    return words


def sentences_of(text: str, words: list[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    """The sentences of `text`, each (sentence, start, end) from its first word to its last: a sentence ends with a
    word ending in ".", "!" or "?" (closing quotes and brackets after it allowed), or before a line break."""
    sentences, first = [], None
    for index, (word, start, end) in enumerate(words):
        if first is None:
            first = start
        stripped = word.rstrip("\"')]»”’")
        line_break = index + 1 < len(words) and "\n" in text[end:words[index + 1][1]]
        if stripped.endswith((".", "!", "?")) or line_break or index + 1 == len(words):
            sentences.append((text[first:end], first, end))
            first = None
    return sentences


def word_sentences(words: list[tuple[str, int, int]], sentences: list[tuple[str, int, int]]) -> list[int]:
    """The sentence of each word (`sentences_of`'s sentences cover every word, in order)."""
    owner, sentence = [], 0
    for _, start, _ in words:
        while sentence + 1 < len(sentences) and start >= sentences[sentence + 1][1]:
            sentence += 1
        owner.append(sentence)
    return owner


def unit_words(units: list[tuple[str, int, int]], words: list[tuple[str, int, int]]) -> list[int]:
    """The word each unit belongs to: the word of its first non-space character; spaces go to the next word."""
    owner = []
    starts = [start for _, start, _ in words]
    for text, start, end in units:
        position = start + (len(text) - len(text.lstrip())) if text else start
        index = bisect.bisect_right(starts, position) - 1
        if index >= 0 and position < words[index][2]:
            owner.append(index)
        elif index + 1 < len(words):
            owner.append(index + 1)  # whitespace before a word
        else:
            owner.append(len(words) - 1 if words else -1)
    return owner


def reach_figures(influence: np.ndarray, unit_spans: list[tuple[int, int]], unit_word: list[int], text_length: int,
                  word_count: int, threshold: float = 0.01) -> Reach:
    """Reach in units, words and characters from per-unit influence (text order; the last unit is distance 1)."""
    n = influence.size
    if n == 0 or not np.isfinite(influence).all() or influence.max() <= 0:
        return Reach(0, 0, 0, 0, 0, 0, 0, 0, 0, threshold)
    by_distance = influence[::-1]  # index d-1 holds distance d
    strong = np.nonzero(by_distance >= threshold * by_distance.max())[0]
    far = int(strong.max()) + 1
    cumulative = np.cumsum(by_distance) / by_distance.sum()
    mass90 = int(np.searchsorted(cumulative, 0.9 - 1e-12)) + 1
    mass99 = int(np.searchsorted(cumulative, 0.99 - 1e-12)) + 1

    def in_words(distance: int) -> int:
        return distance_in(distance, unit_spans, unit_word, text_length)[0]

    def in_chars(distance: int) -> int:
        return distance_in(distance, unit_spans, unit_word, text_length)[1]

    return Reach(far, in_words(far), in_chars(far), min(mass90, n), min(mass99, n), in_words(min(mass90, n)),
                 in_words(min(mass99, n)), in_chars(min(mass90, n)), in_chars(min(mass99, n)), threshold)


def distance_in(distance: int, unit_spans: list[tuple[int, int]], unit_word: list[int], text_length: int) -> tuple[int, int]:
    """A distance in units back from the prediction point (the last unit is 1) in words and in characters."""
    n = len(unit_spans)
    last_word = max(unit_word[-1], 0) if unit_word else 0
    word = unit_word[n - distance]
    return (last_word - word + 1 if word >= 0 else 0), text_length - unit_spans[n - distance][0]


def widest(reach: Reach, tokens: int, mass90_tokens: int, mass99_tokens: int, unit_spans: list[tuple[int, int]],
           unit_word: list[int], text_length: int) -> Reach:
    """`reach` with each distance raised to at least the given one (in units), words and characters recomputed."""
    far, mass90, mass99 = max(reach.tokens, tokens), max(reach.mass90_tokens, mass90_tokens), max(reach.mass99_tokens, mass99_tokens)

    def words_chars(distance: int) -> tuple[int, int]:
        return distance_in(distance, unit_spans, unit_word, text_length) if distance else (0, 0)

    (words, chars), (words90, chars90), (words99, chars99) = words_chars(far), words_chars(mass90), words_chars(mass99)
    return replace(reach, tokens=far, words=words, chars=chars, mass90_tokens=mass90, mass99_tokens=mass99,
                   mass90_words=words90, mass99_words=words99, mass90_chars=chars90, mass99_chars=chars99)
