"""The resolver against a real DNS server on loopback."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

from antispam.check import Question
from antispam.config import Config
from antispam.dns import Resolver, resolver_from_config
from dnsserver import DNSServer

ZONE = {
    "a.test": [("A", "192.0.2.1"), ("A", "192.0.2.2"), ("AAAA", "2001:db8::1")],
    "txt.test": [("TXT", ["v=spf1 ", "-all"])],
    "alias.test": [("CNAME", "a.test")],
    "deep.sub.test": [("A", "192.0.2.9")],
    "slow.test": [("TIMEOUT", None)],
    "broken.test": [("SERVFAIL", None)],
    "big.test": [("TRUNCATE", None), ("TXT", "x" * 300)],
    "key.test": [("TXT", "k" * 800)],  # a 4096-bit DKIM key is about this size
    "huge.test": [("TXT", "h" * 1500)],
    # faß.test and σοφός.test as published (UTS 46 non-transitional A-labels), and the other
    # registrants' names IDNA 2003 folded them into (fass.test, σοφόσ.test); victim.test is what
    # IDNA 2003 made of vict<zero-width joiner>im.test
    "xn--fa-hia.test": [("A", "192.0.2.77")],
    "fass.test": [("A", "192.0.2.66")],
    "xn--0xagbn4a.test": [("A", "192.0.2.78")],
    "xn--0xahbl4a.test": [("A", "192.0.2.67")],
    "victim.test": [("A", "192.0.2.88")],
}


@pytest.fixture(scope="module")
def server():
    with DNSServer(ZONE) as s:
        yield s


def make(server, **kw) -> Resolver:
    kw.setdefault("timeout", 0.3)
    kw.setdefault("attempts", 1)
    return Resolver([server.host], port=server.port, **kw)


def run(coro):
    return asyncio.run(coro)


def test_answers_addresses_and_texts(server):
    r = make(server)
    a = run(r.resolve("a.test", "A"))
    assert a.status == "ok" and sorted(a.values()) == ["192.0.2.1", "192.0.2.2"]
    assert run(r.resolve("a.test", "AAAA")).values() == ["2001:db8::1"]
    # character-strings of one TXT record are joined (RFC 7208 3.3)
    assert run(r.resolve("txt.test", "TXT")).texts() == [b"v=spf1 -all"]


def test_negative_answers_are_distinguished(server):
    r = make(server)
    assert run(r.resolve("nothing.test", "A")).status == "nxdomain"
    assert run(r.resolve("txt.test", "A")).status == "nodata"
    # an empty non-terminal exists without data
    assert run(r.resolve("sub.test", "A")).status == "nodata"
    # a label over 63 octets cannot be asked at all
    assert run(r.resolve("x" * 64 + ".test", "A")).status == "invalid"


def test_cname_chain_is_followed(server):
    a = run(make(server).resolve("alias.test", "A"))
    assert a.status == "ok" and a.cnames == (("alias.test", "a.test"),)
    assert sorted(a.values()) == ["192.0.2.1", "192.0.2.2"]


def test_positive_and_negative_answers_are_cached(server):
    r = make(server)
    before = server.asked("deep.sub.test")
    run(r.resolve("deep.sub.test", "A"))
    run(r.resolve("DEEP.sub.test.", "A"))
    assert server.asked("deep.sub.test") == before + 1
    n = server.asked("missing.test")
    run(r.resolve("missing.test", "TXT"))
    assert r.cached("missing.test", "TXT").status == "nxdomain"
    run(r.resolve("missing.test", "TXT"))
    assert server.asked("missing.test") == n + 1


def test_cache_expires_with_the_ttl(server):
    r = make(server, max_ttl=0.2)
    run(r.resolve("a.test", "A"))
    assert r.cached("a.test", "A") is not None
    time.sleep(0.25)
    assert r.cached("a.test", "A") is None


def test_timeout_and_servfail_are_temporary_never_negative(server):
    r = make(server)
    t0 = time.monotonic()
    slow = run(r.resolve("slow.test", "TXT"))
    assert slow.status == "timeout" and slow.temporary
    assert time.monotonic() - t0 < 2
    bad = run(r.resolve("broken.test", "TXT"))
    assert bad.status == "servfail" and bad.temporary and not bad.exists


def test_truncated_answer_is_retried_over_tcp(server):
    r = make(server)
    a = run(r.resolve("big.test", "TXT"))
    assert a.texts() == [b"x" * 300]
    assert server.asked("big.test", "TXT", "tcp") >= 1


def test_prefetch_asks_everything_at_once(server):
    """Five questions that all time out cost one timeout, not five."""
    r = make(server, timeout=0.4)
    qs = [Question(f"q{i}.slow.test", "A") for i in range(5)]
    server.add("q0.slow.test", "TIMEOUT")
    for i in range(1, 5):
        server.add(f"q{i}.slow.test", "TIMEOUT")
    t0 = time.monotonic()
    answers = run(r.prefetch(qs + [Question("a.test", "A")]))
    elapsed = time.monotonic() - t0
    assert [a.status for a in answers] == ["timeout"] * 5 + ["ok"]
    assert elapsed < 1.5, elapsed
    # the answers are now readable without awaiting
    assert r.cached("a.test", "A").status == "ok"


def test_deadline_stops_attempts(server):
    r = make(server, timeout=5, attempts=3)
    t0 = time.monotonic()
    a = run(r.resolve("slow.test", "A", deadline=time.monotonic() + 0.3))
    assert a.status == "timeout" and time.monotonic() - t0 < 1.5


def test_concurrent_identical_questions_share_one_query(server):
    r = make(server)
    server.add("shared.test", "A", "192.0.2.77")
    before = server.asked("shared.test")

    async def many():
        return await asyncio.gather(*(r.resolve("shared.test", "A") for _ in range(10)))

    answers = run(many())
    assert {a.values()[0] for a in answers} == {"192.0.2.77"}
    assert server.asked("shared.test") == before + 1


def test_sync_read_through_shares_the_cache(server):
    r = make(server)
    before = server.asked("a.test", "AAAA")
    got: list = []
    t = threading.Thread(target=lambda: got.append(r.resolve_sync("a.test", "AAAA")))
    t.start()
    t.join()
    assert got[0].values() == ["2001:db8::1"]
    run(r.resolve("a.test", "AAAA"))  # served from the cache the thread filled
    assert server.asked("a.test", "AAAA") == before + 1
    assert r.resolve_sync("slow.test", "MX").status == "timeout"


def test_one_resolver_serves_many_event_loops(server):
    r = make(server)
    for _ in range(3):
        r.clear_cache()
        assert run(r.resolve("a.test", "A")).status == "ok"


def test_ipv6_loopback_server():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    with DNSServer({"six.test": [("AAAA", "2001:db8::6")]}, host="::1") as s6:
        r = Resolver(["::1"], port=s6.port, timeout=0.5, attempts=1)
        assert run(r.resolve("six.test", "AAAA")).values() == ["2001:db8::6"]


def test_resolver_from_config_is_off_without_nameservers(server):
    assert resolver_from_config(Config()) is None
    cfg = Config().merged({"dns": {"nameservers": [server.host], "port": server.port, "timeout": 0.5}})
    r = resolver_from_config(cfg)
    assert r is not None and run(r.resolve("a.test", "A")).status == "ok"


def test_edns_keeps_key_sized_answers_on_udp_and_larger_ones_go_tcp(server):
    r = make(server)
    assert run(r.resolve("key.test", "TXT")).texts() == [b"k" * 800]
    assert server.asked("key.test", "TXT", "tcp") == 0
    assert run(r.resolve("huge.test", "TXT")).texts() == [b"h" * 1500]
    assert server.asked("huge.test", "TXT", "tcp") == 1


def test_a_callers_deadline_is_not_cached_as_a_server_failure(server):
    r = make(server, timeout=5, attempts=1)
    a = run(r.resolve("slow.test", "AAAA", deadline=time.monotonic() + 0.2))
    assert a.status == "timeout" and r.cached("slow.test", "AAAA") is None
    # a genuine timeout (the whole per-attempt timeout) is remembered for failure_ttl
    r = make(server, timeout=0.2, attempts=1, failure_ttl=30)
    assert run(r.resolve("slow.test", "AAAA")).status == "timeout"
    assert r.cached("slow.test", "AAAA").status == "timeout"


def test_an_internationalised_name_is_asked_as_its_uts46_a_labels(server):
    """The resolver asked Python's IDNA 2003 A-labels: ``faß.test`` as ``fass.test`` and ``σοφός.test``
    with a final ``σ``, names of other registrants, and ``vict<ZWJ>im.test`` as ``victim.test``.  It
    asks :func:`antispam.domains.to_ascii`'s (UTS 46 non-transitional, as browsers and registries);
    a name UTS 46 refuses goes out as its UTF-8 octets, which name no registered domain."""
    r = make(server)
    assert run(r.resolve("fa\u00df.test", "A")).values() == ["192.0.2.77"]
    assert run(r.resolve("\u03c3\u03bf\u03c6\u03cc\u03c2.test", "A")).values() == ["192.0.2.78"]
    assert run(r.resolve("FA\u00df\uff0etest", "A")).values() == ["192.0.2.77"]  # full-width full stop
    assert run(r.resolve("vict\u200dim.test", "A")).values() == []
    assert server.asked("xn--fa-hia.test", "A") == 2 and server.asked("xn--0xagbn4a.test", "A") == 1
    assert not any(server.asked(n) for n in ("fass.test", "xn--0xahbl4a.test", "victim.test"))
