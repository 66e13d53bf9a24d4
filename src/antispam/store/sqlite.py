"""SQLite store: the embedded default.  One file, safe with several processes.

Why SQLite: no server to run, durable, and with WAL journaling many readers
and one writer at a time across processes.  Every update is a single
``INSERT ... ON CONFLICT DO UPDATE`` statement (or one ``BEGIN IMMEDIATE``
transaction), so concurrent increments from several scanner processes are
never lost.  ``busy_timeout`` makes a writer wait for the lock rather than
fail.  Expired rows are ignored on read and purged now and then.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import weakref
from typing import Mapping, Sequence

from .base import BucketResult, StoreUnavailable, bucket_refill, chunks

_SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (k TEXT PRIMARY KEY, v REAL NOT NULL, exp REAL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v BLOB NOT NULL, exp REAL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS buckets (k TEXT PRIMARY KEY, tokens REAL NOT NULL, last REAL NOT NULL, exp REAL) WITHOUT ROWID;
"""
_PURGE_EVERY = 10_000  # writes between purges of expired rows


class _Held:
    """One thread's connection, and the process that opened it.

    A holder rather than the bare connection in the thread-local slot because the store must
    also reach every connection from :meth:`SqliteStore.close`, which a weak set of holders
    allows (a ``sqlite3.Connection`` takes no weak reference) without keeping alive the
    connections of threads that ended: their thread-local slot, the only strong reference,
    goes with them, and the connection is closed as it is freed.
    """

    __slots__ = ("conn", "pid", "__weakref__")

    def __init__(self, conn: sqlite3.Connection):
        self.conn: sqlite3.Connection | None = conn
        self.pid = os.getpid()


class SqliteStore:
    def __init__(self, path: str | os.PathLike[str], timeout: float = 10.0):
        self.path = str(path)
        self.timeout = timeout
        self._local = threading.local()
        #: every open connection of this store, whichever thread opened it (see :meth:`close`)
        self._held: weakref.WeakSet[_Held] = weakref.WeakSet()
        self._held_lock = threading.Lock()
        self._writes = 0
        try:
            with self._conn() as c:
                c.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open SQLite store {self.path}: {exc}") from exc

    def _conn(self) -> sqlite3.Connection:
        """One connection per thread (each is used by its own thread only; ``check_same_thread`` is
        off so that :meth:`close` may close them all from one thread)."""
        held = getattr(self._local, "held", None)
        if held is None or held.conn is None or held.pid != os.getpid():  # first use, after close(), after fork
            c = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("PRAGMA synchronous=NORMAL")
            c.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
            held = self._local.held = _Held(c)
            with self._held_lock:
                self._held.add(held)
        return held.conn  # type: ignore[return-value]

    def _exec(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:  # type: ignore[type-arg]
        try:
            return self._conn().execute(sql, args)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"SQLite store {self.path}: {exc}") from exc

    def _wrote(self) -> None:
        self._writes += 1
        if self._writes % _PURGE_EVERY == 0:
            now = time.time()
            for table in ("counters", "kv", "buckets"):
                self._exec(f"DELETE FROM {table} WHERE exp IS NOT NULL AND exp <= ?", (now,))

    @staticmethod
    def _exp(ttl: float | None) -> float | None:
        return None if ttl is None else time.time() + ttl

    def incr(self, key: str, amount: float = 1.0, ttl: float | None = None) -> float:
        now = time.time()
        row = self._exec(
            "INSERT INTO counters (k, v, exp) VALUES (?, ?, ?) ON CONFLICT(k) DO UPDATE SET "
            "v = CASE WHEN counters.exp IS NOT NULL AND counters.exp <= ? THEN excluded.v ELSE counters.v + excluded.v END, "
            "exp = COALESCE(excluded.exp, CASE WHEN counters.exp IS NOT NULL AND counters.exp <= ? THEN NULL ELSE counters.exp END) "
            "RETURNING v",
            (key, amount, self._exp(ttl), now, now),
        ).fetchone()
        self._wrote()
        return float(row[0])

    def incr_many(self, amounts: Mapping[str, float], ttl: float | None = None) -> None:
        if not amounts:
            return
        now, exp = time.time(), self._exp(ttl)
        c = self._conn()
        try:
            c.execute("BEGIN IMMEDIATE")
            c.executemany(
                "INSERT INTO counters (k, v, exp) VALUES (?, ?, ?) ON CONFLICT(k) DO UPDATE SET "
                "v = CASE WHEN counters.exp IS NOT NULL AND counters.exp <= ? THEN excluded.v ELSE counters.v + excluded.v END, "
                "exp = COALESCE(excluded.exp, CASE WHEN counters.exp IS NOT NULL AND counters.exp <= ? THEN NULL ELSE counters.exp END)",
                [(k, a, exp, now, now) for k, a in amounts.items()],
            )
            c.execute("COMMIT")
        except sqlite3.Error as exc:
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise StoreUnavailable(f"SQLite store {self.path}: {exc}") from exc
        self._wrote()

    def get_counts(self, keys: Sequence[str]) -> list[float]:
        now = time.time()
        found: dict[str, float] = {}
        for part in chunks(keys, 500):
            marks = ",".join("?" * len(part))
            for k, v in self._exec(f"SELECT k, v FROM counters WHERE k IN ({marks}) AND (exp IS NULL OR exp > ?)",
                                   (*part, now)):
                found[k] = v
        return [float(found.get(k, 0.0)) for k in keys]

    def get(self, key: str) -> bytes | None:
        row = self._exec("SELECT v FROM kv WHERE k = ? AND (exp IS NULL OR exp > ?)", (key, time.time())).fetchone()
        return bytes(row[0]) if row else None

    def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        self._exec("INSERT INTO kv (k, v, exp) VALUES (?, ?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v, exp = excluded.exp",
                   (key, bytes(value), self._exp(ttl)))
        self._wrote()

    def add(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        # Replace an expired row, keep a live one: one statement, so two processes cannot both win.
        cur = self._exec(
            "INSERT INTO kv (k, v, exp) VALUES (?, ?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v, exp = excluded.exp "
            "WHERE kv.exp IS NOT NULL AND kv.exp <= ?",
            (key, bytes(value), self._exp(ttl), time.time()),
        )
        self._wrote()
        return cur.rowcount == 1

    def compare_and_set(self, key: str, expected: bytes | None, new: bytes | None, ttl: float | None = None) -> bool:
        # One conditional statement each, checked by its rowcount: SQLite runs a statement under the write
        # lock, so of several processes expecting the same value exactly one changes it.
        now = time.time()
        if expected is None:
            if new is None:
                return self.get(key) is None
            return self.add(key, new, ttl)
        if new is None:
            cur = self._exec("DELETE FROM kv WHERE k = ? AND v = ? AND (exp IS NULL OR exp > ?)",
                             (key, bytes(expected), now))
        else:
            cur = self._exec("UPDATE kv SET v = ?, exp = ? WHERE k = ? AND v = ? AND (exp IS NULL OR exp > ?)",
                             (bytes(new), self._exp(ttl), key, bytes(expected), now))
            self._wrote()
        return cur.rowcount == 1

    def delete(self, key: str) -> bool:
        now = time.time()
        live = False
        for table in ("kv", "counters", "buckets"):
            for (exp,) in self._exec(f"DELETE FROM {table} WHERE k = ? RETURNING exp", (key,)).fetchall():
                live = live or exp is None or exp > now
        return live

    def take(self, key: str, rate: float, burst: float, cost: float = 1.0, now: float | None = None) -> BucketResult:
        now = time.time() if now is None else now
        c = self._conn()
        try:
            c.execute("BEGIN IMMEDIATE")
            row = c.execute("SELECT tokens, last FROM buckets WHERE k = ? AND (exp IS NULL OR exp > ?)", (key, time.time())).fetchone()
            tokens = bucket_refill(row[0], row[1], now, rate, burst) if row else burst
            allowed = tokens >= cost
            if allowed:
                tokens -= cost
            exp = time.time() + (burst / rate if rate > 0 else 86400) + 1
            c.execute("INSERT INTO buckets (k, tokens, last, exp) VALUES (?, ?, ?, ?) ON CONFLICT(k) DO UPDATE SET "
                      "tokens = excluded.tokens, last = excluded.last, exp = excluded.exp", (key, tokens, now, exp))
            c.execute("COMMIT")
        except sqlite3.Error as exc:
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise StoreUnavailable(f"SQLite store {self.path}: {exc}") from exc
        return BucketResult(allowed, tokens)

    def ping(self) -> bool:
        try:
            self._exec("SELECT 1")
            return True
        except StoreUnavailable:
            return False

    def close(self) -> None:
        """Close the connections every thread of this process opened (each holds the database, its
        -wal and -shm files open).  Closing only the calling thread's, as this did, left one
        connection per other thread that had used the store (a thread pool's workers scanning or
        learning) open after ``Engine.close()``, three descriptors each, for every engine closed.
        Connections inherited from a parent process are not this process's to close."""
        with self._held_lock:
            held, self._held = list(self._held), weakref.WeakSet()
        pid = os.getpid()
        for h in held:
            if h.pid == pid and h.conn is not None:
                c, h.conn = h.conn, None
                c.close()
