"""Servers on Unix-domain sockets (``socket = "/path"``), run as ``antispam serve`` and driven by real clients:
spamc ``-U``, Postfix's ``smtpd_milters = unix:/path``, swaks ``--socket``, and HTTP over the socket.

A milter on a Unix socket is how Postfix usually talks to milters (its chrooted smtpd reaches nothing
else), and spamd on a socket is what ``spamc -U`` and Exim's ``spamd_address = /path`` expect.
"""

from __future__ import annotations

import concurrent.futures
import grp
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import postfix as pf
from server_helpers import Sink, ham, marker, spam
from servers import stop

SRC = str(Path(__file__).resolve().parents[1] / "src")
needs_spamc = pytest.mark.skipif(shutil.which("spamc") is None and not os.environ.get("CI"),
                                 reason="spamc not installed (Debian package spamc)")


@pytest.fixture
def sockdir():
    """A directory others may walk into (pytest's own tmp_path is 0700: Postfix's smtpd, running as
    postfix, could not reach a socket there)."""
    d = Path(tempfile.mkdtemp(prefix="antispam-sock-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def start(kind: str, path: Path, config: str = "", *flags: str) -> subprocess.Popen:
    """``antispam serve KIND --socket PATH``, once it says it listens there."""
    cfg = path.parent / f"{kind}.toml"
    cfg.write_text(config)
    proc = launch(kind, path, cfg, *flags)
    line = proc.stdout.readline().decode()
    if line.strip() != f"antispam {kind} listening on unix:{path}":
        proc.kill()
        raise AssertionError((line, proc.stderr.read().decode()[-3000:]))
    return proc


def launch(kind: str, path: Path, cfg: Path, *flags: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "antispam.cli", "serve", kind, "--config", str(cfg),
                             "--socket", str(path), *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": SRC})


def spamc(path: Path, raw: bytes, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["spamc", "-U", str(path), *args], input=raw, capture_output=True, timeout=60)


@needs_spamc
def test_spamd_on_a_socket_with_spamc(sockdir):
    """spamc -U gets the same answers as over TCP; the allow-list (networks) does not refuse a local
    peer (an allow-list without loopback here); the file has the default mode 0660 and is removed at
    a clean stop."""
    path = sockdir / "spamd.sock"
    proc = start("spamd", path, '[servers.spamd]\nallow = ["192.0.2.0/24"]\n')
    try:
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
        r = spamc(path, spam(), "-c")
        assert r.returncode == 1 and re.fullmatch(rb"\d+\.\d/5\.0\n", r.stdout), r
        r = spamc(path, ham(), "-c")
        assert r.returncode == 0, r
        r = spamc(path, spam(), "-R")
        assert b"GTUBE" in r.stdout, r
    finally:
        log = stop(proc)
    assert not path.exists()
    assert f"socket={path}" in log and "client refused" not in log


def test_socket_mode_and_group(sockdir):
    path = sockdir / "milter.sock"
    group = grp.getgrgid(os.getgid()).gr_name if os.geteuid() != 0 else "daemon"
    proc = start("milter", path, f'[servers.milter]\nsocket_mode = 0o600\nsocket_group = "{group}"\n')
    try:
        st = os.stat(path)
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_gid == grp.getgrnam(group).gr_gid
    finally:
        stop(proc)


def test_sigterm_as_soon_as_it_says_it_listens_is_a_clean_stop(sockdir):
    """The listening line came before the SIGTERM handler was set: a service manager stopping the server
    at once killed it (status -15, the socket file left behind) about every other time."""
    path = sockdir / "spamd.sock"
    for _ in range(6):
        proc = start("spamd", path)
        log = stop(proc)  # exit status 0 asserted
        assert "shutting down" in log and not path.exists()


@needs_spamc
def test_a_dead_server_s_file_is_replaced_a_live_one_is_not(sockdir):
    """A socket file left by a server that was killed is replaced at the next start; a path where a
    server listens, or where any other file is, is a one-line error (exit 2) and left as it is."""
    path = sockdir / "spamd.sock"
    proc = start("spamd", path)
    proc.kill()  # no clean stop: the file stays
    proc.wait()
    assert path.exists()
    proc = start("spamd", path)
    try:
        cfg = sockdir / "again.toml"
        cfg.write_text("")
        again = launch("spamd", path, cfg)
        out, err = again.communicate(timeout=60)
        assert again.returncode == 2 and f"cannot listen on unix:{path}: another server is listening there" in err.decode()
        assert spamc(path, spam(), "-c").returncode == 1  # the first one still serves there
    finally:
        stop(proc)
    other = sockdir / "notes.txt"
    other.write_text("keep me")
    cfg = sockdir / "other.toml"
    cfg.write_text("")
    p = launch("spamd", other, cfg)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 2 and "the file exists and is not a socket" in err.decode()
    assert other.read_text() == "keep me"


@needs_spamc
def test_prefork_processes_share_the_socket(sockdir):
    path = sockdir / "spamd.sock"
    proc = start("spamd", path, "", "--processes", "2")
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda i: spamc(path, spam(subject=f"p {i}") if i % 2 else ham(subject=f"p {i}"), "-c").returncode,
                                  range(24)))
        assert codes == [i % 2 for i in range(24)]
    finally:
        stop(proc)
    assert not path.exists()


def test_rspamd_http_and_smtp_filter_on_sockets(sockdir):
    """rspamd's /checkv2 over the socket (HTTP/1.1 as rspamc sends it), and the SMTP filter with
    swaks --socket, relaying to a sink over TCP."""
    path = sockdir / "rspamd.sock"
    proc = start("rspamd-http", path)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(30)
            s.connect(str(path))
            body = spam()
            s.sendall(b"POST /checkv2 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%b"
                      % (len(body), body))
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        head, _, reply = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        assert json.loads(reply)["action"] == "reject"
    finally:
        stop(proc)
    assert not path.exists()
    if shutil.which("swaks") is None:
        if os.environ.get("CI"):
            raise AssertionError("swaks is not installed")
        return
    sink = Sink()
    path = sockdir / "smtp.sock"
    proc = start("smtp", path, "", "--next-hop", f"127.0.0.1:{sink.port}")
    try:
        with tempfile.NamedTemporaryFile(suffix=".eml") as fh:
            fh.write(ham(subject="over a unix socket"))
            fh.flush()
            r = subprocess.run(["swaks", "--socket", str(path), "--from", "ana@sender.test", "--to", "bo@rcpt.test",
                                "--data", fh.name, "--timeout", "30"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout[-2000:]
        got = sink.wait_for(marker("over a unix socket"))
        assert len(got) == 1 and b"X-Spam-Flag: NO" in got[0][2]
    finally:
        stop(proc)
        sink.down()
    assert not path.exists()


@pytest.mark.skipif(pf.available() is not None and not os.environ.get("CI"), reason=pf.available() or "")
def test_milter_on_a_socket_behind_postfix(sockdir):
    """Postfix's ``smtpd_milters = unix:/path``, the socket in the group postfix: spam refused at end
    of data, ham delivered with our headers."""
    path = sockdir / "milter.sock"
    proc = start("milter", path, '[servers.milter]\nsocket_group = "postfix"\n')
    sink = Sink()
    postfix = None
    try:
        postfix = pf.Postfix(relay_port=sink.port, main={
            "smtpd_milters": f"unix:{path}", "milter_protocol": "6", "milter_default_action": "accept",
            "milter_connect_timeout": "3s", "milter_command_timeout": "3s", "milter_content_timeout": "3s"})
        r = pf.swaks(postfix.port, spam(subject="unix milter spam"))
        assert r.returncode != 0 and "550 5.7.1 Message rejected as spam" in r.stdout, r.stdout[-2000:]
        r = pf.swaks(postfix.port, ham(subject="unix milter ham"))
        assert r.returncode == 0, r.stdout[-2000:]
        got = sink.wait_for(marker("unix milter ham"))
        assert len(got) == 1 and b"X-Spam-Flag: NO" in got[0][2], postfix.log()[-3000:]
        assert sink.wait_for(marker("unix milter spam"), timeout=0.5) == []
    finally:
        if postfix is not None:
            postfix.stop()
        stop(proc)
        sink.down()
    assert not path.exists()


@pytest.mark.parametrize("value, words", [
    ('socket = "relative/milter.sock"', "must be an absolute path"),
    ("socket_mode = 660", "such as 0o660"),
    ('socket = "/tmp/x.sock"\nsocket_group = "no-such-group-here"', "no such group"),
])
def test_bad_socket_settings_are_one_line_errors(sockdir, value, words):
    cfg = sockdir / "bad.toml"
    cfg.write_text(f"[servers.milter]\n{value}\n")
    r = subprocess.run([sys.executable, "-m", "antispam.cli", "serve", "milter", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": SRC})
    assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr
