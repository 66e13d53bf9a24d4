"""The rule engine's fast paths give exactly what the plain ways of computing the same thing give.

* Rules with an embedded anchor run as a Hyperscan prefilter without anchors
  and hit exactly where Python re hits.
* Prefiltered rules confirmed only near Hyperscan's match ends hit exactly where
  a full Python search hits (look-behinds and look-aheads reaching outside the
  window, anchors, many candidate ends, candidates that are not matches).
* The body buffer's paragraph split equals the one-regex substitution it replaced.
* The letter and visible-character counts of the evals equal straightforward counts.
"""

from __future__ import annotations

import random
import re

import pytest

from antispam.ruleset import compile_rules
from antispam.ruleset import evals as E
from antispam.ruleset.check import body_text
from antispam.ruleset.matcher import NEAR_MAX_ENDS, HyperscanMatcher, PythonMatcher, drop_anchors, hyperscan_available
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
