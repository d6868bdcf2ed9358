"""Turn WikiText's tokenised text back into text as people type it.

WikiText (Merity et al. 2016) is published tokenised: punctuation and
clitics are separated by spaces ("Teddy 's Story , " -> "Teddy's Story,"),
and hyphens, thousands separators and decimal points inside numbers are
escaped as " @-@ ", " @,@ " and " @.@ ". A model trained on that text would
expect users to type it the same way, so Reach undoes it once, here, and
uses this one function for training, evaluation and serving.

Heads stay recognisable: " = Title = " becomes "= Title =" and
" = = Section = = " becomes "== Section ==" (MediaWiki's own markup).

The function is written to leave ordinary text alone: "Hello, world." has no
space-separated punctuation to join, so it comes back unchanged, and
normalising twice gives the same text as normalising once.
"""

from __future__ import annotations

import functools
import re

__all__ = ["normalize", "normalize_line"]

_ESCAPES = (("@-@", "-"), ("@,@", ","), ("@.@", "."))
_HEAD = re.compile(r"^(=+) (.*?) \1$")
_SPACED_HEAD = re.compile(r"^((?:= )+)(.*?)((?: =)+)$")

# Tokens that attach to the word before them ("word ," -> "word,").
_CLOSE = {",", ".", ";", ":", "!", "?", ")", "]", "}", "%", "...", "”", "’"}
# Tokens that attach to the word after them ("( word" -> "(word").
_OPEN = {"(", "[", "{", "$", "£", "€", "¥", "₱", "“", "‘"}
# Clitics split off by the tokeniser: "don 't", "Teddy 's". A closed list, so
# that an opening quote glued to its word ("'of") is not taken for one.
_CLITICS = {"'s", "'t", "'re", "'ve", "'ll", "'d", "'m", "'S", "'T"}


def _join_tokens(tokens: list[str]) -> str:
    """Join space-separated tokens, gluing punctuation and clitics to their words."""
    out: list[str] = []
    glue_next = False  # the previous token opens: no space before this one
    double_open = False  # inside a '"' quotation of this line
    single_open = False  # inside a "'" quotation of this line
    for index, token in enumerate(tokens):
        glue_before = False
        opens = False
        if token in _CLOSE or token in _CLITICS:
            glue_before = True
        elif token in _OPEN:
            opens = True
        elif token == '"':
            if double_open:
                glue_before = True
            else:
                opens = True
            double_open = not double_open
        elif token == "'":
            previous = tokens[index - 1] if index else ""
            if single_open:
                glue_before = True
                single_open = False
            elif previous[-1:] in ("s", "S"):
                glue_before = True  # plural possessive: "the ships ' crews"
            else:
                opens = True
                single_open = True
        if out and not glue_before and not glue_next:
            out.append(" ")
        out.append(token)
        glue_next = opens
    return "".join(out)


@functools.lru_cache(maxsize=1024)  # a growing text brings its earlier lines again: they are looked up, not redone
def normalize_line(line: str) -> str:
    """Normalise one line (no newline inside) of WikiText or ordinary text."""
    line = line.strip()
    if not line:
        return ""
    head = _SPACED_HEAD.match(line)
    if head and head.group(1).count("=") == head.group(3).count("=") and head.group(2):
        level = head.group(1).count("=")
        title = normalize_line(head.group(2))
        return f"{'=' * level} {title} {'=' * level}"
    if _HEAD.match(line):
        return line
    tokens = line.split()
    joined: list[str] = []
    index = 0
    while index < len(tokens):
        token = tokens[index]
        escaped = next((plain for mark, plain in _ESCAPES if token == mark), None)
        if escaped is not None and joined and index + 1 < len(tokens):
            joined[-1] = joined[-1] + escaped + tokens[index + 1]
            index += 2
            continue
        joined.append(token)
        index += 1
    text = _join_tokens(joined)
    # A second pass can glue what the first one exposed ("] ' s" -> "] 's" ->
    # "]'s"); repeat until nothing changes so that normalising is idempotent.
    for _ in range(3):
        again = _join_tokens(text.split())
        if again == text:
            break
        text = again
    return text


def normalize(text: str) -> str:
    """Normalise text line by line; line breaks (and a final one) are kept."""
    return "\n".join(normalize_line(line) for line in text.split("\n"))
