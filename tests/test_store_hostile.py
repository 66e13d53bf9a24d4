"""Stores under hostile conditions: a Redis that never answers, expired keys piling up, racing writers."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from antispam import Config, Engine, Envelope
from antispam.store import StoreUnavailable, open_store
from antispam.store.memory import MemoryStore

from .conftest import needs_redis


# ----------------------------------------------------------------- compare_and_set (used by relearning)

def test_compare_and_set(any_store):
    s = any_store
    assert s.compare_and_set("cas", None, b"spam api") is True       # absent -> set
    assert s.compare_and_set("cas", None, b"ham api") is False       # no longer absent
    assert s.compare_and_set("cas", b"ham api", b"x") is False       # wrong expected value
    assert s.get("cas") == b"spam api"
    assert s.compare_and_set("cas", b"spam api", b"ham api") is True
    assert s.get("cas") == b"ham api"
    assert s.compare_and_set("cas", b"spam api", None) is False
    assert s.compare_and_set("cas", b"ham api", None) is True        # expected -> deleted
    assert s.get("cas") is None
    assert s.compare_and_set("missing", b"v", b"w") is False and s.get("missing") is None


def test_compare_and_set_treats_an_expired_value_as_absent(any_store):
    s = any_store
    s.set("casx", b"old", ttl=1)
    assert s.compare_and_set("casx", b"old", b"new", ttl=1) is True
    time.sleep(2.1)
    assert s.compare_and_set("casx", b"new", b"newer") is False
    assert s.compare_and_set("casx", None, b"fresh") is True and s.get("casx") == b"fresh"


def test_compare_and_set_has_one_winner(any_store):
    """Eight threads race to move one value: exactly one of them wins."""
    s = any_store
    s.set("race", b"spam")
    barrier = threading.Barrier(8)
    wins: list[bool] = []

    def worker(i: int) -> None:
        barrier.wait()
        wins.append(s.compare_and_set("race", b"spam", f"ham {i}".encode()))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wins.count(True) == 1


# ----------------------------------------------------------------- MemoryStore: expired keys are purged


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_memory_store_purges_expired_keys_on_writes():
    clock = Clock()
    s = MemoryStore(clock=clock)
    for i in range(5000):
        s.add(f"grey:{i}", b"1", ttl=1)
        s.take(f"rl:{i}", rate=10, burst=5)
        s.incr(f"c:{i}", ttl=1)
    s.set("keep", b"v")
    s.incr("keep:count")
    assert len(s._data) == 15002
    clock.now += 10
    for i in range(20):                                  # a few writes of other keys (each purges up to 1024)
        s.incr("other")
    assert len(s._data) == 3 and s.get("keep") == b"v"   # keep, keep:count, other
    assert len(s._expires) == 0 and len(s._heap) == 0


def test_memory_store_expiry_bookkeeping_stays_bounded_for_hot_keys():
    """A counter whose TTL is refreshed on every write keeps one queued expiry, not one per write."""
    clock = Clock()
    s = MemoryStore(clock=clock)
    for i in range(10_000):
        clock.now += 0.01
        s.incr("hot", ttl=3600)
        s.take("bucket", rate=1, burst=10)
        s.set("v", b"x", ttl=60)
    assert len(s._heap) <= 3
    clock.now += 3601
    s.incr("other")
    assert set(s._data) == {"other"} and not s._heap


def test_memory_store_expiry_is_exact_after_refresh_delete_and_shortening():
    clock = Clock()
    s = MemoryStore(clock=clock)
    s.set("a", b"1", ttl=100)
    s.set("a", b"2", ttl=5)            # shortened: must still expire at +5
    s.set("b", b"1", ttl=5)
    s.delete("b")
    s.set("b", b"2", ttl=50)           # re-created later: lives its new TTL
    s.set("c", b"1", ttl=5)
    s.set("c", b"2")                   # made permanent
    clock.now += 6
    s.incr("w")
    assert "a" not in s._data and s.get("b") == b"2" and s.get("c") == b"2"
    clock.now += 50
    s.incr("w")
    assert "b" not in s._data and s.get("c") == b"2"


def test_engine_memory_store_does_not_keep_expired_greylist_and_ratelimit_entries():
    cfg = Config.load(overrides={"greylist": {"enabled": True, "pending_ttl": 1, "delay": 0},
                                 "ratelimit": {"enabled": True, "ip_rate": 600, "ip_burst": 10}})
    e = Engine(cfg)
    for i in range(500):
        e.scan(b"Subject: x\n\nhi\n", Envelope(client_ip=f"198.51.{i // 250}.{i % 250}",
                                                mail_from=f"s{chr(97 + i // 26)}{chr(97 + i % 26)}@x.example",
                                                rcpt_tos=("r@y.example",)))  # letters: greylisting reads digits as one
    assert len(e.store._data) >= 1000
    time.sleep(2.2)                                      # pending greylist entries (1 s) and buckets (2 s) expired
    for _ in range(5):
        e.scan(b"Subject: x\n\nhi\n", Envelope(client_ip="203.0.113.9", mail_from="z@z.example",
                                                rcpt_tos=("r@y.example",)))
    now = time.time()
    expired = [k for k in list(e.store._data) if e.store._expires.get(k, now + 1) <= now]
    assert not expired, f"{len(expired)} expired entries held of {len(e.store._data)}"
    e.close()


# ----------------------------------------------------------------- Redis that accepts but never answers


class Mute:
    """A TCP server that accepts connections and never answers (a hung or overloaded Redis)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(100)
        self.sock.settimeout(0.1)
        self.url = f"redis://127.0.0.1:{self.sock.getsockname()[1]}/0"
        self.conns: list[socket.socket] = []
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                self.conns.append(self.sock.accept()[0])
            except OSError:
                continue

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        for c in self.conns:
            c.close()
        self.sock.close()


@pytest.fixture
def mute():
    m = Mute()
    yield m
    m.close()


def test_store_timeout_setting(mute):
    assert Config.load().store.timeout == 0.5
    cfg = Config.load(overrides={"store": {"timeout": 0.2, "url": mute.url}})
    assert cfg.store.timeout == 0.2
    e = Engine(cfg)
    assert e.store.timeout == 0.2  # the engine opens its store with the configured timeout
    e.close()


def test_unresponsive_redis_times_out_then_fails_fast(mute):
    s = open_store(mute.url, timeout=0.3)
    t = time.monotonic()
    with pytest.raises(StoreUnavailable):
        s.get_counts(["a"])
    assert 0.25 < time.monotonic() - t < 1.0          # the configured timeout, not retried
    t = time.monotonic()
    for _ in range(20):                                 # marked down: no more waiting
        with pytest.raises(StoreUnavailable, match="down"):
            s.incr("x")
    assert time.monotonic() - t < 0.2
    s.close()


def test_redis_marked_down_is_tried_again_after_a_while(mute):
    from antispam.store.redis import RedisStore

    s = RedisStore(mute.url, timeout=0.2, down_for=0.5)
    with pytest.raises(StoreUnavailable):
        s.get("a")
    t = time.monotonic()
    with pytest.raises(StoreUnavailable):
        s.get("a")
    assert time.monotonic() - t < 0.1
    time.sleep(0.6)
    t = time.monotonic()
    with pytest.raises(StoreUnavailable):
        s.get("a")
    assert time.monotonic() - t >= 0.15                 # a real attempt again
    s.close()


def test_unresponsive_redis_keeps_the_scan_within_its_deadline(mute):
    cfg = Config.load(overrides={"store": {"url": mute.url}, "engine": {"scan_deadline": 1.0},
                                 "greylist": {"enabled": True}, "history": {"enabled": True},
                                 "ratelimit": {"enabled": True, "ip_rate": 60, "ip_burst": 10}})
    e = Engine(cfg)
    raw = b"From: a@sender.example\nTo: b@rcpt.example\nSubject: offer\n\nCheap watches\n"
    t = time.monotonic()
    v = e.scan(raw, Envelope(client_ip="198.51.100.7", mail_from="a@b.example", rcpt_tos=("x@y.example", "z@y.example")))
    assert time.monotonic() - t < 1.5
    assert v.has("STORE_UNAVAILABLE")
    t = time.monotonic()
    e.scan(raw, Envelope(client_ip="198.51.100.8", mail_from="a@b.example", rcpt_tos=("x@y.example",)))
    assert time.monotonic() - t < 0.5                   # the next scan does not wait again
    e.close()


@needs_redis
def test_a_command_error_does_not_mark_redis_down(redis_server):
    from antispam.store.redis import RedisStore

    s = RedisStore(redis_server.url, timeout=0.5)
    s.set("ok", b"not a number")
    with pytest.raises(StoreUnavailable):               # a command error is not an outage
        s.incr("ok")
    assert s.get("ok") == b"not a number" and s.ping()
    s.close()


def test_a_store_outage_is_logged_in_one_line_per_scan_not_a_traceback(caplog, monkeypatch):
    """Redis down (a port nobody listens on: the real client's connection is refused) with history
    on: recording each verdict fails.  It was logged as an error with a traceback on every scan (about
    1,200 bytes each); an outage the verdicts already report deserves a line."""
    import logging

    from antispam.logthrottle import THROTTLE

    monkeypatch.setattr(THROTTLE, "_seen", {})  # what earlier tests logged does not hold these lines back
    with socket.socket() as s:  # a free loopback port, closed again: connections to it are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = Config.load(overrides={"store": {"url": f"redis://127.0.0.1:{port}/0"}, "history": {"enabled": True}})
    e = Engine(cfg)
    raw = b"From: a@sender.example\nTo: b@rcpt.example\nSubject: hello\n\nSee you at ten.\n"
    with caplog.at_level(logging.WARNING):
        for i in range(50):
            assert e.scan(raw, Envelope(client_ip=f"198.51.100.{i + 1}", mail_from="a@b.example")).has("STORE_UNAVAILABLE")
    e.close()
    records = [r for r in caplog.records if r.name.startswith("antispam")]
    assert records and not [r for r in records if r.exc_info]
    # One line per cause, not one per scan: the classifier's and history's (the throttle holds the
    # repeats back for 10 s; 50 scans wrote 100 lines before).
    assert len(records) <= 4, [r.getMessage() for r in records]


def test_the_throttle_lets_one_line_per_cause_and_interval_through_and_counts_the_rest(caplog):
    import logging

    from antispam.logthrottle import Throttle

    now = [100.0]
    t = Throttle(interval=10.0, clock=lambda: now[0])
    log = logging.getLogger("antispam.test.throttle")
    with caplog.at_level(logging.WARNING):
        sent = [t.warning(log, "store", "store down: %s", "refused") for _ in range(5)]
        assert t.warning(log, "other", "another cause")
        now[0] += 10.5
        assert t.warning(log, "store", "store down: %s", "refused")
    assert sent == [True, False, False, False, False]
    lines = [r.getMessage() for r in caplog.records if r.name == "antispam.test.throttle"]
    assert lines == ["store down: refused", "another cause", "store down: refused (4 more like it in the last 10 s)"]
