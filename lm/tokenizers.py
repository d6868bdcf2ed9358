"""Character and subword tokenizers behind one interface.

Both split text into *units* (the model's tokens) and report, for each unit,
the character span it covers in the text, so that predictions and gradient
influence can be mapped back onto what the user typed.

- `CharTokenizer`: one unit per Unicode character seen at least `min_count`
  times in the training text; rarer characters share the unknown id 0.
- `SubwordTokenizer`: a SentencePiece model (Kudo and Richardson 2018),
  unigram or BPE, trained on the training split only, with identity
  normalisation and byte fallback so that encoding is lossless. SentencePiece
  works on single lines, so a line break is one extra unit of its own (the
  last id) and every line is encoded separately.

Both are saved as plain files (JSON, and SentencePiece's own model file);
nothing is pickled.
"""

from __future__ import annotations

import functools
import io
import json
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Iterable, Protocol

__all__ = [
    "CharTokenizer",
    "SubwordTokenizer",
    "Tokenizer",
    "TokenizerError",
    "build_tokenizer",
    "is_word_char",
    "load_tokenizer",
]

UNK = "<unk>"
NEWLINE = "\n"
_SPACE_MARK = "\u2581"  # SentencePiece's visible space, "▁"


class TokenizerError(Exception):
    """A tokenizer that cannot be built or loaded; the message is for the user."""


def is_word_char(char: str) -> bool:
    """Letters, digits and combining marks make words; everything else is a boundary."""
    return unicodedata.category(char)[0] in "LNM"


class Tokenizer(Protocol):
    """What the rest of Reach needs from a tokenizer: the whole contract the predictor relies on.

    Units and text:
    - Text is encoded line by line: each line break is one unit of its own,
      `newline_id`, and no other unit spans a line break. A model reads a line
      break first (a text starts at a line start), so `encode` never emits a
      leading one.
    - `encode_with_offsets` gives each unit's (start, end) character span in
      the text it encoded; spans are in order and cover the text.
    - `unit_text(u, line_start)` is the exact text unit u adds after a
      context: None for units that stand for no text of their own (the
      unknown unit, SentencePiece's byte pieces; they never form words); "\n"
      for `newline_id`; otherwise a non-empty string, except that at a line
      start a unit whose text is only SentencePiece's dummy leading space
      gives "" (the space a line does not show). `line_start` is whether the
      unit follows a line break (or nothing).
    - Decoding the units of `encode(text)` gives `text` back for text made of
      known characters.

    Capabilities:
    - `heals_words`: True when one unit can hold several characters, so that
      a text ending inside a word is encoded differently from the finished
      word (" capi" vs " capital"); the predictor then reads the context only
      up to the unfinished word and makes the continuation spell it ("token
      healing", docs/PREDICTION.md). False for one unit per character.

    `kind` names the tokenizer in files and model cards only; no code branches on it.
    """

    kind: str
    heals_words: bool
    vocab_size: int
    unk_id: int
    newline_id: int

    def encode(self, text: str) -> list[int]: ...

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def unit_text(self, unit: int, line_start: bool = False) -> str | None: ...

    def begins_word(self) -> list[bool]: ...

    def save(self, directory: Path) -> None: ...

    def describe(self) -> dict: ...

    def clear_cache(self) -> None: ...


def _begins_word(surface: str | None) -> bool:
    """A unit begins a new word if its text starts with whitespace or a non-word character."""
    if not surface:
        return surface is None  # unknown units end whatever came before them
    return surface[0].isspace() or not is_word_char(surface[0])


class CharTokenizer:
    """One unit per character; characters rarer than `min_count` in training map to `<unk>` (id 0)."""

    kind = "char"
    heals_words = False  # one unit per character: a text that ends inside a word needs no healing

    def __init__(self, chars: list[str], min_count: int = 1):
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise TokenizerError("a character vocabulary must hold distinct single characters")
        if NEWLINE not in chars:
            chars = [*chars, NEWLINE]
        self.chars = list(chars)
        self.min_count = min_count
        self._ids = {char: index + 1 for index, char in enumerate(self.chars)}
        self.vocab_size = len(self.chars) + 1
        self.unk_id = 0
        self.newline_id = self._ids[NEWLINE]

    @classmethod
    def train(cls, text: str, min_count: int = 3) -> "CharTokenizer":
        """Build the vocabulary from training text: characters seen at least `min_count` times."""
        counts = Counter(text)
        chars = sorted(char for char, count in counts.items() if count >= min_count)
        return cls(chars, min_count=min_count)

    def encode(self, text: str) -> list[int]:
        return [self._ids.get(char, 0) for char in text]

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        return self.encode(text), [(index, index + 1) for index in range(len(text))]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[i - 1] if 0 < i < self.vocab_size else UNK for i in ids)

    def unit_text(self, unit: int, line_start: bool = False) -> str | None:
        """The text a unit stands for, or None for the unknown unit."""
        return self.chars[unit - 1] if 0 < unit < self.vocab_size else None

    def begins_word(self) -> list[bool]:
        return [_begins_word(self.unit_text(unit)) for unit in range(self.vocab_size)]

    def save(self, directory: Path) -> None:
        payload = {"kind": self.kind, "min_count": self.min_count, "chars": self.chars}
        (Path(directory) / "tokenizer.json").write_text(json.dumps(payload, ensure_ascii=False), encoding="utf-8")

    def describe(self) -> dict:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "min_count": self.min_count}

    def clear_cache(self) -> None:
        """Nothing is remembered between calls."""


# Lines whose ids a subword tokenizer keeps for the next request.
_LINES_KEPT = 1024


class SubwordTokenizer:
    """SentencePiece pieces within a line, plus one unit (the last id) for each line break."""

    kind = "subword"
    heals_words = True

    def __init__(self, model_proto: bytes, model_type: str):
        import sentencepiece

        self.model_proto = model_proto
        self.model_type = model_type
        self._sp = sentencepiece.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(model_proto)
        except Exception as error:  # sentencepiece raises RuntimeError or OSError
            raise TokenizerError(f"the SentencePiece model is not readable ({error})") from error
        self._line_ids = self._line_cache()
        pieces = self._sp.get_piece_size()
        self.unk_id = self._sp.unk_id()
        self.newline_id = pieces
        self.vocab_size = pieces + 1
        self._surface: list[str | None] = []
        self._byte: list[int | None] = []
        for unit in range(pieces):
            if self._sp.is_byte(unit):
                self._surface.append(None)
                self._byte.append(int(self._sp.id_to_piece(unit)[1:-1], 16))
            elif self._sp.is_unknown(unit) or self._sp.is_control(unit):
                self._surface.append(None)
                self._byte.append(None)
            else:
                self._surface.append(self._sp.id_to_piece(unit).replace(_SPACE_MARK, " "))
                self._byte.append(None)
        # The bytes each unit covers in its line (a byte unit one; an unknown or control unit, one like a space).
        self._widths = [1 if byte is not None else len((surface or " ").encode("utf-8"))
                        for byte, surface in zip(self._byte, self._surface)]

    @classmethod
    def train(cls, text: str, vocab_size: int = 4000, model_type: str = "unigram") -> "SubwordTokenizer":
        """Train SentencePiece on the lines of `text`; the vocabulary includes the line-break unit."""
        import sentencepiece

        lines = [line for line in text.split(NEWLINE) if line]
        if not lines:
            raise TokenizerError("cannot train a subword tokenizer on empty text")
        model = io.BytesIO()
        try:
            sentencepiece.SentencePieceTrainer.train(
                sentence_iterator=iter(lines),
                model_writer=model,
                vocab_size=vocab_size - 1,  # the line-break unit is the last id
                model_type=model_type,
                # Lossless: no normalisation, spaces kept as typed, unseen
                # characters spelled as UTF-8 bytes instead of <unk>.
                normalization_rule_name="identity",
                remove_extra_whitespaces=False,
                byte_fallback=True,
                character_coverage=0.9995,
                split_digits=True,
                max_sentence_length=1 << 16,
                input_sentence_size=2_000_000,
                shuffle_input_sentence=True,
                unk_id=0,
                bos_id=-1,
                eos_id=-1,
                pad_id=-1,
                num_threads=2,
                minloglevel=2,
            )
        except RuntimeError as error:
            raise TokenizerError(f"SentencePiece could not train a {vocab_size}-unit {model_type} model: {error}") from error
        return cls(model.getvalue(), model_type)

    def _line_cache(self):
        """line -> its ids, remembered: requests repeat their earlier lines (a text grows at its end)."""
        return functools.lru_cache(maxsize=_LINES_KEPT)(lambda line: tuple(self._sp.encode(line)))

    def clear_cache(self) -> None:
        """Forget the remembered lines."""
        self._line_ids.cache_clear()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["_line_ids"]  # a closure: rebuilt on unpickling
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._line_ids = self._line_cache()

    def _line_units(self, line: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Encode one line; spans are character offsets within the line."""
        if not line:
            return [], []
        ids = list(self._line_ids(line))
        data = line.encode("utf-8")
        if len(data) == len(line):  # every character one byte: byte offsets are character offsets
            return ids, self._spans(ids, len(data))
        # For every byte offset: the character holding that byte (span
        # starts) and the number of characters begun before it (span ends),
        # so that the bytes of one rare character each cover that character.
        # SentencePiece's dummy leading space is one byte that covers nothing.
        holder = [index for index, char in enumerate(line) for _ in range(1 if char < "\x80" else len(char.encode("utf-8")))]
        first = holder + [len(line)]  # (bytes + 1,)
        until = [0] + [index + 1 for index in holder]  # (bytes + 1,)
        return ids, self._spans(ids, len(data), first.__getitem__, until.__getitem__)

    def _spans(self, ids: list[int], size: int, first=None, until=None) -> list[tuple[int, int]]:
        """Each unit's character span in a line of `size` bytes, from `first(byte)` (the character holding it) and
        `until(byte)` (the characters begun before it); without them every character is one byte."""
        spans = []
        cursor = 0
        widths = self._widths
        for unit in ids:
            start = cursor
            cursor += widths[unit]
            lo, hi = max(0, start - 1), min(size, cursor - 1)
            if first is None:
                spans.append((lo, max(lo, hi)))
            else:
                begin = first(lo)
                spans.append((begin, max(begin, until(hi))))
        return spans

    def encode(self, text: str) -> list[int]:
        # The same ids as encode_with_offsets, without working out the spans (prediction encodes every request).
        ids: list[int] = []
        for index, line in enumerate(text.split(NEWLINE)):
            if index:
                ids.append(self.newline_id)
            if line:
                ids.extend(self._line_ids(line))
        return ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        ids: list[int] = []
        spans: list[tuple[int, int]] = []
        offset = 0
        for index, line in enumerate(text.split(NEWLINE)):
            if index:
                ids.append(self.newline_id)
                spans.append((offset - 1, offset))
            line_ids, line_spans = self._line_units(line)
            ids.extend(line_ids)
            spans.extend((offset + start, offset + end) for start, end in line_spans)
            offset += len(line) + 1
        return ids, spans

    def decode(self, ids: Iterable[int]) -> str:
        lines: list[list[int]] = [[]]
        for unit in ids:
            if unit == self.newline_id:
                lines.append([])
            else:
                lines[-1].append(int(unit))
        return NEWLINE.join(self._sp.decode(line) if line else "" for line in lines)

    def unit_text(self, unit: int, line_start: bool = False) -> str | None:
        """The text a unit stands for (None for unknown and byte units); at a line start the dummy space is dropped."""
        if unit == self.newline_id:
            return NEWLINE
        if not 0 <= unit < self.newline_id:
            return None
        surface = self._surface[unit]
        if surface is not None and line_start and surface.startswith(" "):
            return surface[1:]
        return surface

    def begins_word(self) -> list[bool]:
        starts = [_begins_word(self.unit_text(unit)) for unit in range(self.vocab_size)]
        for unit, byte in enumerate(self._byte):
            if byte is not None:
                starts[unit] = False  # part of a rare character inside a word
        return starts

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        (directory / "tokenizer.model").write_bytes(self.model_proto)
        payload = {"kind": self.kind, "model_type": self.model_type, "vocab_size": self.vocab_size}
        (directory / "tokenizer.json").write_text(json.dumps(payload), encoding="utf-8")

    def describe(self) -> dict:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "model_type": self.model_type}


def build_tokenizer(kind: str, text: str, vocab_size: int = 4000, model_type: str = "unigram", min_count: int = 3) -> Tokenizer:
    """Train a tokenizer of the given kind on training text."""
    if kind == "char":
        return CharTokenizer.train(text, min_count=min_count)
    if kind == "subword":
        return SubwordTokenizer.train(text, vocab_size=vocab_size, model_type=model_type)
    raise TokenizerError(f"unknown tokenizer {kind!r}; choose char or subword")


def load_tokenizer(directory: Path) -> Tokenizer:
    """Load a tokenizer saved by `save` into `directory`."""
    directory = Path(directory)
    try:
        payload = json.loads((directory / "tokenizer.json").read_text(encoding="utf-8"))
        kind = payload["kind"]
        if kind == "char":
            return CharTokenizer(list(payload["chars"]), min_count=int(payload.get("min_count", 1)))
        if kind == "subword":
            tokenizer = SubwordTokenizer((directory / "tokenizer.model").read_bytes(), payload["model_type"])
            if tokenizer.vocab_size != payload["vocab_size"]:
                raise TokenizerError("tokenizer.model does not match tokenizer.json")
            return tokenizer
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise TokenizerError(f"tokenizer files in {str(directory)!r} are missing or damaged ({error})") from error
    raise TokenizerError(f"unknown tokenizer kind {kind!r} in {str(directory)!r}")
