"""The rspamd-compatible HTTP endpoint, with the real ``rspamc`` (Debian package rspamd) and http.client."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import urllib.request

import pytest
import zstandard

from antispam import Check, Engine, Hit, SymbolDef
from antispam.builtin import GtubeCheck
from antispam.config import RspamdHttpConfig
from antispam.verdict import Verdict
from antispam.servers.metrics import Metrics
from antispam.servers import rspamd_http
from antispam.servers.rspamd_http import RspamdHttpServer

from server_helpers import EnvelopeProbe, MemoryLearner, ServerThread, ham, spam
from servers import free_port

RSPAMC = shutil.which("rspamc")
SPAMC = shutil.which("spamc")
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


def post(port: int, path: str, body: bytes, headers: dict | None = None, method: str = "POST") -> tuple[int, dict]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request(method, path, body=body, headers=headers or {})
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


@needs_rspamc
def test_rspamc_compressed(server, parts):
    """``rspamc -z`` sends the message zstd-compressed (``Compression: zstd``): it is scanned and
    learned as the message, not as the compressed bytes."""
    probe, _ = parts
    r = rspamc(server.port, "-z", "--json", stdin=spam())
    assert r.returncode == 0 and "GTUBE" in json.loads(r.stdout)["symbols"], r.stdout
    assert probe.seen[-1][1] == spam()
    raw = ham(subject="teach me compressed")
    assert b"success = true" in rspamc(server.port, "-z", "learn_ham", stdin=raw).stdout
    assert "LEARNED_HAM" in post(server.port, "/checkv2", raw)[1]["symbols"]


def test_compression_errors(server, parts, monkeypatch):
    """A compressed body that cannot be read as the message is refused, never scanned or learned:
    another method (415), bad or cut-off zstd (400), more than max_size once inflated (413: a
    bomb of 1 KB that inflates to 20 MB), zstd without the zstandard module (415)."""
    probe, learner = parts
    scans, learned = len(probe.seen), dict(learner.labels)
    packed = zstandard.ZstdCompressor().compress(spam())
    bomb = zstandard.ZstdCompressor().compress(bytes(20_000_000))
    for path in ("/checkv2", "/learnspam"):
        assert post(server.port, path, spam(), {"Compression": "gzip"})[0] == 415
        assert post(server.port, path, b"not zstd", {"Compression": "zstd"})[0] == 400
        status, d = post(server.port, path, packed[:-4], {"Compression": "zstd"})
        assert status == 400 and "ends inside a frame" in d["error"]
        assert len(bomb) < 1000 and post(server.port, path, bomb, {"Compression": "zstd"})[0] == 413
    monkeypatch.setattr(rspamd_http, "zstandard", None)
    status, d = post(server.port, "/checkv2", packed, {"Compression": "zstd"})
    assert status == 415 and "zstandard" in d["error"]
    assert len(probe.seen) == scans and learner.labels == learned
    monkeypatch.undo()
    assert post(server.port, "/checkv2", zstandard.ZstdCompressor().compress(b"x") * 2 + packed,
                {"Compression": "zstd"})[0] == 200  # several frames, as rspamd reads them
    assert probe.seen[-1][1] == b"xx" + spam()


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


@pytest.mark.parametrize("sent, seen", [
    ("198.51.100.7:40000", "198.51.100.7"), ("[2001:db8::7]:40000", "2001:db8::7"),
    ("2001:db8::7", "2001:db8::7"), ("::ffff:198.51.100.7", "::ffff:198.51.100.7"), ("198.51.100.7", "198.51.100.7"),
])
def test_ip_header_with_port(server, parts, sent, seen):
    """rspamd_proxy's milter mode sends ``IP: addr:port``; the client is the address (as rspamd
    reads it), in both protocols, and a bare IPv6 address is not cut at its last colon."""
    status, _ = post(server.port, "/checkv2", ham(), {"IP": sent})
    assert status == 200 and parts[0].seen[-1][0].client_ip == seen
    raw = ham(eol="\n")
    exchange(server.port, b"CHECK RSPAMC/1.3\r\nIP: %s\r\nContent-length: %d\r\n\r\n" % (sent.encode(), len(raw)) + raw)
    assert parts[0].seen[-1][0].client_ip == seen


def test_learn_empty_body_is_refused(server, parts):
    """An empty /learnspam or /learnham is refused with 400 as rspamd does, and nothing is learned
    (before, the empty message was learned and its hash marked as spam or ham)."""
    learner = parts[1]
    learned = dict(learner.labels)
    for path in ("/learnspam", "/learnham"):
        status, d = post(server.port, path, b"")
        assert status == 400 and d["error"] == "Empty body is not permitted"
    status, _ = post(server.port, "/learnspam", zstandard.ZstdCompressor().compress(b""), {"Compression": "zstd"})
    assert status == 400 and learner.labels == learned
    if RSPAMC:  # rspamc sends an empty input as GET
        assert b"HTTP error: 400, Bad Request" in rspamc(server.port, "learn_spam", stdin=b"").stdout


def test_get_and_put_with_the_message(server, parts):
    """rspamd_proxy sends its upstream ``GET /checkv2`` with the message as the body (milter mode);
    rspamd takes GET and PUT as it takes POST, for checks and learning."""
    probe, learner = parts
    for method in ("GET", "PUT"):
        status, d = post(server.port, "/checkv2", spam(), {"IP": "192.0.2.8"}, method=method)
        assert status == 200 and "GTUBE" in d["symbols"] and probe.seen[-1] == (probe.seen[-1][0], spam())
    raw = ham(subject="taught by GET")
    assert post(server.port, "/learnspam", raw, method="GET")[0] == 200
    assert "LEARNED_SPAM" in post(server.port, "/checkv2", raw)[1]["symbols"]
    assert post(server.port, "/checkv2", spam(), method="DELETE")[0] == 405


@pytest.fixture
def segment():
    """A POSIX shared memory segment as rspamd_proxy makes one (/dev/shm/rhm.<hex>); removed after."""
    made = []

    def make(data: bytes) -> str:
        name = "/rhm." + os.urandom(10).hex()
        with open("/dev/shm" + name, "wb") as f:
            f.write(data)
        made.append("/dev/shm" + name)
        return name

    yield make
    for path in made:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def shm_check(port: int, name: str, *more: str, path: str = "/checkv2") -> tuple[int, dict]:
    head = "".join(f"{h}\r\n" for h in more)
    out = exchange(port, f"GET {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: 0\r\nShm: {name}\r\n{head}\r\n".encode())
    status, body = status_and_body(out)
    return status, json.loads(body)


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm")
def test_message_in_shared_memory(server, parts, segment, monkeypatch):
    """rspamd_proxy hands a local upstream the message in shared memory: ``GET`` with no body and
    ``Shm: /rhm.<hex>``, ``Shm-Offset``, ``Shm-Length``.  Read from a loopback peer only, a name of
    that form only, no symbolic link, no hard link, within the segment and max_size."""
    probe, learner = parts
    name = segment(b"JUNK" + spam() + b"TAIL")
    status, d = shm_check(server.port, name, "Shm-Offset: 4", f"Shm-Length: {len(spam())}")
    assert status == 200 and "GTUBE" in d["symbols"] and probe.seen[-1][1] == spam()
    assert shm_check(server.port, name, "Shm-Offset: 4")[0] == 200 and probe.seen[-1][1] == spam() + b"TAIL"
    raw = ham(subject="taught from shared memory")
    assert shm_check(server.port, segment(raw), path="/learnham")[0] == 200
    assert "LEARNED_HAM" in post(server.port, "/checkv2", raw)[1]["symbols"]
    assert shm_check(server.port, segment(zstandard.ZstdCompressor().compress(spam())), "Compression: zstd")[0] == 200
    assert probe.seen[-1][1] == spam()

    scans = len(probe.seen)
    os.symlink("/dev/shm" + name, "/dev/shm" + (link := "/rhm." + os.urandom(10).hex()))
    try:
        assert shm_check(server.port, link)[0] == 400  # O_NOFOLLOW
    finally:
        os.unlink("/dev/shm" + link)
    os.link("/dev/shm" + name, "/dev/shm" + (link := "/rhm." + os.urandom(10).hex()))
    try:
        assert shm_check(server.port, link)[0] == 400  # a second name: could be a file from elsewhere
    finally:
        os.unlink("/dev/shm" + link)
    for bad in ("/rhm.../../etc/passwd", "/../etc/passwd", "rhm.0a1b", "/rhm.xyz", "/rhm.0a1b/x", "/rhm.0a1b\x00"):
        status, d = shm_check(server.port, bad)
        assert status == 400 and "name" in d["error"], bad
    assert shm_check(server.port, "/rhm.0123456789abcdef")[0] == 400  # no such segment
    assert shm_check(server.port, name, "Shm-Offset: 4", f"Shm-Length: {len(spam()) + 5}")[0] == 400
    assert shm_check(server.port, name, "Shm-Offset: -1")[0] == 400
    assert shm_check(server.port, segment(b"x" * 100_001))[0] == 413
    monkeypatch.setattr(rspamd_http, "_loopback", lambda ip: False)
    status, d = shm_check(server.port, name)
    assert status == 403 and "loopback" in d["error"]
    assert len(probe.seen) == scans


def test_check_and_symbols_answer_protocol_v1(server):
    """rspamd answers the older ``/check`` and ``/symbols`` in its first JSON shape, which older
    clients parse: the verdict and one key per symbol under ``default``, no ``symbols`` or
    ``thresholds``, the rest (``message-id``, ``time_real``) at the top."""
    v2 = post(server.port, "/checkv2", spam())[1]
    for path in ("/check", "/symbols"):
        status, d = post(server.port, path, spam())
        assert status == 200 and set(d) == {"default", "message-id", "time_real"}, d
        default = d["default"]
        assert (default["is_spam"], default["is_skipped"], default["action"]) == (True, False, "reject")
        assert (default["score"], default["required_score"]) == (v2["score"], v2["required_score"])
        assert default["GTUBE"] == {k: v for k, v in v2["symbols"]["GTUBE"].items() if k != "metric_score"}
        assert set(default) == {"is_spam", "is_skipped", "score", "required_score", "action", *v2["symbols"]}
    assert post(server.port, "/check", ham())[1]["default"]["is_spam"] is False
    v = Verdict(score=1.0, required_score=5.0, action="no action", symbols={}, thresholds={"reject": 15.0},
                authentication_results="mx.test; spf=pass")
    assert rspamd_http._v1(v)["rmilter"] == v.to_dict()["milter"]  # the milter block's v1 name


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
    # required is rspamd's: its reject threshold (15), where Exim's `spam =` condition turns true
    assert m.group(2) == b"True;" and float(m.group(3)) >= 1000 and float(m.group(4)) == 15.0
    assert out[m.end():].startswith(b"Action: reject\r\n") and b"Symbol: GTUBE(" in out
    env, _ = parts[0].seen[-1]
    assert env.client_ip == "192.0.2.33" and env.rcpt_tos == ("bo@rcpt.test",) and env.queue_id == "1a2b3c-0000AB-CD"


# --------------------------------------------------------------------------- the wire, byte by byte


def exchange(port: int, request: bytes, shut: bool = True) -> bytes:
    """Send ``request``, then read the whole answer until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        if shut:
            try:
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def status_and_body(out: bytes) -> tuple[int, bytes]:
    head, _, body = out.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


class _AlmostSpam(Check):
    """Scores a message just under the default required score: 4.996 rounds to 5.00."""

    name = "almost_spam"
    symbols = (SymbolDef("ALMOST_SPAM", 4.996, "scores just under the required score", "test"),)

    def run(self, msg, ctx):
        return [Hit("ALMOST_SPAM", 1.0)]


def test_exim_rspamd_variant_scores_compare_as_the_verdict():
    """Exim's variant=rspamd reads ``score / required`` from the Metric line and takes
    ``score >= required`` as spam: required is the reject threshold, as rspamd prints it; a
    message at 4.996 with reject at 5 (its action: add header) must not print ``5.00 / 5.00``, and
    a profile without spam actions must not print ``inf``."""
    from antispam import Config

    cfg = Config().merged({"actions": {"add header": 4.0, "reject": 5.0},
                           "profiles": {"lenient": {"actions": {"reject": False, "add header": False}}},
                           "recipients": {"carol@rcpt.test": "lenient"}})
    st = ServerThread(RspamdHttpServer(Engine(cfg, checks=[GtubeCheck(), _AlmostSpam()]), RspamdHttpConfig(port=0)))
    metric = re.compile(rb"RSPAMD/\S{1,7} 0 EX_OK\r\nMetric: default; (\S{1,7})\s+([-\d.]+) / ([-\d.]+) / ([-\d.]+)\r\n")
    try:
        raw = ham(eol="\n")
        out = exchange(st.port, b"CHECK RSPAMC/1.3\r\nContent-length: %d\r\n\r\n" % len(raw) + raw)
        m = metric.match(out)
        assert m and m.group(1) == b"False;" and (m.group(2), m.group(3)) == (b"4.99", b"5.00"), m
        assert b"\r\nAction: add header\r\n" in out
        raw = spam(eol="\n")
        out = exchange(st.port, b"CHECK RSPAMC/1.3\r\nRcpt: <carol@rcpt.test>\r\nContent-length: %d\r\n\r\n" % len(raw) + raw)
        m = metric.match(out)
        assert m and m.group(1) == b"False;" and m.group(3) == b"1000000.00" and b"inf" not in out, out[:200]
        assert float(m.group(2)) < float(m.group(3))
    finally:
        st.stop()


class _ForcedReject(Check):
    """Forces ``reject`` at a score of 1 (as a rate limit may): the action, not the score, decides."""

    name = "forced_reject"
    symbols = (SymbolDef("FORCED_REJECT", 1.0, "forces reject", "test"),)

    def run(self, msg, ctx):
        return [Hit("FORCED_REJECT", 1.0, action="reject")]


def test_exim_rspamd_variant_forced_reject_reaches_required():
    """A forced reject with a low score: rspamd raises a forced action's score to its threshold,
    so Exim's ``spam =`` (``score >= required`` on the Metric line) agrees with ``Action: reject``."""
    st = ServerThread(RspamdHttpServer(Engine(checks=[_ForcedReject()]), RspamdHttpConfig(port=0)))
    try:
        raw = ham(eol="\n")
        out = exchange(st.port, b"CHECK RSPAMC/1.3\r\nContent-length: %d\r\n\r\n" % len(raw) + raw)
        assert out.split(b"\r\n")[1:3] == [b"Metric: default; True; 15.00 / 15.00 / 15.00", b"Action: reject"], out
    finally:
        st.stop()


def test_settings_id_selects_a_profile(caplog):
    """``Settings-ID`` names the settings the client chose: the ``[profiles]`` entry of that name,
    over the recipient's, in both protocols.  An unknown ID is ignored (rspamd logs it and scans
    with the defaults), logged once however often it comes, and so is a JSON ``Settings`` header."""
    import logging

    from antispam import Config

    cfg = Config().merged({"profiles": {"lenient": {"actions": {"reject": 1000.5, "add header": 999.5}},
                                        "strict": {"actions": {"reject": 2.0}}},
                           "recipients": {"carol@rcpt.test": "strict"}})
    st = ServerThread(RspamdHttpServer(Engine(cfg, checks=[_AlmostSpam()]), RspamdHttpConfig(port=0)))
    try:
        def action(**headers):
            return post(st.port, "/checkv2", ham(), {k.replace("_", "-"): v for k, v in headers.items()})[1]["action"]

        assert action() == "no action" and action(Rcpt="carol@rcpt.test") == "reject"
        assert action(Settings_ID="lenient", Rcpt="carol@rcpt.test") == "no action"
        assert action(Settings_ID="strict") == "reject"
        with caplog.at_level(logging.WARNING, logger="antispam.servers"):
            assert action(Settings_ID="nosuch", Rcpt="carol@rcpt.test") == "reject"
            assert action(Settings_ID="nosuch") == "no action"
        assert sum("unknown Settings-ID" in r.getMessage() for r in caplog.records) == 1
        assert action(Settings='{"actions": {"reject": 1}}') == "no action"
        raw = ham(eol="\n")
        out = exchange(st.port, b"CHECK RSPAMC/1.3\r\nSettings-ID: strict\r\nContent-length: %d\r\n\r\n" % len(raw) + raw)
        assert b"\r\nAction: reject\r\n" in out, out[:200]
    finally:
        st.stop()


@pytest.mark.parametrize("size", [b"-5", b"-0x10", b"0x5", b"+5", b"5_0", b"", b"zz", b" 5"])
def test_chunk_size_must_be_hex_digits(server, size):
    """RFC 9112 7.1: chunk-size = 1*HEXDIG.  int(x, 16) also takes "-5" (which crashed the handler:
    no answer at all), "0x5", "+5" and "5_0"; each is a 400 now, with the connection closed."""
    req = (b"POST /checkv2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + size
           + b"\r\nhello\r\n0\r\n\r\n")
    status, body = status_and_body(exchange(server.port, req))
    assert status == 400 and "chunk" in json.loads(body)["error"]


def test_chunked_body_with_extensions_and_bad_chunk_ends(server):
    ok = (b"POST /checkv2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
          b"%x;name=value\r\n%s\r\n0\r\n\r\n")
    raw = spam()
    status, body = status_and_body(exchange(server.port, ok % (len(raw), raw)))
    assert status == 200 and json.loads(body)["action"] == "reject"
    # a chunk longer than its size says: the rest must not be taken for the next chunk-size line
    status, _ = status_and_body(exchange(server.port, ok % (3, b"hello")))
    assert status == 400


@pytest.mark.parametrize("value", [b"+5", b"5_0", b"-0", b" 0x5", "\uff15".encode(), b"5, 6", b"9" * 5000],
                         ids=["plus", "underscore", "minus-zero", "hex", "fullwidth", "list", "5000-digits"])
def test_content_length_must_be_ascii_digits(server, value):
    """RFC 9110 8.6: Content-Length = 1*DIGIT; int() would take "+5", "5_0", "-0" and full-width digits."""
    req = b"POST /checkv2 HTTP/1.1\r\nHost: x\r\nContent-Length: " + value + b"\r\n\r\n" + b"hello" * 10
    status, body = status_and_body(exchange(server.port, req))
    assert status == 400 and "Content-Length" in json.loads(body)["error"]


def test_expect_100_continue(server):
    """RFC 9110 10.1.1: a server answers ``Expect: 100-continue`` at once, with ``100 Continue`` or
    a final status; otherwise a client waits for it before sending the body (curl for a second per
    request, others until the read timeout)."""
    raw = spam()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"POST /checkv2 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n" % len(raw))
        assert s.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(raw)
        f = s.makefile("rb")
        assert f.readline() == b"HTTP/1.1 200 OK\r\n"
        f.close()
    # too big: the final status at once, without reading a body the client has not sent
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"POST /checkv2 HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\nExpect: 100-continue\r\n\r\n")
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    status, body = status_and_body(out)
    assert status == 413 and "larger" in json.loads(body)["error"] and b"100 Continue" not in out
    # HTTP/1.0: the expectation is ignored (RFC 9110 10.1.1), no interim response
    out = exchange(server.port, b"POST /checkv2 HTTP/1.0\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n" % len(raw) + raw)
    assert out.startswith(b"HTTP/1.1 200 OK\r\n")


@pytest.mark.parametrize("headers, status", [
    (b"Host x\r\n", 400),                                              # no colon
    (b"".join(b"X-H%d: v\r\n" % i for i in range(150)), 431),         # too many header fields
    (b"X: " + b"a" * 17_000 + b"\r\n", 431),                           # one field over the line limit
], ids=["no-colon", "too-many-fields", "line-too-long"])
def test_malformed_headers_are_answered(server, headers, status):
    """A malformed header section gets an answer (RFC 9112 2.2: 400; RFC 6585 5: 431 for header
    fields too large), with a JSON error and the connection closed, not a silent close."""
    out = exchange(server.port, b"POST /checkv2 HTTP/1.1\r\nContent-Length: 0\r\n" + headers + b"\r\n", shut=False)
    got, body = status_and_body(out)
    assert got == status and json.loads(body)["error"] and b"Connection: close" in out


@pytest.mark.skipif(SPAMC is None and not os.environ.get("CI"), reason="spamc is not installed (Debian package spamc)")
def test_spamc_check_and_symbols_on_this_port(server):
    """rspamd answers spamc's CHECK and SYMBOLS on its port: ``spamc -c`` and ``-y`` pointed at it
    read a verdict (the real spamc); its other commands get spamd's EX_PROTOCOL, not silence."""
    def spamc(*args: str, stdin: bytes) -> subprocess.CompletedProcess:
        return subprocess.run([SPAMC, "-d", "127.0.0.1", "-p", str(server.port), "-t", "20", *args],
                              input=stdin, capture_output=True, timeout=60)

    r = spamc("-c", stdin=spam())
    assert (r.returncode, r.stdout) == (1, b"1000.0/5.0\n"), r
    r = spamc("-c", stdin=ham())
    assert r.returncode == 0 and r.stdout.endswith(b"/5.0\n") and not r.stdout.startswith(b"1000"), r
    assert spamc("-y", stdin=spam()).stdout.split(b"\n")[0].split(b",")[0] == b"GTUBE"
    raw = spam(eol="\n")
    out = exchange(server.port, b"SYMBOLS SPAMC/1.5\r\nUser: bo\r\nContent-length: %d\r\n\r\n" % len(raw) + raw)
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == b"SPAMD/1.1 0 EX_OK" and b"\r\nSpam: True ; 1000" in head, out
    assert f"Content-length: {len(body)}".encode() in head and body.startswith(b"GTUBE") and body.endswith(b"\r\n")
    out = exchange(server.port, b"PROCESS SPAMC/1.5\r\nContent-length: %d\r\n\r\n" % len(raw) + raw)
    assert out.startswith(b"SPAMD/1.1 76 EX_PROTOCOL ")


def test_legacy_protocol_bad_header_is_answered(server):
    out = exchange(server.port, b"CHECK RSPAMC/1.3\r\nContent-length 5\r\n\r\nhello")
    assert out.startswith(b"RSPAMD/1.3 76 EX_PROTOCOL ")
