"""``processes = N``: prefork servers sharing one listening socket, run as ``antispam serve``.

Each test starts the real command and talks to it over loopback: the spamd protocol by hand
(the request format spamc sends), the SMTP filter with smtplib against an aiosmtpd sink.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from server_helpers import Sink, ham, spam
from servers import free_port, request, stop

SRC = str(Path(__file__).resolve().parents[1] / "src")

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc for the processes")


def serve(tmp_path: Path, kind: str, config: str = "", *flags: str) -> tuple[subprocess.Popen, int]:
    cfg = tmp_path / "antispam.toml"
    cfg.write_text(config)
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.Popen([sys.executable, "-m", "antispam.cli", "serve", kind, "--config", str(cfg),
                             "--port", "0", "--processes", "2", *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    line = proc.stdout.readline().decode()
    m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
    if not m:
        proc.kill()
        raise AssertionError((line, proc.stderr.read().decode()[-3000:]))
    return proc, int(m.group(1))


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return sorted(out)


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def check(port: int, raw: bytes) -> bytes:
    """One spamd CHECK, as spamc sends it; the whole reply."""
    return request(port, b"CHECK SPAMC/1.5\r\nContent-length: %d\r\n\r\n" % len(raw) + raw)


def test_every_process_serves_and_the_verdicts_are_the_engines(tmp_path):
    proc, port = serve(tmp_path, "spamd")
    try:
        kids = children(proc.pid)
        assert len(kids) == 2
        before = {k: cpu_ticks(k) for k in kids}
        msgs = [spam() if i % 2 else ham() for i in range(300)]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda m: check(port, m), msgs))
        for i, reply in enumerate(replies):
            assert reply.startswith(b"SPAMD/1.1 0 EX_OK"), reply
            assert (b"Spam: True" in reply) == bool(i % 2), reply
        # Both processes took connections: each spent CPU on them (a tick is 10 ms; 300 scans
        # cost seconds, and a process left idle spends none).
        grew = {k: cpu_ticks(k) - before[k] for k in kids}
        assert all(t >= 3 for t in grew.values()), grew
    finally:
        log = stop(proc)
    assert log.count("shutting down") >= 3  # the parent and each child
    for k in kids:  # each process names itself in its lines (they share one log)
        assert re.search(rf"antispam\.servers\.spamd\[{k}\]: scanned ", log), k


def test_a_killed_process_is_replaced(tmp_path):
    proc, port = serve(tmp_path, "spamd")
    try:
        victim = children(proc.pid)[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            kids = children(proc.pid)
            if len(kids) == 2 and victim not in kids:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"no replacement: {children(proc.pid)}")
        for _ in range(20):
            assert b"Spam: True" in check(port, spam())
    finally:
        log = stop(proc)
    assert "server process exited; starting another" in log
    assert f"pid={victim}" in log


def test_sigterm_lets_a_message_in_flight_finish(tmp_path):
    proc, port = serve(tmp_path, "spamd")
    raw = spam()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(b"CHECK SPAMC/1.5\r\nContent-length: %d\r\n\r\n" % len(raw) + raw[:20])
            time.sleep(0.5)  # the child is now waiting for the rest: a message in flight
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            s.sendall(raw[20:])
            reply = s.recv(65536)
        assert reply.startswith(b"SPAMD/1.1 0 EX_OK") and b"Spam: True" in reply, reply
    finally:
        stop(proc)
    assert children(proc.pid) == []


def test_metrics_are_summed_over_the_processes(tmp_path):
    mport = free_port()
    proc, port = serve(tmp_path, "spamd", f"[servers.spamd]\nmetrics_port = {mport}\n")
    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda m: check(port, m), [spam()] * 30 + [ham()] * 10))
        text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10).read().decode()
        assert re.search(r'^antispam_messages_total\{server="spamd"\} 40\.0$', text, re.M), text
        assert re.search(r'^antispam_scan_seconds_count\{server="spamd"\} 40\.0$', text, re.M), text
        assert re.search(r'^antispam_connections\{server="spamd"\} 0\.0$', text, re.M), text
    finally:
        stop(proc)


@pytest.mark.parametrize("mode", [("--processes", "2"), ("--processes", "1", "--workers", "2")],
                         ids=["processes", "workers"])
def test_dns_list_counters_are_summed_over_the_processes(tmp_path, mode):
    """Each server process copies its DNS lists' counters into the multiprocess files once a second;
    a server with scan workers asks each worker for them once a second."""
    from dnsserver import DNSServer

    zone = {"2.0.0.127.pf.test": [("A", "127.0.0.2")],  # the list's test point: the health check passes
            "8.7.6.5.pf.test": [("A", "127.0.0.2")]}  # the relay of the message below
    msg = (b"Received: from relay.example (relay.example [5.6.7.8]) by mx.ours.example; Mon, 2 Nov 2026 10:00:00 +0000\n"
           b"From: a@sender.example\nTo: b@ours.example\nSubject: hello\n\nhello\n")
    mport = free_port()
    with DNSServer(zone) as dns:
        proc, port = serve(tmp_path, "spamd", f"""
[dns]
nameservers = ["127.0.0.1"]
port = {dns.port}
[dnsbl.lists.pf]
zone = "pf.test"
inputs = ["relays"]
default_symbol = "TEST_PF"
[servers.spamd]
metrics_port = {mport}
""", *mode)
        try:
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                replies = list(pool.map(lambda m: check(port, m), [msg] * 12))
            assert all(r.startswith(b"SPAMD/1.1 0 EX_OK") for r in replies), replies[0]
            deadline = time.monotonic() + 10
            while True:  # copied within a second
                text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10).read().decode()
                got = dict(re.findall(r'^antispam_dnsbl_(\w+)\{list="pf"\} (\S+)$', text, re.M))
                if float(got.get("listed_total", 0)) >= 12 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert float(got["listed_total"]) == 12.0, text
            assert float(got["queries_total"]) == 12.0, text
            assert float(got["errors_total"]) == 0.0, text
            assert float(got["healthy"]) == 1.0, text
        finally:
            stop(proc)


def test_smtp_filter_in_processes_relays_each_message_once(tmp_path):
    sink = Sink()
    try:
        proc, port = serve(tmp_path, "smtp", "", "--next-hop", f"127.0.0.1:{sink.port}")
        try:
            def send(i: int) -> None:
                with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
                    c.sendmail("sender@example.org", [f"rcpt{i}@example.net"], ham(subject=f"note {i}"))

            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                list(pool.map(send, range(24)))
        finally:
            stop(proc)
        rcpts = sorted(r[0] for _, r, _ in sink.messages)
        assert rcpts == sorted(f"rcpt{i}@example.net" for i in range(24))
        assert all(b"X-Spam-Status:" in data for _, _, data in sink.messages)
    finally:
        sink.down()


def test_processes_and_workers_do_not_combine(tmp_path):
    cfg = tmp_path / "antispam.toml"
    cfg.write_text("[servers.spamd]\nprocesses = 2\nworkers = 2\n")
    r = subprocess.run([sys.executable, "-m", "antispam.cli", "serve", "spamd", "--config", str(cfg), "--port", "0"],
                       capture_output=True, timeout=60, env={**os.environ, "PYTHONPATH": SRC})
    assert r.returncode == 2
    assert b"servers.spamd.processes" in r.stderr and b"Traceback" not in r.stderr, r.stderr


def test_a_process_that_cannot_start_stops_the_server(tmp_path):
    cfg = tmp_path / "antispam.toml"
    cfg.write_text(f'[rules]\ndirs = ["{tmp_path / "missing"}"]\n')
    r = subprocess.run([sys.executable, "-m", "antispam.cli", "serve", "spamd", "--config", str(cfg), "--port", "0",
                        "--processes", "2"], capture_output=True, timeout=120, env={**os.environ, "PYTHONPATH": SRC})
    assert r.returncode == 1
    assert b"listening on" not in r.stdout
    assert b"failed to start" in r.stderr and b"missing" in r.stderr, r.stderr[-3000:]


def established(pid: int, port: int) -> int:
    """TCP connections to ``port`` that process ``pid`` holds open (from /proc)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as fh:
            for line in fh.readlines()[1:]:
                f = line.split()
                if int(f[1].rsplit(":", 1)[1], 16) == port and f[3] == "01" and f[9] in inodes:
                    n += 1
    return n


def test_a_burst_of_kept_connections_is_spread_over_the_processes(tmp_path):
    """MTAs keep their connections: twelve arriving at once end up six and six (least
    connections), not with whichever process woke first."""
    sink = Sink()
    conns: list[socket.socket] = []
    try:
        proc, port = serve(tmp_path, "smtp", "", "--next-hop", f"127.0.0.1:{sink.port}")
        try:
            # All twelve handshakes complete in the kernel before a process wakes to accept.
            conns = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(12)]
            for c in conns:
                assert c.recv(512).startswith(b"220 "), "no greeting"
            held = sorted(established(k, port) for k in children(proc.pid))
            assert sum(held) == 12 and held[1] - held[0] <= 2, held
        finally:
            for c in conns:
                c.close()
            stop(proc)
    finally:
        sink.down()


def test_processes_leave_with_a_killed_parent(tmp_path):
    proc, port = serve(tmp_path, "spamd")
    kids = children(proc.pid)
    proc.kill()
    proc.wait()
    def alive(pid: int) -> bool:  # a zombie left for a PID 1 that does not reap counts as gone
        try:
            with open(f"/proc/{pid}/stat") as fh:
                return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(alive(k) for k in kids):
        time.sleep(0.1)
    assert not any(alive(k) for k in kids)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_a_port_in_use_is_a_clear_error_before_any_process_starts(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        for flags in (["--port", str(port)], ["--port", "0", "--metrics-port", str(port)]):
            r = subprocess.run([sys.executable, "-m", "antispam.cli", "serve", "spamd", "--processes", "2", *flags],
                               capture_output=True, timeout=60, env={**os.environ, "PYTHONPATH": SRC})
            assert r.returncode == 2, r.stderr
            assert f"127.0.0.1:{port}: Address already in use".encode() in r.stderr, r.stderr
            assert b"Traceback" not in r.stderr
    finally:
        taken.close()


def test_milter_and_rspamd_http_in_processes(tmp_path):
    """The two kept-connection protocols on shared listeners: each connection served throughout
    by the process that accepted it."""
    import http.client
    import json

    from milter_client import MilterClient

    proc, port = serve(tmp_path, "milter")
    try:
        clients = [MilterClient(port) for _ in range(4)]
        for c in clients:
            c.negotiate()
            c.session()
        for i in range(3):
            for c in clients:
                final = c.message(spam() if i % 2 else ham())[-1]
                assert final[0] == (b"y" if i % 2 else b"c"), final  # reject reply for GTUBE, continue for ham
        for c in clients:
            c.quit()
            c.close()
    finally:
        stop(proc)

    proc, port = serve(tmp_path, "rspamd-http")
    try:
        conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=30) for _ in range(4)]
        for i in range(3):
            for c in conns:
                c.request("POST", "/checkv2", body=spam() if i % 2 else ham())
                d = json.loads(c.getresponse().read())
                assert (d["action"] == "reject") == bool(i % 2), d
        for c in conns:
            c.close()
    finally:
        stop(proc)


def test_log_lines_name_the_process():
    import json
    import logging

    from antispam.servers.common import JsonFormatter, KeyValueFormatter

    rec = logging.LogRecord("antispam.servers.smtp", logging.INFO, __file__, 1, "scanned", None, None)
    rec.fields = {"action": "reject"}
    assert " antispam.servers.smtp[4242]: scanned action=reject" in KeyValueFormatter(pid=4242).format(rec)
    assert " antispam.servers.smtp: scanned " in KeyValueFormatter().format(rec)
    d = json.loads(JsonFormatter(pid=4242).format(rec))
    assert d["pid"] == 4242 and d["action"] == "reject"
    assert "pid" not in json.loads(JsonFormatter().format(rec))
