"""The rules and text kernels (rule-eval counting, HTML tag stripping, blank collapsing): compiled and twin agree exactly."""

from __future__ import annotations

import random

import pytest

from antispam import _fastscore_py as twin

compiled = pytest.importorskip("antispam._fastscore", reason="compiled core not built (python setup.py build_ext --inplace)")

# Every Latin-1 code point, a few beyond it (Greek and Cyrillic capitals, CJK, astral, surrogates).
ALPHABET = [chr(c) for c in range(256)] + list("ΩΣДЖ日本\u0130\u1e9e😀𝔘\ud800\u2028")


@pytest.mark.parametrize("seed", range(30))
def test_counts_agree_on_random_text(seed):
    rng = random.Random(seed)
    text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 5000)))
    for limit in (0, 1, 17, 20000, len(text)):
        assert compiled.letter_counts(text, limit) == twin.letter_counts(text, limit)
    assert compiled.visible_count(text) == twin.visible_count(text)


def test_counts_by_definition():
    assert twin.letter_counts("Hello WORLD àÉ ß Ω 42", 100) == (13, 7)  # Ω is not Latin-1: not counted
    assert twin.letter_counts("ABCdef", 4) == (4, 3)
    assert twin.visible_count(" a\tb\n\r\xa0c ") == 3
    for impl in (twin, compiled):
        with pytest.raises(ValueError):
            impl.letter_counts("abc", -1)


def test_counts_agree_on_the_corpus(corpus):
    from antispam.message import Message

    for m in corpus[::7]:
        text = Message(m.data).text
        assert compiled.letter_counts(text, 20000) == twin.letter_counts(text, 20000), m.name
        assert compiled.visible_count(text) == twin.visible_count(text), m.name


# Markup pieces that exercise every branch: block-level names in any case, near misses, names
# followed by word and non-word characters, unclosed tags, non-ASCII letters that fold to ASCII
# under Unicode case folding (Kelvin sign, dotted I), non-ASCII digits, astral characters.
MARKUP = ["<", ">", "<br>", "<BR/>", "<p>", "<P class=x>", "<pre>", "<div>", "<DiV\n>", "<tr>", "<li>", "<h1>", "<h12>",
          "<H6 id=a>", "<table>", "<tbody>", "<blockquote>", "<blockquotes>", "<br-x>", "< br>", "<b>", "</p>",
          "<\u212aey>", "<d\u0130v>", "<h\u0661>", "<br\u2028>", "<br_>", "text", " ", "\n", "\t", "\xa0", "&nbsp;",
          "\u00e9", "\U0001f600", "\r", "\x0b", "\x0c", "  ", "<!-- c -->", "<a href=x>"]


@pytest.mark.parametrize("seed", range(60))
def test_text_kernels_agree_on_random_markup(seed):
    rng = random.Random(seed)
    markup = "".join(rng.choice(MARKUP) for _ in range(rng.randint(0, 400)))
    assert compiled.html_strip_tags(markup) == twin.html_strip_tags(markup)
    assert compiled.collapse_blanks(markup) == twin.collapse_blanks(markup)


def test_text_kernels_by_definition():
    assert twin.html_strip_tags("a<br>b<P>c<pre>d</p>x < y <br> z") == "a\nb\ncdx < y \n z"  # a closing </p> is no break: "/" is no name
    assert twin.collapse_blanks("a \t\xa0b  c\rd e") == "a b c d e"
    for impl in (twin, compiled):
        assert impl.html_strip_tags("<dIV>") == "\n" and impl.html_strip_tags("no tags") == "no tags"
        assert impl.collapse_blanks("") == ""


def test_text_kernels_agree_on_corpus_html(corpus):
    from antispam.message import Message

    seen = 0
    for m in corpus[::5]:
        for p in Message(m.data).parts:
            if p.content_type == "text/html" and p.text:
                seen += 1
                assert compiled.html_strip_tags(p.text) == twin.html_strip_tags(p.text), m.name
                assert compiled.collapse_blanks(p.text) == twin.collapse_blanks(p.text), m.name
    assert seen > 50


PARAGRAPH_PIECES = ["a", "word", " ", "\t", "\n", "\n\n", "\r", "\xa0", "\x0b", "\x0c", "\x1c", "\u2028", "\x85",
                    "\u00e9", "\U0001f600", "  \n", "\n \n"]


@pytest.mark.parametrize("seed", range(40))
def test_paragraph_lines_agree_on_random_text(seed):
    rng = random.Random(seed)
    for _ in range(50):
        text = "".join(rng.choice(PARAGRAPH_PIECES) for _ in range(rng.randint(0, 40)))
        assert compiled.paragraph_lines(text) == twin.paragraph_lines(text), repr(text)


def test_paragraph_lines_by_definition():
    for impl in (twin, compiled):
        assert impl.paragraph_lines("one\ntwo  \n\n  three\n \t\nfour") == "one two\nthree\nfour"
        assert impl.paragraph_lines("a\n\x1c\nb") == "a \x1c b"  # \x1c is white space but no blank
        assert impl.paragraph_lines("") == "" and impl.paragraph_lines("x") == "x"


def test_paragraph_lines_agree_on_corpus(corpus):
    from antispam.message import Message

    for m in corpus[::5]:
        text = Message(m.data).text.strip().replace("\x00", " ")
        assert compiled.paragraph_lines(text) == twin.paragraph_lines(text), m.name
