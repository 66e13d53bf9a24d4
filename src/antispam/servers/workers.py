"""Scan worker processes fed by the server's event loop (``workers = N``).

Each worker is a process holding its own :class:`~antispam.engine.Engine`, joined
to the server by a socket pair.  A request is a length-prefixed pickle of
``(raw, envelope fields, profile)``; the reply is a length-prefixed pickle of the
verdict packed into plain tuples (:func:`pack_verdict`).

Why not ``concurrent.futures.ProcessPoolExecutor``: it moves every call through
two helper threads and two queues in the server process (a feeder thread
pickling into a pipe, a management thread reading results and waking the loop
through its self-pipe), and those threads take the GIL from the event loop
several times a message.  Measured on the benchmark, that hand-off cost the
server process more CPU per message than the scan saved it.  Here the loop
itself writes the request and reads the reply as one more socket among its
connections: no thread, no wake-up pipe, and the server's CPU per message is
the protocol plus a pickle of the request and the unpacking of a small reply.

Each worker gets up to ``DEPTH`` requests at a time (the next ones wait in its
socket buffer), so it never idles while the loop is busy elsewhere; more
requests than that wait in the pool, first come first served.  A worker that
dies (killed for memory, a crash in native code) fails only the requests it
held; they are sent once more to a fresh worker that replaces it.

A request without a message asks the worker for its DNS lists' counters instead
(:meth:`WorkerPool.poll_lists`, once a second when the server exports metrics).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import multiprocessing
import pickle
import signal
import socket
import struct
from typing import TYPE_CHECKING, Any

from ..config import Config
from ..message import Envelope
from ..verdict import SymbolResult, Verdict
from .metrics import LIST_COUNTER_KEYS

if TYPE_CHECKING:
    from ..reputation.dnsbl import ListStats

log = logging.getLogger("antispam.servers")

#: requests handed to one worker before it answers the first.  2 would cover a round trip, but
#: under load the loop serves other connections before it sends the next request, and a worker
#: that finds its socket empty sleeps and wakes (cold caches) for each message, while the loop
#: parks the requests beyond the slots on a semaphore.  With 8, the SMTP filter's CPU per message
#: at 16 clients (docs/servers.md) fell by ~40 us in the loop and ~40 us in the workers.  The price:
#: a worker that dies fails (and re-sends) up to 8 requests, and one slow scan delays those queued
#: behind it (a new request goes to the worker with the fewest).
DEPTH = 8
_LEN = struct.Struct(">Q")
#: a request without a message: the worker answers with its DNS lists' counters
_ASK_LISTS = pickle.dumps((None, None, None), protocol=pickle.HIGHEST_PROTOCOL)
_ENVELOPE_FIELDS = tuple(f.name for f in dataclasses.fields(Envelope))


class WorkerDied(Exception):
    """The worker holding the request exited before answering."""


class WorkerError(Exception):
    """The scan raised inside the worker; the message is the worker's description of it."""


# --------------------------------------------------------------------------- the reply's shape


def pack_verdict(v: Verdict) -> tuple:
    """The verdict as plain tuples, which pickle and unpickle several times faster than the
    dataclasses (25 + 13 us against 5 + 6 us a typical verdict).  The per-check ``timings``
    stay in the worker: the protocols show only the total."""
    return (v.score, v.required_score, v.action,
            [(s.name, s.score, s.weight, s.options, s.description, s.group) for s in v.symbols.values()],
            dict(v.thresholds), v.timings.get("total", 0.0), v.skipped, v.message_id,
            v.authentication_results, v.subject, v.subject_prefix, v.authserv_id)


def unpack_verdict(t: tuple) -> Verdict:
    score, required, action, symbols, thresholds, total, skipped, message_id, authres, subject, prefix, authserv_id = t
    return Verdict(score, required, action, {s[0]: SymbolResult(*s) for s in symbols}, thresholds,
                   {"total": total}, skipped, message_id, authres, subject, prefix, authserv_id)


# --------------------------------------------------------------------------- DNS-list counters


def list_snapshot(engine: Any) -> dict[str, tuple]:
    """The engine's DNS lists' counters since start-up: name -> (queries, listed, errors, seconds, healthy)."""
    out: dict[str, tuple] = {}
    for check in getattr(engine, "checks", ()):
        stats = getattr(check, "stats", None)
        if isinstance(stats, dict):
            for name, st in list(stats.items()):
                out[name] = (*(getattr(st, k) for k in LIST_COUNTER_KEYS), st.healthy)
    return out


# --------------------------------------------------------------------------- the worker process


def _recv_exactly(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            return None
        got += k
    return bytes(buf)


def worker_main(config: Config, sock: socket.socket) -> None:
    """A worker's life: build the engine, then scan requests until the server closes the socket."""
    # Ctrl-C reaches the whole process group; the server drains on it and still needs its workers.
    # A hangup too: the server reloads on it, and starts new workers for that itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from ..engine import Engine

    engine = Engine(config)
    while True:
        head = _recv_exactly(sock, _LEN.size)
        if head is None:
            return
        data = _recv_exactly(sock, _LEN.unpack(head)[0])
        if data is None:
            return
        raw, fields, profile = pickle.loads(data)
        if raw is None:  # the server asks for the DNS lists' counters (WorkerPool.poll_lists)
            out: tuple = (True, list_snapshot(engine))
        else:
            envelope = None if fields is None else Envelope(*fields)
            try:
                out = (True, pack_verdict(engine.scan(raw, envelope, profile=profile)))
            except Exception as exc:  # the server logs and answers it (fail open, or tempfail)
                out = (False, f"{type(exc).__name__}: {exc}"[:500])
        body = pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL)
        sock.sendall(_LEN.pack(len(body)) + body)


# --------------------------------------------------------------------------- the server side


class _Worker(asyncio.Protocol):
    """The server's end of one worker: its process, its socket, its requests in flight."""

    def __init__(self, pool: "WorkerPool", process: Any, sock: socket.socket):
        self.pool = pool
        self.process = process
        self.sock = sock
        self.transport: asyncio.Transport | None = None
        self._attaching: asyncio.Future | None = None
        #: futures of the requests sent and not yet answered, oldest first (replies come in order)
        self.pending: collections.deque[asyncio.Future] = collections.deque()
        self.buf = bytearray()
        #: the socket closed (the worker died or the pool is shutting down): it takes no request
        self.lost = False

    async def attach(self) -> None:
        """Join the socket to the running loop (at first use: the pool is built outside it)."""
        if self.transport is None:
            if self._attaching is None:
                loop = asyncio.get_running_loop()
                self._attaching = asyncio.ensure_future(loop.create_unix_connection(lambda: self, sock=self.sock))
            await asyncio.shield(self._attaching)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while len(buf) >= _LEN.size:
            (n,) = _LEN.unpack_from(buf)
            if len(buf) < _LEN.size + n:
                return
            body = bytes(buf[_LEN.size:_LEN.size + n])
            del buf[:_LEN.size + n]
            fut = self.pending.popleft()
            if not fut.done():  # a cancelled request (client gone) is simply dropped
                fut.set_result(body)
            self.pool.deaths = 0

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        pending, self.pending = self.pending, collections.deque()
        for fut in pending:
            if not fut.done():
                fut.set_exception(WorkerDied(f"scan worker {self.process.pid} exited"))
        self.pool._lost(self)

    def send(self, payload: bytes) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        if self.lost:  # a write to a closed transport is dropped: the reply would never come
            fut.set_exception(WorkerDied(f"scan worker {self.process.pid} exited"))
            return fut
        self.pending.append(fut)
        assert self.transport is not None
        self.transport.write(_LEN.pack(len(payload)) + payload)
        return fut

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        else:
            self.sock.close()


class WorkerPool:
    """``n`` scan processes for one server; see the module docstring."""

    #: workers dying one after another without a reply between them: the pool gives up (a worker
    #: that cannot even build its engine would otherwise be restarted for ever)
    MAX_DEATHS = 5

    def __init__(self, config: Config, n: int):
        self.config = config
        # Not fork: a worker forked while connections are open would inherit their sockets and
        # keep them open after the server closes them (the client never sees EOF).
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        self._ctx = multiprocessing.get_context(method)
        self._size = n
        self._workers: list[_Worker] = [self._spawn() for _ in range(n)]
        #: requests in flight or queued in the workers' sockets, at most DEPTH per worker; the
        #: rest wait here, first come first served
        self._slots: asyncio.Semaphore | None = None
        self.deaths = 0
        self._closed = False
        #: worker pid -> its DNS lists' counters when last asked (poll_lists); those of the workers
        #: that died are added into ``_retired`` (a snapshot of sums), so that the sums never go down
        self._lists: dict[int, dict[str, tuple]] = {}
        self._retired: dict[str, tuple] = {}

    def _spawn(self) -> _Worker:
        ours, theirs = socket.socketpair()
        process = self._ctx.Process(target=worker_main, args=(self.config, theirs), daemon=True,
                                    name="antispam-scan")
        process.start()
        theirs.close()
        return _Worker(self, process, ours)

    def pids(self) -> list[int]:
        """The worker processes' ids (for operators, and for tests that kill one)."""
        return [w.process.pid for w in self._workers]

    async def scan(self, raw: bytes, envelope: Envelope | None, profile: str | None) -> Verdict:
        """The verdict from a worker; WorkerError when the scan raised there, WorkerDied when
        the worker died twice under this message (or the pool is shut down)."""
        # the envelope as a tuple of its fields: a slotted dataclass pickles field by field through
        # dataclasses' own hooks, several times slower
        fields = None if envelope is None else tuple(getattr(envelope, f) for f in _ENVELOPE_FIELDS)
        payload = pickle.dumps((raw, fields, profile), protocol=pickle.HIGHEST_PROTOCOL)
        if self._slots is None:
            self._slots = asyncio.Semaphore(DEPTH * self._size)
        for attempt in (0, 1):
            async with self._slots:
                if self._closed or self.deaths >= self.MAX_DEATHS or not self._workers:
                    raise WorkerDied("the scan workers are shut down" if self._closed else
                                     "the scan workers keep dying; see the log")
                worker = min(self._workers, key=lambda w: len(w.pending))
                await worker.attach()
                try:
                    body = await worker.send(payload)
                except WorkerDied:
                    if attempt:
                        raise
                    continue
            ok, value = pickle.loads(body)
            if not ok:
                raise WorkerError(value)
            return unpack_verdict(value)
        raise AssertionError("unreachable")

    async def ready(self) -> None:
        """Return once every worker has built its engine and answered (a request for its DNS lists'
        counters, which it reads only after the build); WorkerDied when one died first."""
        for w in list(self._workers):
            await self._ask_lists(w)

    def start_from(self, other: "WorkerPool") -> None:
        """Count on from ``other``'s DNS lists' counters (the pool this one replaces at a reload), so
        the counters the server exports never go down."""
        for snapshot in (other._retired, *other._lists.values()):
            self._retire(snapshot)

    async def poll_lists(self) -> None:
        """Ask every worker for its DNS lists' counters (a request queued behind its scans)."""
        for w in list(self._workers):
            if self._closed:
                return
            try:
                await self._ask_lists(w)
            except (WorkerDied, OSError):
                continue  # its replacement answers next time

    async def _ask_lists(self, w: _Worker) -> None:
        await w.attach()
        ok, snapshot = pickle.loads(await w.send(_ASK_LISTS))
        if ok and w in self._workers:
            self._lists[w.process.pid] = snapshot

    def _retire(self, snapshot: dict[str, tuple]) -> None:
        """Add a snapshot's counts (a dead worker's, a replaced pool's) into the sums, for good."""
        n, retired = len(LIST_COUNTER_KEYS), self._retired
        for name, v in snapshot.items():
            before = retired.get(name, (0,) * n)
            retired[name] = (*(a + b for a, b in zip(before, v[:n])), True)

    async def poll_lists_forever(self, every: float = 1.0) -> None:
        """:meth:`poll_lists` every ``every`` seconds, until cancelled."""
        while True:
            await self.poll_lists()
            await asyncio.sleep(every)

    def list_totals(self) -> dict[str, ListStats]:
        """The DNS lists' counters summed over the workers as last asked, healthy in all of them
        (read at scrape time)."""
        from ..reputation.dnsbl import ListStats

        out: dict[str, ListStats] = {}
        for snapshot in (self._retired, *self._lists.values()):
            for name, values in snapshot.items():
                st = out.get(name)
                if st is None:
                    st = out[name] = ListStats()
                for key, v in zip(LIST_COUNTER_KEYS, values):
                    setattr(st, key, getattr(st, key) + v)
                st.healthy = st.healthy and bool(values[len(LIST_COUNTER_KEYS)])
        return out

    def _lost(self, worker: _Worker) -> None:
        """A worker's socket closed: unless we are shutting down, it died; start its replacement."""
        last = self._lists.pop(worker.process.pid, None)
        if last:  # its counts stay in the sums; it says nothing more of the lists' health
            self._retire(last)
        if self._closed or worker not in self._workers:
            return
        self.deaths += 1
        worker.process.join(0)
        log.warning("scan worker %s died (exit code %s); starting another", worker.process.pid,
                    worker.process.exitcode)
        if self.deaths < self.MAX_DEATHS:
            self._workers[self._workers.index(worker)] = self._spawn()
        else:
            # Not replaced: out of the choice, or once a live worker's reply resets ``deaths``, new
            # requests would go to it (it holds none) and wait for ever for its answer.
            self._workers.remove(worker)

    def close(self, timeout: float = 5.0) -> None:
        """Close the sockets (the workers exit at EOF), wait for them, then kill stragglers."""
        self._closed = True
        for w in self._workers:
            w.close()
        for w in self._workers:
            w.process.join(timeout)
            if w.process.is_alive():
                w.process.kill()
                w.process.join(1.0)
