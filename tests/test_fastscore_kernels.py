"""The rules, text, header and bytes kernels (rule-eval counting, HTML tag stripping, blank collapsing, header
fields, CRLF line ends, canonical dates, Received headers): compiled and twin agree exactly."""

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
          "\u00e9", "\U0001f600", "\r", "\x0b", "\x0c", "  ", "<!-- c -->", "<a href=x>", "< $5", "<3", "<=", "<?x?>",
          "<!DOCTYPE html>", "</>", "</ x>", "<\u00e9t\u00e9>", "<Z>", "<@", "<["]


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
        # a "<" opens a tag only before a letter, "/", "!" or "?" (WHATWG HTML tokenizer); any other is text
        assert impl.html_strip_tags("Pills for < $5 each, <b>order</b> today<3 a<=b> x<?php y?>z<!DOCTYPE html>") == \
            "Pills for < $5 each, order today<3 a<=b> xz"
        assert impl.html_strip_tags("1 <2 and 3> 0") == "1 <2 and 3> 0" and impl.html_strip_tags("a<\u00e9>b") == "a<\u00e9>b"
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
    # even seeds: Latin-1 only (\x85 and \xa0 among them), the one-byte storage the kernel reads on its own path
    pieces = [p for p in PARAGRAPH_PIECES if max(map(ord, p)) < 256] if seed % 2 == 0 else PARAGRAPH_PIECES
    for _ in range(50):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 40)))
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


# Text URL pieces: the anchors in every spelling and near misses (a sixth letter before the
# scheme, a Kelvin sign, an uppercase scheme), IPv6 literals whole and broken, every excluded
# character, white space of every kind, characters that may or may not stand before a bare host,
# and the trailing punctuation that is stripped.
URL_PIECES = ["://", "http", "HTTPS", "https", "ftp", "Ftp", "xhttp", "mailto", "\u212atp", "\u00e9http", "www.", "WWW.",
              "Www.", "wWw.", "ww", "w", ".", "/", "a", "Z", "9", "\u00e9", "\u0663", "[", "]", "[::1]", "[fe80::1", "[x]",
              ":", "<", ">", '"', "'", "{", "}", "|", "\\", "^", "`", " ", "\t", "\n", "\x1c", "\xa0", "\u2028",
              "\u3000", ",", ";", "!", "?", ")", "-", "_", "%20", "\U0001f600", "\ud800"]


def agree_on_random_pieces(kernel: str, pieces: list[str], seed: int, strings: int, most: int) -> None:
    """The kernel and its twin give the same answer for ``strings`` strings of up to ``most`` pieces."""
    rng = random.Random(seed)
    for _ in range(strings):
        s = "".join(rng.choice(pieces) for _ in range(rng.randint(0, most)))
        assert getattr(compiled, kernel)(s) == getattr(twin, kernel)(s), repr(s)


@pytest.mark.parametrize("seed", range(30))
def test_text_urls_agree_on_random_text(seed):
    agree_on_random_pieces("text_urls", URL_PIECES, seed, 100, 30)


def test_text_urls_by_definition():
    for impl in (twin, compiled):
        text = ("see http://a.example/x?y=1, HTTPS://B.example. ftp://[fe80::1]:21/f) xhttp://no "
                "http://[zz]/no www.c.example! a.www.no.example /www.no.example (Www.d.example) http://")
        assert impl.text_urls(text) == ["http://a.example/x?y=1", "HTTPS://B.example", "ftp://[fe80::1]:21/f",
                                        "www.c.example", "Www.d.example"]
        assert impl.text_urls("\u212atp://kelvin.example ftp://e.example\u3000x") == ["ftp://e.example"]
        assert impl.text_urls("") == [] and impl.text_urls("no links") == []


def test_text_urls_agree_on_the_corpus(corpus):
    from antispam.message import Message

    found = 0
    for m in corpus:
        text = Message(m.data).plain_text
        urls = compiled.text_urls(text)
        assert urls == twin.text_urls(text), m.name
        found += len(urls)
    assert found > 10000


# Header block pieces: names with every kind of printable ASCII, near misses (a space or a non-ASCII
# letter in the name, no colon, a colon first), blanks around the colon, folding by space and tab,
# trailing white space of every kind (CR, NBSP, the line separator), non-ASCII values, empty values.
HEADER_PIECES = ["From", "X-Y_z.1", "!#$%&'*+-/^`|~", "Received", ":", " :", ":\t", ": ", "a b", "\u00e9", "v", "value",
                 " ", "\t", "\n", "\n ", "\n\t", "\r", "\xa0", "\u2028", "\x0c", "\x1c", "\u65e5", "\U0001f600", ";", "=?x?="]


@pytest.mark.parametrize("seed", range(40))
def test_header_fields_agree_on_random_blocks(seed):
    rng = random.Random(seed)
    # even seeds: Latin-1 only, the one-byte storage the kernel reads on its own path
    pieces = [p for p in HEADER_PIECES if p.isascii() or max(map(ord, p)) < 256] if seed % 2 == 0 else HEADER_PIECES
    block = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 300)))
    assert compiled.header_fields(block) == twin.header_fields(block), repr(block)


def test_header_fields_by_definition():
    block = "From: a@b\nSubject :  two\n  lines \r\nbad line\n: no name\nX-E:\nX-Sp:\t \xa0\nX-Ä: y\n\tz"
    for impl in (twin, compiled):
        assert impl.header_fields(block) == [("From", "a@b"), ("Subject", "two  lines"), ("X-E", ""), ("X-Sp", "")]
        assert impl.header_fields("") == [] and impl.header_fields("A:b") == [("A", "b")]


def test_header_fields_agree_on_the_corpus(corpus):
    from antispam.message import _head_text, _split_head_body

    for m in corpus[::3]:
        block = _head_text(_split_head_body(m.data)[0], set())
        assert compiled.header_fields(block) == twin.header_fields(block), m.name


def test_crlf_only_agrees_and_means_crlf_line_ends():
    rng = random.Random(2)
    for _ in range(20000):
        data = bytes(rng.choice(b"\r\nab") for _ in range(rng.randint(0, 14)))
        assert compiled.crlf_only(data) == twin.crlf_only(data), data
        assert compiled.crlf_only(bytearray(data)) == twin.crlf_only(data)
    for impl in (twin, compiled):
        assert impl.crlf_only(b"") and impl.crlf_only(b"a\r\nb\r\n") and impl.crlf_only(b"no line end")
        assert not impl.crlf_only(b"a\nb") and not impl.crlf_only(b"a\r\rb\r\n") and not impl.crlf_only(b"\n")
        assert not impl.crlf_only(b"a\r")


DATE_PIECES = ["", " ", "  ", "\t", "\u2003", "\xa0", "\n", "Wed", "wed", "WED,", "Wed,", "We,", "Thu, ", "1", "5", "25", "025",
               "\u0662", "Nov", "nov", "Dec", "Decx", "1999", "2026", "3026", "202", "20266", "11:33:33", "1:33:33",
               "11:3:33", "11-33-33", "+0100", "-0000", "-2359", "+010", "+01000", "(CET)", "x", ":", ",", "EST", "UT", "UTC", "Z", "GMTX", "CET", "E"]


@pytest.mark.parametrize("seed", range(20))
def test_canonical_date_agrees_on_random_pieces(seed):
    rng = random.Random(seed)
    good = ["Wed, ", "25", " ", "Nov", " ", "2026", " ", "11:33:33", " ", "+0100", " (CET)"]
    for _ in range(2000):
        # a canonical date with a few of its pieces replaced, dropped or doubled, so that most
        # strings fail at a different step and some still pass
        pieces = list(good)
        for _ in range(rng.randint(0, 3)):
            k = rng.randrange(len(pieces))
            pieces[k] = rng.choice(DATE_PIECES) if rng.random() < 0.8 else pieces[k] * 2
        value = "".join(pieces)[: rng.randint(0, 60)] if rng.random() < 0.2 else "".join(pieces)
        assert compiled.canonical_date(value) == twin.canonical_date(value), repr(value)


def test_canonical_date_by_definition():
    from email.utils import parsedate_tz

    for v in ("Wed, 25 Nov 2026 11:33:33 +0100 (CET)", "5 Jan 2002 00:00:00 -0000", "\u2003Sun,1 Dec 1999 23:59:59 +1400",
              "Wed, 25 Nov 2026 11:33:33 EST", "Wed, 25 Nov 2026 11:33:33 UT (x)", "Wed, 25 Nov 2026 11:33:33 Z"):
        for impl in (twin, compiled):
            assert impl.canonical_date(v) == parsedate_tz(v), v
    for v in ("Wed, 25 nov 2026 11:33:33 +0100", "Wed, 25 Nov 2026 11:33:33 CET", "Wed, 25 Nov 2026 11:33:33 +0100x",
              "Wed, 25 Nov 2026 11:33:33 ESTX", "Wed, 25 Nov 2026 11:33:33 est",
              "Wed, 125 Nov 2026 11:33:33 +0100", "25 Nov 26 11:33:33 +0100", "25 Nov 2026 11:33 +0100", ""):
        for impl in (twin, compiled):
            assert impl.canonical_date(v) is None, v


def test_canonical_date_agrees_on_the_corpus(corpus):
    from antispam.message import Message

    n = 0
    for m in corpus[::5]:
        msg = Message(m.data)
        for v in msg.get_all("Date") + [r.raw[r.raw.rfind(";") + 1 :].strip() for r in msg.received if ";" in r.raw]:
            got = compiled.canonical_date(v)
            assert got == twin.canonical_date(v), v
            n += got is not None
    assert n > 1000


RECEIVED_PIECES = ["from", "FROM", " ", "  ", "\t", "\x1c", "mail.example.org", "[192.0.2.7]", "(192.0.2.7)",
                   "[IPv6:2001:db8::1]", "(IPv6:fe80::1%eth0)", "[::ffff:192.0.2.1]", "(HELO x.test)", "(helo  y)",
                   "(HeLo z)", "helo=mx1", "HELO=", "(mx.example.com [203.0.113.9])", "(mx.Example.COM\t[1.2.3.4])",
                   "(a.b1 [1.1.1.1])", "(-x.ab [", "(x.y", "by", " by ", "BY", " by mx.rcpt.test", "by(", "by;",
                   "nearby", "_by x", "with ESMTP", "id 4ABC", "1234.5.6.7]", "1.2.3.4567]", "[1.2.3]", "[:]",
                   "(", ")", "[", "]", ".", "é", "(ünï.example [1.2.3.4])", "\u2003", "256.1.1.1", "[10.0.0.1)"]


@pytest.mark.parametrize("seed", range(20))
def test_received_fields_agree_on_random_pieces(seed):
    agree_on_random_pieces("received_fields", RECEIVED_PIECES, seed, 2000, 12)


def test_received_fields_by_definition():
    head = "from mail.sender.test (HELO mx.sender.test) (mx.Sender.test [192.0.2.7]) by MX.rcpt.test with ESMTP id 1"
    for impl in (twin, compiled):
        assert impl.received_fields(head) == ("192.0.2.7", "mx.sender.test", "mx.sender.test", "mx.rcpt.test")
        assert impl.received_fields("from [192.0.2.9] by x") == ("192.0.2.9", None, "192.0.2.9", "x")
        assert impl.received_fields("by x (from [192.0.2.9])") == (None, None, None, "x")  # only before "by"
        assert impl.received_fields("from a (IPv6:2001:db8::1) by b") == ("2001:db8::1", None, "a", "b")
        assert impl.received_fields("") == (None, None, None, None)


def test_received_fields_agree_on_the_corpus(corpus):
    from antispam.message import Message

    n = 0
    for m in corpus[::3]:
        for raw in Message(m.data).get_raw("Received"):
            head = raw.partition(";")[0]
            got = compiled.received_fields(head)
            assert got == twin.received_fields(head), head
            n += got[0] is not None
    assert n > 2000
