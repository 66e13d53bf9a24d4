"""What every server shares: the listening loop, allow-list, limits, scanning, draining, logs.

Each protocol module (spamd, milter, smtp, rspamd_http) subclasses :class:`Server`
and writes only ``handle(conn)``: the base class accepts the connection, refuses
clients outside the allow-list and connections past ``max_connections`` (at most
``max_connections`` refusals linger at a time, the rest are closed at once),
applies the per-connection timeout to every read and, where the protocol notes
when a request began (spamd, rspamd-http), ``request_timeout`` to the whole
request, counts the connection in the metrics, and on shutdown stops accepting,
lets every request already started (a byte of it arrived) or being scanned
finish (up to ``shutdown_timeout``), and closes idle connections at once.

Scanning goes through :class:`Scanner`.  With ``workers = 0`` it awaits
``Engine.ascan`` in the server's event loop: the default content checks take
well under a millisecond per message, less than a hop to another process
costs, so the loop is the fastest place.  With ``workers = N`` it hands the
raw bytes to a pool of N processes, each holding its own Engine: this is what
keeps the loop responsive and uses every core once rules and the classifier
make a scan cost milliseconds.  ``benchmarks/servers.py`` measures both.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import signal
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

from ..config import EVENT_LOOPS, Config, ServerConfig
from ..engine import Engine
from ..message import Envelope, _split_head_body
from ..reputation.netkeys import in_networks, parse_network
from ..auth.authres import strip_forged
from ..verdict import Verdict
from .metrics import LIST_COUNTER_KEYS
from .workers import WorkerPool, list_snapshot

if TYPE_CHECKING:
    from .prefork import SharedListener

log = logging.getLogger("antispam.servers")


class ProtocolError(Exception):
    """The client broke the protocol; the connection is answered (if the protocol can) and closed."""


class TooBig(ProtocolError):
    """The message is larger than ``max_size``."""


#: a length header's value (spamd's Content-length, HTTP's Content-Length): ASCII digits only, as
#: spamd's got_clen_header (/^(\d*)$/) and RFC 9110 8.6 (1*DIGIT) take it, where int() would also
#: take "+5", "5_0", "-0" or full-width digits; at most 18, past any size we take (8.6 asks
#: recipients to guard against overflowing numerals)
_LENGTH = re.compile(r"[0-9]{1,18}")


def parse_length(text: str) -> int | None:
    """The length ``text`` announces, or None when it is not one (see :data:`_LENGTH`)."""
    return int(text) if _LENGTH.fullmatch(text) else None


class RequestError(Exception):
    """One request refused with the protocol's own code for it (spamd's ``EX_*`` code, an HTTP
    status); the server answers it and, where the protocol allows, the connection goes on."""

    def __init__(self, code: int, text: str):
        super().__init__(text)
        self.code = code
        self.text = text


# --------------------------------------------------------------------------- allow-list


class AllowList:
    """Client networks allowed to connect.  An empty list allows nobody.

    Networks are read and addresses compared as the reputation checks' are
    (:mod:`antispam.reputation.netkeys`), IPv4-mapped IPv6 ones as IPv4.
    """

    def __init__(self, networks: Iterable[str]):
        nets = []
        for n in networks:
            try:
                nets.append(parse_network(n.strip()))
            except ValueError as exc:
                from ..errors import ConfigError

                raise ConfigError(f"not a network: {n!r} ({exc})", key="allow") from None
        self.networks = tuple(nets)

    def allows(self, ip: str | None) -> bool:
        # an IPv6 peer's zone (``fe80::1%eth0``) names our interface, not the peer: dropped
        return in_networks(ip.split("%", 1)[0] if ip else None, self.networks)


# --------------------------------------------------------------------------- scanning


class _Generation:
    """One engine (and its scan workers) as loaded from one configuration, and the scans and learns
    running on it: a reload starts a new generation, and the old one is closed when its last scan
    is done (:meth:`Scanner.replace`)."""

    __slots__ = ("engine", "pool", "active", "retired", "keep_store")

    def __init__(self, engine: Engine, pool: WorkerPool | None):
        self.engine = engine
        self.pool = pool
        self.active = 0
        self.retired = False
        #: the next generation goes on with this engine's store: closing this one leaves it open
        self.keep_store = False

    def done(self) -> None:
        self.active -= 1
        if self.retired and not self.active:
            self.close()

    def close(self) -> None:
        pool, self.pool = self.pool, None
        if pool is not None:
            # in a thread: closing waits for the worker processes to exit (the loop serves on)
            asyncio.get_running_loop().run_in_executor(None, pool.close)
        self.engine.close(keep_store=self.keep_store)


class Scanner:
    """Scans for a server: in the event loop (``workers=0``) or in worker processes
    (:class:`~antispam.servers.workers.WorkerPool`).

    Learning always runs on the server process's engine (in a thread, since a
    store may do I/O); with worker processes the learned state reaches the
    workers only through a shared store (SQLite or Redis), as documented.

    A reload (:meth:`replace`) swaps the engine and the workers between two messages: each scan
    and learn runs whole on the ones it started on, and those are closed after the last of them.
    """

    def __init__(self, engine: Engine, workers: int = 0):
        self.workers = workers
        pool = None
        if workers > 0:
            if engine._custom_checks:
                raise ValueError("worker processes build their engine from configuration; "
                                 "an engine with custom checks must scan in-process (workers = 0)")
            pool = WorkerPool(engine.config, workers)
        self._gen = _Generation(engine, pool)

    @property
    def engine(self) -> Engine:
        return self._gen.engine

    @property
    def pool(self) -> WorkerPool | None:
        return self._gen.pool

    async def scan(self, raw: bytes, envelope: Envelope | None = None, profile: str | None = None) -> Verdict:
        """One verdict under ``profile`` (a ``[profiles]`` name; None for the default policy).

        A worker that dies (killed for memory, a crash in native code) is replaced and the
        messages it held are scanned once more by another, so one bad moment costs them a
        retry rather than the server its scanning.
        """
        gen = self._gen
        gen.active += 1
        try:
            if gen.pool is None:
                return await gen.engine.ascan(raw, envelope, profile=profile)
            return await gen.pool.scan(raw, envelope, profile)
        finally:
            gen.done()

    def profile_for(self, who: str | None) -> str | None:
        """The settings profile of a recipient address or user name (``[recipients]``)."""
        return self._gen.engine.config.profile_for(who)

    async def learn(self, raw: bytes, spam: bool, source: str) -> dict[str, bool]:
        return await self._in_thread("learn", raw, spam, None, source)

    async def unlearn(self, raw: bytes) -> dict[str, bool]:
        return await self._in_thread("unlearn", raw)

    async def _in_thread(self, method: str, *args: Any) -> Any:
        """The engine's ``method`` in a thread, counted in its generation."""
        gen = self._gen
        gen.active += 1
        try:
            return await asyncio.to_thread(getattr(gen.engine, method), *args)
        finally:
            gen.done()

    async def build(self, config: Config) -> tuple[Engine, WorkerPool | None]:
        """An engine (and, with workers, a pool whose workers have each built theirs) from ``config``,
        built beside the ones scanning now, for :meth:`replace`.  The store is handed on when
        ``[store]`` is unchanged: what was learned in a memory store stays, and a shared one is not
        opened twice.  Raises what the build raises (a ConfigError for a bad rule), nothing replaced."""
        old = self._gen.engine
        if old._custom_checks:
            raise ValueError("an engine with custom checks cannot be rebuilt from configuration")
        store = old.store if config.store == old.config.store else None
        engine = await asyncio.to_thread(Engine, config, store=store)
        pool = None
        try:
            if self.workers > 0:
                pool = WorkerPool(config, self.workers)
                await pool.ready()
        except BaseException:
            if pool is not None:
                pool.close()
            engine.close(keep_store=store is not None)
            raise
        return engine, pool

    def replace(self, engine: Engine, pool: WorkerPool | None) -> None:
        """Scan with ``engine`` and ``pool`` (from :meth:`build`) from the next message on; the old
        ones are closed once the scans and learns running on them are done."""
        old = self._gen
        _carry_list_counters(old, engine, pool)
        self._gen = _Generation(engine, pool)
        old.keep_store = old.engine.store is engine.store
        old.retired = True
        if not old.active:
            old.close()

    def list_totals(self) -> dict[str, Any]:
        """The scan workers' DNS lists' counters (see ``WorkerPool.list_totals``), of the workers now."""
        pool = self._gen.pool
        return pool.list_totals() if pool is not None else {}

    async def poll_lists_forever(self, every: float = 1.0) -> None:
        """``WorkerPool.poll_lists`` every ``every`` seconds, of the workers scanning now, until cancelled."""
        while True:
            pool = self._gen.pool
            if pool is not None:
                await pool.poll_lists()
            await asyncio.sleep(every)

    def close(self) -> None:
        self._gen.retired = True
        if self._gen.pool is not None:
            self._gen.pool.close()
            self._gen.pool = None


def _carry_list_counters(old: _Generation, engine: Engine, pool: WorkerPool | None) -> None:
    """The DNS lists' counters go on from where the old generation left them (Prometheus counters
    only grow): added into the new engine's, or into what the new workers start from."""
    if pool is not None and old.pool is not None:
        pool.start_from(old.pool)
    before = list_snapshot(old.engine)
    if not before:
        return
    for c in engine.checks:
        stats = getattr(c, "stats", None)
        if isinstance(stats, dict):
            for name, st in stats.items():
                for key, value in zip(LIST_COUNTER_KEYS, before.get(name, ())):
                    setattr(st, key, getattr(st, key) + value)


# --------------------------------------------------------------------------- connections


@dataclass
class Connection:
    """One client connection, as the protocol handler sees it."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    peer_ip: str
    peer_port: int
    timeout: float
    #: True while a message is being received or scanned: shutdown waits for it (and for a
    #: connection whose next bytes have arrived unread: ``Server.stop``)
    busy: bool = False
    #: when the read in progress began waiting (time.monotonic()), None between reads
    waiting_since: float | None = None
    #: when the request being read began (time.monotonic()), None outside one: the protocol
    #: notes it (spamd at the connection's start, rspamd-http at each request line) and clears
    #: it once the request is read; the sweeper ends a request older than ``request_timeout``
    request_since: float | None = None
    #: set by the server's sweeper when a read waited longer than ``timeout``, or a request
    #: took longer than ``request_timeout``
    timed_out: bool = False
    #: this connection's answer to a request cut off by a timeout, where it is not the server's
    #: (``Server.timeout_reply``): a connection that turned out to speak another protocol
    timeout_reply: bytes | None = None

    # Read timeouts are enforced by the server's sweeper (Server._sweep), which ends a connection
    # whose read has waited longer than ``timeout``, rather than by a timer per read: the milter
    # reads two dozen times a message, and arming and cancelling a timer for each read
    # (asyncio.timeout) was a quarter of its protocol's CPU.  A read only notes when it began.
    # The whole-request deadline is the same: a timestamp the protocol notes, the sweeper reads.

    async def readline(self, limit: int) -> bytes:
        """One line including its terminator, or b"" at EOF; ProtocolError past ``limit`` bytes."""
        self.waiting_since = time.monotonic()
        try:
            line = await self.reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            return exc.partial
        except asyncio.LimitOverrunError:
            raise ProtocolError("line too long") from None
        finally:
            self.waiting_since = None
        if len(line) > limit:
            raise ProtocolError("line too long")
        return line

    async def readexactly(self, n: int) -> bytes:
        self.waiting_since = time.monotonic()
        try:
            return await self.reader.readexactly(n)
        except asyncio.IncompleteReadError:
            raise ProtocolError(f"connection closed before {n} bytes arrived") from None
        finally:
            self.waiting_since = None

    async def read_some(self, n: int = 65536) -> bytes:
        """Up to ``n`` bytes, b"" at EOF."""
        self.waiting_since = time.monotonic()
        try:
            return await self.reader.read(n)
        finally:
            self.waiting_since = None

    async def discard(self, n: int) -> None:
        """Read and drop ``n`` bytes (or until EOF), each read under the timeout."""
        while n > 0:
            chunk = await self.read_some(min(n, 65536))
            if not chunk:
                return
            n -= len(chunk)

    async def write(self, data: bytes) -> None:
        # A client that reset the connection while its request was scanned or learned: asyncio's
        # transport drops the write, but uvloop's raises RuntimeError ("the handler is closed"),
        # which was logged as an internal failure ("handler failed", with a traceback).  It is a
        # connection lost, and handled as one.
        if self.writer.transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        self.writer.write(data)
        if self.writer.transport.get_write_buffer_size() > 0:
            async with asyncio.timeout(self.timeout):
                await self.writer.drain()


class Server:
    """A TCP server for one protocol; subclasses implement :meth:`handle`."""

    #: short name used in logs and metrics labels
    name = "server"
    #: the protocol's last answer to a request cut off by a timeout (sent before the close, as
    #: :func:`linger` sends); empty: closed without one
    timeout_reply = b""
    #: whether bytes that arrived unread make a connection in flight at shutdown: true where any
    #: byte starts a request that ends the connection or its turn (spamd, rspamd-http); the milter
    #: keeps its own rule (busy from a message's first packet to its end: the MTA's session goes on
    #: after other packets, and would hold the drain to ``shutdown_timeout``)
    in_flight_on_input = False

    def __init__(self, engine: Engine, settings: ServerConfig, *, scanner: Scanner | None = None,
                 metrics: Any = None):
        self.engine = engine
        self.settings = settings
        self.scanner = scanner or Scanner(engine, settings.workers)
        self._own_scanner = scanner is None
        self.allow = AllowList(settings.allow)
        self.metrics = metrics
        self.log = logging.getLogger(f"antispam.servers.{self.name}")
        self._server: asyncio.base_events.Server | None = None
        self._listener: SharedListener | None = None
        #: clients come over a Unix-domain socket (``settings.socket``): the file's permissions say who
        #: may connect, and the allow-list, which is of networks, does not apply
        self.local_socket = bool(settings.socket)
        #: (device, inode) of the socket file this process made, removed at stop; None otherwise
        self._socket_made: tuple[int, int] | None = None
        self._tasks: dict[asyncio.Task, Connection] = {}
        self._sweeper: asyncio.Task | None = None
        #: seconds a whole request may take (``request_timeout``: spamd, rspamd-http; None elsewhere)
        self.request_timeout: float | None = getattr(settings, "request_timeout", None)
        #: refused connections being answered and drained now (see _refuse_and_close)
        self._refusing = 0
        self.closing = False
        #: a reload under way (SIGHUP), and whether another was asked for meanwhile
        self._reloading: asyncio.Future | None = None
        self._reload_again = False

    # ------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0: the kernel picked one); 0 on a Unix-domain socket."""
        if self.local_socket:
            return 0
        if self._listener is not None:
            return self._listener.port
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    @property
    def address(self) -> str:
        """Where the server listens: ``host:port``, or ``unix:/path``."""
        from .prefork import address

        return address(self.settings, self.port)

    async def _adopt(self, sock: socket.socket) -> None:
        """Serve a connection accepted by a shared listener, as ``start_server`` serves its own."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=64 * 1024, loop=loop)
        await loop.connect_accepted_socket(lambda: asyncio.StreamReaderProtocol(reader, self._accept, loop=loop), sock)

    def _open_count(self) -> int:
        """Connections open now: what a shared listener publishes to the other processes."""
        return len(self._tasks)

    def _take_from(self, listener: SharedListener) -> None:
        self._listener = listener
        listener.start(self._adopt, self._open_count)

    def _stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._listener is not None:
            self._listener.close()
        self._remove_socket_file()

    async def start(self, listener: SharedListener | None = None) -> None:
        """Listen on ``settings.host:port``, or take connections from ``listener`` (the socket
        prefork processes share, see ``prefork.py``)."""
        if self.metrics is not None:
            # first: a metrics port in use fails the start before a client could connect
            self.metrics.start_http(self.settings)
        if listener is not None:
            self._take_from(listener)
        elif self.local_socket:
            from .prefork import unix_listening_socket

            sock, self._socket_made = unix_listening_socket(self.settings)
            try:
                self._server = await self._listen(sock)
            except BaseException:
                sock.close()
                self._remove_socket_file()
                raise
        else:
            try:
                self._server = await self._listen()
            except OSError as exc:
                from .prefork import listen_error

                raise listen_error(self.settings.host, self.settings.port, exc) from None
        self._started()
        from .prefork import address_fields

        self.log.info("listening", extra={"fields": {"server": self.name, **address_fields(self.settings, self.port),
                                                     **self._described()}})

    async def _listen(self, sock: socket.socket | None = None) -> asyncio.AbstractServer:
        """The listening server on ``settings.host:port``, or on ``sock``, a bound Unix-domain socket
        (a protocol with its own transport handling, the SMTP filter's, makes its own)."""
        if sock is not None:
            return await asyncio.start_unix_server(self._accept, sock=sock, limit=64 * 1024)
        return await asyncio.start_server(self._accept, self.settings.host, self.settings.port,
                                          limit=64 * 1024, reuse_address=True)

    def _remove_socket_file(self) -> None:
        from .prefork import remove_socket_file

        remove_socket_file(self.settings.socket, self._socket_made)
        self._socket_made = None

    def _started(self) -> None:
        """Taking connections: the sweeper of read and request timeouts starts."""
        self._sweeper = asyncio.create_task(self._sweep())

    def _described(self) -> dict[str, Any]:
        """What the "listening" line says besides the address."""
        return {"workers": self.settings.workers}

    async def stop(self) -> None:
        """Graceful: stop accepting, close idle connections, wait for in-flight messages.

        A connection is in flight when busy (a request started: spamd from its request line,
        HTTP from each request line, the milter from a message's first packet) or, with
        ``in_flight_on_input``, when bytes of its next request have arrived that the handler has
        not taken yet (a request line cut in two): a client still sending its request is
        answered, not dropped.  One with nothing sent is closed at once."""
        self.closing = True
        self._stop_accepting()
        # Two turns of the loop, so bytes already in the kernel reach the readers before we look
        # (asyncio runs this task before the read callbacks of the turn that found them).
        for _ in range(2):
            await asyncio.sleep(0)
        on_input = self.in_flight_on_input
        for task, conn in list(self._tasks.items()):
            if not conn.busy and not (on_input and _has_input(conn.reader)):
                task.cancel()
        pending = [t for t in self._tasks]
        if pending:
            done, still = await asyncio.wait(pending, timeout=self.settings.shutdown_timeout)
            for t in still:
                t.cancel()
            if still:
                self.log.warning("shutdown cut off in-flight connections",
                                 extra={"fields": {"server": self.name, "count": len(still)}})
                await asyncio.wait(still, timeout=1.0)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._own_scanner:
            self.scanner.close()
        if self.metrics is not None:
            self.metrics.close()

    async def reload(self, config: Config) -> None:
        """Scan with an engine built from ``config`` from the next message on (what SIGHUP does, see
        :meth:`wait_for_signal`): built beside the engine scanning now, with new scan workers when
        there are workers, and swapped in between messages; the old ones are closed once their last
        message is done, so no message is dropped or scanned twice.  A configuration or rule error
        raises before anything changes: the server goes on as it was.  The server's own settings
        (``[servers.NAME]``: address, limits, workers) are the ones it started with."""
        engine, pool = await self.scanner.build(config)
        self.scanner.replace(engine, pool)
        self.engine = engine
        if self.metrics is not None:
            self.metrics.watch_engine(engine)

    async def serve_forever(self) -> None:
        """Run until SIGTERM or SIGINT, then shut down gracefully."""
        await self.start()
        await self.wait_for_signal()

    async def wait_for_signal(self, load: Callable[[], Config] | None = None,
                              ready: Callable[[], None] | None = None) -> None:
        """Block until SIGTERM or SIGINT, then shut down gracefully.  With ``load`` (what reads the
        configuration again), SIGHUP reloads: :meth:`reload` with what ``load`` returns, logged as
        ``reloaded`` or ``reload failed`` (the server then goes on as it was).  ``ready()`` is
        called once the handlers are in place: a SIGTERM sent as soon as a server says it listens
        (a service manager stopping it at once) drains it, where the default action killed it."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        if load is not None:
            with contextlib.suppress(NotImplementedError, AttributeError):
                loop.add_signal_handler(signal.SIGHUP, self._reload_soon, load)
        if ready is not None:
            ready()
        await stop.wait()
        self.log.info("shutting down", extra={"fields": {"server": self.name, "in_flight": len(self._tasks)}})
        if self._reloading is not None:
            self._reloading.cancel()  # a build under way is thrown away (its thread ends by itself)
            await asyncio.gather(self._reloading, return_exceptions=True)
        await self.stop()

    def _reload_soon(self, load: Callable[[], Config]) -> None:
        """SIGHUP: reload, or, while a reload runs, once more after it (the files may have changed
        since it read them)."""
        if self.closing:
            return
        if self._reloading is not None and not self._reloading.done():
            self._reload_again = True
            return
        self._reloading = asyncio.ensure_future(self._reload_from(load))

    async def _reload_from(self, load: Callable[[], Config]) -> None:
        while True:
            self._reload_again = False
            t0 = time.monotonic()
            self.log.info("reloading", extra={"fields": {"server": self.name}})
            try:
                await self.reload(await asyncio.to_thread(load))
            except Exception as exc:
                self.log.error("reload failed; serving on as before",
                               extra={"fields": {"server": self.name, "error": f"{type(exc).__name__}: {exc}"[:2000]}})
            else:
                self.log.info("reloaded", extra={"fields": {"server": self.name,
                                                            "seconds": round(time.monotonic() - t0, 3)}})
            if not self._reload_again or self.closing:
                return

    # ------------------------------------------------------------ connections

    async def _sweep(self) -> None:
        """End connections whose read has waited longer than ``timeout``, or whose request began
        longer than ``request_timeout`` ago, checking a few times per timeout (at least once a
        second): a connection goes at most that much late."""
        request_timeout = self.request_timeout
        shortest = min(self.settings.timeout, request_timeout or self.settings.timeout)
        interval = min(1.0, max(0.05, shortest / 4))
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for task, conn in list(self._tasks.items()):
                if conn.timed_out:
                    continue
                since = conn.waiting_since
                began = conn.request_since
                if (since is not None and now - since > conn.timeout) or \
                        (began is not None and now - began > request_timeout):  # type: ignore[operator]
                    conn.timed_out = True
                    task.cancel()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("", 0)
        conn = Connection(reader, writer, str(peer[0]), int(peer[1]), self.settings.timeout)
        if self.closing:
            writer.close()
            return
        if not self.local_socket and not self.allow.allows(conn.peer_ip):
            self.log.warning("client refused: not in allow-list", extra={"fields": {"server": self.name, "peer": conn.peer_ip}})
            self._count_error("not_allowed")
            return await self._refuse_and_close(conn, "not allowed")
        if len(self._tasks) >= self.settings.max_connections:
            self.log.warning("client refused: too many connections",
                             extra={"fields": {"server": self.name, "peer": conn.peer_ip, "max": self.settings.max_connections}})
            self._count_error("too_many_connections")
            return await self._refuse_and_close(conn, "too many connections")
        task = asyncio.current_task()
        assert task is not None
        self._tasks[task] = conn
        if self.metrics is not None:
            self.metrics.connections.labels(self.name).inc()
        try:
            await self.handle(conn)
        except asyncio.CancelledError:  # shutdown, or the sweeper ending an idle connection
            if conn.timed_out:
                self._count_error("timeout")
                self.log.info("connection timed out", extra={"fields": {"server": self.name, "peer": conn.peer_ip}})
                reply = self.timeout_reply if conn.timeout_reply is None else conn.timeout_reply
                if conn.request_since is not None and reply:
                    # a request cut off (by either timeout): answered in the protocol's words
                    # (spamd's EX_TIMEOUT, HTTP's 408) before the close, so the client can tell
                    await linger(conn, reply)
        except (asyncio.TimeoutError, TimeoutError):  # a write the client did not read
            self._count_error("timeout")
            self.log.info("connection timed out", extra={"fields": {"server": self.name, "peer": conn.peer_ip}})
        except ProtocolError as exc:
            self._count_error("protocol")
            self.log.warning("protocol error", extra={"fields": {"server": self.name, "peer": conn.peer_ip, "error": str(exc)}})
        except (ConnectionError, OSError) as exc:
            self.log.info("connection lost", extra={"fields": {"server": self.name, "peer": conn.peer_ip, "error": str(exc)}})
        except Exception:
            self._count_error("internal")
            self.log.exception("handler failed", extra={"fields": {"server": self.name, "peer": conn.peer_ip}})
        finally:
            self._tasks.pop(task, None)
            if self.metrics is not None:
                self.metrics.connections.labels(self.name).dec()
            await self._close(writer)

    async def _refuse_and_close(self, conn: "Connection", reason: str) -> None:
        """Send the refusal, then close as :func:`linger` does.

        A refusal lingers (up to a second) outside ``max_connections``: at most that many at a
        time, so a flood of connections cannot pile up lingering sockets and tasks; past it a
        refused connection is closed at once, without the courtesy answer."""
        if self._refusing >= self.settings.max_connections:
            conn.writer.transport.abort()
            return
        self._refusing += 1
        try:
            await self.refuse(conn, reason)
            await linger(conn)
            await self._close(conn.writer)
        finally:
            self._refusing -= 1

    @staticmethod
    async def _close(writer: asyncio.StreamWriter) -> None:
        # asyncio.timeout, not wait_for: no task per connection (spamd pays this once a message)
        with contextlib.suppress(Exception):
            writer.close()
            async with asyncio.timeout(2.0):
                await writer.wait_closed()

    async def refuse(self, conn: Connection, reason: str) -> None:
        """Tell a refused client why, in the protocol's words; the default says nothing."""

    async def handle(self, conn: Connection) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # ------------------------------------------------------------ scanning with accounting

    async def scan(self, raw: bytes, envelope: Envelope | None, profile: str | None = None,
                   **log_fields: Any) -> Verdict:
        """Scan, record metrics, log one structured line per message.  Raises on engine failure."""
        t0 = time.perf_counter()
        try:
            verdict = await self.scanner.scan(raw, envelope, profile)
        except Exception:
            self._count_error("scan")
            self.log.exception("scan failed", extra={"fields": {"server": self.name, **log_fields}})
            raise
        dt = time.perf_counter() - t0
        if self.metrics is not None:
            self.metrics.observe(self.name, verdict.action, dt)
        self.log.info("scanned", extra={"fields": {
            "server": self.name, "action": verdict.action, "score": round(verdict.score, 2),
            "size": len(raw), "ms": round(dt * 1000, 2),
            "symbols": ",".join(sorted(verdict.symbols)), "profile": profile or "", **log_fields}})
        return verdict

    def _count_error(self, kind: str) -> None:
        if self.metrics is not None:
            self.metrics.errors.labels(self.name, kind).inc()


def _has_input(reader: asyncio.StreamReader) -> bool:
    """Whether bytes have arrived that the connection's handler has not taken yet (a line still
    incomplete stays in the reader's buffer).  asyncio's StreamReader keeps them in ``_buffer``
    (uvloop's streams are asyncio's); read at shutdown only."""
    return bool(getattr(reader, "_buffer", None))


async def linger(conn: "Connection", out: bytes = b"", seconds: float = 1.0) -> None:
    """Send ``out`` (a last answer, often an error), then half-close and drain the client's input
    for at most ``seconds`` (RFC 9112 9.6).

    Closing a socket whose input was not read makes the kernel answer with a reset, and a client
    that sent its request before reading (spamc does, an HTTP client sending a body) may then
    lose the answer it was meant to read.  The request is over: its deadline no longer runs
    (``out`` is the last answer, not to be followed by a timeout's).
    """
    conn.request_since = None
    with contextlib.suppress(Exception):
        if out:
            await conn.write(out)
        if conn.writer.can_write_eof():
            conn.writer.write_eof()
        async with asyncio.timeout(seconds):
            while await conn.reader.read(65536):
                pass


# --------------------------------------------------------------------------- message editing


def line_ending(raw: bytes) -> bytes:
    """The message's own line ending, so headers we add match it."""
    i = raw.find(b"\n")
    return b"\r\n" if i > 0 and raw[i - 1:i] == b"\r" else b"\n"


def split_headers(raw: bytes) -> tuple[bytes, bytes]:
    """(header block without its last line ending, body after the blank line).

    Split where the scan's own parser splits (the first empty line, whatever mix of CRLF and bare
    LF the message uses; a message that starts with one has no header block), so the fields we
    add land in the block the scan read, and never in the body where no reader looks for them.
    """
    head, body, _ = _split_head_body(raw)
    if head.endswith(b"\n"):  # no blank line at all: the whole message is its header block
        head = head[:-1]
    return (head[:-1] if head.endswith(b"\r") else head), body


def subject_tag(prefix: str, rest: bytes) -> bytes:
    """The Subject tag to put in front of ``rest`` (the Subject's value as sent), as header bytes.

    As written when ASCII.  Otherwise an RFC 2047 encoded word: a header is ASCII unless the
    transport agreed otherwise, which a filter cannot know.  An encoded word must be set off by
    white space (RFC 2047 section 5), which is not shown between two encoded words (section
    6.2): before one, the prefix's trailing space goes inside the word; before text, it stays
    outside, so the reader sees it once either way.
    """
    before_word = rest.startswith(b"=?")
    if prefix.isascii():
        out = prefix.encode("ascii")
        return out + b" " if before_word and not out.endswith((b" ", b"\t")) else out
    from email.header import Header

    text = prefix if before_word else prefix.rstrip()
    space = "" if before_word else prefix[len(text):]
    word = Header(text, "utf-8").encode().replace("\r", "").replace("\n", "")  # a long prefix comes folded
    return (word + (space or " ")).encode("ascii")


def _field(name: str, value: str, eol: bytes) -> bytes:
    """One header field of ours with the message's line ending, folds included: a value folded
    with LF (Authentication-Results, X-Spam-Status) keeps no bare LF inside a CRLF message."""
    line = f"{name}: {value}".encode("utf-8")
    if eol != b"\n" and b"\n" in line:
        line = line.replace(b"\n", eol)
    return line + eol


#: the names (lower case) of the X-Spam-* fields a verdict adds (``Verdict.headers()`` but
#: Authentication-Results, which is removed by authserv-id instead): a message's own fields of these
#: names are removed before ours go in, and from mail accepted unscanned (the milter)
OUR_NAMES = frozenset(n.lower() for n, _ in Verdict(score=0.0, required_score=0.0, action="no action", symbols={},
                                                    thresholds={}).headers()) - {"authentication-results"}
_OUR_NAMES_B = tuple(n.encode("ascii") for n in OUR_NAMES)
#: what all of them start with: one search for it settles nearly every message
_OUR_SHARED = b"x-spam-" if all(n.startswith(b"x-spam-") for n in _OUR_NAMES_B) else b""


def rewrite_headers(raw: bytes, verdict: Verdict) -> bytes:
    """The message with our X-Spam-* (and Authentication-Results) headers, and its Subject tagged
    when the verdict rewrites it.  Headers of the same names already present are removed first:
    a sender could otherwise forge ``X-Spam-Flag: NO`` for sieve rules downstream.  So are
    Authentication-Results claiming our authserv-id (RFC 8601 section 5): only we write those.

    The tag goes in front of the Subject as the message carries it, undecoded and with its
    folding, as SpamAssassin does: writing back the decoded text would put 8-bit bytes in a
    header, and an encoded word that decodes to a line break would start a header of the
    sender's choosing.  A second Subject (RFC 5322 allows one) is dropped, so no reader sees
    an untagged one.
    """
    tag = verdict.action == "rewrite subject" and not (verdict.subject or "").startswith(verdict.subject_prefix)
    return _rewrite(raw, verdict.headers(), verdict.authserv_id, verdict.subject_prefix if tag else None)


def without_ours(raw: bytes, authserv_id: str, untag: str | None = None) -> bytes:
    """The message as it goes on unscanned (``fail_open``): without the X-Spam-* fields and the
    Authentication-Results claiming ``authserv_id`` that a sender put in, as
    :func:`rewrite_headers` removes them, and nothing added.  A sieve rule downstream trusts
    ``X-Spam-Flag: NO`` whether or not the scan ran.  A message with none of them is returned as it is.

    ``untag``: the subject prefix to take off the Subject too, for a message a user reports to be
    learned: the copy in the mailbox is the one we tagged, and the tag's words would be learned
    as the sender's (SpamAssassin's ``remove_spamassassin_markup`` takes it off as well).  A
    Subject that is the tag alone was added by us, and goes."""
    return _rewrite(raw, [], authserv_id, None, untag)


#: how a message with a header block starts: a header field (RFC 5322 field-name, the colon), an mbox
#: "From " line, or a blank line (a header block with nothing in it)
_HEADER_START = re.compile(rb"[!-9;-~]+[ \t]*:|From |\r?\n")


def _rewrite(raw: bytes, ours: list[tuple[str, str]], authserv_id: str, prefix: str | None,
             untag: str | None = None) -> bytes:
    """``raw`` without the fields of ours it carries, with ``ours`` added, and its Subject tagged
    with ``prefix`` or its tag ``untag`` taken off (None: untouched)."""
    if ours and not _HEADER_START.match(raw):
        # Text from the first line, no header block: a reader's header block ends at the first line
        # that is no field, so our fields after the text would be read as body, their verdict seen
        # by no filter.  They go first, then a blank line, then the text, as spamd puts its fields.
        eol = line_ending(raw)
        tag = [b"Subject: " + subject_tag(prefix, b"").rstrip() + eol] if prefix is not None else []
        return b"".join([*tag, *[_field(n, v, eol) for n, v in ours], eol, raw])
    if prefix is None and untag is None:
        # Nearly all mail has none of the fields to remove: then the message is its header block,
        # our fields and the rest, without taking the header apart line by line (a third of the
        # SMTP filter's own time per message).  The test is looser than the removal below (the
        # names anywhere in the header block), so whatever it lets through has nothing to remove.
        # Our names share "x-spam-": one search for that settles nearly every message, before one
        # search per name.  The result is built with one join (one copy of the message).
        head, body = split_headers(raw)
        low = head.lower()
        if not (_OUR_SHARED in low and any(n in low for n in _OUR_NAMES_B)) and \
                not (authserv_id and b"authentication-results" in low):
            if not ours:
                return raw
            eol = line_ending(raw)
            return b"".join([head, eol if head else b"",
                             *[_field(n, v, eol) for n, v in ours], eol, body])
    if authserv_id:
        raw = strip_forged(raw, authserv_id)
    eol = line_ending(raw)
    head, body = split_headers(raw)
    kept: list[bytes] = []
    skipping = tagged = False
    lines = head.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                kept.append(line)
            continue
        name, _, value = line.partition(b":")
        lname = name.strip().lower().decode("latin-1")
        if untag is not None and lname == "subject" and not tagged:
            tagged = True  # the first Subject only: the one we tag
            folded = i + 1 < len(lines) and lines[i + 1][:1] in (b" ", b"\t")
            line = _untagged(line, len(name) + 1, untag, folded)
            skipping = not line
            if line:
                kept.append(line)
            continue
        if prefix is not None and lname == "subject":
            skipping = tagged  # the first Subject is tagged and keeps its folded lines; others go
            if not tagged:
                value = value.lstrip(b" \t")
                kept.append(b"Subject: " + subject_tag(prefix, value) + value)
                tagged = True
            continue
        skipping = lname in OUR_NAMES
        if not skipping:
            kept.append(line)
    out = b"".join(kept)
    if out and not out.endswith(b"\n"):
        out += eol
    if prefix is not None and not tagged:
        out += b"Subject: " + subject_tag(prefix, b"").rstrip() + eol
    for name, value in ours:
        out += _field(name, value, eol)
    return out + eol + body


def _untagged(line: bytes, start: int, tag: str, folded: bool) -> bytes:
    """The Subject field ``line`` (its value from ``start``) without ``tag`` in front of its value,
    as :func:`subject_tag` put it there; empty when the field is the tag alone (we added it to a
    message without a Subject).  ``folded``: the value goes on in the lines after this one."""
    value = line[start:].lstrip(b" \t")
    written = subject_tag(tag, value)
    if value.startswith(written):
        return line[:start] + b" " + value[len(written):]
    bare = written.rstrip()
    if value.rstrip(b"\r\n") == bare:  # the tag alone, as a Subject we added: written stripped
        return line[:start] + b" " + value[len(bare):] if folded else b""
    return line


# --------------------------------------------------------------------------- structured logs


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, (with ``pid``: the process,) message, and
    the record's ``fields``."""

    def __init__(self, pid: int | None = None) -> None:
        super().__init__()
        self.pid = pid

    def format(self, record: logging.LogRecord) -> str:
        d: dict[str, Any] = {"ts": round(record.created, 3), "level": record.levelname.lower(),
                             "logger": record.name, "msg": record.getMessage()}
        if self.pid is not None:
            d["pid"] = self.pid
        d.update(getattr(record, "fields", {}) or {})
        if record.exc_info:
            d["exc"] = self.formatException(record.exc_info)
        return json.dumps(d, default=str)


class KeyValueFormatter(logging.Formatter):
    """``time level logger: message key=value ...`` (with ``pid``: ``logger[pid]:``, as syslog
    writes a process id), for people reading a terminal.

    A server writes one line per message, so this is on the hot path: the time prefix is
    formatted once per second rather than per line (``time.strftime`` is most of what the base
    class costs), and records without arguments or tracebacks skip the base class altogether.
    """

    def __init__(self, pid: int | None = None) -> None:
        self._tag = "" if pid is None else f"[{pid}]"
        super().__init__(f"%(asctime)s %(levelname)s %(name)s{self._tag}: %(message)s")
        #: (whole second, its "YYYY-mm-dd HH:MM:SS"), replaced as one tuple so threads may share it
        self._stamp: tuple[int, str] = (-1, "")

    def format(self, record: logging.LogRecord) -> str:
        if record.args or record.exc_info or record.stack_info:
            base = super().format(record)
        else:
            second = int(record.created)
            if self._stamp[0] != second:
                self._stamp = (second, time.strftime(self.default_time_format, self.converter(second)))
            base = f"{self._stamp[1]},{int(record.msecs):03d} {record.levelname} {record.name}{self._tag}: {record.msg}"
        fields = getattr(record, "fields", None)
        if fields:
            base += " " + " ".join(f"{k}={_kv_value(v)}" for k, v in fields.items())
        return base


def _kv_value(v: Any) -> Any:
    """A field value as ``key=value`` shows it: bare, or quoted when empty or spaced, or
    JSON-escaped when it holds quotes, backslashes or control characters, so that a value from a
    client can never start a line of its own (json.dumps only then: it is the slow part)."""
    if not isinstance(v, str):
        return v
    if v.isprintable() and '"' not in v and "\\" not in v:
        return v if v and " " not in v else f'"{v}"'
    return json.dumps(v)


def event_loop_factory(choice: str = "auto") -> Callable[[], asyncio.AbstractEventLoop]:
    """What makes a server's event loop (``[servers] event_loop``).

    uvloop (libuv under asyncio's interface) runs the same protocol code with less CPU per
    socket operation: measured on this project's servers at 16 clients, 9-35 us less of the
    event loop's CPU per message (docs/servers.md).  ``auto`` takes it when it is installed.
    """
    from ..errors import ConfigError

    if choice not in EVENT_LOOPS:
        raise ConfigError(f"event_loop must be one of {', '.join(EVENT_LOOPS)}, got {choice!r}", key="servers.event_loop")
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise ConfigError("event_loop = 'uvloop' but uvloop is not installed (pip install uvloop)",
                                  key="servers.event_loop") from None
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


def setup_logging(level: int, json_lines: bool, pid: int | None = None) -> None:
    """Logging for an ``antispam serve`` process, which owns its process and its logging.
    ``pid``: name the process in every line (prefork processes share one log).

    The per-message line costs a server about a tenth of its time with the stock settings
    (measured: ~50 us a line between scans, against ~0.7 ms a message).  Our formats use neither
    the caller's file and line nor thread or process names, so logging is told not to collect
    them: the switches Python's logging documentation gives for this ("Optimization").
    """
    logging._srcfile = None  # type: ignore[attr-defined]  # no stack walk for the caller per record
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter(pid) if json_lines else KeyValueFormatter(pid))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiosmtpd logs at INFO every connection, command and disconnection of the SMTP filter (five
    # or six lines a message, a tenth of its CPU); our line per message says what matters, and
    # its warnings (bogus commands, errors) still show.  At DEBUG (-vv) it speaks again.
    logging.getLogger("mail.log").setLevel(max(level, logging.WARNING) if level > logging.DEBUG else level)
