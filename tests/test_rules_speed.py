"""The rule engine's fast paths give exactly what the plain ways of computing the same thing give.

* Rules with an embedded anchor run as a Hyperscan prefilter without anchors
  and hit exactly where Python re hits.
* Prefiltered rules confirmed only near Hyperscan's match ends hit exactly where
  a full Python search hits (look-behinds and look-aheads reaching outside the
  window, anchors, many candidate ends, candidates that are not matches).
* The body buffer's paragraph split equals the one-regex substitution it replaced.
* The letter and visible-character counts of the evals equal straightforward counts.
* A hit's options (the leftmost match's text) found by a search that starts near a known
  match end equal those of a search from the top of the buffer.
"""

from __future__ import annotations

import random
import re

import pytest

from antispam.ruleset import compile_rules
from antispam.ruleset import evals as E
from antispam.check import ScanContext
from antispam.config import Config
from antispam.message import Message
from antispam.ruleset.check import LoadedRules, RulesCheck, body_text
from antispam.ruleset.matcher import (NEAR_MAX_ENDS, HyperscanMatcher, LineStartCount, PythonMatcher, _PyRule,
                                      disjoint_literals, drop_anchors, hyperscan_available, last_literal,
                                      line_prefix, make_matcher, match_shape)
from antispam.ruleset.parser import Parser

NEAR_RULES = r"""
body  T_SPACED    /\b(?:f\s?r\s?e\s?e|c\s?a\s?s\s?h)\b(?<!free)(?<!cash)/i
body  T_NOT_AFTER /(?<![a-z])win(?!ner)/
body  T_LINE      /^(?!Re:)[A-Z]{3}\b/
body  T_BACKREF   /\b(\w)\1x/
body  T_PORT      /:(?!80\b)\d{2,5}\b/
body  T_ORDER     /^win[\s\S]*?^ABC/
body  T_END_WORD  /\bwin$\nABC/
"""


def _compiled(text: str):
    p = Parser()
    p.read_text(text, "t.cf")
    return compile_rules(p.finish())


def _texts(n: int) -> list[bytes]:
    rnd = random.Random(7)
    words = ["free", "f r e e", "fr ee", "cash", "c a s h", "win", "winner", "xwin", "Re:", "ABC", "aax", "bbx",
             "a:80", "b:8080", ":443", "\n", " ", "FREE", "C A S H", "x"]
    out = [b"", b"free", b"f r e e" * 40, b"win\nABC", b"xwin\nABC", b"win \nABC", b"a\nwin x\nABC"]
    for _ in range(n):
        sep = rnd.choice([" ", "\n"])
        out.append(sep.join(rnd.choice(words) for _ in range(rnd.randint(1, 60))).encode())
    return out


@pytest.mark.skipif(not hyperscan_available(), reason="hyperscan not installed")
def test_confirm_near_match_ends_equals_full_search():
    compiled = _compiled(NEAR_RULES)
    hs, py = HyperscanMatcher(compiled), PythonMatcher(compiled)
    assert hs._near, "the look-around rules of bounded width are confirmed near their match ends"
    assert {compiled.rules[i].name for i in hs._unanchored} == {"T_ORDER", "T_END_WORD"}, "embedded anchors: prefilter"
    many = b" ".join([b"f r e e"] * (NEAR_MAX_ENDS + 5)) + b" fr ee"
    for text in _texts(3000) + [many]:
        assert hs.scan("body", text) == py.scan("body", text), text


OPTION_RULES = r"""
body  T_BOUNDED   /\b(?:fr\s?ee|ca\s?sh)\w{0,3}\b/i
body  T_BEHIND    /(?<=x)win\w?/
body  T_UNBOUNDED /\bwin\s+\w+/
body  T_ACROSS    /cash[\s\S]{0,20}win/
"""


def test_match_shape():
    assert match_shape(rb"\bfr\s?ee\w{0,3}\b", 0) == (False, 8), "\\s may be a newline"
    assert match_shape(rb"\bfr[ \t]?ee\w{0,3}\b", 0) == (True, 8)
    assert match_shape(rb"(?<=\n)a", 0) == (True, 1), "a look-behind is not part of the match"
    assert match_shape(rb"a.+b", 0) == (True, None) and match_shape(rb"a.+b", re.DOTALL) == (False, None)
    assert match_shape(rb"(unbalanced", 0) == (False, None)


@pytest.mark.parametrize("engine", ["hyperscan", "python"])
def test_options_from_near_a_match_end_equal_a_search_from_the_top(engine):
    if engine == "hyperscan" and not hyperscan_available():
        pytest.skip("hyperscan not installed")
    compiled = _compiled(OPTION_RULES)
    check = RulesCheck(LoadedRules(compiled, make_matcher(compiled, engine), ()))
    assert {compiled.rules[i].name for i in check._max_width} >= {"T_BOUNDED", "T_BEHIND", "T_ACROSS"}
    rx = {r.name: re.compile(r.py, r.py_flags) for r in compiled.rules}
    rnd = random.Random(11)
    words = ["free", "fr ee", "FREEdom", "cash", "ca sh", "cashier", "win", "xwin", "xwinx", "win now", "a", "bb",
             "the", "1234"]
    checked = 0
    for _ in range(600):
        # long lines: the search window matters only when the first match is far from the line start
        lines = [" ".join(rnd.choice(words) for _ in range(rnd.randint(1, 80))) for _ in range(rnd.randint(1, 3))]
        raw = ("Subject: t\n\n" + "\n\n".join(lines) + "\n").encode()
        msg = Message(raw)
        buf = body_text(msg).encode()
        for hit in check.run(msg, ScanContext(msg.envelope, Config())):
            m = rx[hit.symbol].search(buf)
            assert m is not None
            assert hit.options == (m.group(0).decode().strip(),), (hit.symbol, buf)
            checked += 1
    assert checked > 500


def test_drop_anchors_keeps_escaped_and_class_bytes():
    assert drop_anchors(rb"^X\-Priority\:.*?^Cc\:") == rb"X\-Priority\:.*?Cc\:"
    assert drop_anchors(rb"(?:$|\W)x") == rb"(?:|\W)x"
    assert drop_anchors(rb"[^]$]x\$y$") == rb"[^]$]x\$y"
    assert drop_anchors(rb"[$^]a\^") is None
    assert drop_anchors(rb"[a") is None


def _old_body_text(text: str, subject: str) -> str:
    """The paragraph split as first written: one substitution with a marker byte."""
    text = text.strip()
    if not text:
        return subject
    if "\x00" in text:
        text = text.replace("\x00", " ")
    text = re.sub(r"[ \t\r\f\v\xa0]*\n(?:[ \t\r\f\v\xa0]*\n)+\s*", "\x00", text)
    return subject + "\n" + text.replace("\n", " ").replace("\x00", "\n")


class _Msg:
    def __init__(self, text: str, subject: str = "S"):
        self.text = text
        self.subject = subject


def test_body_text_paragraphs_equal_the_reference():
    rnd = random.Random(3)
    alphabet = ["a", "b", " ", "\t", "\n", "\r", "\xa0", "\u2003", "\x00", "\f", "\v", "\u2028", "\x1c"]
    for _ in range(20000):
        t = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 16)))
        assert body_text(_Msg(t)) == _old_body_text(t, "S"), repr(t)


def test_eval_counts_equal_straightforward_counts():
    rnd = random.Random(5)
    alphabet = list("aZ é\u00c9\u0130\u01c5\u2003x\nQ!\u00aa\u00df")
    for _ in range(5000):
        m = _Msg("".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 400))),
                 "".join(rnd.choice("AB CDEFGHIJ\u00c9a") for _ in range(rnd.randint(0, 24))))
        latin = [c for c in m.text[:20000] if ord(c) < 256]
        assert E._letter_counts(m) == (sum(c.isalpha() for c in latin), sum(c.isupper() for c in latin))
        visible = sum(c not in " \n\t\r\xa0" for c in m.text)
        for n in (0, 1, 20, 200):
            assert E.body_short(m, n) == (visible < n)
        letters = [c for c in m.subject if c.isalpha()]
        expected = len(letters) >= 10 and len(m.subject.split()) >= 2 and not any(c.islower() for c in letters)
        assert E.subject_is_all_caps(m) == expected


def test_html_image_only_finds_img_tags_as_lower_casing_would():
    for html in ["<p>hi</p>", "<IMG src=x>", "<iMg src=x>", "<\u0130mg src=x>", "<\u0130MG>", "x<img", "< img>"]:
        m = _Msg("two words")
        m.html = html  # type: ignore[attr-defined]
        expected = "<img" in html.lower()
        assert E.html_image_only(m, 0.0, 200.0)[0] == expected, html


COUNT_RULES = r"""
body  T_E        /e/
tflags T_E multiple maxhits=7
body  T_E_LIKE   /(?:e|\xc3[\xa8-\xab]|\xd0\xb5)/
tflags T_E_LIKE multiple
body  T_PAIRS    /[ab]x/
tflags T_PAIRS multiple maxhits=3
body  T_SELF     /ee/
tflags T_SELF multiple
body  T_PREFIX   /a|ab/
tflags T_PREFIX multiple
"""


def test_disjoint_literals_only_where_occurrences_cannot_overlap():
    assert disjoint_literals(rb"e", 0) == (b"e",)
    assert disjoint_literals(rb"(?:e|\xc3[\xa8-\xa9])", 0) == (b"e", b"\xc3\xa8", b"\xc3\xa9")
    assert disjoint_literals(rb"[a-c]x", 0) == (b"ax", b"bx", b"cx")
    assert disjoint_literals(rb"ee", 0) is None, "eee holds one non-overlapping ee but two occurrences"
    assert disjoint_literals(rb"ab|ba", 0) is None, "aba: the occurrences overlap"
    assert disjoint_literals(rb"a|ab", 0) is None, "one literal is a prefix of another"
    assert disjoint_literals(rb"xay|a", 0) is None, "one literal inside another"
    assert disjoint_literals(rb"e", re.IGNORECASE) is None
    assert disjoint_literals(rb"\be", 0) is None and disjoint_literals(rb"e+", 0) is None
    assert disjoint_literals(rb"[^e]", 0) is None and disjoint_literals(rb"\w", 0) is None


@pytest.mark.parametrize("engine", ["hyperscan", "python"])
def test_literal_counts_equal_finditer_counts(engine):
    if engine == "hyperscan" and not hyperscan_available():
        pytest.skip("hyperscan not installed")
    compiled = _compiled(COUNT_RULES)
    m = make_matcher(compiled, engine)
    if engine == "python":
        counted = {compiled.rules[r.id].name for r in m.groups["body"] if r.ascii_literals is not None}
        assert counted == {"T_E", "T_E_LIKE", "T_PAIRS"}, "the bytes.count path is taken, and only where exact"
    rx = {r.id: (re.compile(r.py, r.py_flags), (r.maxhits or 1000)) for r in compiled.rules}
    rnd = random.Random(5)
    pieces = [b"e", b"ee", b"ax", b"bx", b"abx", b"\xc3\xa8", b"\xc3", b"\xa8", b"\xd0\xb5", b"x", b" ", b"a", b"b", b"\n"]
    checked = 0
    for _ in range(2000):
        # long texts too: the counts look at a prefix of 16 bytes per allowed hit first
        text = b"".join(rnd.choice(pieces) for _ in range(rnd.randint(0, rnd.choice([40, 300]))))
        want = {}
        for rid, (r, cap) in rx.items():
            n = min(sum(1 for _ in r.finditer(text)), cap)
            if n:
                want[rid] = n
        assert m.scan("body", text) == want, text
        checked += bool(want)
    assert checked > 1500


LINE_START_PATTERNS = [(rb"^[^\x3e].*?\<a\x20href\=", re.I | re.M),  # SpamAssassin's __HAS_HREF
                       (rb"^[^\x3e].*?\<(?:a\x20href|A\x20HREF)\=", re.M),  # __HAS_HREF_ONECASE
                       (rb"^..*?ab", re.M), (rb"^[^a].*?ab", re.M), (rb"^[^\n].*?(?:xy|zz)", re.M),
                       (rb"^[^>].*?aa", re.M | re.I)]


@pytest.mark.parametrize("pattern,flags", LINE_START_PATTERNS)
def test_line_start_counts_equal_finditer_counts(pattern, flags):
    """LineStartCount finds the matches of ``^X.*?LITERAL`` from the literal's occurrences: empty
    lines (X may take a line break), an occurrence at the line start, several on a line, caps."""
    counter = LineStartCount.of(pattern, flags)
    assert counter is not None
    rx = re.compile(pattern, flags)
    rnd = random.Random(5)
    pieces = [b"<a href=", b"<A HREF=", b"<A href=", b"\n", b"\n\n", b">", b"a", b"b", b"ab", b"x", b"y", b"z",
              b"xy", b"zz", b" ", b"A", b"aa", b"<"]
    for _ in range(5000):
        text = b"".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 30)))
        cap = rnd.choice((1, 2, 3, 100))
        assert counter.count(text, cap) == min(sum(1 for _ in rx.finditer(text)), cap), text


def test_line_start_count_reads_a_long_line_once():
    """Each occurrence's line start was found by an ``rfind`` back to the buffer's start: on one long line,
    the square of its length (SpamAssassin's ``__HAS_IMG_SRC`` over 1 MB of ``<img src=``: 2 s a scan)."""
    import time

    counter = LineStartCount.of(rb"^[^>].*?<img src=", re.M | re.I)
    data = b"x" + b"<img src=" * 120_000
    t = time.perf_counter()
    assert counter.count(data, 100) == 1
    assert counter.count(b"\n".join([data[:450_000]] * 3) + b"\n>" + data[:9], 100) == 3
    assert time.perf_counter() - t < 1.0


@pytest.mark.parametrize("pattern,flags", [(rb"^[^a].*?ab", re.M | re.I), (rb"^[^>].*?ab", re.M | re.S),
                                           (rb"^[^>].*ab", re.M), (rb"^[^>].*?a+", re.M), (rb"^[^>].*?(?:ab|abc)", re.M),
                                           (rb"^[^>].*?ab", 0), (rb"^.*?ab", re.M)])
def test_line_start_count_only_for_its_shape(pattern, flags):
    """A letter refused under IGNORECASE, ``.`` across lines, a greedy or repeated tail, literals of
    two lengths (which one ends the match?), no MULTILINE, no X: a regex scan, as before."""
    assert LineStartCount.of(pattern, flags) is None


@pytest.mark.parametrize("pattern,flags", [(rb"^From\:\s+([^\x3c]\S+\s\S+)\s(?=.{1,2048}^\1\r?$)", re.M | re.S),
                                           (rb"^To\:\s+\<?[^\x40]+\@([^\x2e]+)\.(?:[^\n]+\n+)*^Subject\:\x20\"?\1\b",
                                            re.I | re.M | re.S),
                                           (rb"^ab(?<=\nab)c?", re.M), (rb"^\nx", re.M), (rb"(?m)^Ab\b", re.I)])
def test_search_from_line_starts_equals_a_search(pattern, flags):
    """Rules that start ``(?m)^LITERAL`` are searched by matching at the line starts followed by the
    literal: the same match (span and groups) as a search, for the first line, folded case, look-behinds."""
    assert line_prefix(pattern, flags) is not None
    rule = _PyRule(0, pattern, flags, False, 0)
    rx = re.compile(pattern, flags)
    rnd = random.Random(7)
    pieces = [b"From: ", b"from: ", b"To: <a@b.c>", b"Subject: b", b"Subject: \"B", b"John Smith ", b"\n", b"\r\n",
              b"John Smith\n", b"ab", b"AB", b"c", b"x", b" ", b"Ab"]
    for _ in range(3000):
        text = b"".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 25)))
        want, got = rx.search(text), rule.search(text)
        assert (want and (want.span(), want.groups())) == (got and (got.span(), got.groups())), text


def test_line_prefix_only_for_an_anchored_literal():
    assert line_prefix(rb"^From\:", re.M) == (b"From:", False)
    assert line_prefix(rb"^From\:", re.M | re.I) == (b"from:", True)
    assert line_prefix(rb"^From", 0) is None, "without MULTILINE ^ is the buffer start: a search tries once anyway"
    assert line_prefix(rb"^a+b", re.M) is None and line_prefix(rb"^ab|cd", re.M) is None and line_prefix(rb"x^ab", re.M) is None


LAST_LITERAL_PATTERNS = [
    (rb"<[^<>\s]*\s[^>]*>", 0), (rb"<[^>]*\s[^>]*>", 0), (rb"(?<=a)b[^c]*c", 0), (rb"\bwin[^!]*!!", re.I),
    (rb"(?m)^x[^;]*;", 0), (rb"(a|ab)(c|bcd)(?>d*)e", 0), (rb"(\w)[^x]*\1x", 0), (rb"\d+,", 0),
]


@pytest.mark.parametrize("pattern,flags", LAST_LITERAL_PATTERNS)
def test_a_search_up_to_the_last_literal_equals_a_search(pattern, flags):
    """A rule whose matches all end with a literal is searched only up to the literal's last occurrence
    (``_search_to_last``): the same match (span and groups) as a search of the whole buffer, from the
    top and from any start (``search_from``)."""
    assert last_literal(pattern, flags) is not None
    rule = _PyRule(0, pattern, flags, False, 0)
    rx = re.compile(pattern, flags)
    rnd = random.Random(11)
    pieces = [b"<", b">", b" ", b"\n", b"a", b"b", b"c", b"d", b"e", b"x", b";", b"!", b"WIN", b"win", b"1", b","]
    for _ in range(4000):
        text = b"".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 20)))
        want, got = rx.search(text), rule.search(text)
        assert (want and (want.span(), want.groups())) == (got and (got.span(), got.groups())), text
        start = rnd.randint(0, len(text))
        want, got = rx.search(text, start), rule.search_from(text, start)
        assert (want and (want.span(), want.groups())) == (got and (got.span(), got.groups())), (text, start)


def test_the_parse_trees_a_load_shares_are_not_kept():
    """Each pattern is parsed once for the steps of a load that read it (``pattern_tree.parsed``); the
    trees go when the engine is built, and a scan parses none."""
    from antispam import Engine
    from antispam.ruleset import pattern_tree

    engine = Engine()
    assert pattern_tree.parsed.cache_info().currsize == 0
    engine.scan(b"From: a@b.example\nSubject: hello\n\n<a href='http://x.example/'>x</a>\n")
    assert pattern_tree.parsed.cache_info().currsize == 0


@pytest.mark.parametrize("per_line", [False, True])
def test_a_lazy_twin_compiles_at_first_use_and_answers_as_an_eager_one(per_line, monkeypatch):
    """A Hyperscan matcher's Python twins are compiled when first called (most are never needed): before,
    nothing is compiled; after, each of search, search_from, finditer and match answers as the twin
    built at once, and a function taken before the build (``match = r.match``) builds only once."""
    import antispam.ruleset.matcher as matcher_mod

    pattern, flags = rb"(?m)^ab[^;]*;|x\s{2,}y", re.M
    eager = _PyRule(0, pattern, flags, True, 0, per_line)
    compiled = []
    real_compile = matcher_mod.re.compile
    monkeypatch.setattr(matcher_mod.re, "compile", lambda *a: compiled.append(a) or real_compile(*a))
    lazy = _PyRule(0, pattern, flags, True, 0, per_line, lazy=True)
    assert compiled == []
    match = lazy.match
    text = b"zz\nab c;\nx   y\nab;"
    assert [m.span() for m in lazy.finditer(text)] == [m.span() for m in eager.finditer(text)]
    n = len(compiled)
    assert n >= 1
    assert (match(text, 3) and match(text, 3).span()) == (eager.match(text, 3) and eager.match(text, 3).span())
    assert match(text, 0) is None and len(compiled) == n, "the stale function hands over, no second build"
    assert lazy.search(text).span() == eager.search(text).span()
    if per_line:
        assert lazy.search_from is None and eager.search_from is None
    else:
        assert lazy.search_from(text, 4).span() == eager.search_from(text, 4).span()
    assert len(compiled) == n


def test_last_literal_only_where_nothing_looks_past_a_match():
    assert last_literal(rb"<[^>]*>", 0) == b">"
    assert last_literal(rb"(?<=x)ab", 0) == b"ab"
    assert last_literal(rb"Abc>", re.I) == b">", "case-insensitive: the trailing bytes that are not letters"
    assert last_literal(rb"abc", re.I) is None
    for pattern in (rb"a(?=b)c", rb"a(?!b)c", rb"a$\nc", rb"a\Zc", rb"a|b", rb"ab+", rb"ab\b", rb"(a(?=x))c"):
        assert last_literal(pattern, 0) is None, pattern
