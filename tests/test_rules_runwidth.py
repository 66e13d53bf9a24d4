"""RunWidth (runwidth.py): no match is longer than the bound it gives for a buffer, so a search from
the first match end less that bound finds the match a search from the top finds; and so does a search
from the first match end less the bound over the bytes before that end."""

from __future__ import annotations

import random
import re

import pytest

from antispam.ruleset.runwidth import RunWidth, longest_run


def test_longest_run():
    assert longest_run(b"") == 0 and longest_run(b"\x00\x00") == 0
    assert longest_run(b"\x01") == 1
    assert longest_run(b"\x00\x01\x01\x00\x01\x01\x01\x00") == 3
    for n in range(1, 70):
        assert longest_run(b"\x00" + b"\x01" * n + b"\x00\x01") == n


@pytest.mark.parametrize("pattern,flags,shape", [
    (rb"abc", 0, (3, 0)),
    (rb"(?<=x)a(?=b)", 0, (1, 0)),
    (rb"E+\.\s?U+", 0, (2, 2)),  # two classes with runs, . and \s? fixed
    (rb"(?:ab|c){2,3}", 0, (6, 0)),
    (rb"(a[^x]*)\1", 0, (2, 1)),  # the group twice: one class term, doubled
    (rb"(?:ab)+", 0, (0, 1)),  # an unbounded repeat of a group: the run of its bytes
    (rb"x(?:,\d{3}){2,}", 0, (1, 1)),
])
def test_shapes(pattern, flags, shape):
    rw = RunWidth.of(pattern, flags)
    assert rw is not None and (rw.fixed, len(rw.terms)) == shape


@pytest.mark.parametrize("pattern", [rb"(a)(?:\1b)+", rb"(a)?(?(1)b|c)"])
def test_unbounded_groups_have_no_bound(pattern):
    assert RunWidth.of(pattern, 0) is None


_PIECES = [rb"a+", rb"b*", rb"[ab]+", rb"[^\n]+", rb"x", rb"(a+)", rb"(?:a|bb)", rb"\1", rb"(?=a)", rb"(?!b)", rb"(?<=x)",
           rb"\s*", rb"\S+", rb"a{1,3}", rb"(?:ab){0,2}", rb"B", rb".+", rb".*?", rb"\b", rb"^", rb"$", rb"\d+", rb"(?i:b+)",
           rb"(?:ab)+", rb"(?:a|x\s)*?", rb"(?:(?i:b)1)+"]


def test_no_match_is_longer_than_the_bound_and_a_late_search_finds_the_same_match():
    rnd = random.Random(11)
    alphabet = [b"a", b"b", b"A", b"B", b"x", b" ", b"\n", b"1", b"ab"]
    checked = 0
    for _ in range(1500):
        pattern = b"".join(rnd.choice(_PIECES) for _ in range(rnd.randint(1, 5)))
        flags = rnd.choice([0, re.IGNORECASE, re.MULTILINE | re.DOTALL])
        try:
            rx = re.compile(pattern, flags)
        except re.error:
            continue
        rw = RunWidth.of(pattern, flags)
        if rw is None:
            continue
        for _ in range(10):
            text = b"".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 30)))
            w = rw.bound(text)
            ends = set()
            for s in range(len(text) + 1):  # every match from every start (the first path of each)
                m = rx.match(text, s)
                if m is not None:
                    assert m.end() - m.start() <= w, (pattern, text)
                    ends.add(m.end())
            if ends:
                first = min(ends)
                m, late = rx.search(text), rx.search(text, max(0, first - w))
                assert (m.span(), m.groups()) == (late.span(), late.groups()), (pattern, text)
                # the bound over the bytes before the first end is enough (the options' search)
                late = rx.search(text, max(0, first - rw.bound(text[:first])))
                assert (m.span(), m.groups()) == (late.span(), late.groups()), (pattern, text)
                checked += 1
    assert checked > 2000
