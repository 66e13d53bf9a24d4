"""Shared in-flight questions keep each caller's own deadline; a failing nameserver hands over to the next.

Both against real loopback servers: the suite's :class:`DNSServer`, plus (for
failover) a bare UDP server that answers every question with one rcode, bound
to the same port on another loopback address (the Resolver has one port for
all its nameservers).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import dns.message
import dns.rcode
import pytest

from antispam import Config, Engine, Envelope
from antispam.dns import DEADLINE, Resolver
from dnsserver import DNSServer

ZONE = {"4.3.2.1.bl.test": [("A", "127.0.0.2")], "2.0.0.127.bl.test": [("A", "127.0.0.2")],
        "a.test": [("A", "192.0.2.1")]}
BL = {"zone": "bl.test", "inputs": ["client_ip"], "default_symbol": "TEST_BL"}


# ----------------------------------------------------------------- bug 1: one caller's deadline is not everyone's

def test_a_waiter_keeps_its_own_deadline():
    """A (0.3 s) gives up at its deadline; B (5 s), sharing the question, gets the answer at ~0.6 s."""
    with DNSServer(ZONE, delay=0.6) as srv:
        r = Resolver(["127.0.0.1"], port=srv.port, timeout=2.0, attempts=1)

        async def main():
            now = time.monotonic()
            a = asyncio.create_task(r.resolve("4.3.2.1.bl.test", "A", deadline=now + 0.3))
            await asyncio.sleep(0.05)
            b = asyncio.create_task(r.resolve("4.3.2.1.bl.test", "A", deadline=now + 5.0))
            ra = await a
            ta = time.monotonic() - now
            return ra, ta, await b, time.monotonic() - now

        a, ta, b, tb = asyncio.run(main())
        assert a.status == "timeout" and a.detail == DEADLINE and ta < 0.5
        assert b.status == "ok" and b.values() == ["127.0.0.2"], b
        assert 0.5 < tb < 1.5
        assert srv.asked("4.3.2.1.bl.test") == 1          # still one query for both
        assert r.cached("4.3.2.1.bl.test", "A").status == "ok"


def test_a_cancelled_owner_does_not_cancel_the_shared_query():
    with DNSServer(ZONE, delay=0.4) as srv:
        r = Resolver(["127.0.0.1"], port=srv.port, timeout=2.0, attempts=1)

        async def main():
            a = asyncio.create_task(r.resolve("a.test", "A"))
            await asyncio.sleep(0.05)
            b = asyncio.create_task(r.resolve("a.test", "A", deadline=time.monotonic() + 3))
            await asyncio.sleep(0.05)
            a.cancel()
            with pytest.raises(asyncio.CancelledError):
                await a
            return await b

        b = asyncio.run(main())
        assert b.status == "ok" and srv.asked("a.test") == 1


def test_an_abandoned_query_is_not_cached_and_leaves_nothing_pending():
    """When every caller gave up, the query is dropped: no answer cached, no task left in the loop."""
    with DNSServer(ZONE, delay=0.5) as srv:
        r = Resolver(["127.0.0.1"], port=srv.port, timeout=2.0, attempts=1)

        async def main():
            got = await r.resolve("a.test", "A", deadline=time.monotonic() + 0.1)
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            return got, others

        got, others = asyncio.run(main())
        assert got.status == "timeout" and got.detail == DEADLINE
        assert others == [] and r.cached("a.test", "A") is None


def test_a_second_scan_is_not_cut_by_the_first_scans_deadline():
    """Scan A (deadline 1.0 s) and scan B (started 0.5 s later) share the DNSBL question answered at 1.2 s."""
    with DNSServer(ZONE, delay=1.2) as srv:
        cfg = Config.load(overrides={
            "dns": {"nameservers": ["127.0.0.1"], "port": srv.port, "timeout": 3.0, "attempts": 1},
            "dnsbl": {"lists": {"bl": BL}, "health_interval": 0}, "engine": {"scan_deadline": 1.0}})
        e = Engine(cfg, checks=[c for c in Engine(cfg).checks if c.name == "dnsbl"])
        body = b"From: a@b.example\nSubject: x\n\nhi\n"

        async def main():
            a = asyncio.create_task(e.ascan(body, Envelope(client_ip="1.2.3.4")))
            await asyncio.sleep(0.5)
            b = asyncio.create_task(e.ascan(body, Envelope(client_ip="1.2.3.4")))
            return await a, await b

        va, vb = asyncio.run(main())
        assert not va.has("TEST_BL")
        assert vb.has("TEST_BL") and not vb.has("CHECK_TIMEOUT"), sorted(vb.symbols)
        assert srv.asked("4.3.2.1.bl.test") == 1
        e.close()


# ----------------------------------------------------------------- bug 2: SERVFAIL / REFUSED fail over


class RcodeServer:
    """Answers every UDP question with ``rcode`` (a broken or refusing recursive resolver)."""

    def __init__(self, host: str, port: int, rcode: int):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.sock.settimeout(0.1)
        self.rcode = rcode
        self.asked = 0
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                data, addr = self.sock.recvfrom(4096)
            except OSError:
                continue
            self.asked += 1
            response = dns.message.make_response(dns.message.from_wire(data))
            response.set_rcode(self.rcode)
            self.sock.sendto(response.to_wire(), addr)

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def good():
    with DNSServer(ZONE) as s:
        yield s


@pytest.fixture(params=[dns.rcode.SERVFAIL, dns.rcode.REFUSED], ids=["SERVFAIL", "REFUSED"])
def bad(request, good):
    s = RcodeServer("127.0.0.2", good.port, request.param)
    yield s
    s.close()


def test_failing_first_nameserver_hands_over_to_the_next(good, bad):
    r = Resolver(["127.0.0.2", "127.0.0.1"], port=good.port, timeout=0.5, attempts=1)
    a = asyncio.run(r.resolve("a.test", "A"))
    assert a.status == "ok" and a.values() == ["192.0.2.1"]
    assert bad.asked == 1 and good.asked("a.test") == 1
    assert r.cached("a.test", "A").status == "ok"
    # the blocking path (pyspf / dkimpy hooks) fails over the same way
    s = r.resolve_sync("4.3.2.1.bl.test", "A", 2.0)
    assert s.status == "ok" and bad.asked == 2


def test_every_nameserver_failing_is_servfail(good, bad):
    other = RcodeServer("127.0.0.3", good.port, dns.rcode.SERVFAIL)
    try:
        r = Resolver(["127.0.0.2", "127.0.0.3"], port=good.port, timeout=0.5, attempts=2, failure_ttl=30)
        a = asyncio.run(r.resolve("a.test", "A"))
        assert a.status == "servfail" and a.temporary
        # each failing server is asked once (not again on the second attempt), and the failure is remembered
        assert bad.asked == 1 and other.asked == 1
        assert r.cached("a.test", "A").status == "servfail"
        assert r.resolve_sync("b.test", "A", 2.0).status == "servfail"
        assert bad.asked == 2 and other.asked == 2
    finally:
        other.close()


def test_both_paths_fail_over_alike(good, bad):
    """The event loop and the blocking path share one failover: a server that answered with an error
    rcode is not asked on the next attempt, one that timed out is, and the answer (servfail, since
    a server answered with an error) says what went wrong last."""
    good.add("hang.test", "TIMEOUT")
    r = Resolver(["127.0.0.2", "127.0.0.1"], port=good.port, timeout=0.2, attempts=2, failure_ttl=0)
    a = asyncio.run(r.resolve("hang.test", "A"))
    assert (a.status, a.detail) == ("servfail", "timeout from 127.0.0.1")
    assert (bad.asked, good.asked("hang.test"), r.sent) == (1, 2, 3)
    s = r.resolve_sync("hang.test", "A")  # failure_ttl=0: not cached, asked again
    assert (s.status, s.detail) == (a.status, a.detail)
    assert (bad.asked, good.asked("hang.test"), r.sent) == (2, 4, 6)


def test_dnsbl_is_listed_through_the_second_nameserver(good, bad):
    cfg = Config.load(overrides={
        "dns": {"nameservers": ["127.0.0.2", "127.0.0.1"], "port": good.port, "timeout": 0.5, "attempts": 1},
        "dnsbl": {"lists": {"bl": BL}, "health_interval": 0}})
    e = Engine(cfg, checks=[c for c in Engine(cfg).checks if c.name == "dnsbl"])
    v = e.scan(b"Subject: x\n\nhi\n", Envelope(client_ip="1.2.3.4"))
    assert v.has("TEST_BL"), dict(v.symbols)
    e.close()
