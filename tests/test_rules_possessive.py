"""Possessive repeats are put only where they change no match (possessive.py).

* Unit cases: where a repeat becomes possessive and where it must not (the next item
  could take the same byte, could be empty, the repeat is lazy or of fixed count).
* Random patterns (back-references, look-arounds, alternatives, case-insensitivity)
  over random texts: the rewritten pattern finds the same matches, spans and groups
  (``search`` and ``finditer``) as the pattern as written.
"""

from __future__ import annotations

import random
import re

import pytest

from antispam.ruleset.possessive import possessive


@pytest.mark.parametrize("pattern,flags,rewritten", [
    (rb"a+b", 0, True),
    (rb"[^\n]+\n", 0, True),
    (rb"\w+\s", 0, True),
    (rb"[a-z]+\d", re.IGNORECASE, True),
    (rb"(?:[^\n]+\n+)*Subject", 0, True),
    (rb"xa+a", 0, False),
    (rb"x[a-z]+B", re.IGNORECASE, False),  # under /i the B is a b too
    (rb"x[a-z]+[^a-z]", re.IGNORECASE, False),  # a negated class is taken as holding both cases
    (rb"xa+b?", 0, False),  # the next item may match nothing
    (rb"xa+?b", 0, False),
    (rb"xa{3}b", 0, False),
    (rb"xa+", 0, False),
    (rb"(a)+b", 0, False),
    (rb"(x)(?=.{1,2048}^\1)", re.MULTILINE | re.DOTALL, True),  # .{a,b}^ -> .{a-1,b-1}\n
    (rb".+?^a", re.MULTILINE | re.DOTALL, True),
    (rb".{1,9}^a", re.MULTILINE, False),  # . stops at line breaks: a line start cannot follow it
    (rb".{1,9}^a", re.DOTALL, False),  # ^ is the start of the text only
    (rb".*^a", re.MULTILINE | re.DOTALL, False),  # no byte before the anchor: the start of the text is one
    (rb".{1,9}^a(?-m:^)", re.MULTILINE | re.DOTALL, False),  # flags changed inside: not rewritten at all
])
def test_where_repeats_become_possessive(pattern, flags, rewritten):
    out = possessive(pattern, flags)
    assert (out != pattern) == rewritten, out
    assert re.compile(out, flags)


@pytest.mark.parametrize("pattern,flags,out", [
    (rb"!{3,}", 0, rb"\x21\x21\x21(?:\x21){0,}"),  # a literal: every copy, for re's literal prefix
    (rb"!{3}x", 0, rb"\x21\x21\x21x"),
    (rb"\d{2,4}\.", 0, rb"[\d](?:[\d]){1,3}+\x2e"),  # a class: one copy, for re's first-byte set
    (rb"[a-z]+?b", re.IGNORECASE, rb"[\x61-\x7a](?:[\x61-\x7a]){0,}?b"),  # lazy stays lazy
    (rb"a{1}b", 0, rb"ab"),
    (rb"(?:ab)+c", 0, rb"(?:ab)+c"),  # a repeat of a sequence: kept
    (rb"\ba+", 0, rb"\ba+"),  # not the first item
])
def test_a_leading_repeat_is_written_out(pattern, flags, out):
    assert possessive(pattern, flags) == out


_PIECES = [rb"a+", rb"b*", rb"[ab]+", rb"[^\n]+", rb"\n+", rb"x", rb"(a+)", rb"(?:a|b)", rb"\1", rb"(?=a)", rb"(?!b)",
           rb"(?<=x)", rb"\s*", rb"\S+", rb"a{1,3}", rb"[a-z]{0,4}", rb"B", rb".+", rb".*?", rb"\b", rb"^", rb"$", rb"\d+",
           rb"(?:[^\n]+\n+)*", rb".{1,3}", rb".{2,5}?"]


def test_rewritten_patterns_match_as_written():
    rnd = random.Random(29)
    alphabet = [b"a", b"b", b"A", b"B", b"x", b" ", b"\n", b"1"]
    rewritten = compared = 0
    for _ in range(2500):
        parts = [rnd.choice(_PIECES) for _ in range(rnd.randint(2, 6))]
        if rnd.random() < 0.5:
            parts.insert(0, rb"(a|b+)")
        pattern = b"".join(parts)
        flags = rnd.choice([0, re.IGNORECASE, re.MULTILINE | re.DOTALL])
        try:
            rx = re.compile(pattern, flags)
        except re.error:
            continue  # a back-reference before its group
        out = possessive(pattern, flags)
        if out == pattern:
            continue
        rewritten += 1
        px = re.compile(out, flags)
        for _ in range(15):
            text = b"".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 16)))
            m, p = rx.search(text), px.search(text)
            assert (m and (m.span(), m.groups())) == (p and (p.span(), p.groups())), (pattern, out, text)
            assert [x.span() for x in rx.finditer(text)] == [x.span() for x in px.finditer(text)], (pattern, out, text)
            compared += m is not None
    assert rewritten > 600 and compared > 1500, (rewritten, compared)
