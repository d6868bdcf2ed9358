"""Planted long-range dependencies: text where the right next word is fixed by a word a known distance back.

On natural text nobody knows how far back a prediction should reach. Here
each example is one line of otherwise natural text with a key planted in
it and asked for later:

    <filler> the code word is saffron. <Wikipedia filler> so the code word was saffron.

The key comes from a closed set (`KEYS`), so chance accuracy is known
(1 / len(KEYS)); the filler is taken from the matching split of a real
corpus (train filler for the train split, and so on), whole words, on one
line. The distance of an example is counted in characters from the point
where the answer is to be predicted back to the first character of the
planted key (`answer_start - key_start`); it is drawn per example,
log-uniformly between a minimum and a maximum, so one model is tested at
every distance, and recorded exactly.

A control example replaces the key in the question by another key drawn
independently, so the answer cannot be recovered from the text: a model's
accuracy on controls should sit at chance, and accuracy above chance on the
real examples then comes from the planted key.

Every line is already in normalised form (single spaces, no padding), so
offsets stay valid after `normalize_line`. Seeded; nothing is written to
disk.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from corpora.loading import Corpus, Split

__all__ = ["KEYS", "SHORTEST_DISTANCE", "PlantedExample", "PlantedCorpus", "planted_corpus", "planted_examples"]

# The closed set of keys: single lowercase words, rare in Wikipedia text, none a prefix of another.
KEYS = ("tamarind", "saffron", "juniper", "cardamom", "nutmeg", "fennel", "sorrel", "quince",
        "lychee", "kumquat", "persimmon", "rambutan", "durian", "mangosteen", "loquat", "medlar")
INTRODUCTION = "the code word is "
QUESTION = " so the code word was "
# The shortest distance a line can have: the longest key, ". " and the question, with no filler between.
SHORTEST_DISTANCE = len(max(KEYS, key=len)) + len(". ") + len(QUESTION)


@dataclass(frozen=True)
class PlantedExample:
    """One line with a planted key and the question that asks for it."""

    text: str  # the whole line: filler, introduction, filler, question, the answer and a closing "."
    key: str  # the answer: the planted key, or for a control another key
    planted: str  # the key planted in the introduction
    key_start: int  # offset of the planted key in `text`
    answer_start: int  # offset where the answer begins: the prediction point
    control: bool  # the answer differs from the planted key and cannot be recovered

    @property
    def distance(self) -> int:
        """Characters from the prediction point back to the planted key's first character."""
        return self.answer_start - self.key_start

    @property
    def question(self) -> str:
        """The text before the answer: what a model reads before predicting it."""
        return self.text[: self.answer_start]


@dataclass(frozen=True)
class PlantedCorpus:
    """A corpus of planted examples (train, valid, test) and the examples of each split for evaluation."""

    corpus: Corpus
    examples: dict[str, list[PlantedExample]]
    chance: float  # 1 / len(KEYS): the accuracy of a guess


def _filler_words(text: str) -> list[str]:
    """The words of a normalised split, line breaks dropped, and any key removed (a key in the filler would
    be a second, misleading plant)."""
    return [word for word in text.split() if word.strip(".,;:!?()\"'").lower() not in KEYS]


def planted_examples(filler: str, count: int, seed: int, min_distance: int = 40, max_distance: int = 400,
                     control_share: float = 0.0) -> list[PlantedExample]:
    """`count` seeded examples with filler from `filler`; a `control_share` of them (seeded) are controls.

    Distances are drawn log-uniformly in [min_distance, max_distance] characters
    and met with whole filler words: the recorded distance is the exact one,
    at most one word longer than the drawn target and never below min_distance.
    """
    if min_distance < SHORTEST_DISTANCE:
        raise ValueError(f"min_distance must be at least {SHORTEST_DISTANCE} characters (the longest key and the question)")
    if max_distance < min_distance:
        raise ValueError("max_distance must be at least min_distance")
    if not 0.0 <= control_share <= 1.0:
        raise ValueError("control_share must be between 0 and 1")
    words = _filler_words(filler)
    if len(words) < 200:
        raise ValueError("the filler text is too short (fewer than 200 words)")
    rng = random.Random(seed)
    examples = []
    for _ in range(count):
        planted = rng.choice(KEYS)
        control = rng.random() < control_share
        key = rng.choice([k for k in KEYS if k != planted]) if control else planted
        target = round(math.exp(rng.uniform(math.log(min_distance), math.log(max_distance))))
        # distance = len(planted) + len(". ") + len(gap) + len(QUESTION); gap = " ".join(some filler words)
        room = target - len(planted) - len(". ") - len(QUESTION)
        start = rng.randrange(len(words) - 1)
        gap: list[str] = []
        length = -1
        while length < room:
            word = words[(start + len(gap)) % len(words)]
            gap.append(word)
            length += len(word) + 1
        lead_start = rng.randrange(len(words) - 8)
        prefix = " ".join(words[lead_start : lead_start + 8]) + " " + INTRODUCTION  # natural text before the plant
        text = prefix + planted + ". " + " ".join(gap) + QUESTION
        answer_start = len(text)
        text += key + "."
        examples.append(PlantedExample(text, key, planted, len(prefix), answer_start, control))
    return examples


def planted_corpus(source: Corpus, seed: int = 0, counts: tuple[int, int, int] = (4000, 400, 400), min_distance: int = 40,
                   max_distance: int = 400, control_share: float = 0.5, plain_lines: int = 1,
                   test_distances: tuple[int, int] | None = None) -> PlantedCorpus:
    """A corpus of planted examples whose filler comes from `source`'s splits (train from train, and so on).

    Training lines have no controls (a model should learn the task, not the
    noise); held-out splits have `control_share` controls. Between training
    examples come `plain_lines` lines of the source's own training text, so
    that the model keeps reading natural text. The test split draws its
    distances from `test_distances` (min, max) when given, so that a model
    trained (and selected on the valid split) at short distances is tested at
    longer ones.
    """
    examples: dict[str, list[PlantedExample]] = {}
    splits: dict[str, Split] = {}
    plain = [line for line in source.train.text.splitlines() if line.strip()]
    mixer = random.Random(seed + 1)
    for offset, (name, count) in enumerate(zip(("train", "valid", "test"), counts)):
        share = 0.0 if name == "train" else control_share
        low, high = test_distances if name == "test" and test_distances else (min_distance, max_distance)
        found = planted_examples(source.split(name).text, count, seed + 7919 * offset, low, high, share)
        examples[name] = found
        lines = []
        for example in found:
            lines.append(example.text)
            if name == "train":
                lines.extend(mixer.choice(plain) for _ in range(plain_lines))
        text = "".join(line + "\n" for line in lines)
        splits[name] = Split(text=text, raw_words=len(text.split()), lines=len(lines))
    corpus = Corpus(name=f"planted-recall:{source.name}", source=f"planted keys in {source.source}",
                    train=splits["train"], valid=splits["valid"], test=splits["test"])
    return PlantedCorpus(corpus, examples, 1.0 / len(KEYS))
