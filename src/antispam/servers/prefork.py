"""Prefork: ``processes = N`` server processes accepting from one listening socket.

Why, beside ``workers``: with workers, one event loop speaks the protocol for every connection
and hands each message to a scan process over a socket pair, which costs per message a pickle
each way, two more wake-ups and a third busy process on a two-core machine.  Prefork is how spamd
(``--max-children``) and rspamd (``count``) use more cores: every process accepts connections
from the same socket and does the whole job, protocol and scan, in its own event loop with its
own Engine.  ``benchmarks/servers.py --processes 2`` measures it against ``--workers 2``.

Connections are spread by least connections (:class:`SharedListener`): each process accepts one
connection at a time and publishes how many it holds in a small array the processes share; a
process that holds more than another waits (a millisecond at a time, ten at most) before
accepting again, so the other takes what arrives meanwhile.  Without it, the first process to
wake takes a whole burst of connections, and MTAs keep theirs open for minutes (Postfix's
connection cache, milter sessions), so one process would scan for most of them while another
idles.

The parent binds the socket (so port 0 is picked once, for all), starts each child as a fresh
interpreter (``python -m antispam.servers.prefork SPEC``: no state forked from the parent, no
threads forked half-way), waits until every child is listening, prints the listening line, and
supervises.  A child that dies is replaced; five in a row that die within ten seconds of starting
end the server, since a configuration that cannot start would otherwise be retried for ever.
SIGTERM or SIGINT to the parent is passed to every child, each drains its in-flight messages as a
single server does, and the parent exits when they all have.  SIGHUP is passed on too: each child
reloads as a single server does (``Server.reload``), in place, without a restart.

What a connection in a dying child loses is what its client does on a dropped connection: spamc
and the MTA's milter client apply their defaults, the SMTP filter's sender retries (it had no
250).  With ``workers`` a dead worker's messages are scanned again instead.  Learning (TELL,
``/learnspam``) happens in the child that got it: configure a shared store so the others see it.
``max_connections`` is each process's own limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import logging
import mmap
import os
import selectors
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from ..config import ServerConfig
from ..errors import ConfigError

log = logging.getLogger("antispam.servers")

#: a child that exits sooner than this after its start counts toward giving up
QUICK_DEATH_SECONDS = 10.0
#: quick deaths in a row after which the server stops instead of starting another child
MAX_QUICK_DEATHS = 5
#: seconds the parent waits for every first child to be listening
START_TIMEOUT = 300.0
#: a dead process's connection count: larger than any live one's, so no one waits for it
DEAD = 1 << 62
#: seconds a process holding more connections than another waits before it looks again
DEFER = 0.001
#: at most this long in all: a process with fewer connections that is busy scanning lets the
#: others take the connection after that
MAX_DEFER = 0.01
#: seconds between refreshes of a process's published count while it waits in accept
REFRESH = 0.05


class SharedListener:
    """A prefork process's side of the shared listening socket: least-connections accepting.

    ``counts`` is an array of one signed 64-bit count per process, in memory the processes share
    (a memfd the parent created).  Each process writes only its own slot and reads the others:
    aligned 8-byte stores and loads, so no lock; a count read a moment late only makes a process
    take a connection it could have left, never leaves one waiting.
    """

    def __init__(self, sock: socket.socket, load_fd: int, slot: int, slots: int):
        self.sock = sock
        self.sock.setblocking(False)
        self.slot = slot
        self._map = mmap.mmap(load_fd, 8 * slots)
        self._counts = memoryview(self._map).cast("q")
        self._counts[slot] = 0
        self._task: asyncio.Task | None = None
        self._refresh: asyncio.TimerHandle | None = None

    @property
    def port(self) -> int:
        """The shared TCP port; 0 on a Unix-domain socket."""
        addr = self.sock.getsockname()
        return int(addr[1]) if isinstance(addr, tuple) else 0

    def start(self, adopt: Callable[[socket.socket], Awaitable[None]], load: Callable[[], int]) -> None:
        """Accept connections in the running loop, handing each to ``adopt``; ``load()`` is the
        number of connections this process holds now."""
        self._task = asyncio.get_running_loop().create_task(self._accept(adopt, load))
        self._publish(load)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._refresh is not None:
            self._refresh.cancel()
        self._counts[self.slot] = DEAD

    def _publish(self, load: Callable[[], int]) -> None:
        self._counts[self.slot] = load()
        self._refresh = asyncio.get_running_loop().call_later(REFRESH, self._publish, load)

    def _others_hold_fewer(self) -> bool:
        mine = self._counts[self.slot]
        return any(n < mine for i, n in enumerate(self._counts) if i != self.slot)

    async def _accept(self, adopt: Callable[[socket.socket], Awaitable[None]], load: Callable[[], int]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._counts[self.slot] = load()
            waited = 0.0
            while waited < MAX_DEFER and self._others_hold_fewer():
                await asyncio.sleep(DEFER)
                waited += DEFER
                self._counts[self.slot] = load()
            try:
                conn, _ = await loop.sock_accept(self.sock)
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                continue
            except OSError as exc:  # out of descriptors or buffers: the connection waits in the backlog
                log.warning("accept failed", extra={"fields": {"error": str(exc)}})
                await asyncio.sleep(0.1)
                continue
            self._counts[self.slot] = load() + 1
            try:
                await adopt(conn)
            except OSError:
                conn.close()


def check_settings(settings: ServerConfig, section: str) -> None:
    """``processes`` and ``workers`` are two ways to use more cores; one server uses one."""
    if settings.processes > 1 and settings.workers > 0:
        raise ConfigError("use processes (prefork) or workers (scan pool), not both",
                          key=f"servers.{section}.processes")


def listening_socket(host: str, port: int, backlog: int = 1024) -> socket.socket:
    """A bound, listening TCP socket on the first address ``host`` resolves to."""
    try:
        family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise ConfigError(f"cannot resolve {host!r}: {exc}") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise listen_error(host, port, exc) from None
    return sock


def unix_listening_socket(settings: ServerConfig, backlog: int = 1024) -> tuple[socket.socket, tuple[int, int]]:
    """A bound, listening Unix-domain socket at ``settings.socket``, with ``socket_mode`` and
    ``socket_group``; and the file's (device, inode), so that only the server that made it removes it.

    A socket file left by a server that died is replaced; one a live server answers on is an error
    (two servers on one path would each take half the connections), as is any other kind of file
    there.  The mode and group are set before ``listen``: no client can connect before then.
    """
    path = settings.socket
    try:
        gid = grp.getgrnam(settings.socket_group).gr_gid if settings.socket_group else -1
    except KeyError:
        raise ConfigError(f"no such group: {settings.socket_group!r}", key="socket_group") from None
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise listen_error(path, None, exc) from None
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise ConfigError(f"cannot listen on unix:{path}: the file exists and is not a socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(path)
            except OSError:  # refused (nobody listens) or unreachable: a dead server's file
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            else:
                raise ConfigError(f"cannot listen on unix:{path}: another server is listening there")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, settings.socket_mode)
        if gid >= 0:
            os.chown(path, -1, gid)
        sock.listen(backlog)
        st = os.stat(path)
    except OSError as exc:
        sock.close()
        raise listen_error(path, None, exc) from None
    return sock, (st.st_dev, st.st_ino)


def remove_socket_file(path: str, made: tuple[int, int] | None) -> None:
    """Remove the socket file at ``path`` if it is still the one this server made (a server started
    on the same path since has its own)."""
    if made is None:
        return
    with contextlib.suppress(OSError):
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) == made:
            os.unlink(path)


def listen_error(host: str, port: int | None, exc: OSError) -> ConfigError:
    """A port that cannot be bound (in use, privileged, no such address), or a socket path (port
    None), as one line that ``antispam serve`` prints before exiting with status 2: the same words
    whether one process or the prefork parent binds it."""
    # the errno's words: asyncio and uvloop wrap the socket's error in a sentence of their own
    where = f"unix:{host}" if port is None else f"{host}:{port}"
    return ConfigError(f"cannot listen on {where}: {os.strerror(exc.errno) if exc.errno else exc}")


def address(settings: ServerConfig, port: int) -> str:
    """Where a server listens, as the "listening on" line prints it: ``host:port`` or ``unix:/path``."""
    return f"unix:{settings.socket}" if settings.socket else f"{settings.host}:{port}"


def address_fields(settings: ServerConfig, port: int) -> dict[str, Any]:
    """Where a server listens, as the "listening" log record's fields: ``socket``, or ``host`` and ``port``."""
    return {"socket": settings.socket} if settings.socket else {"host": settings.host, "port": port}


@dataclass
class _Child:
    proc: subprocess.Popen
    started: float
    ready: int | None = None  # read end of the child's ready pipe, until it reports


@dataclass
class Supervisor:
    """Starts, watches and stops the children of one prefork server."""

    kind: str
    config_path: str | None
    overrides: dict[str, Any]
    settings: ServerConfig
    log_level: int
    log_json: bool
    children: dict[int, _Child] = field(default_factory=dict)
    #: slot in the shared connection counts of each child, by pid
    slots: dict[int, int] = field(default_factory=dict)
    #: the memfd of the shared connection counts, and the parent's view of them
    load_fd: int = -1
    counts: Any = None
    stopping: bool = False
    _failed: bool = False
    metrics_dir: str | None = None

    def run(self) -> int:
        metrics_http = None
        sock: socket.socket | None = None
        made: tuple[int, int] | None = None
        load_map: mmap.mmap | None = None
        n = self.settings.processes
        try:
            if self.settings.metrics_port:
                # Before any prometheus_client import, here or in a child: it picks its value
                # storage (per-process files) when first imported.
                self.metrics_dir = tempfile.mkdtemp(prefix="antispam-metrics-")
                os.environ["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir
                from .metrics import serve_multiprocess

                # before the server's socket and any child: a metrics port in use is an error at
                # once (a ConfigError naming it), and no client was ever accepted into the backlog
                metrics_http = serve_multiprocess(self.settings)
            if self.settings.socket:
                sock, made = unix_listening_socket(self.settings)
            else:
                sock = listening_socket(self.settings.host, self.settings.port)
            self.load_fd = os.memfd_create("antispam-prefork-load")
            os.ftruncate(self.load_fd, 8 * n)
            load_map = mmap.mmap(self.load_fd, 8 * n)
            self.counts = memoryview(load_map).cast("q")
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
            signal.signal(signal.SIGHUP, self._on_hangup)
            try:
                for slot in range(n):
                    self._start(sock, slot, ready=True)
                if not self._wait_ready():
                    self._stop_all()
                    self._reap_all()
                    return 0 if self.stopping and not self._failed else 1
                port = 0 if made else sock.getsockname()[1]
                print(f"antispam {self.kind} listening on {address(self.settings, port)}", flush=True)
                log.info("listening", extra={"fields": {"server": self.kind, **address_fields(self.settings, port),
                                                         "processes": n}})
                return self._supervise(sock)
            except BaseException:  # never leave children behind
                self._stop_all()
                self._reap_all()
                raise
        finally:
            if sock is not None:
                sock.close()
                remove_socket_file(self.settings.socket, made)
            if load_map is not None:
                self.counts.release()
                load_map.close()
            if self.load_fd >= 0:
                os.close(self.load_fd)
            if metrics_http is not None:
                metrics_http[0].shutdown()
                metrics_http[0].server_close()
            if self.metrics_dir is not None:
                shutil.rmtree(self.metrics_dir, ignore_errors=True)

    # ------------------------------------------------------------ children

    def _start(self, sock: socket.socket, slot: int, ready: bool) -> None:
        spec: dict[str, Any] = {"kind": self.kind, "config": self.config_path, "overrides": self.overrides,
                                "fd": sock.fileno(), "level": self.log_level, "json": self.log_json, "ready": -1,
                                "load_fd": self.load_fd, "slot": slot, "slots": self.settings.processes,
                                "parent": os.getpid()}
        fds = [sock.fileno(), self.load_fd]
        r = w = -1
        if ready:
            r, w = os.pipe()
            spec["ready"] = w
            fds.append(w)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        proc = subprocess.Popen([sys.executable, "-m", "antispam.servers.prefork", json.dumps(spec)],
                                pass_fds=fds, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        if w >= 0:
            os.close(w)
        self.children[proc.pid] = _Child(proc, time.monotonic(), r if ready else None)
        self.slots[proc.pid] = slot

    def _wait_ready(self) -> bool:
        """Until every first child wrote its ready byte: False if one exited or the time ran out."""
        sel = selectors.DefaultSelector()
        for child in self.children.values():
            if child.ready is not None:
                sel.register(child.ready, selectors.EVENT_READ, child)
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while sel.get_map() and not self.stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    self._failed = True
                    log.error("server processes did not start in time", extra={"fields": {"server": self.kind}})
                    return False
                for key, _ in sel.select(min(left, 0.5)):
                    child = key.data
                    sel.unregister(key.fd)
                    got = os.read(key.fd, 1)
                    os.close(key.fd)
                    child.ready = None
                    if not got:  # the pipe closed without a word: the child is gone
                        self._failed = True
                        log.error("a server process failed to start (its error is above)",
                                  extra={"fields": {"server": self.kind, "pid": child.proc.pid}})
                        return False
            return not self.stopping
        finally:
            for key in list(sel.get_map().values()):
                os.close(key.fd)
            sel.close()

    def _supervise(self, sock: socket.socket) -> int:
        quick_deaths = 0
        while self.children:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            child = self.children.pop(pid, None)
            if child is None:
                continue
            child.proc.returncode = os.waitstatus_to_exitcode(status)
            self._mark_dead(pid)
            slot = self.slots.pop(pid)
            if self.stopping:
                continue
            lived = time.monotonic() - child.started
            quick_deaths = quick_deaths + 1 if lived < QUICK_DEATH_SECONDS else 0
            if quick_deaths >= MAX_QUICK_DEATHS:
                log.error("server processes keep dying; stopping",
                          extra={"fields": {"server": self.kind, "deaths": quick_deaths}})
                self._stop_all()
                self._reap_all()
                return 1
            log.warning("server process exited; starting another",
                        extra={"fields": {"server": self.kind, "pid": pid, "code": child.proc.returncode,
                                          "seconds": round(lived, 1)}})
            self._start(sock, slot, ready=False)
            if self.stopping:  # SIGTERM came while it started: _stop_all did not know it yet
                self._stop_all()
        return 0

    def _on_signal(self, signum: int, frame: Any) -> None:
        if not self.stopping:
            log.info("shutting down", extra={"fields": {"server": self.kind, "processes": len(self.children)}})
        self._stop_all()

    def _on_hangup(self, signum: int, frame: Any) -> None:
        """SIGHUP: every process reloads by itself (and logs how that went); a process started
        later reads the configuration file as it is then.  Not those still starting for the first
        time: until a process takes SIGHUP as "reload", it would end it."""
        if self.stopping:
            return
        log.info("reloading", extra={"fields": {"server": self.kind, "processes": len(self.children)}})
        for child in self.children.values():
            if child.proc.returncode is None and child.ready is None:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(signal.SIGHUP)

    def _stop_all(self) -> None:
        self.stopping = True
        for child in self.children.values():
            if child.proc.returncode is None:
                try:
                    child.proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass

    def _reap_all(self) -> None:
        for pid, child in list(self.children.items()):
            try:
                child.proc.wait(self.settings.shutdown_timeout + 5)
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()
            self._mark_dead(pid)
        self.children.clear()

    def _mark_dead(self, pid: int) -> None:
        if pid in self.slots:
            self.counts[self.slots[pid]] = DEAD
        if self.metrics_dir is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid, self.metrics_dir)


def _exit_with_parent(parent: int) -> None:
    """Have the kernel send SIGTERM (drain and exit) if the parent dies, so a parent killed
    with SIGKILL leaves no server processes behind holding the port (Linux; elsewhere a no-op)."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before that took effect
        sys.exit(0)


def _child_main(spec: dict[str, Any]) -> int:
    """One prefork process: the server of ``spec["kind"]`` on the inherited socket."""
    from ..config import Config
    from .cli import ignore_hangup, run_server
    from .common import setup_logging

    ignore_hangup()
    _exit_with_parent(spec["parent"])
    setup_logging(spec["level"], spec["json"], pid=os.getpid())
    listener = SharedListener(socket.socket(fileno=spec["fd"]), spec["load_fd"], spec["slot"], spec["slots"])

    def listening(server: Any) -> None:
        if spec["ready"] >= 0:  # tell the parent, which waits for every first process
            os.write(spec["ready"], b"r")
            os.close(spec["ready"])

    def load() -> Config:
        return Config.load(spec["config"], spec["overrides"])

    run_server(spec["kind"], load(), listening, listener, load=load)
    return 0


if __name__ == "__main__":
    from ..errors import AntispamError

    try:
        sys.exit(_child_main(json.loads(sys.argv[1])))
    except AntispamError as exc:
        sys.stderr.write(f"antispam: {exc}\n")
        sys.exit(2)
