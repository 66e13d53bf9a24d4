"""In-memory store: one process, no persistence.  For tests and single-process embedding."""

from __future__ import annotations

import threading
import time
from typing import Mapping, Sequence

from .base import BucketResult, bucket_refill


class MemoryStore:
    """A dict with expiry times behind one lock (operations are O(1) and never block on I/O)."""

    def __init__(self, clock=time.time):  # type: ignore[no-untyped-def]
        self._data: dict[str, object] = {}
        self._expires: dict[str, float] = {}
        self._lock = threading.Lock()
        self._clock = clock

    def _live(self, key: str) -> object | None:
        exp = self._expires.get(key)
        if exp is not None and exp <= self._clock():
            self._data.pop(key, None)
            self._expires.pop(key, None)
            return None
        return self._data.get(key)

    def _touch(self, key: str, ttl: float | None) -> None:
        if ttl is not None:
            self._expires[key] = self._clock() + ttl

    def incr(self, key: str, amount: float = 1.0, ttl: float | None = None) -> float:
        with self._lock:
            value = float(self._live(key) or 0.0) + amount  # type: ignore[arg-type]
            self._data[key] = value
            self._touch(key, ttl)
            return value

    def incr_many(self, amounts: Mapping[str, float], ttl: float | None = None) -> None:
        with self._lock:
            for key, amount in amounts.items():
                self._data[key] = float(self._live(key) or 0.0) + amount  # type: ignore[arg-type]
                self._touch(key, ttl)

    def get_counts(self, keys: Sequence[str]) -> list[float]:
        with self._lock:
            return [float(self._live(k) or 0.0) for k in keys]  # type: ignore[arg-type]

    def get(self, key: str) -> bytes | None:
        with self._lock:
            v = self._live(key)
            return v if isinstance(v, bytes) else None

    def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        with self._lock:
            self._data[key] = bytes(value)
            self._expires.pop(key, None)
            self._touch(key, ttl)

    def add(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        with self._lock:
            if self._live(key) is not None:
                return False
            self._data[key] = bytes(value)
            self._expires.pop(key, None)
            self._touch(key, ttl)
            return True

    def delete(self, key: str) -> bool:
        with self._lock:
            existed = self._live(key) is not None
            self._data.pop(key, None)
            self._expires.pop(key, None)
            return existed

    def take(self, key: str, rate: float, burst: float, cost: float = 1.0, now: float | None = None) -> BucketResult:
        now = self._clock() if now is None else now
        with self._lock:
            state = self._live(key)
            tokens, last = state if isinstance(state, tuple) else (burst, now)
            tokens = bucket_refill(tokens, last, now, rate, burst)
            allowed = tokens >= cost
            if allowed:
                tokens -= cost
            self._data[key] = (tokens, now)
            self._expires[key] = self._clock() + (burst / rate if rate > 0 else 86400) + 1
            return BucketResult(allowed, tokens)

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        pass
