"""A pattern's projection on a set of bytes matches text made of those bytes exactly where the pattern does.

* Unit cases: what each construct becomes (literal and class bytes outside the set,
  alternatives, optional and negative parts, look-arounds, constructs kept as written).
* Python ``re``: random patterns built from the constructs SpamAssassin's ReplaceTags
  rules use, against random texts of the set's bytes: same leftmost match.
* Hyperscan: a group whose rules are mostly UTF-8 look-alikes gets databases for ASCII
  and Western buffers, and both matchers give the same hits on ASCII, Western and other texts.
"""

from __future__ import annotations

import random
import re

import pytest

from antispam.ruleset import compile_rules
from antispam.ruleset.matcher import HyperscanMatcher, PythonMatcher, hyperscan_available, variant_key
from antispam.ruleset.parser import Parser
from antispam.ruleset.projection import ASCII, WESTERN, projection


@pytest.mark.parametrize("pattern,projected", [
    (rb"(?:e|\xc3[\xa8-\xab])x", rb"(?:e)x"),
    (rb"[a\xe0-\xe6\x40]b", rb"[\x61\x40]b"),
    (rb"\xc3\xa9", None),
    (rb"x|\xc3\xa9", rb"(?:x)"),
    (rb"a(?:\xc3\xa9)?b", rb"ab"),
    (rb"a(?:\xc3\xa9){1,2}b", None),
    (rb"(?!\xc3)a", rb"a"),
    (rb"(?=\xc3)a", None),
    (rb"(?<![\x80-\xff])a", rb"a"),
    (rb"[^\xc3]x+?", rb"[^\xc3](?:x){1,}?"),
    (rb"(?i:ab)|c\b", rb"(?:(?i:ab)|c\b)"),
    (rb"^a\$b\Z", rb"^a\x24b\Z"),
])
def test_projection_of_each_construct(pattern, projected):
    """On ASCII."""
    p = projection(pattern)
    assert p.pattern == projected
    assert (p.share == 0.0) if projected is None else (0.0 < p.share <= 1.0)


def test_western_projection_keeps_latin1_and_typographic_utf8():
    assert projection(rb"(?:e|\xc3[\xa8-\xab]|\xd0\xb5|\xe2\x82\xac)", WESTERN).pattern == rb"(?:e|\xc3[\xa8-\xab]|\xe2\x82\xac)"
    assert projection(rb"[\x7f-\xff]", WESTERN).pattern == rb"[\x7f-\xbf\xc2-\xc3\xe2]"
    assert projection(rb"\xd0\xb5", WESTERN).pattern is None
    with pytest.raises(ValueError):
        projection(rb"a", frozenset(b"abc"))


@pytest.mark.parametrize("pattern", [rb"(\w)\1\xc3", rb"(?i)a\xc3", rb"(?>a\xc3)", rb"a++\xc3", rb"(a)?(?(1)b|\xc3)"])
def test_constructs_not_reproduced_are_kept_as_written(pattern):
    p = projection(pattern)
    assert (p.pattern, p.share) == (pattern, 1.0)


_PIECES = [rb"a", rb"b", rb"e", rb"\xc3\xa9", rb"\xe2\x80[\x9c\x9d]", rb"[\xc0-\xc4][\x80-\xbf]", rb"[e\xe8-\xeb]", rb"[^a]", rb"\W{0,2}", rb"\s?", rb"\b", rb"(?:x|\xd0\xb5)",
           rb"(?:\xc3[\xa8\xa9])?", rb"(?!ab)", rb"(?<=a)", rb"(?:e|\xc3\xa9){1,2}", rb"[\x80-\xff]?", rb".", rb"$", rb"^"]


def _random_pattern(rnd: random.Random) -> bytes:
    parts = [rnd.choice(_PIECES) for _ in range(rnd.randint(1, 5))]
    if rnd.random() < 0.3:
        parts = [b"(?:" + b"".join(parts) + b"|" + rnd.choice(_PIECES) + b")"]
    return b"".join(parts)


@pytest.mark.parametrize("allowed,alphabet", [
    (ASCII, [b"a", b"b", b"e", b"x", b" ", b"\n", b"-"]),
    (WESTERN, [b"a", b"e", b"x", b" ", b"\n", b"\xc3\xa9", b"\xc2\xa0", b"\xe2\x80\x9c", b"\xe2\x80\x9d", b"\xc3", b"\x80"]),
])
def test_projection_matches_text_of_its_bytes_where_the_pattern_does(allowed, alphabet):
    rnd = random.Random(17)
    checked = 0
    for _ in range(1500):
        pattern = _random_pattern(rnd)
        flags = rnd.choice([0, re.IGNORECASE, re.MULTILINE, re.DOTALL])
        projected = projection(pattern, allowed).pattern
        rx = re.compile(pattern, flags)
        px = re.compile(projected, flags) if projected is not None else None
        for _ in range(20):
            text = b"".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 12)))
            m = rx.search(text)
            if px is None:
                assert m is None, (pattern, text)
                continue
            p = px.search(text)
            assert (m.span() if m else None) == (p.span() if p else None), (pattern, projected, text)
            checked += m is not None
    assert checked > 3000


FUZZ_RULES = r"""
body  T_FUZZ_PRICE  /(?:[pP\xd1\xf1]|\xd0\xa0|\xd1\x80|&\#1056;)\W{0,2}(?:[rR]|\xd0\xb3|\xd0\x93)\W{0,2}(?:[iI1\|]|\xc3[\xac-\xaf]|\xd1\x96)\W{0,2}(?:[cC]|\xd1\x81|\xd0\xa1)\W{0,2}(?:[eE3]|\xc3[\xa8-\xab]|\xd0\xb5)/i
body  T_FUZZ_NOT    /(?!free)(?:[fF]|\xd2\x93)\W?(?:[rR]|\xd0\xb3)\W?(?:[eE]|\xd0\xb5)\W?(?:[eE]|\xd0\xb5)/i
body  T_ONLY_UTF8   /\xd0\xb5\xd0\xb5/
body  T_PLAIN       /\bcash\b/
body  T_COUNT_E     /(?:e|\xd0\xb5)\W?x/
tflags T_COUNT_E multiple
"""


def _compiled(text: str):
    p = Parser()
    p.read_text(text, "t.cf")
    return compile_rules(p.finish())


@pytest.mark.skipif(not hyperscan_available(), reason="hyperscan not installed")
def test_ascii_database_gives_the_hits_of_the_python_engine(tmp_path):
    compiled = _compiled(FUZZ_RULES)
    hs = HyperscanMatcher(compiled)
    py = PythonMatcher(compiled)
    assert {variant_key("ascii", "body"), variant_key("western", "body")} <= hs.dbs.keys(), \
        "a group of UTF-8 look-alikes gets databases for ASCII and Western buffers"
    cached = HyperscanMatcher(compiled, tmp_path)
    reloaded = HyperscanMatcher(compiled, tmp_path)
    assert reloaded.dbs.keys() == hs.dbs.keys(), "the cache keeps them"
    rnd = random.Random(23)
    words = ["price", "pr1ce", "p r i c e", "\u0420r\u0456c\u0435", "free", "fr-ee", "\u0493r\u0435\u0435", "cash",
             "\u0435\u0435", "ex", "e-x", "\u0435x", "pric\u00e8", "&#1056;rice", "x", " ", "\n", "\u201cfree\u201d",
             "pr\u00efce", "\u00a0"]
    seen = {"ascii": 0, "western": 0, "other": 0}
    for _ in range(3000):
        text = " ".join(rnd.choice(words) for _ in range(rnd.randint(0, 12))).encode()
        want = py.scan("body", text)
        assert hs.scan("body", text) == want, text
        assert reloaded.scan("body", text) == want, text
        kind = "ascii" if text.isascii() else "western" if set(text) <= WESTERN else "other"
        seen[kind] += bool(want)
    assert min(seen.values()) > 200, seen
    assert cached.dbs.keys() == reloaded.dbs.keys()
