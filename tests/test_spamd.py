"""The spamd server against the real ``spamc`` (Debian package spamc) and ``aiospamc`` (PyPI).

Expected outputs and exit codes are what spamc(1) documents: ``-c`` prints
``score/threshold`` and exits 1 for spam, 0 for ham; ``-E`` filters and sets the
same exit code; ``-y`` prints the symbols; ``-R`` the report; ``-L`` learns and
exits 0 whether the message was new or already learned; ``-x`` turns errors
into exit codes instead of passing the message through.  Scores are compared
with the engine's own verdict, so the tests hold whichever checks exist.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from antispam import Check, Engine, Hit, SymbolDef
from antispam.builtin import GtubeCheck
from antispam.config import Config, SpamdConfig
from antispam.servers.spamd import SpamdServer

from server_helpers import EVENT_LOOPS, MemoryLearner, ServerThread, ham, spam

SPAMC = shutil.which("spamc")
needs_spamc = pytest.mark.skipif(SPAMC is None and not os.environ.get("CI"),
                                 reason="spamc is not installed (Debian package spamc)")
SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def engine():
    return Engine()


@pytest.fixture(scope="module", params=EVENT_LOOPS)
def spamd(engine, request):
    # every spamc exchange below, on asyncio's own event loop and on uvloop
    st = ServerThread(SpamdServer(engine, SpamdConfig(port=0)), event_loop=request.param)
    yield st
    st.stop()


def run_spamc(port: int, *args: str, stdin: bytes) -> subprocess.CompletedProcess:
    assert SPAMC, "spamc is required"
    return subprocess.run([SPAMC, "-d", "127.0.0.1", "-p", str(port), "-t", "20", *args], input=stdin,
                          capture_output=True, timeout=60)


def summary(engine: Engine, raw: bytes) -> str:
    v = engine.scan(raw)
    return f"{v.score:.1f}/{v.required_score:.1f}"


# --------------------------------------------------------------------------- spamc


@needs_spamc
def test_check_spam_and_ham(spamd, engine):
    r = run_spamc(spamd.port, "-c", stdin=spam())
    assert r.returncode == 1, r
    assert r.stdout.decode().strip() == summary(engine, spam())
    r = run_spamc(spamd.port, "-c", stdin=ham())
    assert r.returncode == 0, r
    assert r.stdout.decode().strip() == summary(engine, ham())


@needs_spamc
def test_symbols(spamd, engine):
    r = run_spamc(spamd.port, "-y", stdin=spam())
    assert r.returncode == 0
    names = r.stdout.decode().strip().split(",")
    assert "GTUBE" in names
    assert names == sorted(engine.scan(spam()).symbols)


@needs_spamc
def test_report(spamd, engine):
    r = run_spamc(spamd.port, "-R", stdin=spam())
    out = r.stdout.decode()
    first, rest = out.split("\n", 1)
    assert first == summary(engine, spam())
    assert "GTUBE" in rest and "reject" in rest
    # -r reports only spam: for ham spamc prints nothing
    r = run_spamc(spamd.port, "-r", stdin=ham())
    assert r.returncode == 0 and r.stdout == b""
    r = run_spamc(spamd.port, "-r", stdin=spam())
    assert r.stdout.decode().split("\n", 1)[0] == summary(engine, spam())


@needs_spamc
def test_process_adds_headers_and_keeps_body(spamd):
    raw = spam()
    r = run_spamc(spamd.port, stdin=raw)
    assert r.returncode == 0
    out = r.stdout
    head, body = out.split(b"\r\n\r\n", 1)
    assert b"X-Spam-Flag: YES" in head and b"X-Spam-Status: Yes, score=" in head
    assert body == raw.split(b"\r\n\r\n", 1)[1]
    r = run_spamc(spamd.port, "-E", stdin=raw)
    assert r.returncode == 1 and b"X-Spam-Flag: YES" in r.stdout
    r = run_spamc(spamd.port, "-E", stdin=ham())
    assert r.returncode == 0 and b"X-Spam-Flag: NO" in r.stdout


@needs_spamc
def test_forged_spam_headers_are_replaced(spamd):
    raw = spam().replace(b"MIME-Version", b"X-Spam-Flag: NO\r\nX-Spam-Status: No, forged\r\nMIME-Version")
    out = run_spamc(spamd.port, stdin=raw).stdout
    head = out.split(b"\r\n\r\n", 1)[0]
    assert head.count(b"X-Spam-Flag:") == 1 and b"X-Spam-Flag: YES" in head
    assert b"forged" not in head


@needs_spamc
def test_headers_mode_gives_the_same_message(spamd):
    raw = ham(eol="\n")
    full = run_spamc(spamd.port, stdin=raw).stdout
    headers_only = run_spamc(spamd.port, "--headers", stdin=raw).stdout
    assert headers_only == full
    assert b"X-Spam-Flag: NO\n" in full  # added in the message's own line ending


@needs_spamc
def test_ping(spamd):
    r = run_spamc(spamd.port, "-K", stdin=b"")
    assert r.returncode == 0 and r.stdout.startswith(b"SPAMD/1.5 0")


@needs_spamc
def test_server_down_spamc_passes_mail_unchanged():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    raw = spam()
    r = run_spamc(port, "--connect-retries", "1", stdin=raw)
    assert r.returncode == 0 and r.stdout == raw  # spamc's safe fallback: no mail lost
    r = run_spamc(port, "-x", "--connect-retries", "1", stdin=raw)
    assert r.returncode == 69  # EX_UNAVAILABLE with -x


@needs_spamc
def test_tell_learn_and_forget():
    learner = MemoryLearner()
    eng = Engine(checks=[GtubeCheck(), learner])
    st = ServerThread(SpamdServer(eng, SpamdConfig(port=0)))
    try:
        raw = ham(subject="Cheap watches", body="Replica watches, best price\n")
        assert run_spamc(st.port, "-c", stdin=raw).returncode == 0
        r = run_spamc(st.port, "-L", "spam", stdin=raw)
        assert r.returncode == 0 and b"successfully" in r.stdout, r
        assert run_spamc(st.port, "-c", stdin=raw).returncode == 1  # learned: now spam
        r = run_spamc(st.port, "-L", "spam", stdin=raw)
        assert r.returncode == 0 and b"already" in r.stdout  # documented: exit 0 either way
        r = run_spamc(st.port, "-L", "forget", stdin=raw)
        assert r.returncode == 0 and b"successfully" in r.stdout
        assert run_spamc(st.port, "-c", stdin=raw).returncode == 0
        r = run_spamc(st.port, "-C", "report", stdin=raw)  # remote report: Set local, remote
        assert r.returncode == 0 and b"successfully" in r.stdout, r
        assert learner.sources[-1].startswith("spamd-remote")
        r = run_spamc(st.port, "-u", "carol", "-L", "ham", stdin=raw)
        assert r.returncode == 0 and learner.labels and learner.sources[-1] == "spamd:carol"
    finally:
        st.stop()


@needs_spamc
def test_tell_refused_when_disabled(engine):
    st = ServerThread(SpamdServer(engine, SpamdConfig(port=0, allow_tell=False)))
    try:
        r = run_spamc(st.port, "-L", "spam", stdin=spam())
        assert r.returncode != 0 and b"learned" not in r.stdout
        out = exchange(st.port, b"TELL SPAMC/1.5\r\nMessage-class: spam\r\nSet: local\r\nContent-length: 2\r\n\r\nhi")
        assert out.startswith(b"SPAMD/1.1 77 EX_NOPERM TELL is disabled")
    finally:
        st.stop()


@needs_spamc
def test_allow_list_refuses_client(engine):
    st = ServerThread(SpamdServer(engine, SpamdConfig(port=0, allow=("192.0.2.0/24",))))
    try:
        raw = spam()
        r = run_spamc(st.port, "-x", "-c", stdin=raw)
        assert r.returncode not in (0, 1) and r.stdout == b"0/0\n"  # an error, not a verdict
        r = run_spamc(st.port, stdin=raw)
        assert r.returncode == 0 and r.stdout == raw  # without -x spamc passes it through
    finally:
        st.stop()


@needs_spamc
def test_max_size(engine):
    st = ServerThread(SpamdServer(engine, SpamdConfig(port=0, max_size=200)))
    try:
        raw = spam()
        r = run_spamc(st.port, "-x", "-c", stdin=raw)
        assert r.returncode not in (0, 1) and r.stdout == b"0/0\n"  # an error, not a verdict
        r = run_spamc(st.port, stdin=raw)
        assert r.returncode == 0 and r.stdout == raw  # safe fallback: passed through unscanned
        out = exchange(st.port, b"CHECK SPAMC/1.5\r\nContent-length: %d\r\n\r\n" % len(raw) + raw)
        assert out.startswith(b"SPAMD/1.1 65 EX_DATAERR message larger than 200 bytes")
    finally:
        st.stop()


@needs_spamc
def test_cli_serve_spamd_and_graceful_stop(tmp_path):
    cfg = tmp_path / "antispam.toml"
    cfg.write_text("[servers.spamd]\nmax_connections = 4\n")
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.Popen([sys.executable, "-m", "antispam.cli", "serve", "spamd", "--config", str(cfg),
                             "--port", "0", "--log-json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        line = proc.stdout.readline().decode()
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        assert m, (line, proc.stderr.read1(4096) if proc.poll() is not None else "")
        port = int(m.group(1))
        assert run_spamc(port, "-c", stdin=spam()).returncode == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        log = proc.stderr.read().decode()
        assert '"msg": "scanned"' in log and '"action": "reject"' in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_key_value_log_lines():
    """The terminal log format: one line per record whatever a client put in a field."""
    import logging
    import time as _time

    from antispam.servers.common import KeyValueFormatter

    fmt = KeyValueFormatter()
    fields = {"server": "spamd", "action": "no action", "score": 1.5, "user": "", "peer": "127.0.0.1",
              "error": 'line one\nforged="x" line two', "path": "a\\b"}
    rec = logging.LogRecord("antispam.servers.spamd", logging.INFO, __file__, 1, "scanned", None, None)
    rec.fields = fields
    line = fmt.format(rec)
    stamp = _time.strftime("%Y-%m-%d %H:%M:%S", _time.localtime(rec.created))
    assert line == (f"{stamp},{int(rec.msecs):03d} INFO antispam.servers.spamd: scanned server=spamd "
                    'action="no action" score=1.5 user="" peer=127.0.0.1 '
                    'error="line one\\nforged=\\"x\\" line two" path="a\\\\b"')
    assert "\n" not in line
    # records with arguments or a traceback go through logging's own formatting
    rec = logging.LogRecord("antispam.servers", logging.WARNING, __file__, 1, "%d in flight", (3,), None)
    assert fmt.format(rec).endswith(" WARNING antispam.servers: 3 in flight")


# --------------------------------------------------------------------------- aiospamc


def test_aiospamc_client(spamd, engine):
    aiospamc = pytest.importorskip("aiospamc")
    port = spamd.port

    async def go():
        r = await aiospamc.check(spam(), host="127.0.0.1", port=port)
        v = engine.scan(spam())
        assert r.status_code == 0
        assert r.headers.spam.value is True
        assert r.headers.spam.score == pytest.approx(round(v.score, 1))
        assert r.headers.spam.threshold == pytest.approx(v.required_score)
        r = await aiospamc.check(ham(), host="127.0.0.1", port=port, compress=True)
        assert r.headers.spam.value is False
        r = await aiospamc.symbols(spam(), host="127.0.0.1", port=port)
        assert "GTUBE" in r.body.decode().split(",")
        r = await aiospamc.report(spam(), host="127.0.0.1", port=port)
        assert b"GTUBE" in r.body
        r = await aiospamc.report_if_spam(ham(), host="127.0.0.1", port=port)
        assert r.body == b""
        r = await aiospamc.process(spam(), host="127.0.0.1", port=port, user="alice")
        assert b"X-Spam-Flag: YES" in r.body and r.body.endswith(spam().split(b"\r\n\r\n", 1)[1])
        r = await aiospamc.headers(spam(), host="127.0.0.1", port=port)
        assert b"X-Spam-Flag: YES" in r.body and b"Claim your prize" not in r.body
        r = await aiospamc.ping(host="127.0.0.1", port=port)
        assert r.status_code == 0 and r.message == "PONG"

    asyncio.run(go())


def test_aiospamc_tell():
    aiospamc = pytest.importorskip("aiospamc")
    learner = MemoryLearner()
    st = ServerThread(SpamdServer(Engine(checks=[GtubeCheck(), learner]), SpamdConfig(port=0)))
    raw = ham(subject="weekly numbers")

    async def go():
        r = await aiospamc.tell(raw, "spam", set_action="local", host="127.0.0.1", port=st.port, compress=True)
        assert r.status_code == 0 and r.headers["DidSet"].action.local
        r = await aiospamc.check(raw, host="127.0.0.1", port=st.port)
        assert r.headers.spam.value is True
        r = await aiospamc.tell(raw, "spam", remove_action="local", host="127.0.0.1", port=st.port)
        assert r.headers["DidRemove"].action.local
        r = await aiospamc.check(raw, host="127.0.0.1", port=st.port)
        assert r.headers.spam.value is False

    try:
        asyncio.run(go())
    finally:
        st.stop()


# --------------------------------------------------------------------------- the wire, byte by byte


def exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        try:
            s.shutdown(socket.SHUT_WR)
        except OSError:  # the server may have answered and half-closed first (a refusal): read it anyway
            pass
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def exim_reads(out: bytes) -> tuple[bytes, bytes, bytes] | None:
    """(score, threshold, report) as Exim's spam.c reads a REPORT SPAMC/1.2 reply: its sscanf of the
    score line after a Content-length, else its fallback to the Spam header, the one spamd sends."""
    m = re.match(rb"SPAMD/\S{1,7} 0 EX_OK\r\nContent-length: \d+\r\n\r\n([-\d.]+)/([-\d.]+)\r\n", out) or \
        re.match(rb"SPAMD/\S{1,7} 0 EX_OK\r\nSpam: \S+ ; ([-\d.]+) / ([-\d.]+)\r\n\r\n", out)
    return (m.group(1), m.group(2), out[m.end():]) if m else None


def test_exim_style_report_request(spamd, engine):
    """Exim sends REPORT SPAMC/1.2 and parses the reply with sscanf: this is that parse."""
    raw = spam(eol="\n")
    req = b"REPORT SPAMC/1.2\r\nUser: exim\r\nContent-length: %d\r\n\r\n" % len(raw) + raw
    out = exchange(spamd.port, req)
    read = exim_reads(out)
    assert read, out[:200]
    v = engine.scan(raw)
    assert float(read[0]) == pytest.approx(round(v.score, 1))
    assert float(read[1]) == pytest.approx(v.required_score)
    assert b"GTUBE" in read[2]


def test_protocol_errors(spamd):
    assert exchange(spamd.port, b"HELLO\r\n\r\n").startswith(b"SPAMD/1.1 76 ")
    assert exchange(spamd.port, b"FROB SPAMC/1.5\r\n\r\n").startswith(b"SPAMD/1.1 76 ")
    assert exchange(spamd.port, b"CHECK SPAMC/1.5\r\nContent-length: x\r\n\r\n").startswith(b"SPAMD/1.1 76 ")
    # a body shorter than announced: protocol error, not a hang
    assert exchange(spamd.port, b"CHECK SPAMC/1.5\r\nContent-length: 500\r\n\r\nshort").startswith(b"SPAMD/1.1 76 ")
    assert exchange(spamd.port, b"SKIP SPAMC/1.5\r\n\r\n") == b""
    bad = b"not zlib at all"
    out = exchange(spamd.port, b"CHECK SPAMC/1.5\r\nCompress: zlib\r\nContent-length: %d\r\n\r\n" % len(bad) + bad)
    assert out.startswith(b"SPAMD/1.1 65 ")
    tell = b"TELL SPAMC/1.5\r\nMessage-class: spam\r\nSet: local\r\nRemove: local\r\nContent-length: 2\r\n\r\nhi"
    assert exchange(spamd.port, tell).startswith(b"SPAMD/1.1 76 ")


def test_zlib_bomb_is_refused(engine):
    st = ServerThread(SpamdServer(engine, SpamdConfig(port=0, max_size=100_000)))
    try:
        bomb = zlib.compress(b"A" * 5_000_000)
        out = exchange(st.port, b"CHECK SPAMC/1.5\r\nCompress: zlib\r\nContent-length: %d\r\n\r\n" % len(bomb) + bomb)
        assert out.startswith(b"SPAMD/1.1 65 ") and b"too big" in out
    finally:
        st.stop()


def test_idle_client_times_out(engine):
    st = ServerThread(SpamdServer(engine, SpamdConfig(port=0, timeout=0.5)))
    try:
        with socket.create_connection(("127.0.0.1", st.port), timeout=10) as s:
            s.sendall(b"CHECK SPAMC/1.5\r\n")
            # dropped after the timeout, not held forever; told why first, as spamd tells a slow client
            assert s.recv(100) == b"SPAMD/1.1 79 EX_TIMEOUT timeout\r\n"
            assert s.recv(100) == b""
    finally:
        st.stop()


def test_max_connections(engine):
    st = ServerThread(SpamdServer(engine, SpamdConfig(port=0, max_connections=1, timeout=5)))
    try:
        with socket.create_connection(("127.0.0.1", st.port), timeout=10) as first:
            first.sendall(b"CHECK SPAMC/1.5\r\n")  # holds the only slot
            import time
            time.sleep(0.2)
            out = exchange(st.port, b"PING SPAMC/1.5\r\n\r\n")
            assert out.startswith(b"SPAMD/1.1 75 ")  # EX_TEMPFAIL: too many connections
        time.sleep(0.2)
        assert exchange(st.port, b"PING SPAMC/1.5\r\n\r\n").startswith(b"SPAMD/1.5 0 PONG")
    finally:
        st.stop()


@needs_spamc
def test_user_header_selects_the_users_settings():
    from antispam import Config

    cfg = Config().merged({"profiles": {"lenient": {"actions": {"reject": False, "add header": False}}},
                           "recipients": {"carol": "lenient"}})
    st = ServerThread(SpamdServer(Engine(cfg, checks=[GtubeCheck()]), SpamdConfig(port=0)))
    try:
        assert run_spamc(st.port, "-c", "-u", "dave", stdin=spam()).returncode == 1
        assert run_spamc(st.port, "-c", "-u", "carol", stdin=spam()).returncode == 0  # her profile tags nothing
    finally:
        st.stop()


def test_worker_processes_scan_and_connections_close(engine):
    """With a scan pool the verdict is the same, and each connection ends with EOF (a pool worker
    forked from the server would inherit the client's socket and hold it open)."""
    st = ServerThread(SpamdServer(engine, SpamdConfig(port=0, workers=1)))
    try:
        for raw in (spam(), ham(), spam()):
            out = exchange(st.port, b"CHECK SPAMC/1.5\r\nContent-length: %d\r\n\r\n" % len(raw) + raw)
            v = engine.scan(raw)
            assert out == (f"SPAMD/1.1 0 EX_OK\r\nSpam: {'True' if v.is_spam else 'False'} ; "
                           f"{v.score:.1f} / {v.required_score:.1f}\r\n\r\n").encode()
    finally:
        st.stop()


def test_shutdown_cuts_off_a_stalled_client_after_shutdown_timeout(tmp_path):
    cfg = tmp_path / "antispam.toml"
    cfg.write_text("[servers.spamd]\nshutdown_timeout = 1.0\n")
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.Popen([sys.executable, "-m", "antispam.cli", "serve", "spamd", "--config", str(cfg),
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    try:
        port = int(re.search(rb":(\d+)", proc.stdout.readline()).group(1))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"CHECK SPAMC/1.5\r\nContent-length: 1000\r\n\r\nonly part of it")
            import time
            time.sleep(0.3)  # the server is now waiting for the rest: an in-flight message
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0
            assert time.monotonic() - t0 < 5  # waited for the message, but not forever
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_event_loop_choice():
    """``[servers] event_loop``: uvloop when installed (auto), asyncio's own on request, a clear error otherwise."""
    from antispam.errors import ConfigError
    from antispam.servers.common import event_loop_factory

    loop = event_loop_factory("asyncio")()
    try:
        assert type(loop).__module__.startswith("asyncio")
    finally:
        loop.close()
    try:
        import uvloop
    except ImportError:
        uvloop = None
    if uvloop is None:
        assert event_loop_factory("auto") is asyncio.new_event_loop
        with pytest.raises(ConfigError, match="uvloop is not installed"):
            event_loop_factory("uvloop")
    else:
        for choice in ("auto", "uvloop"):
            loop = event_loop_factory(choice)()
            try:
                assert isinstance(loop, uvloop.Loop)
            finally:
                loop.close()
    with pytest.raises(ConfigError, match="servers.event_loop") as e:
        event_loop_factory("trio")
    assert "auto, asyncio, uvloop" in str(e.value)


def test_cli_serve_refuses_an_unknown_event_loop(tmp_path):
    cfg = tmp_path / "antispam.toml"
    cfg.write_text('[servers]\nevent_loop = "trio"\n')
    env = {**os.environ, "PYTHONPATH": SRC}
    r = subprocess.run([sys.executable, "-m", "antispam.cli", "serve", "spamd", "--config", str(cfg), "--port", "0"],
                       capture_output=True, timeout=60, env=env)
    assert r.returncode != 0
    assert b"event_loop" in r.stderr and b"Traceback" not in r.stderr, r.stderr


# --------------------------------------------------------------------------- scores on the wire


class _AlmostSpam(Check):
    """Scores a message just under the default required score (5.0): 4.96 rounds to 5.0."""

    name = "almost_spam"
    symbols = (SymbolDef("ALMOST_SPAM", 4.96, "scores just under the required score", "test"),)

    def run(self, msg, ctx):
        return [Hit("ALMOST_SPAM", 1.0)]


@needs_spamc
def test_ham_just_under_the_threshold_is_not_printed_as_reaching_it():
    """A ham scoring 4.96 of 5 must not read ``5.0/5.0``: Exim takes ``score >= required`` from the
    printed pair as spam.  SpamAssassin prints ``4.9`` (Util::get_tag_value_for_score)."""
    eng = Engine(checks=[_AlmostSpam()])
    raw = ham(eol="\n")
    assert not eng.scan(raw).is_spam
    st = ServerThread(SpamdServer(eng, SpamdConfig(port=0)))
    try:
        r = run_spamc(st.port, "-c", stdin=raw)
        assert r.returncode == 0 and r.stdout == b"4.9/5.0\n", r
        out = exchange(st.port, b"CHECK SPAMC/1.5\r\nContent-length: %d\r\n\r\n" % len(raw) + raw)
        assert out == b"SPAMD/1.1 0 EX_OK\r\nSpam: False ; 4.9 / 5.0\r\n\r\n"
        # Exim: REPORT SPAMC/1.2, its sscanf of the score pair, then spam_rc = score >= threshold
        out = exchange(st.port, b"REPORT SPAMC/1.2\r\nUser: exim\r\nContent-length: %d\r\n\r\n" % len(raw) + raw)
        read = exim_reads(out)
        assert read, out[:200]
        assert read[:2] == (b"4.9", b"5.0") and float(read[0]) < float(read[1])
        assert b"score 4.9, required 5.0" in read[2]
        head = run_spamc(st.port, stdin=raw).stdout.split(b"\n\n", 1)[0]
        assert b"X-Spam-Status: No, score=4.9 required=5.0 " in head
    finally:
        st.stop()


@needs_spamc
def test_profile_without_a_spam_action_shows_a_finite_required_score():
    """A profile that enables no spam action has an infinite required score; ``inf`` on the wire is
    read as 0.0 by spamc (``1000.0/0.0``), so the server shows NEVER_SPAM_SHOWN instead."""
    from antispam import Config

    cfg = Config().merged({"profiles": {"lenient": {"actions": {"reject": False, "add header": False}}},
                           "recipients": {"carol": "lenient"}})
    st = ServerThread(SpamdServer(Engine(cfg, checks=[GtubeCheck()]), SpamdConfig(port=0)))
    try:
        raw = spam()
        out = exchange(st.port, b"CHECK SPAMC/1.5\r\nUser: carol\r\nContent-length: %d\r\n\r\n" % len(raw) + raw)
        assert out == b"SPAMD/1.1 0 EX_OK\r\nSpam: False ; 1000.0 / 1000000.0\r\n\r\n"
        r = run_spamc(st.port, "-c", "-u", "carol", stdin=raw)
        assert r.returncode == 0 and r.stdout == b"1000.0/1000000.0\n", r
        out = exchange(st.port, b"REPORT SPAMC/1.2\r\nUser: carol\r\nContent-length: %d\r\n\r\n" % len(raw) + raw)
        assert exim_reads(out)[:2] == (b"1000.0", b"1000000.0") and b"inf" not in out
    finally:
        st.stop()


# --------------------------------------------------------------------------- request validation


def test_truncated_zlib_stream_is_refused(engine):
    """A zlib body without its end-of-stream marker is refused, as spamd refuses it ("failed to
    find end of zlib stream"), instead of scanning the fragment that did decompress."""
    st = ServerThread(SpamdServer(engine, SpamdConfig(port=0)))
    try:
        z = zlib.compress(spam())
        out = exchange(st.port, b"CHECK SPAMC/1.5\r\nCompress: zlib\r\nContent-length: %d\r\n\r\n" % len(z) + z)
        assert out.startswith(b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; ")
        for cut in (z[:len(z) // 3], z[:-4]):  # a third of the stream; everything but the adler32
            out = exchange(st.port, b"CHECK SPAMC/1.5\r\nCompress: zlib\r\nContent-length: %d\r\n\r\n" % len(cut) + cut)
            assert out.startswith(b"SPAMD/1.1 65 EX_DATAERR ") and b"end of zlib stream" in out, out
    finally:
        st.stop()


def test_content_length_must_be_ascii_digits(spamd):
    """spamd takes Content-length as ``/^(\\d*)$/`` (got_clen_header); Python's int() would also take
    ``+5``, ``5_0`` or ``-0`` and read a different length than the client meant."""
    for value in (b"+5", b"5_0", b"-0", b"0x5", "\uff15".encode(), b"9" * 5000):
        out = exchange(spamd.port, b"CHECK SPAMC/1.5\r\nContent-length: " + value + b"\r\n\r\n" + b"hello" * 10)
        assert out.startswith(b"SPAMD/1.1 76 EX_PROTOCOL "), (value, out)


def test_tell_without_set_or_remove_does_nothing():
    """spamd's dotell answers EX_OK and does nothing ("Did nothing") when neither Set nor Remove
    names a location: no error, no DidSet/DidRemove, nothing learned."""
    learner = MemoryLearner()
    st = ServerThread(SpamdServer(Engine(checks=[GtubeCheck(), learner]), SpamdConfig(port=0)))
    try:
        raw = ham()
        out = exchange(st.port, b"TELL SPAMC/1.5\r\nMessage-class: spam\r\nContent-length: %d\r\n\r\n" % len(raw) + raw)
        assert out == b"SPAMD/1.1 0 EX_OK\r\nContent-length: 0\r\n\r\n"
        assert not learner.labels
    finally:
        st.stop()


def test_rspamd_spamassassin_scanner_reads_our_rule_list(spamd, engine):
    """rspamd's ``spamassassin`` scanner sends HEADERS SPAMC/1.5 and takes the rule names from the
    unfolded X-Spam-Status with a Lua pattern: here both of its patterns, written as Python ones.
    The one of the releases tested against SpamAssassin 3.4.2 ends at ``version=%d%.%d%.%d``, and
    gave the whole line as the rule list while we wrote ``version=antispam-0.1.0``."""
    raw = spam(eol="\n")
    out = exchange(spamd.port, b"HEADERS SPAMC/1.5\r\nUser: root\r\nContent-length: %d\r\n\r\n" % len(raw) + raw)
    header = re.sub(r"[\r\n]+[\t ]", " ", out.decode("latin-1"))  # as the scanner unfolds the reply
    (status,) = [s for s in header.splitlines() if "X-Spam-Status" in s]
    names = ",".join(sorted(engine.scan(raw).symbols))
    assert len(names.split(",")) > 1  # a list, so the comma between two names is read too
    # (.*X%-Spam%-Status.*tests%=)(.*)(autolearn%=.*version%=%d%.%d%.%d.*) -> "%2", spaces removed
    older = re.sub(r"(.*X-Spam-Status.*tests=)(.*)(autolearn=.*version=\d\.\d\.\d.*)", r"\2", status)
    assert re.sub(r"\s", "", older) == names, status
    # X%-Spam%-Status: %S+, score%=([%-%d%.]+)%s.*tests%=(.*,?)(%s*%S+)%sautolearn.* -> "%2%3"
    current = re.sub(r"X-Spam-Status: \S+, score=([-\d.]+)\s.*tests=(.*,?)(\s*\S+)\sautolearn.*", r"\2\3", status)
    assert re.sub(r"\s", "", current) == names, status


@needs_spamc
def test_tell_learns_the_delivered_copy_as_the_original():
    """spamd strips its own fields before TELL: the copy plain spamc (PROCESS) delivered and the
    original are one message, learned once and forgotten through either."""
    st = ServerThread(SpamdServer(Engine(), SpamdConfig(port=0)))
    try:
        raw = ham(subject="Watches at half price", body="Replica watches, best price, reply today\n")
        delivered = run_spamc(st.port, stdin=raw).stdout
        assert b"X-Spam-Flag: NO" in delivered and b"X-Spam-Status: No" in delivered

        def tell(how: str, msg: bytes) -> bytes:
            r = run_spamc(st.port, "-L", how, stdin=msg)
            assert r.returncode == 0, r
            return r.stdout

        assert b"successfully" in tell("spam", raw)
        assert b"already" in tell("spam", delivered)
        assert b"successfully" in tell("forget", delivered)
        assert b"already" in tell("forget", raw)
    finally:
        st.stop()


@needs_spamc
@pytest.mark.parametrize("subject", ["Watches at half price", "=?utf-8?q?Montres_=C3=A0_moiti=C3=A9_prix?=", None])
def test_tell_learns_a_tagged_copy_as_the_original(subject):
    """The delivered copy's Subject carries our tag (or is ours, when the message had none): TELL
    takes it off, as spamd's remove_spamassassin_markup does, so the words of the tag are not
    learned as the sender's and the copy is the original message."""
    cfg = Config.load(overrides={"actions": {"rewrite subject": -1000.0}})
    st = ServerThread(SpamdServer(Engine(cfg), SpamdConfig(port=0)))
    try:
        raw = ham(subject=subject or "", body="Replica watches, best price, reply today\n")
        if subject is None:
            raw = raw.replace(b"Subject: \r\n", b"")
        delivered = run_spamc(st.port, stdin=raw).stdout
        (line,) = [x for x in delivered.split(b"\r\n") if x.startswith(b"Subject:")]
        assert line.startswith(b"Subject: ***SPAM***"), line
        assert b"successfully" in run_spamc(st.port, "-L", "spam", stdin=raw).stdout
        assert b"already" in run_spamc(st.port, "-L", "spam", stdin=delivered).stdout
    finally:
        st.stop()


def test_replies_below_spamc_1_3_are_spamds(spamd):
    """Below SPAMC/1.3 spamd sends one response header: Spam for SYMBOLS and the REPORTs (lcsam-style
    milters take the verdict from the first "Spam: " line, SimpleLogin from the reply's second line),
    Content-length for PROCESS and HEADERS at 1.2, and below 1.2 none: SPAMD/1.0, then the message."""
    raw = spam(eol="\n")

    def ask(method: bytes, version: bytes) -> bytes:
        return exchange(spamd.port, b"%s SPAMC/%s\r\nContent-length: %d\r\n\r\n" % (method, version, len(raw)) + raw)

    def body(out: bytes) -> bytes:
        return out.split(b"\r\n\r\n", 1)[1]

    spam_line = ask(b"CHECK", b"1.5").split(b"\r\n")[1]
    assert spam_line.startswith(b"Spam: True ; ")
    for method in (b"REPORT", b"REPORT_IFSPAM"):
        out = ask(method, b"1.2")
        assert out == b"SPAMD/1.1 0 EX_OK\r\n" + spam_line + b"\r\n\r\n" + body(ask(method, b"1.5")), out[:200]
    symbols = body(ask(b"SYMBOLS", b"1.5"))
    assert b"GTUBE" in symbols
    assert ask(b"SYMBOLS", b"1.2") == b"SPAMD/1.1 0 EX_OK\r\n" + spam_line + b"\r\n\r\n" + symbols + b"\r\n"
    for method in (b"PROCESS", b"HEADERS"):
        message = body(ask(method, b"1.5"))
        assert b"X-Spam-Flag: YES" in message
        assert ask(method, b"1.2") == b"SPAMD/1.1 0 EX_OK\r\nContent-length: %d\r\n\r\n" % len(message) + message
        assert ask(method, b"1.1") == b"SPAMD/1.0 0 EX_OK\r\n" + message


def test_content_length_short_of_the_message_is_refused(spamd):
    """A client counting characters announces fewer bytes than a UTF-8 message has: spamd reads whole
    lines, finds bytes past the length and answers 76, where the part that fits was scanned and,
    for PROCESS, sent back as the message (its last line cut)."""
    text = ("From: ana@sender.test\r\nTo: bo@rcpt.test\r\nSubject: caf\u00e9 r\u00e9sum\u00e9\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\nSee you at the caf\u00e9, last line of the body\r\n")
    raw = text.encode("utf-8")
    assert len(raw) - len(text) == 4  # four é: the length ends inside the last line
    for method in (b"PROCESS", b"CHECK"):
        out = exchange(spamd.port, b"%s SPAMC/1.5\r\nContent-length: %d\r\n\r\n" % (method, len(text)) + raw)
        assert out == b"SPAMD/1.1 76 EX_PROTOCOL Content-Length mismatch: expected %d bytes, got %d\r\n" \
            % (len(text), len(raw)), out[:200]
    # the right length, and a message that ends without a line end (the client's end of sending ends it)
    raw = raw.rstrip(b"\r\n")
    out = exchange(spamd.port, b"PROCESS SPAMC/1.5\r\nContent-length: %d\r\n\r\n" % len(raw) + raw)
    assert out.startswith(b"SPAMD/1.1 0 EX_OK\r\n") and out.endswith(b"last line of the body"), out[-100:]
    # ... and from a client that keeps its sending side open (spamd would wait for the line's end for
    # ever): answered after a moment, not at the read timeout
    with socket.create_connection(("127.0.0.1", spamd.port), timeout=30) as s:
        t0 = time.monotonic()
        s.sendall(b"PROCESS SPAMC/1.5\r\nContent-length: %d\r\n\r\n" % len(raw) + raw)
        out = b""
        while not out.endswith(b"last line of the body") and (chunk := s.recv(65536)):
            out += chunk
        waited = time.monotonic() - t0
    assert out.startswith(b"SPAMD/1.1 0 EX_OK\r\n") and out.endswith(b"last line of the body"), out[-100:]
    assert waited < 5, waited


@needs_spamc
def test_text_without_a_header_block_gets_our_fields_first(spamd):
    """A script piping bare text through spamc: spamd's fields come first.  After the text, where
    they went before, a reader (Python's email package here; MUAs and sieve read headers alike)
    ends the header block at the first line and takes them for body: no filter sees the verdict."""
    import email

    raw = b"Lunch at noon tomorrow?\r\nSee you there\r\n"
    out = run_spamc(spamd.port, stdin=raw).stdout
    msg = email.message_from_bytes(out)
    assert msg["X-Spam-Flag"] in ("YES", "NO") and msg["X-Spam-Status"] and not msg.defects, out
    assert out.startswith(b"X-Spam-Flag: ") and out.endswith(b"\r\n\r\n" + raw)
