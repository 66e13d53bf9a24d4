"""Regression tests for the shared server machinery: allow-list, scan worker deaths, prefork shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from antispam import Engine
from antispam.config import Config, SpamdConfig
from antispam.servers.spamd import SpamdServer
from antispam.servers.workers import WorkerDied, WorkerPool

from server_helpers import ServerThread, ham

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
