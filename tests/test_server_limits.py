"""Regression tests for the shared server machinery: allow-list, scan worker deaths, prefork shutdown,
the whole-request deadline, bounded refusals, draining from a request's first byte, the metrics port."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from antispam import Engine
from antispam.builtin import GtubeCheck
from antispam.config import Config, RspamdHttpConfig, SpamdConfig
from antispam.servers.metrics import Metrics
from antispam.servers.rspamd_http import RspamdHttpServer
from antispam.servers.spamd import SpamdServer
from antispam.servers.workers import WorkerDied, WorkerPool

from server_helpers import EVENT_LOOPS, ServerThread, ham, spam

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _ipv6_dual_stack() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            s.bind(("::", 0))
    except OSError:
        return False
    return True


def _ping(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"PING SPAMC/1.5\r\n\r\n")
        out = b""
        while chunk := s.recv(4096):
            out += chunk
        return out


@pytest.mark.skipif(not _ipv6_dual_stack(), reason="needs a dual-stack IPv6 socket")
def test_allow_list_takes_ipv4_mapped_networks():
    """A server bound to ``::`` sees an IPv4 client as ``::ffff:127.0.0.1`` (and logs it so): an
    allow-list entry written that way must let it in, and one for other addresses keep it out."""
    from antispam.servers.prefork import SharedListener, listening_socket

    for allow, expect in ((("::ffff:127.0.0.0/104",), b"PONG"), (("::ffff:10.0.0.0/104",), b"EX_NOPERM")):
        # a prefork process's socket is dual-stack (asyncio's own start_server sets IPV6_V6ONLY)
        sock = listening_socket("::", 0)
        fd = os.memfd_create("test-load")
        os.ftruncate(fd, 8)
        server = SpamdServer(Engine(), SpamdConfig(host="::", port=0, allow=allow))
        st = ServerThread.__new__(ServerThread)
        st.server, st.loop = server, asyncio.new_event_loop()
        import threading

        st.thread = threading.Thread(target=st.loop.run_forever, daemon=True)
        st.thread.start()

        async def start() -> None:
            await server.start(listener=SharedListener(sock, fd, 0, 1))

        st.call(start())
        try:
            assert expect in _ping(server.port), allow
        finally:
            st.stop()
            sock.close()
            os.close(fd)


def test_a_worker_that_is_not_replaced_gets_no_more_requests():
    """After MAX_DEATHS deaths in a row a worker is not replaced; once another worker's reply
    resets the count, a scan must not be sent to the dead one (it would wait for ever)."""

    async def run() -> None:
        pool = WorkerPool(Config.default(), 2)
        try:
            for w in pool._workers:
                await w.attach()
            for _ in range(pool.MAX_DEATHS - 1):
                pid = pool.pids()[0]
                os.kill(pid, signal.SIGKILL)
                while pool.pids()[0] == pid:
                    await asyncio.sleep(0.02)
                await pool._workers[0].attach()
            first = asyncio.ensure_future(pool.scan(ham(), None, None))   # to worker 0
            second = asyncio.ensure_future(pool.scan(ham(), None, None))  # to worker 1
            await asyncio.sleep(0)
            os.kill(pool.pids()[0], signal.SIGKILL)  # the last death: not replaced
            done = await asyncio.wait_for(asyncio.gather(first, second, return_exceptions=True), 30)
            assert not isinstance(done[1], BaseException)
            assert pool.deaths == 0  # worker 1's reply reset the count
            for _ in range(3):
                v = await asyncio.wait_for(pool.scan(ham(), None, None), 10)
                assert v.action
        finally:
            pool.close()

    asyncio.run(run())


def test_a_worker_pool_without_workers_fails_the_scan():
    """Guards the fix above: with its only worker given up, a scan fails at once (fail_open decides)."""
    async def run() -> None:
        pool = WorkerPool(Config.default(), 1)
        try:
            await pool._workers[0].attach()
            for _ in range(pool.MAX_DEATHS):
                pid = pool.pids()[0]
                os.kill(pid, signal.SIGKILL)
                while pool.deaths < pool.MAX_DEATHS and pool.pids()[0] == pid:
                    await asyncio.sleep(0.02)
                if pool.deaths < pool.MAX_DEATHS:
                    await pool._workers[0].attach()
            with pytest.raises(WorkerDied):
                await asyncio.wait_for(pool.scan(ham(), None, None), 10)
        finally:
            pool.close()

    asyncio.run(run())


_SIGTERM_WHILE_REPLACING = textwrap.dedent("""
    import os, signal, subprocess, sys, threading, time
    from antispam.config import Config
    from antispam.servers import prefork

    settings = Config.load(None, {"servers": {"spamd": {"port": 0, "processes": 2}}}).servers.spamd
    sup = prefork.Supervisor("spamd", None, {"servers": {"spamd": {"port": 0, "processes": 2}}}, settings, 30, False)
    real = subprocess.Popen
    started = []

    def popen(*a, **kw):
        proc = real(*a, **kw)
        started.append(proc)
        if len(started) == 3:  # the replacement of a dead child: SIGTERM arrives while it starts
            sup._on_signal(signal.SIGTERM, None)
        return proc

    prefork.subprocess.Popen = popen

    def kill_one():
        while len(started) < 2:
            time.sleep(0.05)
        time.sleep(3)
        os.kill(started[0].pid, signal.SIGKILL)

    def watchdog():
        time.sleep(40)
        for p in started:
            p.kill()
        os._exit(3)

    threading.Thread(target=kill_one, daemon=True).start()
    threading.Thread(target=watchdog, daemon=True).start()
    sys.exit(sup.run())
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prefork uses memfd")
def test_sigterm_while_a_child_is_replaced_still_stops_the_server():
    """A SIGTERM that arrives while the parent starts a dead child's replacement reaches it too:
    the parent used to wait for ever for a child that was never told to stop."""
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.run([sys.executable, "-c", _SIGTERM_WHILE_REPLACING], env=env, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]


# --------------------------------------------------------------------------- helpers for what follows


def _read_to_eof(s: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the server sends until it closes (a reset counts as the close)."""
    s.settimeout(timeout)
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except ConnectionResetError:
        pass
    return out


def _trickle(s: socket.socket, pieces, every: float) -> tuple[bytes, float]:
    """Send ``pieces`` one at a time, ``every`` seconds apart, until the server answers: (the whole
    answer, the seconds from the first piece to it).  Every wait is well within the read timeout."""
    t0 = time.monotonic()
    s.settimeout(every)
    for piece in pieces:
        try:
            s.sendall(piece)
        except OSError:  # closed on us without an answer
            return b"", time.monotonic() - t0
        try:
            first = s.recv(65536)
        except socket.timeout:
            continue
        except ConnectionResetError:
            return b"", time.monotonic() - t0
        return first + (_read_to_eof(s) if first else b""), time.monotonic() - t0
    raise AssertionError("the server held a trickling request for ever")


def _errors(metrics, server: str, kind: str) -> float:
    return metrics.registry.get_sample_value("antispam_errors_total", {"server": server, "kind": kind}) or 0.0


def _wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _end_loop(st: ServerThread) -> None:
    """Stop the thread's loop after a test already ran ``server.stop()`` itself."""
    st.loop.call_soon_threadsafe(st.loop.stop)
    st.thread.join(5)
    st.loop.close()


# --------------------------------------------------------------------------- 1: the whole-request deadline


def test_request_timeout_is_a_checked_setting_of_spamd_and_rspamd_http_only():
    from antispam.errors import ConfigError

    cfg = Config.load(None, {"servers": {"spamd": {"request_timeout": 5.0}, "rspamd_http": {"request_timeout": 7}}})
    assert cfg.servers.spamd.request_timeout == 5.0 and cfg.servers.rspamd_http.request_timeout == 7.0
    assert Config.default().servers.spamd.request_timeout > 0
    for bad in (0, -1.0):
        with pytest.raises(ConfigError, match="request_timeout"):
            Config.load(None, {"servers": {"spamd": {"request_timeout": bad}}})
    # the milter (the MTA's long-lived connection) and the SMTP filter (DATA bounded already) have none
    for section in ("milter", "smtp"):
        with pytest.raises(ConfigError, match="request_timeout"):
            Config.load(None, {"servers": {section: {"request_timeout": 5.0}}})


@pytest.mark.parametrize("event_loop", EVENT_LOOPS)
def test_spamd_request_trickled_a_header_line_at_a_time_is_cut_off(event_loop):
    """One header line every 0.3 s: each read well within ``timeout`` (2 s), so without a bound
    on the whole request a client held its connection (and its slot) as long as it liked."""
    metrics = Metrics()
    st = ServerThread(SpamdServer(Engine(checks=[GtubeCheck()]), SpamdConfig(port=0, timeout=2.0, request_timeout=1.0),
                                  metrics=metrics), event_loop=event_loop)
    try:
        with socket.create_connection(("127.0.0.1", st.port), timeout=10) as s:
            pieces = [b"CHECK SPAMC/1.5\r\n"] + [b"X-Trickle-%d: 1\r\n" % i for i in range(60)]
            out, seconds = _trickle(s, pieces, 0.3)
        assert out == b"SPAMD/1.1 79 EX_TIMEOUT timeout\r\n", out  # spamd's own answer to a timeout
        assert 0.9 < seconds < 3.0, seconds
        assert _wait_for(lambda: _errors(metrics, "spamd", "timeout") == 1.0)
        # the server goes on serving
        assert _ping(st.port).startswith(b"SPAMD/1.5 0 PONG")
    finally:
        st.stop()


def test_spamd_discarding_an_oversized_message_is_bounded_too():
    """A Content-length over ``max_size`` is read and dropped so the client gets the answer; a
    client trickling that body was read for ever (each read within ``timeout``)."""
    metrics = Metrics()
    st = ServerThread(SpamdServer(Engine(checks=[GtubeCheck()]),
                                  SpamdConfig(port=0, max_size=1000, timeout=2.0, request_timeout=1.0), metrics=metrics))
    try:
        with socket.create_connection(("127.0.0.1", st.port), timeout=10) as s:
            s.sendall(b"CHECK SPAMC/1.5\r\nContent-length: 100000000\r\n\r\n")
            out, seconds = _trickle(s, [b"x" * 500] * 60, 0.3)
        assert out == b"SPAMD/1.1 79 EX_TIMEOUT timeout\r\n", out
        assert seconds < 3.0
        assert _wait_for(lambda: _errors(metrics, "spamd", "timeout") == 1.0)
    finally:
        st.stop()


def test_spamd_request_within_request_timeout_is_answered():
    """The deadline bounds slow clients, not ordinary ones: a request sent in pieces inside it is scanned."""
    st = ServerThread(SpamdServer(Engine(checks=[GtubeCheck()]), SpamdConfig(port=0, timeout=2.0, request_timeout=1.5)))
    try:
        raw = ham()
        with socket.create_connection(("127.0.0.1", st.port), timeout=10) as s:
            for piece in (b"CHECK SPAMC/1.5\r\n", b"Content-length: %d\r\n\r\n" % len(raw), raw):
                s.sendall(piece)
                time.sleep(0.3)
            assert _read_to_eof(s).startswith(b"SPAMD/1.1 0 EX_OK\r\nSpam: False")
    finally:
        st.stop()


@pytest.mark.parametrize("event_loop", EVENT_LOOPS)
def test_http_request_trickled_is_answered_408_and_closed(event_loop):
    metrics = Metrics()
    st = ServerThread(RspamdHttpServer(Engine(checks=[GtubeCheck()]),
                                       RspamdHttpConfig(port=0, timeout=2.0, request_timeout=1.0), metrics=metrics),
                      event_loop=event_loop)
    try:
        # header lines one at a time
        with socket.create_connection(("127.0.0.1", st.port), timeout=10) as s:
            pieces = [b"POST /checkv2 HTTP/1.1\r\n"] + [b"X-Trickle-%d: 1\r\n" % i for i in range(90)]
            out, seconds = _trickle(s, pieces, 0.3)
        assert out.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), out
        assert b"Connection: close\r\n" in out
        assert 0.9 < seconds < 3.0, seconds
        # a chunked body one byte a chunk
        with socket.create_connection(("127.0.0.1", st.port), timeout=10) as s:
            s.sendall(b"POST /checkv2 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
            out, seconds = _trickle(s, [b"1\r\nx\r\n"] * 60, 0.3)
        assert out.startswith(b"HTTP/1.1 408 "), out
        assert seconds < 3.0
        assert _wait_for(lambda: _errors(metrics, "rspamd_http", "timeout") == 2.0)
    finally:
        st.stop()


def test_http_request_timeout_is_per_request_not_per_kept_connection():
    """Between requests a kept-alive connection is idle under ``timeout``: the next request has
    the whole ``request_timeout`` of its own."""
    st = ServerThread(RspamdHttpServer(Engine(checks=[GtubeCheck()]),
                                       RspamdHttpConfig(port=0, timeout=3.0, request_timeout=1.0)))
    try:
        import http.client

        c = http.client.HTTPConnection("127.0.0.1", st.port, timeout=10)
        for _ in range(2):
            c.request("POST", "/checkv2", body=ham())
            r = c.getresponse()
            assert r.status == 200 and b'"action"' in r.read()
            time.sleep(1.6)  # idle longer than request_timeout, within timeout
        c.close()
    finally:
        st.stop()


def test_rspamc_line_protocol_timeout_is_answered_in_its_own_words():
    st = ServerThread(RspamdHttpServer(Engine(checks=[GtubeCheck()]),
                                       RspamdHttpConfig(port=0, timeout=2.0, request_timeout=1.0)))
    try:
        with socket.create_connection(("127.0.0.1", st.port), timeout=10) as s:
            pieces = [b"CHECK RSPAMC/1.3\r\n"] + [b"X-Trickle-%d: 1\r\n" % i for i in range(90)]
            out, seconds = _trickle(s, pieces, 0.3)
        assert out.startswith(b"RSPAMD/1.3 79 EX_TIMEOUT"), out
        assert seconds < 3.0
    finally:
        st.stop()


# --------------------------------------------------------------------------- 2: refusals are bounded


@pytest.mark.parametrize("event_loop", EVENT_LOOPS)
def test_a_flood_of_refused_connections_lingers_at_most_max_connections_at_a_time(event_loop):
    """A refusal is sent and the input drained for up to a second before the close; those
    lingering refusals are outside ``max_connections``, so a flood made them without bound.  At
    most ``max_connections`` linger at once; the others are closed at once, unanswered."""
    st = ServerThread(SpamdServer(Engine(checks=[GtubeCheck()]), SpamdConfig(port=0, max_connections=2, timeout=30)),
                      event_loop=event_loop)
    holders: list[socket.socket] = []
    flood: list[socket.socket] = []
    try:
        for _ in range(2):  # the two slots, held
            holders.append(socket.create_connection(("127.0.0.1", st.port), timeout=10))
        assert _wait_for(lambda: len(st.server._tasks) == 2)
        for _ in range(12):
            s = socket.create_connection(("127.0.0.1", st.port), timeout=10)
            s.sendall(b"PING SPAMC/1.5\r\n\r\n")  # and never closes: a refusal lingers its full second
            flood.append(s)
        answers = [_read_to_eof(s) for s in flood]
        answered = [a for a in answers if a]
        assert all(a.startswith(b"SPAMD/1.1 75 EX_TEMPFAIL") for a in answered), answers
        assert 1 <= len(answered) <= 2, answers
        for s in holders + flood:
            s.close()
        holders, flood = [], []
        assert _wait_for(lambda: not st.server._tasks)
        assert _ping(st.port).startswith(b"SPAMD/1.5 0 PONG")
    finally:
        for s in holders + flood:
            s.close()
        st.stop()


# --------------------------------------------------------------------------- 3: in flight from the first byte


@pytest.mark.parametrize("first", [b"CHE", b"CHECK SPAMC/1.5\r\nContent-le"], ids=["request-line", "headers"])
@pytest.mark.parametrize("event_loop", EVENT_LOOPS)
def test_spamd_stop_waits_for_a_request_whose_first_bytes_arrived(first, event_loop):
    """SIGTERM while spamc is still sending its headers: the request is in flight and gets its
    answer (spamc would otherwise pass the mail on unscanned)."""
    st = ServerThread(SpamdServer(Engine(checks=[GtubeCheck()]), SpamdConfig(port=0, shutdown_timeout=10)),
                      event_loop=event_loop)
    try:
        raw = spam()
        request = b"CHECK SPAMC/1.5\r\nContent-length: %d\r\n\r\n" % len(raw) + raw
        assert request.startswith(first)
        with socket.create_connection(("127.0.0.1", st.port), timeout=10) as s, \
                socket.create_connection(("127.0.0.1", st.port), timeout=10) as idle:
            s.sendall(first)
            assert _wait_for(lambda: len(st.server._tasks) == 2)
            time.sleep(0.2)
            stopping = asyncio.run_coroutine_threadsafe(st.server.stop(), st.loop)
            assert _read_to_eof(idle) == b""  # no byte sent: closed at once
            time.sleep(0.3)
            assert not stopping.done()  # draining: waiting for this request
            s.sendall(request[len(first):])
            out = _read_to_eof(s)
            assert out.startswith(b"SPAMD/1.1 0 EX_OK\r\nSpam: True"), out
            stopping.result(10)
    finally:
        _end_loop(st)


@pytest.mark.parametrize("first", [b"PO", b"POST /checkv2 HTTP/1.1\r\nContent-Le"], ids=["request-line", "headers"])
def test_http_stop_waits_for_a_request_whose_first_bytes_arrived(first):
    st = ServerThread(RspamdHttpServer(Engine(checks=[GtubeCheck()]), RspamdHttpConfig(port=0, shutdown_timeout=10)))
    try:
        raw = spam()
        request = b"POST /checkv2 HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(raw) + raw
        assert request.startswith(first)
        with socket.create_connection(("127.0.0.1", st.port), timeout=10) as s, \
                socket.create_connection(("127.0.0.1", st.port), timeout=10) as kept:
            # a kept-alive connection between requests is idle: closed at once by stop()
            kept.sendall(b"GET /ping HTTP/1.1\r\n\r\n")
            kept.settimeout(10)
            assert kept.recv(4096).startswith(b"HTTP/1.1 200 ")
            s.sendall(first)
            assert _wait_for(lambda: len(st.server._tasks) == 2)
            time.sleep(0.2)
            stopping = asyncio.run_coroutine_threadsafe(st.server.stop(), st.loop)
            assert _read_to_eof(kept) == b""
            time.sleep(0.3)
            assert not stopping.done()
            s.sendall(request[len(first):])
            out = _read_to_eof(s)  # answered, then closed: the server is stopping
            assert out.startswith(b"HTTP/1.1 200 ") and b'"action": "reject"' in out, out
            stopping.result(10)
    finally:
        _end_loop(st)


# --------------------------------------------------------------------------- 4: metrics port in use


def _serve(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "antispam.cli", "serve", "spamd", *flags],
                          capture_output=True, timeout=60, env={**os.environ, "PYTHONPATH": SRC})


def _held() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


@pytest.mark.parametrize("processes", ["1", "2"])
def test_a_metrics_port_in_use_fails_the_start_before_the_listener_is_bound(processes):
    """The metrics port is taken before the server's own: a port in use is one clear line and exit
    status 2, with nothing ever accepted.  Both ports held shows the order: the metrics port is
    the one reported."""
    metrics, main = _held(), _held()
    mport, port = metrics.getsockname()[1], main.getsockname()[1]
    try:
        r = _serve("--port", str(port), "--metrics-port", str(mport), "--processes", processes)
        assert r.returncode == 2, r.stderr
        assert r.stderr.decode().strip() == \
            f"antispam: cannot serve metrics on 127.0.0.1:{mport}: Address already in use", r.stderr
        main.close()
        # the main port free: the same error, and nothing listens on it meanwhile
        seen: list[bool] = []
        proc = subprocess.Popen([sys.executable, "-m", "antispam.cli", "serve", "spamd", "--port", str(port),
                                 "--metrics-port", str(mport), "--processes", processes],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": SRC})
        while proc.poll() is None:
            with socket.socket() as probe:
                seen.append(probe.connect_ex(("127.0.0.1", port)) == 0)
            time.sleep(0.002)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 2, err
        assert b"Traceback" not in err and out == b""
        assert f"cannot serve metrics on 127.0.0.1:{mport}".encode() in err
        assert not any(seen)
    finally:
        metrics.close()
        main.close()


@pytest.mark.parametrize("kind,processes", [("spamd", "1"), ("spamd", "2"), ("smtp", "1"), ("milter", "1")])
def test_a_server_port_in_use_is_one_line_and_status_2(kind, processes):
    """The server's own port taken: the same one-line error whether one process or the prefork
    parent binds it, never a traceback."""
    main = _held()
    port = main.getsockname()[1]
    try:
        flags = ["--next-hop", "127.0.0.1:1"] if kind == "smtp" else []
        r = subprocess.run([sys.executable, "-m", "antispam.cli", "serve", kind, "--port", str(port),
                            "--processes", processes, *flags],
                           capture_output=True, timeout=60, env={**os.environ, "PYTHONPATH": SRC})
        assert r.returncode == 2, r.stderr
        assert r.stderr.decode().strip().splitlines()[-1] == \
            f"antispam: cannot listen on 127.0.0.1:{port}: Address already in use", r.stderr
        assert b"Traceback" not in r.stderr
    finally:
        main.close()
