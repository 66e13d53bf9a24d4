"""The Store protocol: the shared state behind learning, reputation, greylisting and rate limits.

A scanner process keeps no state of its own besides a Store, so scaling out is
adding processes (or machines) pointed at one store.  The protocol is small on
purpose: every operation maps to one Redis command or one SQLite statement,
and every write that must not lose an update is atomic in the backend itself
(no read-modify-write in Python).

Keys are strings, namespaced by their user (``tok:``, ``rep:``, ``grey:``,
``rl:``, ``learn:``).  Counters are floats, because reputation decays.  A
``ttl`` (seconds) makes a key expire; ``None`` keeps it.

A backend that cannot be reached raises :class:`StoreUnavailable`; callers turn
that into a symbol and their configured fail-open/fail-closed behaviour, never
into a crashed scan.  A network backend waits at most ``[store] timeout`` for
an answer, and after a timeout or connection error fails fast for a few
seconds (a circuit breaker), so that a hung server costs one timeout, not one
per operation of every scan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Protocol, Sequence, runtime_checkable

from ..errors import AntispamError


#: seconds a network store may take to answer (``[store] timeout``): a fraction of the scan deadline, because
#: every check that uses the store waits for it
DEFAULT_TIMEOUT = 0.5


class StoreUnavailable(AntispamError):
    """The store's backend is down or refused the operation."""


@dataclass(frozen=True, slots=True)
class BucketResult:
    """Outcome of one token-bucket take: allowed or not, and tokens left after it."""

    allowed: bool
    remaining: float


@runtime_checkable
class Store(Protocol):
    """What every backend provides.  All methods are safe to call from several processes."""

    def incr(self, key: str, amount: float = 1.0, ttl: float | None = None) -> float:
        """Atomically add ``amount`` to a counter (created at 0) and return the new value."""

    def incr_many(self, amounts: Mapping[str, float], ttl: float | None = None) -> None:
        """Atomically (all or nothing) add to several counters."""

    def get_counts(self, keys: Sequence[str]) -> list[float]:
        """Counter values, 0.0 for missing keys, in the order asked (one round trip)."""

    def get(self, key: str) -> bytes | None:
        """A value set with :meth:`set`, or None."""

    def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Set a value, replacing any."""

    def add(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        """Set a value only if the key is absent; True if this call set it (atomic)."""

    def delete(self, key: str) -> bool:
        """Remove a key; True if it existed."""

    def compare_and_set(self, key: str, expected: bytes | None, new: bytes | None, ttl: float | None = None) -> bool:
        """Atomically replace the value of ``key`` if it is ``expected``; True if this call changed it.

        ``expected=None`` means "absent (or expired)"; ``new=None`` deletes the key.
        This is how a process claims a change of state that others may be making
        at the same time (relearning a message with the other label): of several
        callers expecting the same value, exactly one wins, and only the winner
        acts on it.
        """

    def take(self, key: str, rate: float, burst: float, cost: float = 1.0, now: float | None = None) -> BucketResult:
        """Token bucket: refill at ``rate`` tokens/s up to ``burst``, then take ``cost`` if available (atomic)."""

    def ping(self) -> bool:
        """True when the backend answers."""

    def close(self) -> None:
        """Release connections and files."""


def parse_store_url(url: str) -> tuple[str, str]:
    """The backend a store URL names and what that backend is given: ``("memory", "")``,
    ``("sqlite", path)`` or ``("redis", url)``; ValueError, in words an operator can act on,
    otherwise.  One reading for :func:`open_store` and for the configuration check at load
    (which adds the file and key to the error)."""
    if url.startswith("memory:"):
        return "memory", ""
    if url.startswith("sqlite:"):
        path = url[len("sqlite:"):]
        path = path[2:] if path.startswith("//") else path
        if not path:
            raise ValueError("sqlite store URL needs a path: sqlite:///var/lib/antispam/state.db")
        if "\0" in path:  # sqlite3.connect raised ValueError("embedded null byte"): a traceback
            raise ValueError(f"sqlite store URL {url!r}: the path has a NUL character")
        return "sqlite", path
    if url.startswith(("redis:", "rediss:", "unix:")):
        # What redis-py would otherwise fail on with a bare ValueError (a traceback at start-up) or
        # quietly ignore: a port that is no number or out of range, a database that is no number
        # (``redis://host:6379/abc`` was database 0).
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        try:
            parts.port
        except ValueError:
            raise ValueError(f"redis store URL {url!r}: the port must be a number from 0 to 65535") from None
        db = parts.path.strip("/")
        if not url.startswith("unix:") and db and not (db.isascii() and db.isdigit()):
            raise ValueError(f"redis store URL {url!r}: the database after the host must be a number, "
                             "e.g. redis://127.0.0.1:6379/0")
        return "redis", url
    raise ValueError(f"unknown store URL {url!r} (use memory://, sqlite:///PATH or redis://HOST:PORT/DB)")


def open_store(url: str, timeout: float | None = None) -> Store:
    """A store from a URL: ``memory://``, ``sqlite:///path/to/file.db``, ``redis://host:port/db``.

    ``timeout`` (``[store] timeout``, seconds) bounds every wait for a Redis
    server; None keeps the backend's default (:data:`DEFAULT_TIMEOUT`).  The
    local backends ignore it.  Raises :class:`~antispam.errors.ConfigError`
    for an unknown scheme.
    """
    from ..errors import ConfigError

    try:
        kind, target = parse_store_url(url)
    except ValueError as exc:
        raise ConfigError(str(exc), key="store.url") from None
    if kind == "memory":
        from .memory import MemoryStore

        return MemoryStore()
    if kind == "sqlite":
        from .sqlite import SqliteStore

        return SqliteStore(target)
    from .redis import RedisStore

    return RedisStore(target, timeout=DEFAULT_TIMEOUT if timeout is None else timeout)



#: rounds of read-then-``compare_and_set`` a ledger change tries before giving up (each lost round
#: means another process just changed the entry)
CLAIM_TRIES = 8


def first_entry(store: Store, keys: Sequence[str]) -> tuple[str, bytes | None]:
    """The first of ``keys`` that holds a value, and the value (the first key and None if none does):
    how the learning ledgers find a message's entry under its current key or a key older ledgers
    used (:func:`antispam.message.ledger_digests`)."""
    for key in keys:
        value = store.get(key)
        if value is not None:
            return key, value
    return keys[0], None


def bucket_refill(tokens: float, last: float, now: float, rate: float, burst: float) -> float:
    """Tokens in a bucket at ``now`` that held ``tokens`` at ``last``: linear refill, capped at ``burst``.

    Shared by the in-process backends so that every backend computes the same
    numbers (the Redis backend runs the same arithmetic in its Lua script).
    """
    return min(burst, tokens + max(0.0, now - last) * rate)


def chunks(items: Iterable[str], size: int) -> Iterable[list[str]]:
    buf: list[str] = []
    for it in items:
        buf.append(it)
        if len(buf) >= size:
            yield buf
            buf = []
    if buf:
        yield buf
