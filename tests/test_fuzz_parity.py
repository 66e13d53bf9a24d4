"""Defects found by differential fuzzing (compiled kernels against their twin, and ``Engine.scan`` on
mutated mail), and a small seeded property test that keeps guarding both.

Every test runs with each kernel module in turn (``fastscore.impl`` swapped in the one process, as
``ANTISPAM_NO_EXTENSIONS=1`` would choose at import), on small hand-written inputs.
"""

from __future__ import annotations

import random
import re
import time

import pytest

from antispam import Engine, fastscore
from antispam import _fastscore_py as twin
from antispam.classifier.tokenizer import views
from antispam.message import Message, decode_rfc2047
from antispam.ruleset.matcher import hyperscan_available
from antispam.ruleset.possessive import run_start

try:
    from antispam import _fastscore as compiled
except ImportError:  # built without a compiler: the twin alone
    compiled = None

IMPLS = [pytest.param(twin, id="python"),
         pytest.param(compiled, id="cython", marks=pytest.mark.skipif(compiled is None, reason="compiled core not built"))]


@pytest.fixture(params=IMPLS)
def impl(request, monkeypatch):
    """The kernel module under test, made the active one."""
    monkeypatch.setattr(fastscore, "impl", request.param)
    return request.param


@pytest.fixture(scope="module")
def engine():
    return Engine()


def _clean_verdict(engine, raw: bytes):
    v = engine.scan(raw)
    assert "CHECK_ERROR" not in v.symbols, v.symbols["CHECK_ERROR"].options
    return v


# --------------------------------------------------------------------------- charsets that are not text codecs


@pytest.mark.parametrize("charset", ["rot13", "hex", "base64", "zlib", "bz2", "uu", "quopri", "idna", "punycode", "undefined"])
def test_a_charset_naming_a_codec_that_cannot_decode_text_is_unknown(impl, engine, charset):
    """``codecs.lookup`` finds bytes-to-bytes and str-to-str codecs too; ``bytes.decode`` with one of them
    raises ``LookupError``, and idna, punycode and undefined raise a bare ``UnicodeError``.  An encoded-word
    ``=?rot13?Q?...?=`` in a Subject made ``Engine.scan`` itself raise (from ``Message.headers``)."""
    raw = (f"From: a@example.com\nTo: b@example.net\nSubject: =?{charset}?Q?xn--abc=FF?=\n"
           f"Content-Type: text/plain; charset={charset}\n\nhello \xff there\n").encode("latin-1")
    _clean_verdict(engine, raw)
    m = Message(raw)
    assert "xn--abc" in m.subject
    assert "hello" in m.text
    defects: set[str] = set()
    assert decode_rfc2047(f"=?{charset}?B?4pyT?=", defects) == "\u2713"  # read as UTF-8, as an unknown charset is


# --------------------------------------------------------------------------- lone surrogates from decoding


def _has_surrogate(s: str) -> bool:
    return any("\ud800" <= c <= "\udfff" for c in s)


@pytest.mark.parametrize("raw", [
    b"From: a@example.com\nSubject: call\nContent-Type: text/plain; charset=utf-7\n\nPh.: +353-1-7161987\n",
    b"From: a@example.com\nSubject: =?utf-7?Q?+353?= now\n\nhello\n",
    b"From: a@example.com\nSubject: x\nContent-Type: text/plain; charset=unicode-escape\n\nbad \\ud800 half\n",
    b"From: a@example.com\nSubject: x\nContent-Type: text/html; charset=utf-7\n\n<p>+2D3 +353</p>\n",
    b"From: a@example.com\nContent-Type: text/plain; name*=utf-7''%2B353\n\nhi\n",
], ids=["utf7-body", "utf7-subject", "unicode-escape-body", "utf7-html", "utf7-rfc2231"])
def test_decoded_text_never_holds_a_lone_surrogate(impl, engine, raw):
    """UTF-7 decoding with "replace" leaves half a UTF-16 pair for a broken shift sequence (``+353``, a
    phone number), and unicode-escape decodes ``\\ud800``; the rules check then failed to encode the text
    to UTF-8, a ``CHECK_ERROR`` on mail that is merely badly labelled."""
    m = Message(raw)
    views = [m.subject, m.text, m.plain_text, m.html] + [v for _, v in m.headers]
    views += [p.filename or "" for p in m.parts] + [p.text or "" for p in m.parts]
    assert not any(_has_surrogate(s) for s in views)
    _clean_verdict(engine, raw)


# --------------------------------------------------------------------------- naming a rule's match in a long run


def test_naming_the_match_of_a_rule_after_a_long_run_of_blanks_is_linear(impl, engine):
    """AS_SUBJ_TRAILING_ID is ``\\s{3,}...\\s*$``: Hyperscan finds the hit in linear time, but naming the
    matched text searched with ``re``, which tried every position of the tab run, each time eating the
    rest of the run and giving it back (18,000 tabs: 5 s; 30,000: about 13 s)."""
    raw = (b"From: a@example.com\nTo: b@example.net\nSubject: Notes from the planning call" + b"\t" * 30000
           + b" and more\n    tomorrow\n\nSee you.\n")
    t = time.perf_counter()
    v = _clean_verdict(engine, raw)
    assert time.perf_counter() - t < 2.0
    assert v.symbols["AS_SUBJ_TRAILING_ID"].options == ("tomorrow",)


@pytest.mark.parametrize("pattern, flags", [
    (rb"\s{3,}[\x2d\x23\x28\x5b]?[A-Za-z0-9]{4,12}[\x29\x5d]?\s*$", 0), (rb"!{3,}", 0), (rb"a+b", 2), (rb"a+?b", 0),
    (rb"[^>]+>", 0), (rb".{2,}x", 16), (rb"x++y", 0), (rb"(a+)b", 0), (rb"a{2,5}b", 0),
    (rb"\$\s?\d{2,}|\d+\s?(?:USD|EUR|dollars)\b", 0), (rb"x|a+b", 0), (rb"a+b|a+x", 2), (rb"(a)|a+b|!", 0),
    (rb"a+?b|0+|\s+\d", 0), (rb"[ab]+x|b+!", 0),
])
def test_a_pattern_made_for_the_leftmost_match_finds_the_same_match(pattern, flags):
    """possessive.run_start only adds a look-behind that no leftmost match fails."""
    plain, leftmost = re.compile(pattern, flags), re.compile(run_start(pattern, flags), flags)
    rng = random.Random(7)
    for _ in range(400):
        data = bytes(rng.choice(b"aAbx!> \t\n-#([])0$5") for _ in range(rng.randint(0, 40)))
        a, b = plain.search(data), leftmost.search(data)
        assert (a and (a.span(), a.groups())) == (b and (b.span(), b.groups())), data


# --------------------------------------------------------------------------- RFC 2231 section numbers


@pytest.mark.parametrize("section", ["\u00b2", "\u0661", "9" * 5000, "1\u00b2"])
def test_an_rfc2231_section_number_that_is_not_a_small_ascii_number_is_no_error(impl, engine, section):
    """``str.isdigit()`` is true of ``²`` (which ``int`` refuses) and of ``١`` (which it reads), and ``int``
    refuses over 4,300 digits: the ValueError from ``parse_params`` made every check that walks the MIME
    tree a ``CHECK_ERROR``."""
    raw = (f"From: a@example.com\nTo: b@example.net\nSubject: s\n"
           f"Content-Type: text/plain; charset=utf-8; name*{section}=report.txt\n\nhello\n").encode()
    v = _clean_verdict(engine, raw)
    assert "hello" in Message(raw).text
    assert v.action


# --------------------------------------------------------------------------- seeded property test

_PIECES = [b"\n", b"\r\n", b"\r", b"\x00", b"\xff\xfe", b"\xc3\xa9", b"\xe2\x80\xa8", b"\t" * 40, b" " * 30, b"<" * 20,
           b"=?utf-8?B?w6k=?=", b"=?utf-7?Q?+353?=", b"=?rot13?Q?x?=", b"=?bogus?X?y?=", b"=?", b"?=",
           b"<p>", b"<br", b"<h\xd9\xa1>", b"<a href=\"http://xn--bcher-kva.example/%41%zz\">", b"</a>", b"<!--", b"&#x110000;",
           b"http://[::1]/x", b"HTTPS://A.B/", b"www.example.com.", b"ftp://", b"://", b"hxxp://x.y",
           b"Received: from x (y.example [192.0.2.1]) by z.example; ", b"(HELO 1.2.3.4)", b"helo=", b" by ",
           b"Date: Mon, 32 Feb 2002 25:61:61 +2500", b"Thu, 22 Aug 2002 18:26:25 EDT", b"\xef\xbc\x91",
           b"e-mail", b"don't", b"$100", b"_x_", b"a" * 25, b"\xf0\x9f\x98\x80" * 22, b"\xed\xa0\x80"]
_HEADERS = [b"Subject: ", b"From: ", b"To: ", b"Received: ", b"Date: ", b"X-Junk: ", b" ", b"\t", b"Content-Type: "]
_CTYPES = [b"text/plain; charset=utf-8", b"text/html; charset=utf-7", b"text/plain; charset=\"rot13\"",
           b"text/plain; charset=unicode-escape", b"text/html; charset=bogus", b"text/plain; name*\xc2\xb2=a",
           b"multipart/mixed; boundary=\"b\"", b"multipart/alternative; boundary=b", b"message/rfc822"]
_CTES = [b"7bit", b"base64", b"quoted-printable", b"x-bogus"]


def _junk(rng: random.Random, n: int) -> bytes:
    return b"".join(rng.choice(_PIECES) if rng.random() < 0.7 else bytes([rng.randrange(256)]) for _ in range(n))


def _hostile_message(rng: random.Random) -> bytes:
    """One generated message: junk headers, a possibly nested and broken MIME tree, junk bodies."""
    head = b"".join(rng.choice(_HEADERS) + _junk(rng, rng.randint(0, 6)) + rng.choice([b"\n", b"\r\n"])
                    for _ in range(rng.randint(0, 8)))
    body = b""
    depth = rng.choice([0, 0, 1, 3, 30])
    for i in range(depth):
        body += b"--b\nContent-Type: " + rng.choice(_CTYPES) + b"\n\n"
    body += b"Content-Type: " + rng.choice(_CTYPES) + b"\nContent-Transfer-Encoding: " + rng.choice(_CTES) + b"\n\n"
    body += _junk(rng, rng.randint(0, 60)) + rng.choice([b"", b"=\n=4", b"=ZZ", b"====", b"--b--\n", b"--b\n"])
    raw = head + rng.choice([b"\n", b"\r\n", b""]) + body
    if rng.random() < 0.2:
        raw = raw[: rng.randint(0, len(raw))]
    return raw


def _snapshot(raw: bytes, impl, engine) -> tuple:
    fastscore.impl = impl
    m = Message(raw)
    subject, text, meta = views(m)
    clf = [c for c in engine.checks if type(c).__name__ == "ClassifierCheck"]
    ids = clf[0].classifier.features(m, impl).tolist() if clf else None
    v = engine.scan(raw)
    assert "CHECK_ERROR" not in v.symbols, (raw, v.symbols["CHECK_ERROR"].options)
    return (m.headers, m.text, m.html_text, [repr(u) for u in m.urls], [repr(r) for r in m.received], subject, text,
            meta, ids, round(v.score, 9), sorted((k, s.weight, s.options) for k, s in v.symbols.items()))


@pytest.mark.skipif(compiled is None, reason="compiled core not built: nothing to compare")
def test_generated_hostile_messages_give_identical_results_in_both_kernel_modes(engine, monkeypatch):
    """300 generated messages (fixed seed): the views, feature ids and verdicts of the compiled kernels
    equal the twin's, no check raises, and the kernels agree on the raw pieces of each message."""
    monkeypatch.setattr(fastscore, "impl", compiled)
    rng = random.Random(20261207)
    for _ in range(300):
        raw = _hostile_message(rng)
        assert _snapshot(raw, compiled, engine) == _snapshot(raw, twin, engine), raw
        for s in (raw.decode("latin-1"), raw.decode("utf-8", "surrogateescape")):
            for name in ("html_strip_tags", "collapse_blanks", "paragraph_lines", "text_urls", "header_fields",
                         "visible_count", "canonical_date", "received_fields"):
                assert getattr(compiled, name)(s) == getattr(twin, name)(s), (name, s)
            assert compiled.letter_counts(s, 500) == twin.letter_counts(s, 500)
            assert compiled.features(s[:80], s, [s[:9]], 5, 22, True).tolist() == twin.features(s[:80], s, [s[:9]], 5, 22, True).tolist()
        assert compiled.crlf_only(raw) == twin.crlf_only(raw)


def test_the_python_rules_engine_searches_a_long_run_of_blanks_in_linear_time():
    """Where Hyperscan is not installed every rule is searched with ``re``: the search for whether
    ``\\s{3,}...\\s*$`` matches at all had the same square of the run's length as naming its text
    (30,000 tabs: seconds a message, for every scan).  Same verdict as the Hyperscan engine's."""
    from antispam.config import Config

    raw = (b"From: a@example.com\nTo: b@example.net\nSubject: Notes from the planning call" + b"\t" * 30000
           + b" and more\n    tomorrow\n\nSee you.\n")
    python_engine = Engine(Config.load(overrides={"rules": {"engine": "python"}}))
    t = time.perf_counter()
    v = _clean_verdict(python_engine, raw)
    assert time.perf_counter() - t < 2.0
    assert v.symbols["AS_SUBJ_TRAILING_ID"].options == ("tomorrow",)
    if hyperscan_available():
        hs = _clean_verdict(Engine(), raw)
        assert (v.score, v.symbols) == (hs.score, hs.symbols)


#: header and body shapes on which three default rules were super-linear under Python's ``re`` (no Hyperscan):
#: the rule, the message, and the text the rule names (None: no hit)
SUPERLINEAR_BEFORE = {
    "Message-ID of '< '": ("AS_MID_SPACES", b"Message-ID: " + b"< " * 15000 + b"\n", None),  # 12 minutes
    "Message-ID of '<' then '>'": ("AS_MID_SPACES", b"Message-ID: " + b"<" * 30000 + b">\n", None),
    "Message-ID of '<a'": ("AS_MID_SPACES", b"Message-ID: " + b"<a" * 15000 + b"\n", None),
    "blanks inside a Message-ID": ("AS_MID_SPACES", b"Message-ID: <" + b"< " * 15000 + b"x@y>\n", b"< < < <"),
    "To of '@' words": ("AS_TO_NO_BRACKETS_NAME", b"To: a " + b"@" * 30000 + b" x\n", None),  # 5 s
    "To of blanks": ("AS_TO_NO_BRACKETS_NAME", b"To: a" + b" " * 30000 + b"@b x\n", None),
    "To: a name of blanks, then an address": ("AS_TO_NO_BRACKETS_NAME", b"To: Ann" + b" " * 30000 + b"ann@example.com\n",
                                              b"Ann"),
}


@pytest.mark.parametrize("name", sorted(SUPERLINEAR_BEFORE))
@pytest.mark.parametrize("rules_engine", ["auto", "python"])
def test_header_rules_read_a_long_field_in_linear_time(rules_engine, name):
    """Each shape took seconds (a Message-ID of 30 KB of ``< ``: 12 minutes) with the Python rules engine;
    the rewritten rules hit where they did, and name the text the Hyperscan engine names."""
    from antispam.config import Config

    rule, field, named = SUPERLINEAR_BEFORE[name]
    raw = b"From: a@example.com\nSubject: hi\n" + field + b"\nSee you.\n"
    e = Engine(Config.load(overrides={"rules": {"engine": rules_engine}}))
    t = time.perf_counter()
    v = _clean_verdict(e, raw)
    assert time.perf_counter() - t < 2.0
    if named is None:
        assert rule not in v.symbols
    else:
        assert v.symbols[rule].options[0].startswith(named.decode()), v.symbols[rule].options


@pytest.mark.parametrize("rules_engine", ["auto", "python"])
def test_blank_lines_before_a_greeting_are_read_once(rules_engine):
    """AS_DEAR_FRIEND's ``^\\s*`` started again at each of 30,000 blank lines (seconds with ``re``)."""
    from antispam.config import Config

    e = Engine(Config.load(overrides={"rules": {"engine": rules_engine}}))
    for body, named in ((b"\n" * 30000 + b"  Dear Friend,\n", ("Dear Friend",)), (b"\n" * 30000 + b"x\n", None)):
        t = time.perf_counter()
        v = _clean_verdict(e, b"From: a@example.com\nSubject: hi\n\n" + body)
        assert time.perf_counter() - t < 2.0
        assert (v.symbols["AS_DEAR_FRIEND"].options if named else "AS_DEAR_FRIEND" in v.symbols) == (named or False)


@pytest.mark.parametrize("rule,was,alphabet", [
    ("AS_TO_NO_BRACKETS_NAME", rb'^"?[^"<>]+"?\s+[^\s<>]+\@[^\s<>]+$', b'"<> \t\n@ab'),
    ("AS_MID_SPACES", rb"<[^>]*\s[^>]*>", b"<> \na@"),
])
def test_rewritten_rules_hit_where_the_rules_as_first_written_hit(rule, was, alphabet):
    """Every string of up to 6 bytes over the bytes that matter, and random longer ones: the same hit
    (AS_TO_NO_BRACKETS_NAME: the same match too, the whole line)."""
    import itertools

    from antispam.ruleset.check import load_rules
    from antispam.resources import default_rules_dir

    compiled = load_rules([default_rules_dir()], engine="python", every_rule=True).compiled
    r = compiled.by_name[rule]
    now, old = re.compile(r.py, r.py_flags), re.compile(was, r.py_flags)
    rnd = random.Random(5)
    texts = [bytes(t) for n in range(7) for t in itertools.product(alphabet, repeat=n)]
    texts += [bytes(rnd.choice(alphabet) for _ in range(rnd.randint(7, 30))) for _ in range(20000)]
    for text in texts:
        a, b = old.search(text), now.search(text)
        assert (a is None) == (b is None), text
        if rule == "AS_TO_NO_BRACKETS_NAME" and a:
            assert a.span() == b.span(), text


@pytest.mark.parametrize("value", [b"a" * 100000, b"ann." * 25000 + b"@", b"x" * 50000 + b" (" + b"y" * 50000])
def test_a_long_address_header_without_an_address_is_read_in_linear_time(impl, engine, value):
    """A From (or Reply-To) without ``<...>`` is searched for a bare ``local@domain``: ``re`` read on from
    every position of a run of address characters with no "@" in it (100,000 letters: about 25 s)."""
    raw = b"From: " + value + b"\nReply-To: " + value + b"\nSubject: hi\n\nbody\n"
    t = time.perf_counter()
    _clean_verdict(engine, raw)
    assert time.perf_counter() - t < 2.0


def test_a_bare_address_is_the_same_run_it_was():
    """The look-behind that keeps the bare-address search linear finds the address it found before."""
    from antispam.message import split_addresses

    assert split_addresses("Ann ann.lee+x@mail.example.com (Ann Lee)") == (("Ann Lee", "ann.lee+x@mail.example.com"),)
    assert split_addresses("junk;ann@a.example,bob@b.example") == (("", "ann@a.example"), ("", "bob@b.example"))
    assert split_addresses("a@@b x@y") == (("", "a@@b"),)
    assert split_addresses("no address here") == ()


@pytest.mark.parametrize("rules_engine", ["auto", "python"])
def test_naming_a_match_after_a_long_run_in_one_branch_is_linear(rules_engine):
    """AS_SUBJ_DOLLARS is ``\\$\\s?\\d{2,}|\\d+\\s?(?:USD|EUR|dollars)\\b``: its second branch begins with a
    repeat, and 30,000 digits before ``x 5 USD`` took 15 s to name (re tried the branch from every digit)."""
    from antispam.config import Config

    e = Engine(Config.load(overrides={"rules": {"engine": rules_engine}}))
    raw = b"From: a@example.com\nTo: b@example.net\nSubject: " + b"0" * 30000 + b" x 5 USD\n\nSee you.\n"
    t = time.perf_counter()
    v = _clean_verdict(e, raw)
    assert time.perf_counter() - t < 2.0
    assert v.symbols["AS_SUBJ_DOLLARS"].options == ("5 USD",)


def test_charset_names_from_mail_do_not_accumulate():
    """Every charset name a message carries was remembered for the process's life: spam naming a new
    one in each message grew a long-running server without bound.  The memo is bounded now, and still
    answers for the names it forgot."""
    from antispam.message import _codec, _codec_of

    for i in range(5000):
        assert _codec(f"x-made-up-{i}") is None
    assert _codec_of.cache_info().currsize <= _codec_of.cache_info().maxsize < 5000
    assert _codec("UTF-8") == "utf-8" and _codec('"ISO-8859-1"') == "cp1252" and _codec("rot13") is None
