"""Per-unit text facts of a tokenizer, computed once and shared by the beam search, exact scoring and attribution.

`UnitTable` answers, for every unit at once: what text it adds (inside a
line and at a line start), which units continue a word, which end one at
their first character, and which units (or unit prefixes) spell a given
text. `PhaseTable` is what each unit does to a continuation in one phase
(`lm/infer/query.py`), as arrays for vectorised expansion.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np
import torch

from lm.infer.query import advance
from lm.tokenizers import Tokenizer, is_word_char

__all__ = ["PhaseTable", "UnitTable"]

# Text-dependent tables (a required part, an overshoot) kept per UnitTable, the most recently used first.
TABLES_KEPT = 256


class UnitTable:
    """Per-unit text facts, computed once per tokenizer, for both line-start cases.

    texts[ls][u]: unit u's text (`Tokenizer.unit_text`) inside a line (ls 0) or at a line start (ls 1);
    continues / continuing: the units whose whole text continues a word (a mask, and their ids);
    ends / ends_mask: the units whose first character ends a word (a boolean mask, and as float64 weights);
    runs_on: units that continue a word and then end it inside themselves, with the part that continues it;
    by_text[ls] / by_prefix[ls]: the units whose text is, or starts with, a given string.
    """

    def __init__(self, tokenizer: Tokenizer):
        size = tokenizer.vocab_size
        self.size = size
        self.texts = [[tokenizer.unit_text(u, line_start=ls) for u in range(size)] for ls in (False, True)]
        self.newline = tokenizer.newline_id
        mid = self.texts[0]
        # Inside a word: units that continue it, units that end it at their first character.
        self.continues = np.array([bool(t) and all(is_word_char(c) for c in t) for t in mid])
        self.continuing = np.nonzero(self.continues)[0]  # their ids
        self.ends = np.array([bool(t) and not is_word_char(t[0]) for t in mid])
        self.ends_mask = torch.from_numpy(self.ends.astype(np.float64))
        # Units that continue the word and then end it inside themselves ("ing,").
        self.runs_on = {u: advance(("word", ""), t)[1] for u, t in enumerate(mid)
                        if t and is_word_char(t[0]) and not self.continues[u]}
        self.max_length = max((len(t) for texts in self.texts for t in texts if t), default=1)
        self.by_text: list[dict[str, list[int]]] = [{}, {}]
        self.by_prefix: list[dict[str, list[int]]] = [{}, {}]
        for ls in (0, 1):
            for unit, text in enumerate(self.texts[ls]):
                if text is None:
                    continue
                self.by_text[ls].setdefault(text, []).append(unit)
                for cut in range(0, len(text)):
                    self.by_prefix[ls].setdefault(text[:cut], []).append(unit)
        self._before: dict[tuple[bool, bool], "PhaseTable"] = {}
        # Tables that depend on the text (the required part): a few recent ones are kept.
        self._required: OrderedDict[tuple, "PhaseTable"] = OrderedDict()
        self._overshoot: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._overshoot_paths: OrderedDict[tuple, list] = OrderedDict()
        self._lock = threading.Lock()  # servers predict from several threads

    def before(self, has_space: bool, line_start: bool) -> "PhaseTable":
        """What each unit does to a continuation that has no word character yet."""
        key = (has_space, line_start)
        if key not in self._before:
            texts = self.texts[int(line_start)]
            self._before[key] = PhaseTable([("dead",) if t is None else advance(("before", has_space), t) for t in texts])
        return self._before[key]

    def requirement(self, required: str, consumed: str, start: tuple, line_start: bool) -> "PhaseTable":
        """What each unit does to a continuation that has spelled `consumed` of the `required` text so far."""
        rest = required[len(consumed):]

        def phase(text: str | None) -> tuple:
            if text is None or (text == "" and not line_start):
                return ("dead",)
            if rest.startswith(text):
                spelled = consumed + text
                return ("req", spelled) if len(spelled) < len(required) else start
            if text.startswith(rest):
                return advance(start, text[len(rest):])
            return ("dead",)

        return self._memo(self._required, (required, consumed, start, line_start),
                          lambda: PhaseTable([phase(text) for text in self.texts[int(line_start)]]))

    def overshoot(self, rest: str, boundary: bool, line_start: bool) -> np.ndarray:
        """Units that spell `rest` and go on past it (with a non-word character next, if `boundary`)."""
        ls = int(line_start)
        return self._memo(self._overshoot, (rest, boundary, line_start), lambda: np.array(
            [u for u in self.by_prefix[ls].get(rest, ()) if not boundary or not is_word_char(self.texts[ls][u][len(rest)])],
            dtype=np.int64))

    def overshoot_paths(self, rest: str, boundary: bool, line_start: bool) -> list[tuple[tuple[int], bool]]:
        """`overshoot` as one-unit paths ((unit,), False): a required space alone has thousands."""
        return self._memo(self._overshoot_paths, (rest, boundary, line_start),
                          lambda: [((int(unit),), False) for unit in self.overshoot(rest, boundary, line_start)])

    def _memo(self, tables: OrderedDict, key: tuple, build):
        """tables[key], built on first use; only the most recently used TABLES_KEPT are kept."""
        with self._lock:
            if key in tables:
                tables.move_to_end(key)
                return tables[key]
        value = build()
        with self._lock:
            tables[key] = value
            while len(tables) > TABLES_KEPT:
                tables.popitem(last=False)
        return value


class PhaseTable:
    """Per-unit phases from one phase ("before" or "req"), as arrays for vectorised expansion."""

    def __init__(self, phases: list[tuple]):
        self.phases = phases
        kinds = [p[0] for p in phases]
        self.starts_word = np.array([k == "word" for k in kinds])  # units that begin the word
        self.spaces = np.nonzero([k in ("before", "req") for k in kinds])[0]  # units that add whitespace or required text
        self.words = sorted({p[1] for p in phases if p[0] == "done"})
        index = {word: i for i, word in enumerate(self.words)}
        self.done = np.nonzero([k == "done" for k in kinds])[0]  # units that complete a word by themselves
        self.done_word = np.array([index[phases[u][1]] for u in self.done], dtype=np.int64)

