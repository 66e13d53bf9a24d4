"""Hostile and concurrent inputs to the reputation layer (regressions of confirmed bugs).

DNS lists run against the real loopback DNS server; history runs on every store backend
(memory, SQLite, and a private redis-server).
"""

from __future__ import annotations

import hashlib
import ipaddress
import threading
from typing import Any

import pytest

from antispam import Config, Engine, Envelope
from antispam.message import Message
from antispam.reputation.history import HistoryCheck
from antispam.store import open_store

from .dnsserver import DNSServer


def rev(ip: str) -> str:
    """The RFC 5782 section 2.1/2.4 reversed form, computed independently of the code under test."""
    return ".".join(reversed(ipaddress.ip_address(ip.split("%")[0]).packed.hex() if ":" in ip else ip.split(".")))


FE80 = rev("fe80::1")
GLOBAL6 = rev("2a00:1450::1")
PRIVATE_CLIENTS = ["192.168.1.5", "10.9.8.7", "100.64.0.1", "169.254.1.1"]

ZONE: dict[str, list[tuple[str, Any]]] = {
    # IP list: test point, a listed public client, and every non-public client listed too, so
    # that asking about one would show up as a listing.
    "2.0.0.127.bl.test": [("A", "127.0.0.2")],
    "4.3.2.1.bl.test": [("A", "127.0.0.2")],
    **{f"{rev(ip)}.bl.test": [("A", "127.0.0.2")] for ip in PRIVATE_CLIENTS},
    f"{FE80}.bl.test": [("A", "127.0.0.2")],
    f"{GLOBAL6}.bl.test": [("A", "127.0.0.2")],
    # URI list: test point, a listed domain, a listed public IP literal, and the RFC 5782
    # section 5 IP test point that a loopback URL literal would hit.
    "test.uri.test": [("A", "127.0.0.2")],
    "listed.example.uri.test": [("A", "127.0.0.2")],
    "4.4.4.44.uri.test": [("A", "127.0.0.2")],
    "2.0.0.127.uri.test": [("A", "127.0.0.2")],
    "1.0.0.10.uri.test": [("A", "127.0.0.2")],
    f"{FE80}.uri.test": [("A", "127.0.0.2")],
    f"{GLOBAL6}.uri.test": [("A", "127.0.0.2")],
    # Spamhaus DBL as its operator documents its return codes: 127.0.1.255 answers any IP
    # query ("IP queries prohibited").
    "test.dbl.spamhaus.org": [("A", "127.0.1.2")],
    "dbltest.com.dbl.spamhaus.org": [("A", "127.0.1.2")],
    "4.4.4.44.dbl.spamhaus.org": [("A", "127.0.1.255")],
}
BL = {"zone": "bl.test", "inputs": ["client_ip", "relays"], "default_symbol": "TEST_BL"}
URI = {"zone": "uri.test", "kind": "uri", "inputs": ["urls"], "default_symbol": "TEST_URI"}


@pytest.fixture(scope="module")
def dns():
    with DNSServer(ZONE) as s:
        yield s


def engine(dns: DNSServer, lists: dict[str, Any] | None = None, enable: tuple[str, ...] = ()) -> Engine:
    cfg = Config.load(overrides={
        "dns": {"nameservers": ["127.0.0.1"], "port": dns.port, "timeout": 0.5, "attempts": 1},
        "dnsbl": {"lists": lists or {}, "enable": list(enable)},
        "engine": {"scan_deadline": 2.0}})
    e = Engine(cfg, checks=[c for c in Engine(cfg).checks if c.name == "dnsbl"])
    e.resolver.clear_cache()  # every test sees its own questions at the server, not an earlier test's answers
    return e


def text(body: str) -> bytes:
    return b"From: a@b.example\nSubject: x\n\n" + body.encode() + b"\n"


def html(href: str) -> bytes:
    return b'From: a@b.example\nContent-Type: text/html\n\n<a href="' + href.encode() + b'">router</a>\n'


def asked_under(dns: DNSServer, before: int, zone_suffix: str) -> list[str]:
    """Listing questions (not RFC 5782 health test points) sent to one zone since ``before``."""
    health = ("2.0.0.127.", "1.0.0.127.", "test.", "invalid.")
    names = [n.rstrip(".").lower() for n, _, _ in dns.queries[before:]]
    return [n for n in names if n.endswith("." + zone_suffix) and not n.startswith(health)]


# ----------------------------------------------------------------- 1: scoped IPv6 addresses

@pytest.mark.parametrize("href", ["http://[fe80::1%25x]/", "http://[2a00:1450::1%25eth0]/"])
def test_scoped_ipv6_url_is_skipped_and_other_lists_still_work(dns, href):
    e = engine(dns, {"bl": BL, "uri": URI})
    before = len(dns.queries)
    v = e.scan(html(href), Envelope(client_ip="1.2.3.4"))
    assert not v.has("CHECK_ERROR"), v.symbols.get("CHECK_ERROR")
    assert v.has("TEST_BL"), "one scoped IPv6 link switched off every list"
    assert not v.has("TEST_URI")
    assert asked_under(dns, before, "uri.test") == [], "a scoped address was asked of a public list"


@pytest.mark.parametrize("ip", ["fe80::1%eth0", "2a00:1450::1%eth0"])
def test_scoped_client_ip_is_skipped_and_other_lists_still_work(dns, ip):
    e = engine(dns, {"bl": BL, "uri": URI})
    before = len(dns.queries)
    v = e.scan(text("http://listed.example/"), Envelope(client_ip=ip))
    assert not v.has("CHECK_ERROR"), v.symbols.get("CHECK_ERROR")
    assert v.has("TEST_URI")
    assert not v.has("TEST_BL") and asked_under(dns, before, "bl.test") == []


# ----------------------------------------------------------------- 2: non-public URL literals

@pytest.mark.parametrize("url", ["http://127.0.0.2/", "http://[::ffff:127.0.0.2]/", "http://10.0.0.1/"])
def test_non_public_url_literal_is_not_asked(dns, url):
    e = engine(dns, {"uri": URI})
    before = len(dns.queries)
    v = e.scan(text(f"local admin page {url} and http://44.4.4.4/x"), Envelope())
    # RFC 5782 section 5: 127.0.0.2 is every list's test point, listed by definition.
    assert v.symbols["TEST_URI"].options == ("44.4.4.4 (urls) 127.0.0.2",)
    assert asked_under(dns, before, "uri.test") == ["4.4.4.44.uri.test"]


# ----------------------------------------------------------------- 3: domain-only URI lists

def test_dbl_uri_is_never_asked_about_ip_literals(dns):
    e = engine(dns, enable=("spamhaus_dbl_uri",))
    assert e.scan(text("http://www.dbltest.com/"), Envelope()).has("URI_DBL_SPAM")
    before = len(dns.queries)
    v = e.scan(text("an IP link http://44.4.4.4/x"), Envelope())
    assert dns.asked("4.4.4.44.dbl.spamhaus.org") == 0 and asked_under(dns, before, "dbl.spamhaus.org") == []
    assert not v.has("DNSBL_LIST_DISABLED")
    v = e.scan(text("http://www.dbltest.com/"), Envelope())
    assert v.has("URI_DBL_SPAM"), "one IP-literal URL disabled Spamhaus DBL for every following scan"
    assert e.checks[0].stats["spamhaus_dbl_uri"].healthy


def test_custom_uri_list_without_ip_queries(dns):
    e = engine(dns, {"uri": {**URI, "ip_queries": False}})
    before = len(dns.queries)
    v = e.scan(text("http://44.4.4.4/x http://listed.example/"), Envelope())
    assert v.symbols["TEST_URI"].options == ("listed.example (urls) 127.0.0.2",)
    assert asked_under(dns, before, "uri.test") == ["listed.example.uri.test"]


# ----------------------------------------------------------------- 4: non-public client IPs

@pytest.mark.parametrize("ip", PRIVATE_CLIENTS)
def test_non_public_client_ip_is_not_asked(dns, ip):
    e = engine(dns, {"bl": BL})
    v = e.scan(text("x"), Envelope(client_ip=ip))
    assert dns.asked(f"{rev(ip)}.bl.test") == 0, f"non-global client {ip} was asked of the list"
    assert not v.has("TEST_BL")


def test_public_client_ip_is_still_asked(dns):
    assert engine(dns, {"bl": BL}).scan(text("x"), Envelope(client_ip="1.2.3.4")).has("TEST_BL")


# ----------------------------------------------------------------- history: shared fixtures

class Clock:
    def __init__(self, t: float = 1_800_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


MSG = b"From: a@shop.example\nSubject: offer\n\nhttp://www.shop.example/x\n"
ENV = Envelope(client_ip="198.51.100.7", mail_from="a@shop.example")
SPAM_KEYS = ["h:ip:198.51.100.7:s", "h:sdom:shop.example:s", "h:udom:shop.example:s"]


def history(store, clock: Clock, **over: Any) -> HistoryCheck:
    cfg = Config.load(overrides={"history": {"enabled": True, "learn_weight": 3, **over}})
    return HistoryCheck(cfg, store, clock=clock)


# ----------------------------------------------------------------- 5: concurrent unlearn

class MeetAfterGet:
    """A store proxy whose ``get`` of the learn ledger waits for the other unlearner's ``get``.

    This forces the interleaving two scanner processes can hit: both read the ledger
    entry before either deletes it.
    """

    def __init__(self, store, barrier: threading.Barrier):
        self._store, self._barrier = store, barrier

    def get(self, key: str) -> bytes | None:
        value = self._store.get(key)
        if value is not None and key.startswith("h:learned:") and self._barrier is not None:
            barrier, self._barrier = self._barrier, None  # the first read that finds the entry only
            barrier.wait(timeout=10)
        return value

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_concurrent_unlearn_subtracts_once(store_url):
    clock = Clock()
    first = open_store(store_url)
    # Memory stores are per process: the two "processes" are two threads on one store.
    second = first if store_url.startswith("memory:") else open_store(store_url)
    try:
        assert history(first, clock).learn(Message(MSG, ENV), True)
        barrier = threading.Barrier(2)
        results: list[bool] = []
        errors: list[BaseException] = []

        def unlearn(store) -> None:
            try:
                results.append(history(MeetAfterGet(store, barrier), clock).unlearn(Message(MSG, ENV)))
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=unlearn, args=(s,)) for s in (first, second)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors, errors
        assert sorted(results) == [False, True], "both unlearners claimed the message"
        scale = history(first, clock)._scale(clock.t)
        counts = [c / scale for c in first.get_counts(SPAM_KEYS)]
        assert all(abs(c) < 1e-9 for c in counts), f"counts after one learn and one unlearn: {counts}"
    finally:
        if second is not first:
            second.close()
        first.close()


class RelearnAfterGet:
    """A store proxy whose first read of a ledger entry lets other processes unlearn the message and
    learn it again as ham before this unlearner deletes what it read."""

    def __init__(self, store, race):
        self._store, self._race = store, race

    def get(self, key: str) -> bytes | None:
        value = self._store.get(key)
        if value is not None and key.startswith("h:learned:"):
            race, self._race = self._race, None
            if race is not None:
                race()
        return value

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_unlearn_racing_a_relearn_takes_out_what_is_counted(any_store):
    clock = Clock()
    other = history(any_store, clock)
    msg = Message(MSG, ENV)
    assert other.learn(msg, True)

    def relearn_as_ham() -> None:
        assert other.unlearn(msg) and other.learn(msg, False)
        clock.t += 86400                                 # a day later: a larger amount than the spam's

    mine = history(RelearnAfterGet(any_store, relearn_as_ham), clock)
    assert mine.unlearn(msg) is True
    scale = other._scale(clock.t)
    spam = [c / scale for c in any_store.get_counts(SPAM_KEYS)]
    ham = [c / scale for c in any_store.get_counts([k[:-1] + "h" for k in SPAM_KEYS])]
    assert all(abs(c) < 1e-9 for c in spam + ham), f"spam {spam}, ham {ham}: the unlearn took out the old entry's amount"
    assert other.unlearn(msg) is False                   # nothing left to take back


# ----------------------------------------------------------------- 6: unlearn after decay

def test_unlearn_after_half_lives_restores_counts(any_store):
    clock = Clock()
    hist = history(any_store, clock)
    e = Engine(Config.load(overrides={"history": {"enabled": True}}), checks=[hist], store=any_store)
    for _ in range(8):                                   # eight clean observations of this sender
        hist._add(Message(MSG, ENV), False, 1.0)
    assert e.learn(MSG, spam=True, envelope=ENV) == {"history": True}
    clock.t += 28 * 86400                                # two half-lives later, the report is taken back
    assert e.unlearn(MSG, envelope=ENV) == {"history": True}
    scale = hist._scale(clock.t)
    spam = [c / scale for c in any_store.get_counts(SPAM_KEYS)]
    ham = any_store.get_counts(["h:sdom:shop.example:h"])[0] / scale
    assert all(abs(s) < 1e-9 for s in spam), f"unlearn left spam counts {spam} (negative: subtracted too much)"
    assert abs(ham - 2.0) < 1e-9                         # 8 observations, two half-lives old


def test_unlearn_reads_legacy_label_only_ledger(any_store):
    """Ledgers written before the amount was recorded hold only b"s"/b"h": still unlearnable."""
    clock = Clock()
    hist = history(any_store, clock)
    msg = Message(MSG, ENV)
    hist._add(msg, True, 3.0)                            # what the old learn() added...
    any_store.set("h:learned:" + hashlib.sha256(MSG).hexdigest(), b"s")   # ...and recorded
    assert hist.unlearn(msg) is True
    assert hist.unlearn(msg) is False
    assert all(abs(c) < 1e-6 for c in any_store.get_counts(SPAM_KEYS))


# ----------------------------------------------------------------- 7: one message, LF or CRLF line ends

CRLF = MSG.replace(b"\n", b"\r\n")                       # the copy spamd TELL or the milter hands over


@pytest.mark.parametrize("first,second", [(MSG, CRLF), (CRLF, MSG)], ids=["lf-first", "crlf-first"])
def test_lf_and_crlf_copies_are_learned_once(any_store, first, second):
    clock = Clock()
    hist = history(any_store, clock)
    assert hist.learn(Message(first, ENV), True) is True
    once = any_store.get_counts(SPAM_KEYS)
    assert all(c > 0 for c in once)
    assert hist.learn(Message(second, ENV), True) is False    # the same message: counted once
    assert any_store.get_counts(SPAM_KEYS) == once
    clock.t += 3 * 86400
    assert hist.unlearn(Message(second, ENV)) is True         # the other copy takes back what the first added
    assert hist.unlearn(Message(first, ENV)) is False
    assert all(abs(c) < 1e-6 for c in any_store.get_counts(SPAM_KEYS))


@pytest.mark.parametrize("unlearn_copy", [MSG, CRLF], ids=["unlearn-lf", "unlearn-crlf"])
def test_ledger_keyed_by_raw_bytes_is_honoured(any_store, unlearn_copy):
    """Entries written before line ends were normalised are keyed by sha256 of the bytes as learned."""
    clock = Clock()
    hist = history(any_store, clock)
    amount = 3.0 * hist._scale(clock.t)
    hist._incr(Message(CRLF, ENV), True, amount)          # what the earlier learn() added through spamd...
    any_store.set("h:learned:" + hashlib.sha256(CRLF).hexdigest(), f"s:{amount!r}".encode())   # ...and recorded
    once = any_store.get_counts(SPAM_KEYS)
    assert hist.learn(Message(MSG, ENV), True) is False       # learned again from a file: already counted
    assert hist.learn(Message(CRLF, ENV), True) is False
    assert any_store.get_counts(SPAM_KEYS) == once
    clock.t += 14 * 86400
    assert hist.unlearn(Message(unlearn_copy, ENV)) is True
    assert hist.unlearn(Message(MSG, ENV)) is False
    assert hist.unlearn(Message(CRLF, ENV)) is False
    assert all(abs(c) < 1e-6 for c in any_store.get_counts(SPAM_KEYS))
    # unlearned, it can be learned anew, once
    assert hist.learn(Message(unlearn_copy, ENV), True) is True
    assert hist.learn(Message(CRLF if unlearn_copy is MSG else MSG, ENV), True) is False
