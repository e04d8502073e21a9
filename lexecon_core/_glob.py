"""Wildcard patterns for policy and risk rules, and an index that finds matching patterns without scanning them all.

Semantics (documented in docs/policy.md): a pattern matches a value only as a whole (anchored, case-sensitive).
``*`` matches any run of characters, including none; ``?`` matches exactly one character; every other character is
literal. ``ai_agent:*`` matches ``ai_agent:bot`` but not ``ai_agent`` or ``x_ai_agent:bot``; ``delete_*`` matches
``delete_user`` but not ``undelete_user``. There is no substring matching.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_WILDCARDS = frozenset("*?")


def is_literal(pattern: str) -> bool:
    return not _WILDCARDS.intersection(pattern)


def literal_prefix(pattern: str) -> str:
    """The characters before the first wildcard."""
    for index, char in enumerate(pattern):
        if char in _WILDCARDS:
            return pattern[:index]
    return pattern


class Glob:
    """A compiled wildcard pattern, matched in time linear in the value (times the pattern length).

    A regex with one ``.*`` per ``*`` backtracks exponentially on patterns like ``*a*a*a*c`` - a policy author (or a
    value crafted against a policy) could stall the server. Instead the pattern is split at its stars: the first
    piece must match at the start, the last at the end, and each piece between is found leftmost-first, which is
    exact for ``*`` (whatever the earliest placement leaves, a later one cannot improve). Pieces contain only
    literals and ``?``, so each is a fixed-length search.
    """

    __slots__ = ("_first", "_last", "_middle", "_min_length", "_star")

    def __init__(self, pattern: str) -> None:
        pieces = pattern.split("*")
        self._star = len(pieces) > 1
        self._first = _piece(pieces[0])
        self._last = _piece(pieces[-1]) if self._star else None
        self._middle = tuple(_piece(p)[1] for p in pieces[1:-1] if p)
        self._min_length = len(pattern) - pattern.count("*")

    def fullmatch(self, value: str) -> bool:
        first, size = self._first, len(value)
        if not self._star:
            return size == first[0] and first[1].match(value) is not None
        last = self._last
        assert last is not None
        if size < self._min_length or first[1].match(value) is None:
            return False
        end = size - last[0]
        if last[1].match(value, end) is None:
            return False
        position = first[0]
        for regex in self._middle:
            found = regex.search(value, position, end)
            if found is None:
                return False
            position = found.end()
        return True


def _piece(text: str) -> tuple[int, re.Pattern[str]]:
    """A star-free piece: its length and a regex for it (``?`` is any one character)."""
    return len(text), re.compile("".join("." if c == "?" else re.escape(c) for c in text), re.DOTALL)


@lru_cache(maxsize=4096)
def compile_pattern(pattern: str) -> Glob:
    return Glob(pattern)


def matches(pattern: str, value: str) -> bool:
    """True when ``pattern`` matches the whole of ``value``."""
    if is_literal(pattern):
        return pattern == value
    return compile_pattern(pattern).fullmatch(value)


def context_text(value: Any) -> str:
    """How a context value is matched against a pattern: strings as they are, anything else as compact JSON
    (``True`` -> ``true``, ``10`` -> ``10``, ``None`` -> ``null``). Policy terms, conditions and risk rules all use it.
    """
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError):
        return str(value)


def matches_any(patterns: Iterable[str], value: str) -> bool:
    return any(matches(p, value) for p in patterns)


@dataclass(slots=True)
class _Wild(Generic[T]):
    item: T
    # None when the pattern is exactly ``prefix*``: everything under the prefix matches, no regex needed.
    glob: Glob | None


class PatternIndex(Generic[T]):
    """Maps patterns to items; ``lookup(value)`` yields the items whose pattern matches ``value``.

    Literal patterns are a dict lookup. Wildcard patterns are bucketed by their literal prefix, and a lookup probes only
    the prefix lengths that occur, so the cost grows with the number of *matching* patterns, not all patterns.
    """

    __slots__ = ("_exact", "_prefix_lengths", "_wild")

    def __init__(self) -> None:
        self._exact: dict[str, list[T]] = {}
        self._wild: dict[str, list[_Wild[T]]] = {}
        self._prefix_lengths: tuple[int, ...] = ()

    def add(self, pattern: str, item: T) -> None:
        if is_literal(pattern):
            self._exact.setdefault(pattern, []).append(item)
            return
        prefix = literal_prefix(pattern)
        rest = pattern[len(prefix) :]
        glob = None if rest == "*" else compile_pattern(pattern)
        self._wild.setdefault(prefix, []).append(_Wild(item, glob))
        if len(prefix) not in self._prefix_lengths:
            self._prefix_lengths = tuple(sorted((*self._prefix_lengths, len(prefix))))

    def lookup(self, value: str) -> Iterator[T]:
        exact = self._exact.get(value)
        if exact:
            yield from exact
        size = len(value)
        wild = self._wild
        for length in self._prefix_lengths:
            if length > size:
                break
            bucket = wild.get(value[:length])
            if bucket:
                for entry in bucket:
                    if entry.glob is None or entry.glob.fullmatch(value):
                        yield entry.item
