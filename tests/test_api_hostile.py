"""The public API as an operator's MTA hook meets it: threads, wrong arguments, hostile mail.

Each test but the guards marked as such is a defect found by calling ``Engine``, ``Envelope``
and ``Verdict`` the way an embedding hook does (a milter with a thread per connection, a policy
script that hands over what its MTA gave it): the argument a caller gets wrong is refused with an
error that names it, scans from threads neither leak nor fail, a hostile message never holds a
scan for minutes, and what a verdict gives to be written into a message (``headers()``,
``rewritten_subject()``, ``to_dict()``) is safe to write.
"""

from __future__ import annotations

import email.header
import gc
import html
import json
import os
import random
import re
import threading
import time

import pytest

from antispam import Check, Config, Engine, Envelope, Hit, SymbolDef, Verdict, fastscore
from antispam import message as message_module
from antispam._fastscore_py import HTML_BREAK_RE, HTML_TAG_RE, html_strip_tags
from antispam.builtin import GtubeCheck, MimeDefectsCheck
from antispam.engine import _load_factory
from antispam.message import Message, html_to_text
from antispam.reputation.dnsbl import dnsbl_check
from dnsserver import DNSServer

RAW = b"From: a@example.com\r\nTo: b@example.net\r\nSubject: hi\r\n\r\nhello\r\n"


@pytest.fixture(scope="module")
def dns():
    zone = {
        "example.com": [("TXT", "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 ip6:fe80::/10 -all")],
        "_dmarc.example.com": [("TXT", "v=DMARC1; p=reject")],
    }
    with DNSServer(zone) as s:
        yield s


def network_engine(dns, **overrides) -> Engine:
    """The built-in content checks and the authentication checks, against the loopback DNS server."""
    cfg = Config.load(overrides={"dns": {"nameservers": [dns.host], "port": dns.port, "timeout": 0.5, "attempts": 1},
                                 "engine": {"authserv_id": "mx.test"}, **overrides})
    checks = [GtubeCheck(), MimeDefectsCheck()]
    checks += [c for c in (_load_factory(f)(cfg, None) for f in ("antispam.auth.spf:factory", "antispam.auth.dkim:factory",
                                                                  "antispam.auth.dmarc:factory")) if c is not None]
    return Engine(cfg, checks)


# --------------------------------------------------------------------------- Envelope


def test_a_single_recipient_given_as_a_string_is_one_recipient():
    """``rcpt_tos="a@b"`` was read as an iterable: the recipients ``a``, ``@`` and ``b``."""
    assert Envelope(rcpt_tos="a@b.example").rcpt_tos == ("a@b.example",)
    assert Envelope(rcpt_tos=["a@b.example", "c@d.example"]).rcpt_tos == ("a@b.example", "c@d.example")
    assert Envelope(rcpt_tos=None).rcpt_tos == ()
    engine = Engine(checks=[GtubeCheck()])
    assert list(engine.scan_per_recipient(RAW, Envelope(rcpt_tos="a@b.example"))) == ["a@b.example"]


@pytest.mark.parametrize("field, value", [
    ("client_ip", 3232235777), ("helo", b"mx.example"), ("mail_from", b"a@example.com"), ("hostname", 1.5),
    ("user", ["u"]), ("queue_id", 7), ("rcpt_tos", b"a@b.example"), ("rcpt_tos", [b"a@b.example"]), ("rcpt_tos", [None]),
])
def test_an_envelope_field_of_the_wrong_type_is_refused_by_name(field, value):
    """A bytes HELO or an int IP used to pass, then fail inside each check that read it (a
    ``CHECK_ERROR`` per check, or a silently missing SPF result)."""
    with pytest.raises(TypeError, match=field):
        Envelope(**{field: value})


@pytest.mark.parametrize("given, address", [
    ("[2001:db8::1]", "2001:db8::1"), ("IPv6:2001:db8::1", "2001:db8::1"), ("[IPv6:2001:db8::1]", "2001:db8::1"),
    ("[192.0.2.1]", "192.0.2.1"), (" 192.0.2.1 ", "192.0.2.1"), ("192.0.2.1", "192.0.2.1"),
    ("fe80::1%eth0", "fe80::1%eth0"), ("not an address", "not an address"),
])
def test_the_forms_mtas_write_a_client_address_in_are_read_as_the_address(given, address):
    """SPF read ``[192.0.2.1]`` and ``IPv6:2001:db8::1`` (Sendmail's form) as no address at all ("none"),
    while the DNS lists took the first: one form for every check.  A zone is kept (see the next test)."""
    assert Envelope(client_ip=given).client_ip == address


def test_a_client_address_with_a_zone_is_checked_not_a_check_error(dns):
    """``fe80::1%eth0`` (a link-local client) made pyspf raise: ``CHECK_ERROR`` and no SPF result.  SPF
    now reads the address without its zone (the DNS lists still never ask about a scoped address)."""
    engine = network_engine(dns)
    for ip in ("fe80::1%eth0", "[2001:db8::1]", "IPv6:2001:db8::1"):
        v = engine.scan(RAW, Envelope(client_ip=ip, helo="mx.example.com", mail_from="a@example.com"))
        assert not v.has("CHECK_ERROR"), v.symbols["CHECK_ERROR"].options
        assert v.has("R_SPF_ALLOW"), (ip, sorted(v.symbols))


# --------------------------------------------------------------------------- Engine arguments


@pytest.mark.parametrize("config", [{"actions": {"reject": 10.0}}, {}, "site.toml"])
def test_an_engine_needs_a_config_object(config):
    """``Engine({...})`` failed with ``'dict' object has no attribute 'engine'``; ``Engine({})`` silently
    used the defaults."""
    with pytest.raises(TypeError, match="Config"):
        Engine(config)


@pytest.mark.parametrize("envelope", [{"client_ip": "192.0.2.1"}, "192.0.2.1", ("192.0.2.1",)])
def test_a_scan_needs_an_envelope_object(envelope):
    """A dict or a string in place of an Envelope was silently ignored by a content-only engine
    (the envelope's facts lost) and a ``CHECK_ERROR`` in every network check."""
    engine = Engine(checks=[GtubeCheck()])
    with pytest.raises(TypeError, match="Envelope"):
        engine.scan(RAW, envelope)
    with pytest.raises(TypeError, match="Envelope"):
        engine.learn(RAW, True, envelope)


@pytest.mark.parametrize("label", ["ham", "spam", b"ham", None])
def test_learn_needs_a_bool_label(label):
    """``learn(raw, "ham")`` learned the message as spam: any non-empty string is true."""
    engine = Engine()
    with pytest.raises(TypeError, match="spam"):
        engine.learn(RAW, label)
    assert engine.learn(RAW, False) == {"classifier": True}


def test_scan_per_recipient_without_an_envelope():
    v = Engine(checks=[GtubeCheck()]).scan_per_recipient(RAW)
    assert list(v) == [""] and v[""].action == "no action"


@pytest.mark.parametrize("item", [None, 42, (RAW,), (RAW, "192.0.2.1"), (RAW, None, None)])
def test_scan_many_refuses_an_item_it_cannot_read_by_kind(item):
    """``None`` failed deep in pathlib, a one-element tuple with ``IndexError``."""
    with pytest.raises(TypeError, match="scan_many"):
        list(Engine(checks=[GtubeCheck()]).scan_many([RAW, item]))


def test_scan_many_takes_bytes_paths_and_pairs_with_unreadable_paths_as_verdicts(tmp_path):
    """Guard: what scan_many takes, an unreadable path being the input's error (``INPUT_ERROR``), not the caller's."""
    path = tmp_path / "m.eml"
    path.write_bytes(RAW)
    engine = Engine(checks=[GtubeCheck()])
    got = list(engine.scan_many([RAW, bytearray(RAW), str(path), path, (RAW, Envelope(client_ip="192.0.2.1")),
                                 (RAW, None), tmp_path / "missing.eml", tmp_path]))
    assert [v.has("INPUT_ERROR") for v in got] == [False] * 6 + [True, True]


# --------------------------------------------------------------------------- threads


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open file descriptors in /proc")
def test_a_thread_that_scanned_leaves_no_event_loop_open(dns):
    """A milter with a thread per connection: each thread's private event loop (an epoll descriptor and a
    socket pair) stayed open for the engine's life, 3 descriptors per connection, until ``EMFILE``."""
    engine = network_engine(dns)
    env = Envelope(client_ip="192.0.2.1", helo="mx.example.com", mail_from="a@example.com")
    engine.scan(RAW, env)
    before = _open_fds()
    actions = []
    for _ in range(40):
        t = threading.Thread(target=lambda: actions.append(engine.scan(RAW, env).action))
        t.start()
        t.join()
    gc.collect()
    assert len(actions) == 40
    assert _open_fds() - before < 10
    engine.close()


def test_scans_from_threads_share_the_dns_lists_health_check():
    """The DNS lists' health check ran under one ``asyncio.Lock`` for every scan, but each thread's
    ``Engine.scan`` runs its own event loop: a scan that had to wait for another thread's check failed with
    "is bound to a different event loop", a ``CHECK_ERROR`` instead of the lists' answers."""
    zone = {"2.0.0.127.zen.spamhaus.org": [("A", "127.0.0.2")], "4.3.2.1.zen.spamhaus.org": [("A", "127.0.0.4")]}
    with DNSServer(zone, delay=0.2) as slow:
        cfg = Config.load(overrides={"dns": {"nameservers": [slow.host], "port": slow.port, "timeout": 2.0, "attempts": 1},
                                     "dnsbl": {"enable": ["spamhaus_zen"]}})
        engine = Engine(cfg, [dnsbl_check(cfg, None)])
        start = threading.Barrier(6)
        verdicts = []

        def scan():
            start.wait()
            verdicts.append(engine.scan(RAW, Envelope(client_ip="1.2.3.4")))

        threads = [threading.Thread(target=scan) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        engine.close()
    assert len(verdicts) == 6
    assert [sorted(v.symbols) for v in verdicts] == [["RBL_SPAMHAUS_XBL"]] * 6, [v.symbols for v in verdicts]


@pytest.mark.skipif("fork" not in __import__("multiprocessing").get_all_start_methods(), reason="forked workers")
def test_two_batches_of_one_engine_at_once_keep_their_workers():
    """``scan_many`` shared one key per engine with its forked workers: when one batch ended, a worker that
    died in the other could not be replaced, and every message left got a ``CHECK_ERROR`` verdict."""
    engine = Engine()
    first = engine.content_checks[0]
    run = first.run

    def crash_on_marker(msg, ctx):
        if b"KILL-THE-WORKER" in msg.raw:
            os._exit(1)
        return run(msg, ctx)

    first.run = crash_on_marker  # the workers are fork()ed copies of this engine: they crash there too
    msgs = [b"Subject: m%d\n\nbody %d\n" % (i, i) for i in range(60)]
    short = engine.scan_many(msgs[:6], workers=2)
    long = engine.scan_many(msgs[:20] + [b"Subject: x\n\nKILL-THE-WORKER\n"] + msgs[20:], workers=2, chunksize=4)
    next(short), next(long)  # both pools running
    list(short)  # the first batch ends
    got = list(long)
    assert len(got) == 60  # one was taken by next() above
    assert [i for i, v in enumerate(got) if v.has("CHECK_ERROR")] == [19]


def test_concurrent_scans_of_one_engine_give_the_sequential_verdicts(corpus):
    """Guard: eight threads scanning with one engine give each message its sequential verdict (no
    divergence was found: the kernels keep no buffer between calls, and the checks no per-scan state)."""
    engine = Engine()
    msgs = [m.data for m in corpus[::30]]

    def key(v):
        return v.score, v.action, sorted((n, s.score, s.options) for n, s in v.symbols.items())

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda m: key(engine.scan(m)), msgs))
    assert together == [key(engine.scan(m)) for m in msgs]


# --------------------------------------------------------------------------- what a verdict writes

_SAFE_HEADER = re.compile(r"[\t\x20-\x7e]*(?:\n\t[\t\x20-\x7e]*)*")


def test_authentication_results_carry_no_raw_bytes_of_the_message(dns):
    """The tag values of a DKIM-Signature went into Authentication-Results as read: control characters
    (NUL ends a milter packet's string early), U+FFFD for 8-bit bytes, written out as raw UTF-8."""
    engine = network_engine(dns)
    raw = ("From: a@exa\x01mple.com\r\nSubject: x\r\n"
           "DKIM-Signature: v=1; a=rsa-sha256; d=ex\xe4mple.com\x00; s=s\x0bel; h=from; bh=x; b=y\r\n\r\nbody\r\n").encode("latin-1")
    env = Envelope(client_ip="192.0.2.1", helo="mx.exämple.com", mail_from="ü\x00@example.com")
    v = engine.scan(raw, env)
    ar = dict(v.headers())["Authentication-Results"]
    assert "dkim=" in ar and "dmarc=" in ar and "spf=" in ar
    assert _SAFE_HEADER.fullmatch(ar), ascii(ar)
    milter = v.to_dict()["milter"]["add_headers"]["Authentication-Results"]["value"]
    assert milter == ar
    for name, value in v.headers():
        assert _SAFE_HEADER.fullmatch(value), (name, ascii(value))


class _Always(Check):
    name = "always"
    symbols = (SymbolDef("ALWAYS", 6.0, "always"),)

    def run(self, msg, ctx):
        return [Hit("ALWAYS", 1.0, (msg.subject,))]


@pytest.mark.parametrize("subject, shown", [
    (b"=?utf-8?q?hi=0D=0AX-Evil:_1?=", "***SPAM*** hi X-Evil: 1"),
    (b"=?utf-8?q?a=00b=09c=C2=99d?=", "***SPAM*** a b c d"),
    (b"=?utf-8?b?w6l0w6k=?= and more", "***SPAM*** \xe9t\xe9 and more"),
    (b"Sitting Bull =?iso-8859-1?q?=FCber?= alles", "***SPAM*** Sitting Bull \xfcber alles"),
    ("日本語の件名（サブジェクト）".encode(), "***SPAM*** 日本語の件名（サブジェクト）"),
    (b"plain", "***SPAM*** plain"),
])
def test_the_rewritten_subject_is_a_header_value_safe_to_write(subject, shown):
    """``rewritten_subject()`` (and ``to_dict()["subject"]``) was the decoded Subject with the prefix: an
    encoded word that decodes to CR LF started a header of the sender's choosing in any hook that wrote it,
    and 8-bit text went out raw.  rspamd's ``/checkv2`` gives this field RFC 2047 encoded; so do we."""
    cfg = Config.load(overrides={"actions": {"rewrite subject": 5.0}})
    v = Engine(cfg, checks=[_Always()]).scan(b"From: a@example.com\r\nSubject: " + subject + b"\r\n\r\nbody\r\n")
    assert v.action == "rewrite subject"
    new = v.rewritten_subject()
    assert new.isascii() and re.fullmatch(r"[\x20-\x7e]*", new), new
    assert str(email.header.make_header(email.header.decode_header(new))) == shown
    assert v.to_dict()["subject"] == new
    assert all(len(word) <= 75 for word in new.split())
    json.dumps(v.to_dict(), allow_nan=False)


class _Weighted(Check):
    name = "weighted"
    symbols = (SymbolDef("WEIGHTED", 2.0, "graded"), SymbolDef("PLAIN", 1.0, "plain"))

    def __init__(self, weight, options=()):
        self.weight, self.options = weight, options

    def run(self, msg, ctx):
        return [Hit("WEIGHTED", self.weight, self.options), Hit("PLAIN", 1.0)]


@pytest.mark.parametrize("weight", [float("nan"), float("inf"), -float("inf"), 1e308])
def test_a_check_weight_that_is_not_a_number_is_a_check_error_not_the_verdict(weight):
    """A custom check's NaN weight made the score NaN: "no action" whatever the other symbols said (every
    comparison with NaN is false), ``to_dict()`` refused by ``json.dumps(allow_nan=False)``, ``headers()``
    raising ValueError; an infinite one made it "reject" and broke both the same way."""
    v = Engine(checks=[_Weighted(weight)]).scan(RAW)
    assert v.score == 1.0 and v.action == "no action"
    assert v.symbols["WEIGHTED"].score == 0.0
    assert v.has("CHECK_ERROR") and "WEIGHTED" in v.symbols["CHECK_ERROR"].options[0]
    json.dumps(v.to_dict(), allow_nan=False)
    assert dict(v.headers())["X-Spam-Score"] == "1.0"


def test_options_that_are_not_text_still_serialise():
    v = Engine(checks=[_Weighted(1.0, (b"raw bytes", 3))]).scan(RAW)
    assert v.to_dict()["symbols"]["WEIGHTED"]["options"] == ["b'raw bytes'", "3"]
    json.dumps(v.to_dict(), allow_nan=False)


def test_a_verdict_built_by_hand_rewrites_its_subject_safely():
    v = Verdict(6.0, 5.0, "rewrite subject", {}, {}, subject="a\r\nBcc: victim@example.com", subject_prefix="[SPAM] ")
    assert v.rewritten_subject() == "[SPAM] a Bcc: victim@example.com"


# --------------------------------------------------------------------------- hostile HTML

HOSTILE_HTML = {
    "anchors without a closing >": "<a " * 12_000,
    "anchor text of < without >": "<a href=x>" + "<" * 80_000,
    "images without a link": "<img " * 12_000,
    "image maps without a link": "<area src " * 6_000,
    "images, then one >": "<img alt=x " * 6_000 + ">",
    "styles without a closing >": "<style " * 30_000,
    "anchors with href=": "<a href=" * 12_000,
    "block tags, Unicode names": "<é>" + "<p " * 20_000,
    "tags, Unicode names": "<é>" + "<" * 80_000,
}


@pytest.mark.parametrize("name", sorted(HOSTILE_HTML))
def test_hostile_html_is_read_in_linear_time(name):
    """Python's ``re`` tried every ``<img``/``<a``/``<style`` and read on to the end looking for the ``>`` or
    the link: the square of the length, minutes for a part of 100 KB (a scan has no deadline there)."""
    markup = HOSTILE_HTML[name]
    raw = b"Subject: x\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + markup.encode()
    t = time.perf_counter()
    msg = Message(raw)
    msg.html_text, msg.urls
    assert time.perf_counter() - t < 1.0


_ORIGINAL = {
    "drop": message_module._HTML_DROP_RE, "anchor": message_module._HTML_ANCHOR_RE,
    "href": message_module._HTML_HREF_RE, "src": message_module._HTML_SRC_RE,
}


def _reference_html_to_text(markup: str) -> tuple[str, list[tuple[str, str]]]:
    """``html_to_text`` as it was written, with ``re`` alone: the reading the linear version must keep."""
    markup = _ORIGINAL["drop"].sub("", markup)
    links = []
    for m in _ORIGINAL["anchor"].finditer(markup):
        h = _ORIGINAL["href"].search(m.group(1))
        if h:
            href = h.group(1) if h.group(1) is not None else (h.group(2) if h.group(2) is not None else h.group(3))
            anchor = HTML_TAG_RE.sub("", m.group(2))
            if "&" in anchor:
                anchor = html.unescape(anchor)
            links.append((html.unescape(href.strip()) if "&" in href else href.strip(),
                          fastscore.impl.collapse_blanks(anchor).strip()))
    for m in _ORIGINAL["src"].finditer(markup):
        src = m.group(1) if m.group(1) is not None else (m.group(2) if m.group(2) is not None else m.group(3))
        links.append((src.strip(), ""))
    text = HTML_TAG_RE.sub("", HTML_BREAK_RE.sub("\n", markup))
    if "&" in text:
        text = html.unescape(text)
    text = re.sub(r"\n\s*\n+", "\n", fastscore.impl.collapse_blanks(text))
    return text.strip(), links


_PIECES = ["<", ">", "<a ", "<A HREF=", "href=", "'", '"', "x", " ", "\n", "</a>", "</A >", "<img ", "<IMG SRC=",
           "src=", "<form action=", "<area ", "<iframe ", "<!--", "-->", "<script>", "</script>", "<style ", "</style>",
           "<title>", "</title >", "<head", "<p>", "<br/>", "<DIV class=x>", "&amp;", "é", "<é", "<li", "<h1>", "<table"]


def test_the_linear_html_reading_is_the_regular_expressions_reading():
    """Guard: the linear searches find what the regular expressions alone find."""
    rnd = random.Random(1)
    for _ in range(3000):
        markup = "".join(rnd.choice(_PIECES) for _ in range(rnd.randint(0, 40)))
        assert html_strip_tags(markup) == HTML_TAG_RE.sub("", HTML_BREAK_RE.sub("\n", markup)), markup
        assert fastscore.impl.html_strip_tags(markup) == html_strip_tags(markup), markup
        assert html_to_text(markup) == _reference_html_to_text(markup), markup
