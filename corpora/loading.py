"""Load a corpus's train / valid / test text through Hugging Face `datasets`.

A corpus is named by one string (the `--corpus` flag):

- a local directory holding `train.txt`, `valid.txt` and `test.txt`
  (read with the `text` builder, one row per line);
- `wiki-subset`: the default. The directory in `$REACH_CORPUS` when that is
  set; else `../shared/corpora/wiki-subset` beside the project directory when
  it is there; otherwise rebuilt from the hub exactly as `../shared/corpora/`
  built it (the WikiText-2 raw *test* split, articles split 8/1/1 by index).
  Every command resolves it the same way (`default_corpus_source`);
- `wikitext-2-raw`, `wikitext-103-raw`: `Salesforce/wikitext` from the hub;
- `wikipedia:<lang>:<size>` (`wikipedia:en:20MB`): the first articles of
  `wikimedia/wikipedia`, streamed until `size` bytes of text are read and
  split by article index into train/valid/test.

Every split comes back normalised (see `normalize`) together with the number
of whitespace-separated words of the text *as published*: per-word perplexity
divides by that count, whatever the tokenizer.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from corpora.normalize import normalize_line

__all__ = ["Corpus", "CorpusError", "Split", "StreamedSplit", "default_corpus_source", "load_corpus", "normalize_lines",
           "split_articles", "split_name_for_article", "DEFAULT_CORPUS"]

log = logging.getLogger(__name__)

DEFAULT_CORPUS = "wiki-subset"
# Where this project's machines keep the default corpus: beside the project directory (corpora/ is one level down).
SHARED_DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "corpora" / DEFAULT_CORPUS
SPLITS = ("train", "valid", "test")
_WIKITEXT_CONFIGS = {"wikitext-2-raw": "wikitext-2-raw-v1", "wikitext-103-raw": "wikitext-103-raw-v1"}
_WIKIPEDIA = re.compile(r"^wikipedia:([a-z\-]{2,12}):(\d+(?:\.\d+)?)\s*([KMG]?B)$", re.IGNORECASE)
_WIKIPEDIA_SNAPSHOT = "20231101"
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9}
_LOCAL_HINT = "pass a local directory holding train.txt, valid.txt and test.txt, e.g. --corpus ../shared/corpora/wiki-subset"


class CorpusError(Exception):
    """A corpus that cannot be found or read; the message is one sentence for the user."""


# Lines are handed out in chunks of about this many characters: large enough that a worker's start-up per chunk is
# negligible, small enough that a few chunks in flight hold little memory.
CHUNK_CHARS = 4_000_000
_READ_BLOCK = 8 << 20


def _normalizer_identity() -> str:
    """A hash of the normalisation code: a fingerprint of raw files must change when their normalised text would."""
    return hashlib.blake2b(Path(__file__).with_name("normalize.py").read_bytes(), digest_size=16).hexdigest()


def _sample_lines(lines: Iterable[str], total_chars: int, max_chars: int, seed: int, normalise=lambda line: line) -> str:
    """About `max_chars` characters of whole lines, each kept with the same seeded probability, in their order.

    `normalise` is applied to the kept lines only (empty results are dropped), so a raw sample costs a read of
    the text and the normalisation of the sample, not of the whole text.
    """
    keep = max_chars / max(total_chars, 1)
    rng = random.Random(seed)
    kept: list[str] = []
    size = 0
    for line in lines:
        if rng.random() < keep and (line := normalise(line)):
            kept.append(line + "\n")
            size += len(line) + 1
            if size >= max_chars:
                break
    return "".join(kept)


@dataclass(frozen=True)
class Split:
    """One split held in memory: normalised text (a newline ends every line) and its published word count."""

    text: str
    raw_words: int
    lines: int
    normalised = True  # line_chunks gives lines already normalised

    def line_chunks(self, chunk_chars: int = CHUNK_CHARS) -> Iterator[list[str]]:
        """The split's lines (without their newline) in lists of about `chunk_chars` characters."""
        start = 0
        while start < len(self.text):
            end = self.text.find("\n", min(start + chunk_chars, len(self.text)) - 1)
            end = len(self.text) if end < 0 else end + 1
            yield self.text[start:end].split("\n")[:-1]
            start = end

    def fingerprint(self) -> str:
        """A hash of the normalised text."""
        digest = hashlib.blake2b(digest_size=16)
        for start in range(0, len(self.text), _READ_BLOCK):
            digest.update(self.text[start : start + _READ_BLOCK].encode("utf-8"))
        return f"text:{len(self.text)}:{digest.hexdigest()}"

    def sample(self, max_chars: int, seed: int) -> str:
        """The whole text when it has at most `max_chars` characters, else a seeded sample of whole lines."""
        if len(self.text) <= max_chars:
            return self.text
        return _sample_lines(self.text.split("\n")[:-1], len(self.text), max_chars, seed)


class StreamedSplit:
    """A split read from its files whenever it is needed, line by line: never held as one string.

    `line_chunks` gives the raw lines (`normalised` is False: whoever reads
    them normalises them with `normalize_lines`, in as many processes as it
    likes). `text`, `raw_words` and `lines` are there for callers that want
    the whole split at once (the lab, tests); reading them does hold it.
    """

    normalised = False

    def __init__(self, files: Iterable[Path | str]):
        self.files = tuple(Path(name) for name in files)

    def __repr__(self) -> str:
        return f"StreamedSplit({[str(name) for name in self.files]})"

    def line_chunks(self, chunk_chars: int = CHUNK_CHARS) -> Iterator[list[str]]:
        """The raw lines (without their newline) of every file in turn, in lists of about `chunk_chars` characters."""
        chunk: list[str] = []
        size = 0
        for name in self.files:
            # Text mode splits lines exactly as the `datasets` text builder does (universal newlines, then "\n").
            with open(name, encoding="utf-8") as lines:
                for line in lines:
                    chunk.append(line.rstrip("\n"))
                    size += len(line)
                    if size >= chunk_chars:
                        yield chunk
                        chunk, size = [], 0
        if chunk:
            yield chunk

    @property
    def size_bytes(self) -> int:
        """The files' total size: an upper bound on the raw text's characters."""
        return sum(name.stat().st_size for name in self.files)

    def fingerprint(self) -> str:
        """A hash of the files' bytes (all of them: an edit anywhere changes it) and of the normalisation code.

        Whole-content hashing reads the files once more (blake2b runs at several hundred MB/s, about a
        second for 500 MB); a size, mtime and sampled-blocks key would be faster but could miss an edit
        that keeps the size, and a cache built from the wrong text must never be used.
        """
        digest = hashlib.blake2b(digest_size=16)
        digest.update(_normalizer_identity().encode())
        for name in self.files:
            with open(name, "rb") as data:
                while block := data.read(_READ_BLOCK):
                    digest.update(block)
            digest.update(b"\x00end-of-file")
        return f"files:{self.size_bytes}:{digest.hexdigest()}"

    def sample(self, max_chars: int, seed: int) -> str:
        """All the normalised text when the files hold at most `max_chars` bytes, else a seeded sample of whole lines."""
        if self.size_bytes <= max_chars:
            return "".join(normalize_lines(chunk)[0] for chunk in self.line_chunks())  # `text` would keep it held
        raw = (line for chunk in self.line_chunks() for line in chunk)
        return _sample_lines(raw, self.size_bytes, max_chars, seed, normalize_line)

    @functools.cached_property
    def _whole(self) -> Split:
        """The whole split, read and held (once)."""
        return _make_split(line for chunk in self.line_chunks() for line in chunk)

    @property
    def text(self) -> str:
        return self._whole.text

    @property
    def raw_words(self) -> int:
        return self._whole.raw_words

    @property
    def lines(self) -> int:
        return self._whole.lines


@dataclass(frozen=True)
class Corpus:
    """The three splits of a corpus and where they came from."""

    name: str
    source: str
    train: Split | StreamedSplit
    valid: Split
    test: Split
    extra_train: tuple[str, ...] = ()

    def split(self, name: str) -> Split:
        """Return the split called `train`, `valid` or `test`."""
        if name not in SPLITS:
            raise CorpusError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}")
        return getattr(self, name)


def split_name_for_article(index: int) -> str:
    """The split of the index-th article: 4 -> valid, 9 -> test (mod 10), the rest train."""
    return {4: "valid", 9: "test"}.get(index % 10, "train")


def normalize_lines(lines: Iterable[str]) -> tuple[str, int, int]:
    """Normalise raw lines: (the kept lines' text, a newline after each; published words; kept lines)."""
    raw_words = 0
    kept: list[str] = []
    for line in lines:
        raw_words += len(line.split())
        normal = normalize_line(line)
        if normal:
            kept.append(normal)
    return "".join(line + "\n" for line in kept), raw_words, len(kept)


def _make_split(lines: Iterable[str]) -> Split:
    text, raw_words, kept = normalize_lines(lines)
    return Split(text=text, raw_words=raw_words, lines=kept)


def _read_local(directory: Path, names: tuple[str, ...]) -> dict[str, list[str]]:
    """Read `<name>.txt` files of a directory through the `datasets` text builder."""
    from datasets import load_dataset  # imported here: it is slow to import

    files = {name: str(directory / f"{name}.txt") for name in names}
    dataset = load_dataset("text", data_files=files)
    return {name: list(dataset[name]["text"]) for name in names}


def _check_local(directory: Path, names: tuple[str, ...]) -> None:
    if not directory.is_dir():
        raise CorpusError(f"corpus directory {str(directory)!r} does not exist; {_LOCAL_HINT}")
    missing = [f"{name}.txt" for name in names if not (directory / f"{name}.txt").is_file()]
    if missing:
        raise CorpusError(f"corpus directory {str(directory)!r} has no {', '.join(missing)}; {_LOCAL_HINT}")


def _hub_failure(name: str, error: Exception) -> CorpusError:
    reason = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
    return CorpusError(
        f"could not load {name!r} from the Hugging Face hub ({type(error).__name__}: {reason}); "
        f"without network access to the hub, {_LOCAL_HINT}"
    )


def split_articles(lines: Iterable[str]) -> dict[str, list[str]]:
    """Split WikiText lines into train/valid/test by article index (an article starts at ' = Title = ')."""
    out: dict[str, list[str]] = {name: [] for name in SPLITS}
    index = -1
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("= ") and stripped.endswith(" =") and not stripped.startswith("= ="):
            index += 1
        if index < 0 or not stripped:
            continue
        out[split_name_for_article(index)].append(line)
    return out


def _load_wiki_subset_from_hub() -> dict[str, list[str]]:
    from datasets import load_dataset

    dataset = load_dataset("Salesforce/wikitext", "wikitext-2-raw-v1", split="test")
    return split_articles(dataset["text"])


def _load_wikitext(config: str) -> dict[str, list[str]]:
    from datasets import load_dataset

    dataset = load_dataset("Salesforce/wikitext", config)
    hub_names = {"train": "train", "valid": "validation", "test": "test"}
    return {name: [line for line in dataset[hub_names[name]]["text"] if line.strip()] for name in SPLITS}


def _load_wikipedia(language: str, size_bytes: int) -> dict[str, list[str]]:
    from datasets import load_dataset

    stream = load_dataset("wikimedia/wikipedia", f"{_WIKIPEDIA_SNAPSHOT}.{language}", split="train", streaming=True)
    out: dict[str, list[str]] = {name: [] for name in SPLITS}
    read = 0
    for index, article in enumerate(stream):
        lines = [f"= {article['title']} ="] + [line for line in article["text"].split("\n") if line.strip()]
        out[split_name_for_article(index)].extend(lines)
        read += sum(len(line.encode("utf-8")) + 1 for line in lines)
        if read >= size_bytes:
            break
    return out


def _parse_wikipedia(spec: str) -> tuple[str, int]:
    match = _WIKIPEDIA.match(spec)
    if not match:
        raise CorpusError(f"corpus {spec!r} is not of the form wikipedia:<lang>:<size>, e.g. wikipedia:en:20MB")
    language, number, unit = match.group(1).lower(), float(match.group(2)), match.group(3).upper()
    size = int(number * _UNITS[unit])
    if size < 10_000:
        raise CorpusError(f"corpus {spec!r} asks for {size} bytes; ask for at least 10KB so every split gets an article")
    return language, size


def default_corpus_source() -> tuple[str, Path | None]:
    """Where `wiki-subset` comes from: ($REACH_CORPUS's directory | the shared copy beside the project | None for the hub)."""
    env = os.environ.get("REACH_CORPUS")
    if env:
        return f"local:{env} ($REACH_CORPUS)", Path(env)
    if (SHARED_DEFAULT / "train.txt").is_file():
        return f"local:{SHARED_DEFAULT} (beside the project)", SHARED_DEFAULT
    return "hub:Salesforce/wikitext/wikitext-2-raw-v1/test (re-split by article)", None


def _resolve(spec: str) -> tuple[str, dict[str, list[str]] | Path]:
    """Return (source description, lines by split or a local directory to read)."""
    if spec == DEFAULT_CORPUS:
        source, directory = default_corpus_source()
        if directory is not None:
            return source, directory
        try:
            return source, _load_wiki_subset_from_hub()
        except Exception as error:  # datasets raises many kinds of network errors
            raise _hub_failure(spec, error) from error
    if spec in _WIKITEXT_CONFIGS:
        try:
            return f"hub:Salesforce/wikitext/{_WIKITEXT_CONFIGS[spec]}", _load_wikitext(_WIKITEXT_CONFIGS[spec])
        except Exception as error:
            raise _hub_failure(spec, error) from error
    if spec.lower().startswith("wikipedia:"):
        language, size = _parse_wikipedia(spec)
        try:
            return f"hub:wikimedia/wikipedia/{_WIKIPEDIA_SNAPSHOT}.{language} (first {size} bytes)", _load_wikipedia(language, size)
        except Exception as error:
            raise _hub_failure(spec, error) from error
    path = Path(spec).expanduser()
    if path.exists() or os.sep in spec or spec.startswith("."):
        return f"local:{path}", path
    raise CorpusError(
        f"unknown corpus {spec!r}: give a local directory, {DEFAULT_CORPUS}, wikitext-2-raw, "
        "wikitext-103-raw or wikipedia:<lang>:<size>"
    )


def load_corpus(spec: str = DEFAULT_CORPUS, extra_train: Iterable[str] = (), stream_train: bool = False) -> Corpus:
    """Load the named corpus, with extra training text appended from `extra_train` directories.

    With `stream_train`, a local corpus's training split is a `StreamedSplit` over its files (and the extra
    directories' train.txt): nothing of it is read here. Hub corpora are read whole, as without it.
    """
    source, found = _resolve(spec)
    extras = tuple(str(Path(directory)) for directory in extra_train)
    if stream_train and isinstance(found, Path):
        directories = (found, *(Path(directory) for directory in extras))
        for directory in directories:
            _check_local(directory, ("train",))
        _check_local(found, SPLITS)
        train = StreamedSplit(directory / "train.txt" for directory in directories)
        if not train.size_bytes:
            raise CorpusError(f"corpus {spec!r} has an empty train split")
        try:
            # Read as the `datasets` text builder reads them (the same lines), without its seconds of start-up.
            splits = {name: StreamedSplit([found / f"{name}.txt"])._whole for name in ("valid", "test")}
        except (OSError, UnicodeDecodeError) as error:
            raise CorpusError(f"could not read corpus directory {str(found)!r}: {error}") from error
        for name, split in splits.items():
            if not split.text:
                raise CorpusError(f"corpus {spec!r} has an empty {name} split")
        log.info("corpus %s: train streamed from %s bytes, %s", spec, f"{train.size_bytes:,}",
                 ", ".join(f"{n} {len(s.text):,} chars" for n, s in splits.items()))
        return Corpus(name=spec, source=source, extra_train=extras, train=train, **splits)
    if isinstance(found, Path):
        _check_local(found, SPLITS)
        try:
            lines = _read_local(found, SPLITS)
        except Exception as error:
            raise CorpusError(f"could not read corpus directory {str(found)!r}: {error}") from error
    else:
        lines = found
    train_lines = list(lines["train"])
    for directory in extras:
        _check_local(Path(directory), ("train",))
        try:
            train_lines.extend(_read_local(Path(directory), ("train",))["train"])
        except Exception as error:
            raise CorpusError(f"could not read extra training text in {directory!r}: {error}") from error
    splits = {"train": _make_split(train_lines), "valid": _make_split(lines["valid"]), "test": _make_split(lines["test"])}
    for name, split in splits.items():
        if not split.text:
            raise CorpusError(f"corpus {spec!r} has an empty {name} split")
    log.info("corpus %s: %s", spec, ", ".join(f"{n} {len(s.text):,} chars" for n, s in splits.items()))
    return Corpus(name=spec, source=source, extra_train=extras, **splits)
