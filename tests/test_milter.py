"""The milter server driven by a small MTA-side client (tests/milter_client.py).

The same server is driven by real Postfix in test_postfix_e2e.py; these tests
cover the protocol corners Postfix does not reach on demand.
"""

from __future__ import annotations

import struct

import pytest

from antispam import Config, Engine
from antispam.builtin import GtubeCheck
from antispam.config import MilterConfig
from antispam.servers.milter import MilterServer

from milter_client import MilterClient
from server_helpers import EnvelopeProbe, ServerThread, ham, spam


def headers_added(replies):
    return [tuple(x.decode() for x in data.split(b"\0")[:2]) for cmd, data in replies if cmd == b"h"]


@pytest.fixture(scope="module")
def probe():
    return EnvelopeProbe()


@pytest.fixture(scope="module")
def milter(probe):
    st = ServerThread(MilterServer(Engine(checks=[GtubeCheck(), probe]), MilterConfig(port=0)))
    yield st
    st.stop()


def client(st, **kw) -> MilterClient:
    c = MilterClient(st.port)
    c.negotiate(**kw)
    c.session()
    return c


def test_negotiation_takes_only_what_is_offered(milter):
    c = MilterClient(milter.port)
    version, actions, protocol = c.negotiate(actions=0x01 | 0x02, protocol=0x80)
    assert version == 6
    assert actions == 0x01  # add headers: yes; change body: never asked for
    assert protocol == 0x80  # only the no-reply flag that was offered
    c.close()


def test_ham_gets_headers_and_is_accepted(milter):
    c = client(milter)
    replies = c.message(ham())
    assert replies[-1][0] == b"c"
    added = dict(headers_added(replies))
    assert added["X-Spam-Flag"] == "NO"
    assert added["X-Spam-Action"] == "no action"
    assert added["X-Spam-Status"].startswith("No, score=")
    c.quit()


def test_spam_is_rejected_with_the_configured_reply(milter):
    c = client(milter)
    replies = c.message(spam())
    assert replies == [(b"y", b"550 5.7.1 Message rejected as spam\0")]
    c.quit()


def test_envelope_comes_from_the_stream(milter, probe):
    c = client(milter)
    c.message(ham(), mail_from="ana@sender.test", rcpts=("bo@rcpt.test", "cy@rcpt.test"),
              macros={"{auth_authen}": "ana", "i": "QID42"})
    env, raw = probe.seen[-1]
    assert env.client_ip == "192.0.2.10"
    assert env.helo == "mail.sender.test" and env.hostname == "mail.sender.test"
    assert env.mail_from == "ana@sender.test"
    assert env.rcpt_tos == ("bo@rcpt.test", "cy@rcpt.test")
    assert env.user == "ana" and env.queue_id == "QID42"
    # the message reassembled from header and body packets is the message that was sent
    assert raw == ham()
    c.quit()


def test_without_no_reply_flags_every_step_is_answered(milter):
    c = client(milter, protocol=0)
    replies = c.message(ham())
    assert replies[-1][0] == b"c" and headers_added(replies)
    c.quit()


def test_several_messages_and_abort_on_one_connection(milter, probe):
    c = client(milter)
    assert c.message(spam(), abort_after_headers=True) == []
    first = c.message(ham(subject="one"))
    second = c.message(spam())
    third = c.message(ham(subject="three"))
    assert first[-1][0] == b"c" and second[-1][0] == b"y" and third[-1][0] == b"c"
    assert b"Subject: three" in probe.seen[-1][1] and b"Subject: one" not in probe.seen[-1][1]
    c.quit()


def test_forged_headers_are_deleted(milter):
    c = client(milter)
    raw = ham().replace(b"MIME-Version", b"X-Spam-Flag: NO\r\nX-Spam-Flag: NO\r\nMIME-Version")
    replies = c.message(raw)
    deletes = [(struct.unpack(">I", d[:4])[0], d[4:].split(b"\0")[:2]) for cmd, d in replies if cmd == b"m"]
    assert (2, [b"X-Spam-Flag", b""]) in deletes and (1, [b"X-Spam-Flag", b""]) in deletes
    assert deletes.index((2, [b"X-Spam-Flag", b""])) < deletes.index((1, [b"X-Spam-Flag", b""]))
    c.quit()


def _one_off(settings: MilterConfig, config: Config | None = None, raw: bytes | None = None):
    st = ServerThread(MilterServer(Engine(config, checks=[GtubeCheck()]), settings))
    try:
        c = client(st)
        replies = c.message(raw or spam())
        c.quit()
        return replies
    finally:
        st.stop()


def test_quarantine_instead_of_reject():
    replies = _one_off(MilterConfig(port=0, quarantine=True, quarantine_reason="spam held"))
    cmds = [cmd for cmd, _ in replies]
    assert b"q" in cmds and cmds[-1] == b"c"
    assert (b"q", b"spam held\0") in replies
    assert dict(headers_added(replies))["X-Spam-Flag"] == "YES"


def test_rewrite_subject():
    cfg = Config().merged({"actions": {"reject": False, "add header": False, "rewrite subject": 5.0}})
    replies = _one_off(MilterConfig(port=0), cfg)
    changes = [d for cmd, d in replies if cmd == b"m"]
    assert any(d[4:].startswith(b"Subject\0***SPAM*** You have won") for d in changes)
    assert replies[-1][0] == b"c"


def test_soft_reject_is_a_tempfail_with_the_configured_text():
    cfg = Config().merged({"actions": {"reject": False, "add header": False, "soft reject": 5.0}})
    replies = _one_off(MilterConfig(port=0, tempfail_reply="452 4.7.1 Slow down"), cfg)
    assert replies == [(b"y", b"452 4.7.1 Slow down\0")]


def test_too_big_is_accepted_unscanned():
    replies = _one_off(MilterConfig(port=0, max_size=300), raw=spam(body="x" * 1000 + "\nXJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\n"))
    assert replies == [(b"c", b"")]


def test_bad_packet_closes_the_connection(milter):
    c = MilterClient(milter.port)
    c.sock.sendall(struct.pack(">I", 0))
    assert c.sock.recv(10) == b""
    c = MilterClient(milter.port)
    c.negotiate()
    c.send(b"Z", b"what")
    assert c.sock.recv(10) == b""


def test_per_recipient_settings_split_transactions():
    cfg = Config().merged({"profiles": {"lenient": {"actions": {"reject": False, "add header": False}}},
                           "recipients": {"@lenient.test": "lenient"}})
    st = ServerThread(MilterServer(Engine(cfg, checks=[GtubeCheck()]), MilterConfig(port=0)))
    try:
        c = MilterClient(st.port)
        _, _, protocol = c.negotiate()
        assert not protocol & 0x8000  # RCPT is answered when recipients have profiles
        c.session()
        c.send(b"M", b"<ana@sender.test>\0")  # no reply: NR_MAIL
        c.send(b"R", b"<bo@rcpt.test>\0")
        assert c.recv()[0] == b"c"
        c.send(b"R", b"<cy@lenient.test>\0")
        cmd, data = c.recv()
        assert cmd == b"y" and data.startswith(b"452 4.5.3")
        c.send(b"A")
        replies = c.message(spam(), rcpts=("cy@lenient.test",))
        assert replies[-1][0] == b"c" and dict(headers_added(replies))["X-Spam-Action"] == "no action"
        replies = c.message(spam(), rcpts=("bo@rcpt.test",))
        assert replies[-1][0] == b"y"
        c.quit()
    finally:
        st.stop()


def test_a_dead_scan_worker_is_replaced():
    """kill -9 of a scan worker process: a new worker replaces it and the message still gets a verdict."""
    import os
    import signal

    st = ServerThread(MilterServer(Engine(), MilterConfig(port=0, workers=1)))
    try:
        c = client(st)
        assert c.message(spam())[-1][0] == b"y"
        (pid,) = st.server.scanner.pool.pids()
        os.kill(pid, signal.SIGKILL)
        assert c.message(spam())[-1][0] == b"y"  # still rejected: scanned by the new worker
        (new_pid,) = st.server.scanner.pool.pids()
        assert new_pid != pid
        assert c.message(ham())[-1][0] == b"c"
        c.quit()
    finally:
        st.stop()


def test_cli_milter_with_metrics(tmp_path):
    import os
    import re
    import signal
    import subprocess
    import sys
    import urllib.request
    from pathlib import Path

    from servers import free_port

    mport = free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "antispam.cli", "serve", "milter", "--port", "0",
                             "--metrics-port", str(mport)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    try:
        port = int(re.search(rb":(\d+)", proc.stdout.readline()).group(1))
        c = MilterClient(port)
        c.negotiate()
        c.session()
        assert c.message(spam())[-1][0] == b"y"
        assert c.message(ham())[-1][0] == b"c"
        c.quit()
        with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10) as r:
            text = r.read().decode()
        assert 'antispam_actions_total{action="reject",server="milter"} 1.0' in text
        assert 'antispam_messages_total{server="milter"} 2.0' in text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_authentication_results_is_added_when_authentication_ran(milter):
    """The end-of-message packets for a verdict that carries Authentication-Results (built here the
    way the engine builds it after SPF/DKIM/DMARC), so this holds without network checks."""
    from antispam.servers.milter import ADDHDRS, CHGHDRS, Session
    from antispam.verdict import Verdict

    v = Verdict(score=0.0, required_score=5.0, action="no action", symbols={}, thresholds={"reject": 15.0},
                authentication_results="mx.rcpt.test; spf=pass smtp.mailfrom=ana@sender.test")
    out = milter.server._verdict_reply(Session(actions=ADDHDRS | CHGHDRS), v)
    packets = []
    while out:
        n = struct.unpack(">I", out[:4])[0]
        packets.append((out[4:5], out[5:4 + n]))
        out = out[4 + n:]
    added = dict(headers_added(packets))
    assert added["Authentication-Results"] == "mx.rcpt.test; spf=pass smtp.mailfrom=ana@sender.test"
    assert packets[-1] == (b"c", b"")


def test_forged_authentication_results_claiming_our_id_are_deleted():
    cfg = Config.load(overrides={"engine": {"authserv_id": "mx.ours.example"}})
    raw = ham().replace(b"MIME-Version", b"Authentication-Results: mx.upstream.example; spf=pass smtp.mailfrom=a@b.example\r\n"
                                          b"Authentication-Results: MX.ours.example; dkim=pass header.d=bank.example\r\n"
                                          b"MIME-Version")
    replies = _one_off(MilterConfig(port=0), cfg, raw)
    deletes = [(struct.unpack(">I", d[:4])[0], d[4:].split(b"\0")[:2]) for cmd, d in replies if cmd == b"m"]
    assert (2, [b"Authentication-Results", b""]) in deletes        # the forgery of our id
    assert (1, [b"Authentication-Results", b""]) not in deletes    # the upstream's own result stays


def test_idle_mta_connection_times_out_but_a_slow_one_does_not():
    """``timeout`` bounds each wait for the MTA's next packet, not the session: a connection
    that sends a packet more often than that stays open, one that goes quiet is closed."""
    import time

    st = ServerThread(MilterServer(Engine(checks=[GtubeCheck()]), MilterConfig(port=0, timeout=0.6)))
    try:
        t0 = time.monotonic()
        busy, idle = client(st), client(st)
        for _ in range(6):  # 1.8 s in all, a packet every 0.3 s
            time.sleep(0.3)
            busy.send(b"D", b"Mi\0QUEUE1\0")  # macros: no reply expected
        replies = busy.message(ham(subject="slow but steady"))
        assert time.monotonic() - t0 > 1.5 and replies[-1][0] == b"c"  # scanned and accepted
        assert dict(headers_added(replies))["X-Spam-Flag"] == "NO"
        idle.sock.settimeout(5)
        assert idle.sock.recv(100) == b""  # closed by the server, well before the 5 s client timeout
        busy.close()
        idle.close()
    finally:
        st.stop()
