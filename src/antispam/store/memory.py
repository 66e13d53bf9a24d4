"""In-memory store: one process, no persistence.  For tests and single-process embedding.

It is also the default store, so it must not grow without bound: greylisting
and rate limits write one short-lived key per client, and a key that is never
read again would otherwise stay forever.  Expired keys are therefore purged on
writes, from a heap of expiry times (see :class:`MemoryStore`).
"""

from __future__ import annotations

import heapq
import threading
import time
from typing import Mapping, Sequence

from .base import BucketResult, bucket_refill

#: most expired keys one write removes, so that a write after a quiet spell never stalls for long;
#: every write queues at most a few expiries, so the backlog still drains
_PURGE_MAX = 1024


class MemoryStore:
    """A dict with expiry times behind one lock (operations are O(1) amortised and never block on I/O).

    Expiry bookkeeping: ``_expires`` holds each key's expiry time; ``_heap``
    holds ``(time, key)`` entries and ``_queued`` the time of each key's one
    current heap entry, never later than its expiry.  A write that only
    extends a key's TTL (a counter or bucket touched on every scan) queues
    nothing: when the old entry comes due and the key turns out to live on, it
    is queued again at its real expiry.  So the heap holds about one entry per
    key with a TTL, and each write pops the entries that are due (a comparison
    with the heap's head when none is).
    """

    def __init__(self, clock=time.time):  # type: ignore[no-untyped-def]
        self._data: dict[str, object] = {}
        self._expires: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []
        self._queued: dict[str, float] = {}
        self._lock = threading.Lock()
        self._clock = clock

    def _live(self, key: str, now: float) -> object | None:
        exp = self._expires.get(key)
        if exp is not None and exp <= now:
            self._data.pop(key, None)
            del self._expires[key]
            return None
        return self._data.get(key)

    def _touch(self, key: str, ttl: float | None, now: float) -> None:
        if ttl is None:
            return
        exp = self._expires[key] = now + ttl
        queued = self._queued.get(key)
        if queued is None or exp < queued:
            self._queued[key] = exp
            heapq.heappush(self._heap, (exp, key))

    def _purge(self, now: float) -> None:
        """Remove keys whose expiry has passed (called with the lock held, on writes)."""
        heap = self._heap
        n = 0
        while heap and heap[0][0] <= now and n < _PURGE_MAX:
            t, key = heapq.heappop(heap)
            n += 1
            if self._queued.get(key) != t:
                continue  # superseded by an earlier expiry queued later
            exp = self._expires.get(key)
            if exp is None:  # deleted, expired on a read, or made permanent
                del self._queued[key]
            elif exp <= now:
                del self._queued[key], self._expires[key]
                self._data.pop(key, None)
            else:  # its TTL was extended since it was queued
                self._queued[key] = exp
                heapq.heappush(heap, (exp, key))

    def _write(self) -> float:
        """The time of a write, after purging what expired before it."""
        now = self._clock()
        if self._heap and self._heap[0][0] <= now:
            self._purge(now)
        return now

    def incr(self, key: str, amount: float = 1.0, ttl: float | None = None) -> float:
        with self._lock:
            now = self._write()
            value = float(self._live(key, now) or 0.0) + amount  # type: ignore[arg-type]
            self._data[key] = value
            self._touch(key, ttl, now)
            return value

    def incr_many(self, amounts: Mapping[str, float], ttl: float | None = None) -> None:
        with self._lock:
            now = self._write()
            for key, amount in amounts.items():
                self._data[key] = float(self._live(key, now) or 0.0) + amount  # type: ignore[arg-type]
                self._touch(key, ttl, now)

    def get_counts(self, keys: Sequence[str]) -> list[float]:
        with self._lock:
            now = self._clock()
            return [float(self._live(k, now) or 0.0) for k in keys]  # type: ignore[arg-type]

    def get(self, key: str) -> bytes | None:
        with self._lock:
            v = self._live(key, self._clock())
            return v if isinstance(v, bytes) else None

    def _put(self, key: str, value: bytes | None, ttl: float | None, now: float) -> None:
        if value is None:
            self._data.pop(key, None)
            self._expires.pop(key, None)
            return
        self._data[key] = bytes(value)
        self._expires.pop(key, None)
        self._touch(key, ttl, now)

    def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        with self._lock:
            self._put(key, value, ttl, self._write())

    def add(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        with self._lock:
            now = self._write()
            if self._live(key, now) is not None:
                return False
            self._put(key, value, ttl, now)
            return True

    def compare_and_set(self, key: str, expected: bytes | None, new: bytes | None, ttl: float | None = None) -> bool:
        with self._lock:
            now = self._write()
            current = self._live(key, now)
            if expected is None:
                if current is not None:
                    return False
            elif not isinstance(current, bytes) or current != expected:
                return False
            self._put(key, new, ttl, now)
            return True

    def delete(self, key: str) -> bool:
        with self._lock:
            existed = self._live(key, self._write()) is not None
            self._data.pop(key, None)
            self._expires.pop(key, None)
            return existed

    def take(self, key: str, rate: float, burst: float, cost: float = 1.0, now: float | None = None) -> BucketResult:
        with self._lock:
            wall = self._write()
            now = wall if now is None else now
            state = self._live(key, wall)
            tokens, last = state if isinstance(state, tuple) else (burst, now)
            tokens = bucket_refill(tokens, last, now, rate, burst)
            allowed = tokens >= cost
            if allowed:
                tokens -= cost
            self._data[key] = (tokens, now)
            self._touch(key, (burst / rate if rate > 0 else 86400) + 1, wall)
            return BucketResult(allowed, tokens)

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        pass
