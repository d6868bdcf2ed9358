"""Exact scoring: log P(word | text) summed over every unit sequence that spells the word, then a boundary.

A subword model can spell " capital" as one piece, as " capit" + "al", as
" c" + "a" + ... : the word's probability is the sum over all of them.
`spell_many` enumerates the spellings of several targets together, one
batched model step per unit, reusing what the beam search already read
(`Reads`). `score_words` turns the targets' sums into each word's
probability after the text, the healed part divided out (docs/PREDICTION.md).
"""

from __future__ import annotations

import math
from operator import attrgetter
from typing import Generator, NamedTuple

import numpy as np

from lm.infer.query import Query, line_start_after
from lm.infer.reads import Reads
from lm.infer.units import UnitTable
from lm.tokenizers import is_word_char

__all__ = ["NEG", "SPELLING_TOLERANCE", "Spelling", "logaddexp", "logsumexp", "score_words", "score_words_many", "spell_many",
           "spellings", "word_targets"]

NEG = -math.inf
_LN2 = math.log(2.0)
# Exact scoring may drop partial spellings worth this fraction of a word's probability (see spell_many).
SPELLING_TOLERANCE = 1e-6

# A spelling: the units read after the context, and whether the boundary mass after them is part of its probability.
Path = tuple[tuple[int, ...], bool]


class Spelling(NamedTuple):
    """A target's exact log-probability and the unit sequences that make it up, each with its own."""

    logprob: float
    paths: list[Path]
    path_logprobs: list[float]  # log P of each path (its boundary mass included where flagged), as paths


class Node(NamedTuple):
    """A partial spelling of one target, waiting to be extended (or, if `terminal`, to have its boundary read)."""

    logprob: float
    units: tuple[int, ...]  # read after the context
    target: int  # index into the targets
    consumed: int  # characters of the target spelled so far
    line_start: bool  # whether the next unit follows a line break
    terminal: bool  # the whole target is spelled; only the boundary after it is still to come


_by_logprob = attrgetter("logprob")  # a sort key for nodes
# Nodes are many (a subword model's spellings): built with tuple.__new__, which skips the generated __new__'s
# argument handling (about 3x cheaper) and gives the same Node.
_new = tuple.__new__


def logaddexp(a: float, b: float) -> float:
    """log(exp(a) + exp(b)) for Python floats, as numpy's logaddexp computes it (about 4x faster than
    calling numpy on two scalars; exact scoring calls this thousands of times per prediction)."""
    if a == b:
        return a + _LN2  # also -inf + ln 2 = -inf
    if a < b:
        a, b = b, a
    if b == NEG:
        return a
    return a + math.log1p(math.exp(b - a))


def logsumexp(values: np.ndarray) -> float:
    """log(sum(exp(values))), stable; several times faster than np.logaddexp.reduce."""
    if values.size == 0:
        return NEG
    top = float(values.max())
    if top == NEG:
        return NEG
    return top + math.log(float(np.exp(values - top).sum()))


def spell_many(table: UnitTable, known: Reads, line_start: bool, targets: list[tuple[str, bool]],
               max_nodes: int = 1024, tolerance: float = SPELLING_TOLERANCE) -> list[Spelling]:
    """For each (target, boundary): log P(the next units spell target, then a boundary if asked), after the
    context that `known` starts from (`line_start`: whether it ends at a line start).

    Sums over every unit sequence that spells the target. All targets
    advance together, one batched model step per unit. Also returns the
    unit sequences (each flagged when the boundary mass after it is part
    of its probability).

    Once a target has probability mass from finished spellings, its least
    probable partial spellings are dropped for as long as their summed
    probability stays within `tolerance` times that mass: what follows a
    partial spelling can add at most its own probability, so the result
    is within a factor (1 - tolerance) of the full sum, and the dropped
    spellings (on a subword model, one character at a time and other odd
    segmentations) no longer cost a model step per character. Beyond
    that, only the cap of `max_nodes` partial spellings alive at once
    (the least probable go) approximates.

    `known` holds unit sequences the model has already read after this
    context (the beam's): they, and a sequence shared by several targets,
    are read only once.
    """
    return _side_by_side([spellings(table, known, line_start, targets, max_nodes, tolerance)], [known])[0]


def spellings(table: UnitTable, known: Reads, line_start: bool, targets: list[tuple[str, bool]],
              max_nodes: int = 1024, tolerance: float = SPELLING_TOLERANCE
              ) -> Generator[list[tuple[int, ...]], None, list[Spelling]]:
    """`spell_many` as a generator: it yields each batch of unit sequences it needs read into `known`, to be read
    before it is resumed, and returns the spellings. Several searches (after different contexts) can so share
    each batched model step (`score_words_many`)."""
    totals = [NEG] * len(targets)
    dropped = [NEG] * len(targets)  # log of the probability of the partial spellings dropped so far
    log_tolerance = math.log(tolerance) if tolerance > 0 else NEG
    paths: list[list[Path]] = [[] for _ in targets]
    values: list[list[float]] = [[] for _ in targets]  # each path's log-probability, beside it
    frontier: list[Node] = []  # partial spellings whose next unit's distribution is known
    for index, (target, boundary) in enumerate(targets):
        if target:
            frontier.append(_new(Node, (0.0, (), index, 0, line_start, False)))
        elif boundary:  # already spelled: only the boundary is still to come
            totals[index] = known.boundary(())
            paths[index].append(((), True))
            values[index].append(totals[index])
        else:
            totals[index] = 0.0
            paths[index].append(((), False))
            values[index].append(0.0)
    pending: list[Node] = []  # nodes waiting for a model step
    while frontier or pending:
        children: list[Node] = []
        for logprob, units, index, consumed, line_start, _ in frontier:  # Node's fields, unpacked at C speed
            target, boundary = targets[index]
            rest = target[consumed:]
            lp = known.logprobs(units)
            ls = int(line_start)
            for length in range(0 if line_start else 1, min(len(rest), table.max_length) + 1):
                for unit in table.by_text[ls].get(rest[:length], ()):
                    value = logprob + lp[unit]
                    if value == NEG:
                        continue
                    if length < len(rest):
                        after = line_start_after(table.texts[ls][unit], line_start)
                        children.append(_new(Node, (value, units + (unit,), index, consumed + length, after, False)))
                    elif boundary:
                        children.append(_new(Node, (value, units + (unit,), index, consumed + length, False, True)))
                    else:
                        totals[index] = logaddexp(totals[index], value)
                        paths[index].append((units + (unit,), False))
                        values[index].append(value)
            over = table.overshoot(rest, boundary, line_start)
            if over.size:
                overshot = logprob + lp[over]
                alive = overshot > NEG
                if alive.all() and not units:  # straight after the context: the same list every time
                    totals[index] = logaddexp(totals[index], logsumexp(overshot))
                    paths[index].extend(table.overshoot_paths(rest, boundary, line_start))
                    values[index].extend(overshot.tolist())
                elif alive.any():
                    totals[index] = logaddexp(totals[index], logsumexp(overshot[alive]))
                    paths[index].extend((units + (int(unit),), False) for unit in over[alive])
                    values[index].extend(overshot[alive].tolist())
        # Spellings already read to their end (by the beam) are finished now: their mass makes dropping safe sooner.
        for node in children:
            if node.terminal and node.units in known:
                value = node.logprob + known.boundary(node.units)
                totals[node.target] = logaddexp(totals[node.target], value)
                paths[node.target].append((node.units, True))
                values[node.target].append(value)
            else:
                pending.append(node)
        if log_tolerance > NEG and pending:
            kept = []
            for node in sorted(pending, key=_by_logprob):  # the least probable first
                index = node.target
                if totals[index] > NEG:
                    mass = logaddexp(dropped[index], node.logprob)
                    if mass <= totals[index] + log_tolerance:
                        dropped[index] = mass
                        continue
                kept.append(node)
            pending = kept
        # Partial spellings the beam has read already are expanded at once, so that their children join
        # the same model step as the others at this depth rather than needing one more.
        frontier = [node for node in pending if node.units in known]
        if frontier:
            pending = [node for node in pending if node.units not in known]
            continue
        if not pending:
            break
        if len(pending) > max_nodes:
            pending.sort(key=_by_logprob, reverse=True)
            pending = pending[:max_nodes]
        yield [node.units for node in pending]  # read into `known` before this resumes
        for node in pending:
            if node.terminal:
                value = node.logprob + known.boundary(node.units)
                totals[node.target] = logaddexp(totals[node.target], value)
                paths[node.target].append((node.units, True))
                values[node.target].append(value)
            else:
                frontier.append(node)
        pending = []
    return [Spelling(total, found, found_values) for total, found, found_values in zip(totals, paths, values)]


def word_targets(query: Query, word: str) -> list[str]:
    """The continuations (after the context) that spell `word` under the query's rules."""
    if query.completing:
        if not word.startswith(query.partial):
            return []
        return [query.required + word[len(query.partial):]]
    _, has_space = query.start
    spaces = [""] if has_space else ["", " ", "\n"]
    return [query.required + space + word for space in spaces]


def score_words(table: UnitTable, known: Reads, line_start: bool, query: Query, words: list[str]
                ) -> tuple[list[Spelling], Spelling]:
    """Exact log P(word | text) for each word, with their unit sequences; and log P(required part), with its."""
    targets, owners = _word_targets(query, words)
    return _word_scores(spell_many(table, known, line_start, targets), owners, len(words))


def score_words_many(table: UnitTable, knowns: list[Reads], line_starts: list[bool], query: Query, words: list[str]
                     ) -> list[tuple[list[Spelling], Spelling]]:
    """`score_words` of the same words after each of several contexts (knowns[i], line_starts[i]), the searches
    side by side: each round's sequences, from every search, are read in one batched model step
    (`Reads.read_together`), so R searches cost about as many steps as the deepest one, not R times as many.
    Each result equals `score_words` after its own context (the same search, only its reads batched)."""
    targets, owners = _word_targets(query, words)
    searches = [spellings(table, known, line_start, targets) for known, line_start in zip(knowns, line_starts)]
    return [_word_scores(result, owners, len(words)) for result in _side_by_side(searches, knowns)]


def _side_by_side(searches: list[Generator], knowns: list[Reads]) -> list[list[Spelling]]:
    """Run `spellings` searches to their ends, search i reading into knowns[i]: each round, what every search still
    running asks for is read in one batched step (`Reads.read_together`; one search alone: its `read_all`)."""
    results: list[list[Spelling] | None] = [None] * len(searches)
    wanted: dict[int, list[tuple[int, ...]]] = {}  # search -> the sequences it waits for

    def advance(index: int) -> None:
        try:
            wanted[index] = next(searches[index])
        except StopIteration as done:
            results[index] = done.value
            wanted.pop(index, None)

    for index in range(len(searches)):
        advance(index)
    while wanted:
        Reads.read_together([knowns[index] for index in wanted], list(wanted.values()))
        for index in list(wanted):
            advance(index)
    return results


def _word_targets(query: Query, words: list[str]) -> tuple[list[tuple[str, bool]], list[int]]:
    """The targets to spell (the required part first) and the word each belongs to (-1: the required part)."""
    targets: list[tuple[str, bool]] = [(query.required, False)]
    owners: list[int] = [-1]
    for number, word in enumerate(words):
        if not word or (len(word) > 1 and not all(is_word_char(c) for c in word)):
            continue
        for target in word_targets(query, word):
            targets.append((target, is_word_char(word[0])))
            owners.append(number)
    return targets, owners


def _word_scores(results: list[Spelling], owners: list[int], count: int) -> tuple[list[Spelling], Spelling]:
    """Each word's exact log-probability (its targets summed, the required part divided out), and the required part's."""
    required = results[0]
    scores: list[tuple[float, list[Path], list[float]]] = [(NEG, [], []) for _ in range(count)]
    for owner, result in zip(owners[1:], results[1:]):
        total, found, found_values = scores[owner]
        scores[owner] = (logaddexp(total, result.logprob), found + result.paths, found_values + result.path_logprobs)
    # A word's paths keep their own log-probabilities (the required part not divided out, as their sum is not).
    exact = [Spelling(total - required.logprob if total > NEG else NEG, found, found_values)
             for total, found, found_values in scores]
    return exact, required
