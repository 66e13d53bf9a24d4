"""Authentication-Results: rendering, parsing, trusted upstream results, forged headers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from antispam import Engine, Envelope
from antispam.auth.authres import AuthResultsCheck, UpstreamAuth, ascii_value, parse, quote_value, resinfo, strip_forged
from antispam.check import Hit
from antispam.config import Config

MSG = (b"Authentication-Results: mx.test; spf=pass smtp.mailfrom=evil@example.org\r\n"
       b"Authentication-Results: relay.trusted.example;\r\n dkim=pass (good sig) header.d=example.org header.s=\"s 1\";\r\n"
       b" spf=fail smtp.mailfrom=a@example.org\r\n"
       b"Authentication-Results: random.example; dmarc=pass header.from=example.org\r\n"
       b"From: a@example.org\r\nSubject: x\r\n\r\nbody\r\n")


def test_values_are_quoted_only_when_needed():
    assert quote_value("a@example.org") == "a@example.org"
    assert quote_value("@example.org") == "@example.org"
    assert quote_value("two words") == '"two words"'
    assert quote_value('say "hi"') == '"say \\"hi\\""'
    assert quote_value("") == '""'
    assert resinfo("spf", "fail", [("smtp.mailfrom", "x y@z")], comment="not (really) ok") == \
        'spf=fail (not \\(really\\) ok) smtp.mailfrom="x y@z"'


def test_parse_with_comments_quoted_strings_and_versions():
    ar = parse('relay.example 1; dkim/1=pass (ok; really) header.d=example.org header.s="a;b"; spf=none; none')
    assert ar.authserv_id == "relay.example"
    dk, spf = ar.results
    assert (dk.method, dk.result, dk.prop("header.d"), dk.prop("header.s")) == ("dkim", "pass", "example.org", "a;b")
    assert (spf.method, spf.result) == ("spf", "none")
    assert parse("") is None and parse("; spf=pass") is None
    assert parse("mx.test; dmarc=fail reason=\"x y\" header.from=a.example").results[0].reason == "x y"


@pytest.mark.parametrize("value", ["SRS0=HHH=TT=example.org=alice@fwd.example", "bounces+7=b=example.net@list.example",
                                   "a=b@example.org", "=@example.org"])
def test_an_address_with_equals_signs_is_read_back_whole(value):
    """RFC 8601 2.2: a pvalue may be an address, whose local part may hold '=' (SRS and VERP senders);
    we write it bare, so reading it must not stop at the first '=' (authres, dkimpy's parser, agrees)."""
    ri = resinfo("spf", "pass", [("smtp.mailfrom", value)])
    assert ri == f"spf=pass smtp.mailfrom={value}"
    (r,) = parse(f"mx.test; {ri}; dkim=pass header.d=example.org").results[:1]
    assert r.prop("smtp.mailfrom") == value


def _run(check, raw):
    from antispam.message import Message
    from antispam.check import ScanContext

    msg = Message(raw)
    ctx = ScanContext(msg.envelope, Config())
    return check.run(msg, ctx), ctx


def test_trusted_results_are_read_and_ours_are_forged():
    hits, ctx = _run(AuthResultsCheck("mx.test", ["relay.trusted.example"]), MSG)
    assert Hit("AUTHRES_FORGED", 1.0, ("1 header(s) claiming mx.test",)) in hits
    up = ctx.get(UpstreamAuth)
    assert up.forged == 1 and [h.authserv_id for h in up.headers] == ["relay.trusted.example"]
    assert [(r.method, r.result) for r in up.results] == [("dkim", "pass"), ("spf", "fail")]
    # with nothing trusted, random.example's claims are ignored too
    hits, ctx = _run(AuthResultsCheck("other.test"), MSG)
    assert hits == [] and ctx.get(UpstreamAuth).results == ()


def test_strip_forged_keeps_everything_else_byte_for_byte():
    out = strip_forged(MSG, "mx.test")
    assert b"evil@example.org" not in out
    assert out == MSG.replace(b"Authentication-Results: mx.test; spf=pass smtp.mailfrom=evil@example.org\r\n", b"")
    lf = MSG.replace(b"\r\n", b"\n")
    assert strip_forged(lf, "mx.test") == lf.split(b"\n", 1)[1]
    assert strip_forged(MSG, "nobody.test") == MSG


def test_engine_uses_the_check_when_an_authserv_id_is_set():
    e = Engine(Config().merged({"engine": {"authserv_id": "mx.test"},
                                "auth": {"trusted_authserv_ids": ["relay.trusted.example"]}}))
    v = e.scan(MSG, Envelope())
    assert "AUTHRES_FORGED" in v.symbols and "AUTHRES_TRUSTED" in v.symbols
    # the default engine has no such check and makes no lookups
    assert "authres" not in {c.name for c in Engine().checks}


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_parse_never_raises(text):
    parse(text)


_value = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=30)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["spf", "dkim", "dmarc", "arc"]), st.sampled_from(["pass", "fail", "none", "temperror"]),
       st.lists(st.tuples(st.sampled_from(["smtp.mailfrom", "header.d", "header.from", "header.s"]), _value), max_size=4),
       st.one_of(st.none(), _value))
def test_what_we_write_we_read_back(method, result, props, comment):
    ar = parse("mx.test; " + resinfo(method, result, props, comment=comment))
    assert ar.authserv_id == "mx.test"
    (r,) = ar.results
    assert (r.method, r.result) == (method, result)
    # a domain or address written in Unicode is written with A-labels (ascii_value); the rest as given
    assert list(r.props) == [(k, ascii_value(v)) for k, v in props]


@pytest.mark.parametrize("value,written", [
    ("ana@b\u00fccher.example", "ana@xn--bcher-kva.example"), ("b\u00fccher.example", "xn--bcher-kva.example"),
    ("\u7528\u6237@\u4f8b\u5b50.\u5e7f\u544a", "xn--fsqu00a.xn--4rr70v"), ("ana@plain.example", "ana@plain.example"),
    ("\u00a0", "\u00a0"), ("ana@" + "\u00fc" * 70 + ".example", "ana@" + "\u00fc" * 70 + ".example"),
    # UTS 46 non-transitional, the name SPF and DMARC asked: IDNA 2003 wrote fass.example, another domain,
    # a final sigma as a plain one, and deleted a joiner it cannot take (victim.example)
    ("ana@fa\u00df.example", "ana@xn--fa-hia.example"), ("\u03c3\u03bf\u03c6\u03cc\u03c2.example", "xn--0xagbn4a.example"),
    ("ana@vict\u200dim.example", "ana@vict\u200dim.example"), ("\u65e5\u672c\u3002jp", "xn--wgv71a.jp"),
])
def test_ascii_value_gives_a_domain_its_a_labels(value, written):
    """IDNA only where the result is a host name: a label too long, or text IDNA maps to a blank, stays
    as it was (and a header of ours writes ``?`` for it)."""
    assert ascii_value(value) == written
