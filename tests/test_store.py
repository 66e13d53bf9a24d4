"""The Store protocol, same behaviour on memory, SQLite and a real redis-server."""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time

import pytest

from antispam.errors import ConfigError
from antispam.store import Store, StoreUnavailable, open_store

from .conftest import needs_redis, store_url_for


@pytest.fixture
def store(any_store):
    return any_store


def test_protocol(store):
    assert isinstance(store, Store) and store.ping()


def test_counters(store):
    assert store.incr("c:a") == 1.0
    assert store.incr("c:a", 2.5) == 3.5
    store.incr_many({"c:a": 1, "c:b": -2, "c:c": 0.25})
    assert store.get_counts(["c:a", "c:b", "c:missing", "c:c"]) == [4.5, -2.0, 0.0, 0.25]
    assert store.get_counts([]) == []


def test_values_add_and_delete(store):
    assert store.get("k") is None
    store.set("k", b"v1")
    assert store.get("k") == b"v1"
    assert store.add("k", b"v2") is False and store.get("k") == b"v1"
    assert store.add("k2", b"x") is True and store.get("k2") == b"x"
    assert store.delete("k") is True and store.delete("k") is False and store.get("k") is None


def test_ttl_expiry(store):
    store.set("t", b"v", ttl=1)
    store.incr("tc", 5, ttl=1)
    assert store.get("t") == b"v" and store.get_counts(["tc"]) == [5.0]
    time.sleep(2.1)
    assert store.get("t") is None
    assert store.get_counts(["tc"]) == [0.0]
    assert store.add("t", b"again", ttl=10) is True  # an expired key can be added again
    assert store.incr("tc", 1) == 1.0                 # an expired counter restarts from 0


def test_a_sub_second_ttl_is_a_short_life(store):
    """Every operation taking a ttl accepts a fractional one under a second and keeps the key:
    Redis's EXPIRE / SET EX take whole seconds only, where 0 is an error or an instant delete."""
    store.set("f:set", b"v", ttl=0.9)
    assert store.add("f:add", b"v", ttl=0.9) is True
    assert store.compare_and_set("f:cas", None, b"v", ttl=0.9) is True
    store.incr("f:incr", 1, ttl=0.9)
    store.incr_many({"f:many": 2}, ttl=0.9)
    assert [store.get(k) for k in ("f:set", "f:add", "f:cas")] == [b"v"] * 3
    assert store.get_counts(["f:incr", "f:many"]) == [1.0, 2.0]


def test_token_bucket(store):
    t0 = 1_000_000.0
    results = [store.take("rl:ip", rate=1.0, burst=3, now=t0).allowed for _ in range(4)]
    assert results == [True, True, True, False]
    assert store.take("rl:ip", rate=1.0, burst=3, now=t0 + 1.0).allowed is True   # one token refilled
    assert store.take("rl:ip", rate=1.0, burst=3, now=t0 + 1.0).allowed is False
    r = store.take("rl:ip", rate=1.0, burst=3, now=t0 + 100)                      # capped at burst
    assert r.allowed and abs(r.remaining - 2.0) < 1e-9


def _hammer(url: str, n: int) -> None:
    s = open_store(url)
    for i in range(n):
        s.incr("race:single")
        s.incr_many({"race:a": 1, "race:b": 2})
        s.add(f"race:once:{i}", str(os.getpid()).encode())
    s.close()


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=needs_redis)])
def shared_url(request, tmp_path):
    """Backends shared between processes (the memory store is per process by design)."""
    return store_url_for(request.param, request, tmp_path)


@pytest.mark.parametrize("procs,n", [(4, 200)])
def test_no_lost_updates_across_processes(shared_url, procs, n):
    store_url = shared_url
    ctx = mp.get_context("spawn")
    ps = [ctx.Process(target=_hammer, args=(store_url, n)) for _ in range(procs)]
    for p in ps:
        p.start()
    for p in ps:
        p.join(120)
        assert p.exitcode == 0
    s = open_store(store_url)
    assert s.get_counts(["race:single", "race:a", "race:b"]) == [procs * n, procs * n, 2.0 * procs * n]
    # Every add() key was won by exactly one process.
    assert all(s.get(f"race:once:{i}") for i in range(n))
    s.close()


def test_open_store_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown store URL"):
        open_store("mongodb://x")
    with pytest.raises(ConfigError, match="needs a path"):
        open_store("sqlite://")


def test_redis_down_is_store_unavailable():
    from .servers import free_port
    s = open_store(f"redis://127.0.0.1:{free_port()}/0")
    assert s.ping() is False
    with pytest.raises(StoreUnavailable):
        s.incr("x")
    with pytest.raises(StoreUnavailable):
        s.get_counts(["x"])


def test_sqlite_unwritable_path_is_store_unavailable(tmp_path):
    with pytest.raises(StoreUnavailable):
        open_store(f"sqlite:///{tmp_path}/no/such/dir/state.db")


def _open_descriptors_under(path) -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}").startswith(str(path))
        except OSError:
            pass
    return n


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")
def test_sqlite_close_closes_every_thread_s_connection(tmp_path):
    """An engine used from a thread pool (a server's learns, an application's scan threads) opens one
    connection per thread; close() must release them all, not only the calling thread's: before, each
    engine closed left the database, -wal and -shm open in every other thread that had touched it."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            s = open_store(f"sqlite:///{tmp_path}/state.db")
            barrier = threading.Barrier(4)

            def work(i: int) -> None:
                barrier.wait()  # all four workers at once: four threads, four connections
                s.incr(f"k{i}")

            list(pool.map(work, range(4)))
            assert _open_descriptors_under(tmp_path) > 0
            s.close()
            s.close()  # idempotent
            assert _open_descriptors_under(tmp_path) == 0
        # closed is not broken: the store opens a connection again when used again
        assert s.get_counts(["k0"]) == [3.0]
        s.close()
