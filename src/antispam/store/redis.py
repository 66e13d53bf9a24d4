"""Redis store: many scanner processes on many machines sharing one state.

Counters are Redis floats (``INCRBYFLOAT``); a batch of increments is one
``MULTI``/``EXEC`` pipeline, so it is atomic and costs one round trip.  The
token bucket runs as a Lua script, so refill-and-take is atomic on the server
with the same arithmetic as :func:`antispam.store.base.bucket_refill`.
Connection failures become :class:`StoreUnavailable`.

Every check of a scan may touch the store, so a Redis that accepts
connections but never answers (hung, overloaded, half-dead) must not cost a
timeout per operation: each wait is bounded by ``timeout`` (``[store]
timeout``, a fraction of a second), a timeout is not retried, and after a
timeout or connection error the store is marked down for ``down_for`` seconds,
during which operations fail fast with :class:`StoreUnavailable` (the path
checks already degrade on).  The first operation after that is a probe.
"""

from __future__ import annotations

import time
from typing import Mapping, Sequence

from .base import DEFAULT_TIMEOUT, BucketResult, StoreUnavailable

#: seconds a Redis that timed out or refused us is left alone before the next probe
DOWN_FOR = 5.0

# KEYS[1] = key; ARGV = has_expected ('1'/'0'), expected, has_new ('1'/'0'), new, ttl seconds ('0' = none)
_CAS_LUA = """
local cur = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if cur ~= ARGV[2] then return 0 end
elseif cur then
  return 0
end
if ARGV[3] == '1' then
  if ARGV[5] ~= '0' then redis.call('SET', KEYS[1], ARGV[4], 'EX', ARGV[5])
  else redis.call('SET', KEYS[1], ARGV[4]) end
else
  redis.call('DEL', KEYS[1])
end
return 1
"""

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


def _expiry(ttl: float) -> int:
    """``ttl`` as Redis's EXPIRE and SET EX take it: whole seconds, at least one.

    They accept a positive integer only.  A fractional ttl would be refused as
    "not an integer", and a sub-second one merely truncated to 0 would be
    refused by SET EX, delete the key at once under EXPIRE, and mean "no
    expiry" to the compare-and-set script, where the caller asked for a short
    life.  So a ttl is rounded down, but never below one second.
    """
    return max(1, int(ttl))


class RedisStore:
    def __init__(self, url: str = "redis://127.0.0.1:6379/0", prefix: str = "as:", timeout: float = DEFAULT_TIMEOUT,
                 down_for: float = DOWN_FOR):
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ImportError as exc:  # pragma: no cover - the [redis] extra is not installed
            raise StoreUnavailable("the Redis store needs the 'redis' package: pip install 'antispam[redis]'") from exc
        self._redis_mod = redis
        self.url = url
        self.prefix = prefix
        self.timeout = timeout
        self.down_for = down_for
        #: ``time.monotonic()`` until which operations fail fast (0.0: up), and why
        self._down_until = 0.0
        self._down_error = ""
        self._outage = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
        # One immediate retry on a connection error (a pooled connection the server closed, e.g. after a
        # restart), none on a timeout: redis-py's default retries would multiply the wait.
        retry = Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,))
        self._r = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=retry)
        self._take = self._r.register_script(_TAKE_LUA)
        self._cas = self._r.register_script(_CAS_LUA)

    def _k(self, key: str) -> str:
        return self.prefix + key

    def _call(self, fn, *args):  # type: ignore[no-untyped-def]
        if self._down_until:
            now = time.monotonic()
            if now < self._down_until:
                raise StoreUnavailable(f"Redis store {self.url} marked down for {self.down_for:g}s "
                                       f"after: {self._down_error}")
            self._down_until = now + self.down_for  # this call probes; the others keep failing fast meanwhile
        try:
            result = fn(*args)
        except self._outage as exc:
            self._mark_down(exc)
            raise StoreUnavailable(f"Redis store {self.url}: {exc} (marked down for {self.down_for:g}s)") from exc
        except self._redis_mod.RedisError as exc:  # a command error: the server is up
            raise StoreUnavailable(f"Redis store {self.url}: {exc}") from exc
        if self._down_until:
            self._down_until = 0.0
        return result

    def _mark_down(self, exc: BaseException) -> None:
        self._down_error = f"{type(exc).__name__}: {exc}"
        self._down_until = time.monotonic() + self.down_for

    def incr(self, key: str, amount: float = 1.0, ttl: float | None = None) -> float:
        def op():  # type: ignore[no-untyped-def]
            p = self._r.pipeline(transaction=True)
            p.incrbyfloat(self._k(key), amount)
            if ttl is not None:
                p.expire(self._k(key), _expiry(ttl))
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
                    p.expire(self._k(key), _expiry(ttl))
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
        self._call(lambda: self._r.set(self._k(key), value, ex=_expiry(ttl) if ttl is not None else None))

    def add(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        return bool(self._call(lambda: self._r.set(self._k(key), value, nx=True,
                                                   ex=_expiry(ttl) if ttl is not None else None)))

    def compare_and_set(self, key: str, expected: bytes | None, new: bytes | None, ttl: float | None = None) -> bool:
        args = ["0" if expected is None else "1", expected or b"", "0" if new is None else "1", new or b"",
                str(_expiry(ttl)) if ttl is not None else "0"]
        return bool(int(self._call(lambda: self._cas(keys=[self._k(key)], args=args))))

    def delete(self, key: str) -> bool:
        return bool(self._call(self._r.delete, self._k(key)))

    def take(self, key: str, rate: float, burst: float, cost: float = 1.0, now: float | None = None) -> BucketResult:
        now = time.time() if now is None else now
        allowed, tokens = self._call(lambda: self._take(keys=[self._k(key)], args=[rate, burst, cost, repr(now)]))
        return BucketResult(bool(int(allowed)), float(tokens))

    def ping(self) -> bool:
        """A real probe, even while marked down: True clears the mark, a timeout or refusal sets it."""
        try:
            up = bool(self._r.ping())
        except self._outage as exc:
            self._mark_down(exc)
            return False
        except self._redis_mod.RedisError:
            return False
        self._down_until = 0.0
        return up

    def close(self) -> None:
        self._r.close()
