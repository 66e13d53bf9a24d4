"""Redis store: many scanner processes on many machines sharing one state.

Counters are Redis floats (``INCRBYFLOAT``); a batch of increments is one
``MULTI``/``EXEC`` pipeline, so it is atomic and costs one round trip.  The
token bucket runs as a Lua script, so refill-and-take is atomic on the server
with the same arithmetic as :func:`antispam.store.base.bucket_refill`.
Connection failures become :class:`StoreUnavailable`.
"""

from __future__ import annotations

import time
from typing import Mapping, Sequence

from .base import BucketResult, StoreUnavailable

# KEYS[1] = bucket; ARGV = rate, burst, cost, now.  Same maths as bucket_refill().
_TAKE_LUA = """
local s = redis.call('HMGET', KEYS[1], 't', 'l')
local rate, burst, cost, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local tokens = burst
if s[1] then
  local dt = now - tonumber(s[2])
  if dt < 0 then dt = 0 end
  tokens = math.min(burst, tonumber(s[1]) + dt * rate)
end
local allowed = 0
if tokens >= cost then tokens = tokens - cost; allowed = 1 end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'l', tostring(now))
local ttl = 86400
if rate > 0 then ttl = math.ceil(burst / rate) + 1 end
redis.call('EXPIRE', KEYS[1], ttl)
return {allowed, tostring(tokens)}
"""


class RedisStore:
    def __init__(self, url: str = "redis://127.0.0.1:6379/0", prefix: str = "as:", timeout: float = 2.0):
        try:
            import redis
        except ImportError as exc:  # pragma: no cover - the [redis] extra is not installed
            raise StoreUnavailable("the Redis store needs the 'redis' package: pip install 'antispam[redis]'") from exc
        self._redis_mod = redis
        self.url = url
        self.prefix = prefix
        self._r = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._take = self._r.register_script(_TAKE_LUA)

    def _k(self, key: str) -> str:
        return self.prefix + key

    def _call(self, fn, *args):  # type: ignore[no-untyped-def]
        try:
            return fn(*args)
        except self._redis_mod.RedisError as exc:
            raise StoreUnavailable(f"Redis store {self.url}: {exc}") from exc

    def incr(self, key: str, amount: float = 1.0, ttl: float | None = None) -> float:
        def op():  # type: ignore[no-untyped-def]
            p = self._r.pipeline(transaction=True)
            p.incrbyfloat(self._k(key), amount)
            if ttl is not None:
                p.expire(self._k(key), max(1, int(ttl)))
            return p.execute()[0]
        return float(self._call(op))

    def incr_many(self, amounts: Mapping[str, float], ttl: float | None = None) -> None:
        if not amounts:
            return

        def op():  # type: ignore[no-untyped-def]
            p = self._r.pipeline(transaction=True)
            for key, amount in amounts.items():
                p.incrbyfloat(self._k(key), amount)
                if ttl is not None:
                    p.expire(self._k(key), max(1, int(ttl)))
            p.execute()
        self._call(op)

    def get_counts(self, keys: Sequence[str]) -> list[float]:
        if not keys:
            return []
        vals = self._call(self._r.mget, [self._k(k) for k in keys])
        return [float(v) if v is not None else 0.0 for v in vals]

    def get(self, key: str) -> bytes | None:
        return self._call(self._r.get, self._k(key))

    def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        self._call(lambda: self._r.set(self._k(key), value, ex=max(1, int(ttl)) if ttl is not None else None))

    def add(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        return bool(self._call(lambda: self._r.set(self._k(key), value, nx=True,
                                                   ex=max(1, int(ttl)) if ttl is not None else None)))

    def delete(self, key: str) -> bool:
        return bool(self._call(self._r.delete, self._k(key)))

    def take(self, key: str, rate: float, burst: float, cost: float = 1.0, now: float | None = None) -> BucketResult:
        now = time.time() if now is None else now
        allowed, tokens = self._call(lambda: self._take(keys=[self._k(key)], args=[rate, burst, cost, repr(now)]))
        return BucketResult(bool(int(allowed)), float(tokens))

    def ping(self) -> bool:
        try:
            return bool(self._r.ping())
        except self._redis_mod.RedisError:
            return False

    def close(self) -> None:
        self._r.close()
