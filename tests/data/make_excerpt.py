"""Rebuild the shipped corpus excerpt from the shared WikiText-2 copy (run from the project root).

    .venv/bin/python tests/data/make_excerpt.py [--shared ../shared/corpora]

wiki-excerpt/: the first 10 articles of the WikiText-2 raw *test* split, in its order, split as the full
subset is (article index % 10 == 4 -> valid, == 9 -> test, the rest train), so each of its files is a prefix
of whole articles of the same file of ../shared/corpora/wiki-subset. wiki-extra-excerpt/: the first 2 articles
of ../shared/corpora/wiki-extra/train.txt. Lines are copied byte for byte; nothing else is changed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from corpora.loading import split_name_for_article  # noqa: E402  (the rule that split the full subset)

ARTICLES = 10
EXTRA_ARTICLES = 2


def is_title(line: str) -> bool:
    """An article's first line, ' = Title = ' (a section head is ' = = Head = = ')."""
    stripped = line.strip()
    return stripped.startswith("= ") and stripped.endswith(" =") and not stripped.startswith("= =")


def articles(path: Path) -> list[list[str]]:
    """The file's articles, each a list of its lines (with their newlines)."""
    found: list[list[str]] = []
    with open(path, encoding="utf-8", newline="") as lines:
        for line in lines:
            if is_title(line):
                found.append([])
            found[-1].append(line)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=HERE.parents[2] / "shared" / "corpora")
    args = parser.parse_args()
    by_split = {name: iter(articles(args.shared / "wiki-subset" / f"{name}.txt")) for name in ("train", "valid", "test")}
    kept: dict[str, list[str]] = {name: [] for name in by_split}
    for index in range(ARTICLES):  # the hub's order: take each article from the split it went to
        name = split_name_for_article(index)
        kept[name] += next(by_split[name])
    out = HERE / "wiki-excerpt"
    out.mkdir(exist_ok=True)
    for name, lines in kept.items():
        (out / f"{name}.txt").write_text("".join(lines), encoding="utf-8", newline="")
    extra = HERE / "wiki-extra-excerpt"
    extra.mkdir(exist_ok=True)
    lines = [line for article in articles(args.shared / "wiki-extra" / "train.txt")[:EXTRA_ARTICLES] for line in article]
    (extra / "train.txt").write_text("".join(lines), encoding="utf-8", newline="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
