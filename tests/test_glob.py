"""Wildcard semantics and the pattern index, against a brute-force reference."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lexecon_core._glob import PatternIndex, matches

ALPHABET = "ab:_*?."
values = st.text(alphabet="ab:_.x", max_size=8)
patterns = st.text(alphabet=ALPHABET, min_size=1, max_size=8)


def reference(pattern: str, value: str) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.DOTALL) is not None


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("ai_agent:*", "ai_agent:bot", True),
        ("ai_agent:*", "ai_agent:", True),
        ("ai_agent:*", "ai_agent", False),
        ("ai_agent:*", "x_ai_agent:bot", False),
        ("delete_*", "delete_user", True),
        ("delete_*", "undelete_user", False),  # no substring matching
        ("read:*", "read:customer:42", True),  # * crosses ':'
        ("search", "search", True),
        ("search", "search_web", False),  # a literal is an exact match
        ("Search", "search", False),  # case-sensitive
        ("user_?", "user_1", True),
        ("user_?", "user_12", False),
        ("*", "", True),
        ("a[b]", "a[b]", True),  # brackets are literal, unlike fnmatch
        ("a[b]", "ab", False),
        ("*_delete", "bulk_delete", True),
    ],
)
def test_documented_examples(pattern: str, value: str, expected: bool) -> None:
    assert matches(pattern, value) is expected


@given(patterns, values)
def test_matches_agrees_with_reference(pattern: str, value: str) -> None:
    assert matches(pattern, value) == reference(pattern, value)


@given(values)
def test_star_matches_everything_and_literal_only_itself(value: str) -> None:
    assert matches("*", value)
    assert matches(value, value) or "*" in value or "?" in value


@given(st.lists(patterns, max_size=30), values)
def test_index_lookup_equals_scan(pattern_list: list[str], value: str) -> None:
    index: PatternIndex[int] = PatternIndex()
    for position, pattern in enumerate(pattern_list):
        index.add(pattern, position)
    found = sorted(index.lookup(value))
    expected = [i for i, p in enumerate(pattern_list) if reference(p, value)]
    assert found == expected


def test_many_stars_do_not_backtrack() -> None:
    """A backtracking regex takes hours on this; the piecewise matcher answers at once."""
    pattern = "*a" * 12 + "*c"
    started = time.perf_counter()
    assert not matches(pattern, "a" * 4096)
    assert matches(pattern, "a" * 4096 + "c")
    assert time.perf_counter() - started < 1.0
