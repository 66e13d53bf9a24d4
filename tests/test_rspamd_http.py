"""The rspamd-compatible HTTP endpoint, with the real ``rspamc`` (Debian package rspamd) and http.client."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import urllib.request

import pytest

from antispam import Engine
from antispam.builtin import GtubeCheck
from antispam.config import RspamdHttpConfig
from antispam.servers.metrics import Metrics
from antispam.servers.rspamd_http import RspamdHttpServer

from server_helpers import EnvelopeProbe, MemoryLearner, ServerThread, ham, spam
from servers import free_port

RSPAMC = shutil.which("rspamc")
needs_rspamc = pytest.mark.skipif(RSPAMC is None and not os.environ.get("CI"),
                                  reason="rspamc is not installed (Debian package rspamd)")


@pytest.fixture(scope="module")
def parts():
    return EnvelopeProbe(), MemoryLearner()


@pytest.fixture(scope="module")
def server(parts):
    probe, learner = parts
    metrics = Metrics()
    st = ServerThread(RspamdHttpServer(Engine(checks=[GtubeCheck(), probe, learner]),
                                       RspamdHttpConfig(port=0, max_size=100_000), metrics=metrics))
    yield st
    st.stop()


def rspamc(port: int, *args: str, stdin: bytes) -> subprocess.CompletedProcess:
    return subprocess.run([RSPAMC, "-h", f"127.0.0.1:{port}", "-t", "20", *args], input=stdin,
                          capture_output=True, timeout=60)


def post(port: int, path: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("POST", path, body=body, headers=headers or {})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, json.loads(data)


@needs_rspamc
def test_rspamc_check_and_json(server):
    r = rspamc(server.port, stdin=spam())
    out = r.stdout.decode()
    assert r.returncode == 0 and "Action: reject" in out and "Spam: true" in out and "GTUBE" in out
    r = rspamc(server.port, "--json", stdin=ham())
    d = json.loads(r.stdout)
    assert d["action"] == "no action" and d["is_skipped"] is False and "GTUBE" not in d["symbols"]


@needs_rspamc
def test_rspamc_passes_the_envelope(server, parts):
    probe, _ = parts
    rspamc(server.port, "--ip", "198.51.100.9", "--helo", "mx.sender.test", "--from", "ana@sender.test",
           "--rcpt", "bo@rcpt.test", "--rcpt", "cy@rcpt.test", "--user", "bo", stdin=ham())
    env, raw = probe.seen[-1]
    assert env.client_ip == "198.51.100.9" and env.helo == "mx.sender.test"
    assert env.mail_from == "ana@sender.test" and env.rcpt_tos == ("bo@rcpt.test", "cy@rcpt.test")
    assert env.user == "bo" and raw == ham()


@needs_rspamc
def test_rspamc_learn(server, parts):
    _, learner = parts
    raw = ham(subject="teach me rspamc")
    r = rspamc(server.port, "learn_spam", stdin=raw)
    assert b"success = true" in r.stdout, r.stdout
    assert learner.sources[-1] == "rspamd-http"
    assert "LEARNED_SPAM" in json.loads(rspamc(server.port, "--json", stdin=raw).stdout)["symbols"]
    r = rspamc(server.port, "learn_spam", stdin=raw)
    assert b"success = false" in r.stdout  # already learned: said so, not pretended


def test_http_checkv2_learn_and_errors(server, parts):
    status, d = post(server.port, "/checkv2", spam(), {"IP": "203.0.113.4", "From": "<x@y.test>", "Rcpt": "a@b.test, c@d.test"})
    assert status == 200 and d["action"] == "reject" and d["symbols"]["GTUBE"]["score"] > 0
    env, _ = parts[0].seen[-1]
    assert env.client_ip == "203.0.113.4" and env.mail_from == "x@y.test" and env.rcpt_tos == ("a@b.test", "c@d.test")
    raw = ham(subject="teach me http")
    assert post(server.port, "/learnham", raw)[0] == 200
    assert "LEARNED_HAM" in post(server.port, "/checkv2", raw)[1]["symbols"]
    assert post(server.port, "/nowhere", b"")[0] == 404
    status, d = post(server.port, "/checkv2", b"x" * 200_000)
    assert status == 413 and "larger" in d["error"]
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/ping", timeout=10) as r:
        assert r.read() == b"pong\r\n"


def test_keep_alive_and_chunked(server):
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    actions = []
    for raw in (spam(), ham(), spam()):
        c.request("POST", "/checkv2", body=raw)
        actions.append(json.loads(c.getresponse().read())["action"])
    c.request("POST", "/checkv2", body=iter([spam()[:50], spam()[50:]]), encode_chunked=True,
              headers={"Transfer-Encoding": "chunked"})
    actions.append(json.loads(c.getresponse().read())["action"])
    c.close()
    assert actions == ["reject", "no action", "reject", "reject"]


def test_metrics_endpoint(server):
    post(server.port, "/checkv2", spam())
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as r:
        text = r.read().decode()
    assert 'antispam_actions_total{action="reject",server="rspamd_http"}' in text
    assert 'antispam_scan_seconds_count{server="rspamd_http"}' in text
    assert 'antispam_errors_total{kind="request",server="rspamd_http"}' in text  # the 404 and 413 above


def test_metrics_http_port():
    port = free_port()
    st = ServerThread(RspamdHttpServer(Engine(checks=[GtubeCheck()]), RspamdHttpConfig(port=0, metrics_port=port),
                                       metrics=Metrics()))
    try:
        post(st.port, "/checkv2", ham())
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
        assert 'antispam_messages_total{server="rspamd_http"} 1.0' in text
    finally:
        st.stop()


def test_exim_rspamd_variant(server, parts):
    """Exim's ``spamd_address = 127.0.0.1 PORT variant=rspamd`` request, and Exim's parse of the reply."""
    import re
    import socket

    raw = spam(eol="\n")
    req = (b"CHECK RSPAMC/1.3\r\nContent-length: %d\r\nQueue-Id: 1a2b3c-0000AB-CD\r\nFrom: <ana@sender.test>\r\n"
           b"Recipient-Number: 1\r\nRcpt: <bo@rcpt.test>\r\nHelo: mx.sender.test\r\nIP: 192.0.2.33\r\n\r\n" % len(raw)) + raw
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(req)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    m = re.match(rb"RSPAMD/(\S{1,7}) 0 EX_OK\r\nMetric: default; (\S{1,7})\s+([-\d.]+) / ([-\d.]+) / ([-\d.]+)\r\n", out)
    assert m, out[:300]
    assert m.group(2) == b"True;" and float(m.group(3)) >= 1000 and float(m.group(4)) == 5.0
    assert out[m.end():].startswith(b"Action: reject\r\n") and b"Symbol: GTUBE(" in out
    env, _ = parts[0].seen[-1]
    assert env.client_ip == "192.0.2.33" and env.rcpt_tos == ("bo@rcpt.test",) and env.queue_id == "1a2b3c-0000AB-CD"
