"""The SMTP content filter, driven by smtplib and swaks, relaying to an aiosmtpd sink.

The rule under test: the sender gets 250 only after the next hop accepted the
message; otherwise a 4xx, so the sender keeps the message and retries.  A kill
-9 of the filter mid-transaction loses nothing and duplicates nothing.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from antispam import Engine
from antispam.builtin import GtubeCheck
from antispam.config import SmtpConfig
from antispam.servers.smtp import SmtpFilterServer

from server_helpers import EVENT_LOOPS, EnvelopeProbe, ServerThread, Sink, ham, marker, smtp_replies, spam
from servers import free_port, wait_port

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture()
def sink():
    s = Sink()
    yield s
    s.down()


_SHARED: list[Engine] = []


def default_engine() -> Engine:
    """The default engine, built once for the module (building one costs seconds)."""
    if not _SHARED:
        _SHARED.append(Engine())
    return _SHARED[0]


def start(sink, engine=None, event_loop: str = "auto", **settings) -> ServerThread:
    settings.setdefault("port", 0)
    settings.setdefault("next_hop", f"127.0.0.1:{sink.port}")
    settings.setdefault("next_hop_timeout", 5.0)
    return ServerThread(SmtpFilterServer(engine or default_engine(), SmtpConfig(**settings)), event_loop=event_loop)


def send(port: int, raw: bytes, mail_from="ana@sender.test", rcpts=("bo@rcpt.test",)) -> dict:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        return s.sendmail(mail_from, list(rcpts), raw)


def _ehlo(port: int) -> tuple[socket.socket, object, list[bytes]]:
    """A raw connection after EHLO: the socket, its reader, and the EHLO reply lines but the last."""
    c = socket.create_connection(("127.0.0.1", port), timeout=10)
    fh = c.makefile("rb")
    fh.readline()
    c.sendall(b"EHLO client.test\r\n")
    ehlo = []
    while (line := fh.readline())[3:4] == b"-":
        ehlo.append(line)
    return c, fh, ehlo


@pytest.mark.parametrize("event_loop", EVENT_LOOPS)
def test_after_queue_tags_and_relays(sink, event_loop):
    f = ServerThread(SmtpFilterServer(default_engine(), SmtpConfig(port=0, next_hop=f"127.0.0.1:{sink.port}",
                                                                   next_hop_timeout=5.0)), event_loop=event_loop)
    try:
        send(f.port, ham(subject="aq ham"), rcpts=("bo@rcpt.test", "cy@rcpt.test"))
        send(f.port, spam(subject="aq spam"))
        (h,) = sink.wait_for(marker("aq ham"))
        assert h[0] == "ana@sender.test" and h[1] == ("bo@rcpt.test", "cy@rcpt.test")
        assert b"X-Spam-Flag: NO" in h[2] and h[2].endswith(ham(subject="aq ham").split(b"\r\n\r\n", 1)[1])
        (s,) = sink.wait_for(marker("aq spam"))
        assert b"X-Spam-Flag: YES" in s[2] and b"X-Spam-Action: reject" in s[2]  # tagged, not rejected
    finally:
        f.stop()


def test_before_queue_rejects_spam_at_end_of_data(sink):
    f = start(sink, mode="before-queue", reject_reply="550 5.7.1 No spam here")
    try:
        with pytest.raises(smtplib.SMTPDataError) as exc:
            send(f.port, spam(subject="bq spam"))
        assert exc.value.smtp_code == 550 and b"No spam here" in exc.value.smtp_error
        send(f.port, ham(subject="bq ham"))
        assert len(sink.wait_for(marker("bq ham"))) == 1
        assert sink.wait_for(marker("bq spam"), timeout=0.3) == []
    finally:
        f.stop()


def test_next_hop_down_means_4xx_and_no_loss(sink):
    f = start(sink)
    try:
        sink.down()
        raw = ham(subject="hop down")
        with pytest.raises(smtplib.SMTPSenderRefused) as exc:  # MAIL FROM opens the next hop's transaction
            send(f.port, raw)
        assert exc.value.smtp_code == 451
        sink.up()
        send(f.port, raw)  # the sender's retry
        assert len(sink.wait_for(marker("hop down"))) == 1
        sink.refuse = True  # a next hop that answers 4xx itself: passed back as 4xx
        with pytest.raises(smtplib.SMTPDataError) as exc:
            send(f.port, ham(subject="hop refuses"))
        assert exc.value.smtp_code == 451 and b"sink refusing" in exc.value.smtp_error
    finally:
        f.stop()


@pytest.mark.parametrize("chunking", [False, True], ids=["next-hop-plain", "next-hop-chunking"])
def test_next_hop_slow_to_take_the_message_is_waited_for(chunking):
    """The next hop's reply to the message itself may come long after its replies to commands (its
    milters, its queue file): RFC 5321 section 4.5.3.2.6 gives it 10 minutes, since the message
    is usually queued there all the same.  It was awaited only ``next_hop_timeout``, so the client
    got 451 and sent again: a second copy at the next hop at every try (Postfix's re-injection
    smtpd with a slow milter, ``tests/test_postfix_e2e.py``).  The commands' replies keep
    ``next_hop_timeout``; the message's has ``next_hop_data_timeout``."""
    sink = Sink(chunking=chunking)
    f = start(sink, next_hop_timeout=0.5)
    sink.delay = 1.0
    try:
        assert send(f.port, ham(subject="slow to queue")) == {}  # step by step
        assert _pipelined(f.port, ham(subject="slow to queue, held"))[-1] == sink.data_reply
        assert len(sink.wait_for(marker("slow to queue"))) == 2
    finally:
        f.stop()
        sink.down()


def test_next_hop_too_slow_means_4xx(sink):
    f = start(sink, next_hop_data_timeout=0.5)
    try:
        sink.delay = 2.0
        with pytest.raises(smtplib.SMTPDataError) as exc:
            send(f.port, ham(subject="slow hop"))
        assert exc.value.smtp_code == 451
    finally:
        f.stop()


def test_swaks(sink):
    if shutil.which("swaks") is None and not os.environ.get("CI"):
        pytest.skip("swaks is not installed (Debian package swaks)")
    import postfix as pf

    f = start(sink, mode="before-queue")
    try:
        r = pf.swaks(f.port, ham(subject="swaks ham"))
        assert r.returncode == 0, r.stdout
        assert re.search(r"<-  250 2\.0\.0 stored", r.stdout)  # the next hop's own 250, passed back
        assert b"X-Spam-Status: No" in sink.wait_for(marker("swaks ham"))[0][2]
        r = pf.swaks(f.port, spam(subject="swaks spam"))
        assert r.returncode != 0 and "550 5.7.1 Message rejected as spam" in r.stdout
    finally:
        f.stop()


def test_xforward_gives_the_real_client(sink):
    probe = EnvelopeProbe()
    f = start(sink, engine=Engine(checks=[GtubeCheck(), probe]))
    try:
        with smtplib.SMTP("127.0.0.1", f.port, timeout=30) as s:
            s.ehlo("postfix.local")
            assert s.has_extn("xforward")
            code, _ = s.docmd("XFORWARD", "NAME=mail.sender.test ADDR=198.51.100.7 HELO=mail.sender.test PROTO=ESMTP")
            assert code == 250
            s.sendmail("ana@sender.test", ["bo@rcpt.test"], ham(subject="xf"))
        env, _ = probe.seen[-1]
        assert env.client_ip == "198.51.100.7" and env.helo == "mail.sender.test"
        assert env.hostname == "mail.sender.test" and env.mail_from == "ana@sender.test"
        assert env.rcpt_tos == ("bo@rcpt.test",)
    finally:
        f.stop()


def test_limits_allow_list_and_size(sink):
    f = start(sink, allow=("192.0.2.0/24",))
    try:
        with pytest.raises(smtplib.SMTPConnectError) as exc:
            smtplib.SMTP("127.0.0.1", f.port, timeout=10)
        assert exc.value.smtp_code == 554
    finally:
        f.stop()
    f = start(sink, max_size=300)
    try:
        with pytest.raises(smtplib.SMTPException) as exc:
            send(f.port, ham(body="x" * 2000))
        assert getattr(exc.value, "smtp_code", None) == 552 or "552" in str(exc.value)
    finally:
        f.stop()


# --------------------------------------------------------------------------- a real process, killed


def spawn_filter(port: int, next_hop: int, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.Popen([sys.executable, "-m", "antispam.cli", "serve", "smtp", "--port", str(port),
                             "--next-hop", f"127.0.0.1:{next_hop}", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    line = proc.stdout.readline().decode()
    assert "listening" in line, line
    return proc


def test_kill_9_mid_transaction_then_retry_arrives_once(sink):
    port = free_port()
    proc = spawn_filter(port, sink.port)
    raw = ham(subject="killed mid-DATA")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            f = c.makefile("rb")
            assert f.readline().startswith(b"220")
            for cmd in (b"EHLO client.test", b"MAIL FROM:<ana@sender.test>", b"RCPT TO:<bo@rcpt.test>", b"DATA"):
                c.sendall(cmd + b"\r\n")
                line = f.readline()
                while line[3:4] == b"-":
                    line = f.readline()
                assert line[:1] in (b"2", b"3"), line
            c.sendall(raw[: len(raw) // 2])  # half the message, then the filter dies
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            try:
                tail = f.readline()
            except ConnectionResetError:
                tail = b""
            assert tail == b""  # connection gone: no 250 was ever given
        assert sink.wait_for(marker("killed mid-DATA"), timeout=0.5) == []
        proc = spawn_filter(port, sink.port)
        send(port, raw)  # the sender retries
        assert len(sink.wait_for(marker("killed mid-DATA"))) == 1
        time.sleep(0.3)
        assert len(sink.wait_for(marker("killed mid-DATA"), timeout=0)) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigterm_drains_in_flight_messages(sink):
    port = free_port()
    proc = spawn_filter(port, sink.port)
    sink.delay = 1.5  # the message is being relayed when SIGTERM arrives
    result: dict = {}

    def sender():
        try:
            result["refused"] = send(port, ham(subject="drained"))
        except Exception as exc:  # pragma: no cover - reported by the assert below
            result["error"] = exc

    t = threading.Thread(target=sender)
    try:
        t.start()
        time.sleep(0.7)
        proc.send_signal(signal.SIGTERM)
        t.join(20)
        assert result.get("refused") == {}, result  # 250 for every recipient, after the next hop's 250
        assert proc.wait(20) == 0
        assert len(sink.wait_for(marker("drained"))) == 1
        with pytest.raises(OSError):
            wait_port(port, timeout=0.3)  # no longer listening
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_recipients_with_other_settings_go_in_their_own_transaction(sink):
    from antispam import Config

    cfg = Config().merged({"profiles": {"lenient": {"actions": {"reject": False, "add header": False}}},
                           "recipients": {"@lenient.test": "lenient"}})
    f = start(sink, engine=Engine(cfg, checks=[GtubeCheck()]), mode="before-queue")
    try:
        raw = spam(subject="per rcpt")
        with smtplib.SMTP("127.0.0.1", f.port, timeout=30) as s:
            s.ehlo("client.test")
            s.mail("ana@sender.test")
            assert s.rcpt("bo@rcpt.test")[0] == 250
            code, msg = s.rcpt("cy@lenient.test")
            assert code == 452 and msg.startswith(b"4.5.3")
            assert s.data(raw)[0] == 550  # bo's settings: reject
        send(f.port, raw, rcpts=("cy@lenient.test", "dee@lenient.test"))  # the deferred recipient, retried
        (got,) = sink.wait_for(marker("per rcpt"))
        assert got[1] == ("cy@lenient.test", "dee@lenient.test")
        assert b"X-Spam-Action: no action" in got[2]  # the lenient profile's verdict
    finally:
        f.stop()


def test_long_lines_are_relayed_not_refused(sink):
    f = start(sink)
    try:
        long_line = "word " * 600  # 3,000 characters on one line
        send(f.port, ham(subject="long line", body=long_line + "\n"))
        (got,) = sink.wait_for(marker("long line"))
        assert long_line.strip().encode() in got[2]
    finally:
        f.stop()


def test_kept_next_hop_connection_that_died_is_replaced(sink):
    f = start(sink)
    try:
        send(f.port, ham(subject="before restart"))
        sink.down()  # closes the connection the relay thread kept
        sink.up()
        send(f.port, ham(subject="after restart"))
        assert len(sink.wait_for(marker("before restart"))) == 1
        assert len(sink.wait_for(marker("after restart"))) == 1
    finally:
        f.stop()


def test_rewrite_strips_forged_authentication_results():
    from antispam.servers.common import rewrite_headers
    from antispam.verdict import Verdict

    raw = (b"Authentication-Results: mx.upstream.example; spf=pass\r\n"
           b"Authentication-Results: mx.ours.example;\r\n\tdkim=pass header.d=bank.example\r\n"
           b"Subject: hi\r\n\r\nbody\r\n")
    v = Verdict(score=0.0, required_score=5.0, action="no action", symbols={}, thresholds={},
                authentication_results="mx.ours.example; spf=none", authserv_id="mx.ours.example")
    out = rewrite_headers(raw, v)
    assert out.count(b"Authentication-Results: mx.ours.example") == 1 and b"header.d=bank.example" not in out
    assert b"Authentication-Results: mx.upstream.example; spf=pass" in out and out.endswith(b"\r\n\r\nbody\r\n")


# --------------------------------------------------------------------------- recipient by recipient


def test_recipients_the_next_hop_refuses_are_refused_alone(sink):
    """RCPT TO goes through to the next hop in real time: a recipient it refuses is refused to the
    sender at RCPT time with the next hop's own reply, the others are delivered, and the sender's
    retry of the temporarily refused one is delivered to that recipient only."""
    f = start(sink)
    sink.refuse_rcpts = {"gone@rcpt.test": "550 5.1.1 No such user here",
                         "full@rcpt.test": "452 4.2.2 Mailbox full, try later"}
    try:
        raw = ham(subject="per rcpt outcome")
        refused = send(f.port, raw, rcpts=("bo@rcpt.test", "gone@rcpt.test", "full@rcpt.test", "cy@rcpt.test"))
        assert refused == {"gone@rcpt.test": (550, b"5.1.1 No such user here"),
                           "full@rcpt.test": (452, b"4.2.2 Mailbox full, try later")}
        (got,) = sink.wait_for(marker("per rcpt outcome"))
        assert got[1] == ("bo@rcpt.test", "cy@rcpt.test") and b"X-Spam-Flag: NO" in got[2]
        # the sender retries the 4xx recipient later (what Postfix does with its deferred recipients)
        del sink.refuse_rcpts["full@rcpt.test"]
        assert send(f.port, raw, rcpts=("full@rcpt.test",)) == {}
        got = sink.wait_for(lambda r: b"per rcpt outcome" in r)
        assert sorted(m[1] for m in got) == [("bo@rcpt.test", "cy@rcpt.test"), ("full@rcpt.test",)]
        # every recipient refused: no DATA at all, nothing delivered
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            send(f.port, ham(subject="nobody home"), rcpts=("gone@rcpt.test",))
        assert sink.wait_for(marker("nobody home"), timeout=0.3) == []
    finally:
        sink.refuse_rcpts = {}
        f.stop()


def test_swaks_sees_the_next_hops_recipient_replies(sink):
    if shutil.which("swaks") is None and not os.environ.get("CI"):
        pytest.skip("swaks is not installed (Debian package swaks)")
    import postfix as pf

    f = start(sink, mode="before-queue")
    sink.refuse_rcpts = {"gone@rcpt.test": "550 5.1.1 No such user here"}
    try:
        r = pf.swaks(f.port, ham(subject="swaks per rcpt"), to="bo@rcpt.test,gone@rcpt.test")
        assert "<** 550 5.1.1 No such user here" in r.stdout, r.stdout
        assert re.search(r"<-  250 2\.0\.0 stored", r.stdout), r.stdout  # bo's copy went through
        (got,) = sink.wait_for(marker("swaks per rcpt"))
        assert got[1] == ("bo@rcpt.test",)
    finally:
        sink.refuse_rcpts = {}
        f.stop()


def test_abandoned_transactions_leave_nothing_at_the_next_hop(sink):
    """RSET, a rejected message, a dropped client and a next hop lost before DATA: each ends
    the transaction at the next hop, and the next message on the same kept connection is whole."""
    f = start(sink, mode="before-queue")
    try:
        with smtplib.SMTP("127.0.0.1", f.port, timeout=30) as s:
            s.ehlo("client.test")
            s.mail("ana@sender.test")
            assert s.rcpt("nobody-then@rcpt.test")[0] == 250
            assert s.rset()[0] == 250
            with pytest.raises(smtplib.SMTPDataError):
                s.sendmail("ana@sender.test", ["bo@rcpt.test"], spam(subject="abandon spam"))
            assert s.sendmail("ana@sender.test", ["cy@rcpt.test"], ham(subject="abandon ham 1")) == {}
        c = socket.create_connection(("127.0.0.1", f.port), timeout=10)  # a client that vanishes after RCPT
        fh = c.makefile("rb")
        fh.readline()
        for cmd in (b"EHLO gone.test", b"MAIL FROM:<ana@sender.test>", b"RCPT TO:<dropped@rcpt.test>"):
            c.sendall(cmd + b"\r\n")
            while (line := fh.readline())[3:4] == b"-":
                pass
            assert line[:1] == b"2", line
        c.close()
        time.sleep(0.2)
        send(f.port, ham(subject="abandon ham 2"), rcpts=("dee@rcpt.test",))
        got = sink.wait_for(lambda r: b"abandon" in r)
        assert [(m[1], b"abandon ham" in m[2]) for m in got] == [(("cy@rcpt.test",), True), (("dee@rcpt.test",), True)]
        # the next hop goes away between RCPT and DATA: 4xx at end of DATA, and the retry arrives once
        raw = ham(subject="hop lost before data")
        with smtplib.SMTP("127.0.0.1", f.port, timeout=30) as s:
            s.ehlo("client.test")
            s.mail("ana@sender.test")
            assert s.rcpt("bo@rcpt.test")[0] == 250
            sink.down()
            code, _ = s.data(raw)
            assert code == 451
        sink.up()
        send(f.port, raw)
        assert len(sink.wait_for(marker("hop lost before data"))) == 1
    finally:
        f.stop()


def test_next_hop_closing_mid_transaction_defers_every_recipient(sink):
    """A next hop answering 421 to one RCPT has dropped the whole transaction: that recipient, the
    ones after it and (at DATA) the ones before it all get 4xx, never 421 (it is not our connection
    that closes), and the sender's retry delivers to each once."""
    f = start(sink)
    sink.refuse_rcpts = {"bye@rcpt.test": "421 4.3.2 Shutting down"}
    raw = ham(subject="hop says 421")
    try:
        with smtplib.SMTP("127.0.0.1", f.port, timeout=30) as s:
            s.ehlo("client.test")
            s.mail("ana@sender.test")
            assert s.rcpt("bo@rcpt.test")[0] == 250
            code, msg = s.rcpt("bye@rcpt.test")
            assert code == 451 and b"Shutting down" in msg
            assert s.rcpt("cy@rcpt.test")[0] == 451
            assert s.data(raw)[0] == 451
            assert s.noop()[0] == 250  # our client's session goes on
        assert sink.wait_for(marker("hop says 421"), timeout=0.5) == []
        sink.refuse_rcpts = {}
        assert send(f.port, raw, rcpts=("bo@rcpt.test", "bye@rcpt.test", "cy@rcpt.test")) == {}
        (got,) = sink.wait_for(marker("hop says 421"))
        assert got[1] == ("bo@rcpt.test", "bye@rcpt.test", "cy@rcpt.test")
    finally:
        sink.refuse_rcpts = {}
        f.stop()


def test_relayed_bytes_survive_dot_stuffing_and_null_sender(sink):
    """Lines starting with a dot (and a lone dot mid-body) arrive as sent, and a bounce's null
    sender stays null at the next hop."""
    f = start(sink)
    try:
        body = ".\n.leading dot\n..two dots\nlast line without dot\n"
        raw = ham(subject="dots", body=body)
        assert send(f.port, raw, mail_from="") == {}
        (got,) = sink.wait_for(marker("dots"))
        assert got[0] == "<>"
        assert got[2].endswith(raw.split(b"\r\n\r\n", 1)[1])
        assert b"\r\n.\r\n.leading dot\r\n..two dots\r\n" in got[2]
    finally:
        f.stop()


@pytest.mark.parametrize("hop_pipelines", [True, False], ids=["next-hop-pipelining", "next-hop-plain"])
def test_pipelined_group_gets_the_next_hops_reply_per_recipient(hop_pipelines):
    """A client pipelining MAIL, four RCPTs and DATA (RFC 2920) gets, for each recipient, the next
    hop's own reply, a refusal mid-group included, all in one reply group; the message reaches
    the recipients the next hop accepted, once.  Whether or not the next hop announces
    PIPELINING; when it does, our MAIL goes to it together with the first RCPT."""
    sink = Sink(pipelining=hop_pipelines)
    sink.refuse_rcpts = {"gone@rcpt.test": "550 5.1.1 No such user here",
                         "full@rcpt.test": "452 4.2.2 Mailbox full, try later"}
    f = start(sink)
    try:
        c, fh, ehlo = _ehlo(f.port)
        assert b"250-PIPELINING\r\n" in ehlo
        c.sendall(b"MAIL FROM:<ana@sender.test>\r\nRCPT TO:<bo@rcpt.test>\r\nRCPT TO:<gone@rcpt.test>\r\n"
                  b"RCPT TO:<full@rcpt.test>\r\nRCPT TO:<cy@rcpt.test>\r\nDATA\r\n")
        first = c.recv(65536)  # the group's replies are written together, after the last one is known
        assert first.count(b"\r\n") == 6, first
        fh = c.makefile("rb")
        replies = [line for line in first.split(b"\r\n") if line]
        assert replies == [b"250 2.1.0 Ok", b"250 2.1.5 Ok", b"550 5.1.1 No such user here",
                           b"452 4.2.2 Mailbox full, try later", b"250 2.1.5 Ok",
                           b"354 End data with <CR><LF>.<CR><LF>"]
        c.sendall(ham(subject="pipelined group") + b".\r\n")
        assert smtp_replies(fh, 1)[0].startswith(b"250")
        c.sendall(b"QUIT\r\n")
        c.close()
        (got,) = sink.wait_for(marker("pipelined group"))
        assert got[1] == ("bo@rcpt.test", "cy@rcpt.test")
        assert sink.mail_grouped == [hop_pipelines]
    finally:
        f.stop()
        sink.down()


@pytest.mark.parametrize("hop_pipelines", [True, False], ids=["next-hop-pipelining", "next-hop-plain"])
def test_sender_the_next_hop_refuses_mid_pipeline(hop_pipelines):
    """MAIL deferred to go with the RCPT after it, and refused by the next hop: the client gets the
    next hop's refusal for MAIL and, for the RCPTs and DATA, what a server that refused MAIL
    answers (503), whatever their syntax; the same connection then delivers the next message."""
    sink = Sink(pipelining=hop_pipelines)
    sink.refuse_senders = {"spoof@sender.test": "550 5.7.1 Sender refused"}
    f = start(sink)
    try:
        c = socket.create_connection(("127.0.0.1", f.port), timeout=10)
        fh = c.makefile("rb")
        smtp_replies(fh, 1)
        c.sendall(b"EHLO client.test\r\n")
        smtp_replies(fh, 1)
        c.sendall(b"MAIL FROM:<spoof@sender.test>\r\nRCPT TO:<bo@rcpt.test>\r\nRCPT TO:<cy@rcpt.test>\r\nDATA\r\n")
        assert smtp_replies(fh, 4) == [b"550 5.7.1 Sender refused", b"503 Error: need MAIL command",
                                   b"503 Error: need MAIL command", b"503 Error: need RCPT command"]
        # a malformed RCPT after the refused MAIL: still 503 (the sender check comes first)
        c.sendall(b"MAIL FROM:<spoof@sender.test>\r\nRCPT TO:no-brackets\r\n")
        assert smtp_replies(fh, 2) == [b"550 5.7.1 Sender refused", b"503 Error: need MAIL command"]
        # ... and after an accepted one: the syntax error, and the transaction goes on
        c.sendall(b"MAIL FROM:<ana@sender.test>\r\nRCPT TO:<<bad\r\nRCPT TO:<bo@rcpt.test>\r\nDATA\r\n")
        got = smtp_replies(fh, 4)
        assert got[0] == b"250 2.1.0 Ok" and got[1][:1] == b"5" and got[2:] == [
            b"250 2.1.5 Ok", b"354 End data with <CR><LF>.<CR><LF>"], got
        c.sendall(ham(subject="after refused sender") + b".\r\n")
        assert smtp_replies(fh, 1)[0].startswith(b"250")
        c.close()
        (got,) = sink.wait_for(marker("after refused sender"))
        assert got[0] == "ana@sender.test" and got[1] == ("bo@rcpt.test",)
    finally:
        f.stop()
        sink.down()


def test_idle_client_is_dropped_after_timeout_counted_from_its_last_command(sink):
    """The idle timeout runs from the last command: a client that keeps talking stays past it,
    one that goes quiet is disconnected once it has passed."""
    f = start(sink, timeout=1)
    try:
        c = socket.create_connection(("127.0.0.1", f.port), timeout=10)
        fh = c.makefile("rb")
        smtp_replies(fh, 1)
        t0 = time.monotonic()
        for cmd in (b"EHLO client.test", b"NOOP", b"NOOP", b"NOOP"):
            c.sendall(cmd + b"\r\n")
            assert smtp_replies(fh, 1)[0].startswith(b"250")
            time.sleep(0.6)
        assert time.monotonic() - t0 > 2.0  # twice the timeout, and still served:
        c.sendall(b"NOOP\r\n")
        assert smtp_replies(fh, 1)[0].startswith(b"250")
        t1 = time.monotonic()
        assert fh.readline() == b""  # then silence: closed
        assert 0.8 < time.monotonic() - t1 < 3.0
        c.close()
    finally:
        f.stop()


def test_bdat_pipelined_in_one_write_is_answered_in_one_write(sink):
    """RFC 3030 CHUNKING, as Postfix's SMTP client uses it when the filter announces it: MAIL, RCPT
    and ``BDAT <size> LAST`` with the message in one write; the three replies come in one write,
    after the next hop took the message; the bytes arrive as sent (no dot-stuffing in BDAT)."""
    f = start(sink)
    try:
        c, fh, ehlo = _ehlo(f.port)
        assert b"250-CHUNKING\r\n" in ehlo
        raw = ham(subject="bdat one write", body=".\n.leading dot\n..two dots\n")
        c.sendall(b"MAIL FROM:<ana@sender.test>\r\nRCPT TO:<bo@rcpt.test>\r\nBDAT %d LAST\r\n" % len(raw) + raw)
        first = c.recv(65536)
        replies = [x for x in first.split(b"\r\n") if x]
        assert replies[:2] == [b"250 2.1.0 Ok", b"250 2.1.5 Ok"] and len(replies) == 3, first
        assert replies[2] == sink.data_reply  # the next hop's own reply to the message
        (got,) = sink.wait_for(marker("bdat one write"))
        assert got[2].endswith(raw.split(b"\r\n\r\n", 1)[1]) and b"\r\n.\r\n.leading dot\r\n..two dots\r\n" in got[2]
        c.close()
    finally:
        f.stop()


def test_bdat_chunks_refusals_and_staying_in_step(sink):
    """Chunks are joined; what is refused (no recipient, too big, a chunk after a refused one, DATA
    mixed with BDAT) is read through, so the next command is understood; a size that cannot be
    read closes the connection."""
    f = start(sink, max_size=4000)
    try:
        c, fh, _ = _ehlo(f.port)
        raw = ham(subject="bdat chunks")
        a, b = raw[:100], raw[100:]
        c.sendall(b"MAIL FROM:<ana@sender.test>\r\nRCPT TO:<bo@rcpt.test>\r\nBDAT %d\r\n" % len(a) + a
                  + b"BDAT %d LAST\r\n" % len(b) + b)
        assert smtp_replies(fh, 4) == [b"250 2.1.0 Ok", b"250 2.1.5 Ok", b"250 2.0.0 Ok: 100 octets received",
                                       sink.data_reply]
        (got,) = sink.wait_for(marker("bdat chunks"))
        assert got[2].endswith(raw.split(b"\r\n\r\n", 1)[1])
        # no recipient: 503, and the chunk's bytes (which look like a command) are not read as one;
        # the sender stays, as after a DATA without recipients
        c.sendall(b"MAIL FROM:<ana@sender.test>\r\nBDAT 6 LAST\r\nQUIT\r\nNOOP\r\nRCPT TO:<bo@rcpt.test>\r\nRSET\r\n")
        got_replies = smtp_replies(fh, 5)
        assert got_replies[1:4] == [b"503 5.5.1 Error: need RCPT command", b"250 OK", b"250 2.1.5 Ok"], got_replies
        # over max_size: 552, then the rest of that transaction is refused too, and RSET starts over
        big = b"x" * 5000
        c.sendall(b"MAIL FROM:<ana@sender.test>\r\nRCPT TO:<bo@rcpt.test>\r\nBDAT 5000\r\n" + big
                  + b"BDAT 3 LAST\r\nabc" + b"RSET\r\n")
        got_replies = smtp_replies(fh, 5)
        assert got_replies[2:4] == [b"552 5.3.4 Error: Too much mail data",
                                    b"503 5.5.1 Error: an earlier chunk of this message was refused"]
        assert got_replies[4].startswith(b"250 ")  # RSET
        # DATA after a chunk: 503 (the chunk stays); RSET clears it
        c.sendall(b"MAIL FROM:<ana@sender.test>\r\nRCPT TO:<bo@rcpt.test>\r\nBDAT 3\r\nabcDATA\r\nRSET\r\n")
        got_replies = smtp_replies(fh, 5)
        assert got_replies[2:4] == [b"250 2.0.0 Ok: 3 octets received",
                                    b"503 5.5.1 Error: DATA after BDAT in the same transaction"]
        assert got_replies[4].startswith(b"250 ")
        # a size that is not a number: nothing tells where the chunk ends, so the connection ends
        c.sendall(b"BDAT lots LAST\r\n")
        assert smtp_replies(fh, 1) == [b"501 5.5.4 Syntax: BDAT <size> [LAST]"]
        assert fh.readline() == b""
        c.close()
        assert len(sink.wait_for(marker("bdat chunks"))) == 1  # nothing else reached the next hop
    finally:
        f.stop()


def test_bdat_chunk_that_stops_coming_times_out(sink):
    """A client that announces a chunk and stalls is cut off after the idle timeout, and the
    part it sent goes nowhere."""
    f = start(sink, timeout=0.6)
    try:
        c, fh, _ = _ehlo(f.port)
        c.sendall(b"MAIL FROM:<ana@sender.test>\r\nRCPT TO:<bo@rcpt.test>\r\nBDAT 100 LAST\r\nSubject: stalled\r\n")
        t = time.monotonic()
        fh.read()  # returns at EOF (the socket's 10 s timeout would raise first if the server kept it open)
        assert 0.5 < time.monotonic() - t < 5
        assert sink.wait_for(marker("stalled"), timeout=0.5) == []
        c.close()
    finally:
        f.stop()


def test_one_timer_keeps_a_deadline_that_moves():
    """The idle and reply deadlines: pushed later, they expire at the last deadline, once; with
    nothing awaited (or cancelled) they do not expire."""
    from antispam.servers.smtp import _Deadline

    async def run() -> list[float]:
        loop = asyncio.get_running_loop()
        fired: list[float] = []
        d = _Deadline(loop, lambda: fired.append(loop.time()))
        t0 = loop.time()
        d.push(t0 + 0.05)
        await asyncio.sleep(0.02)
        d.push(t0 + 0.15)  # moved later: the first timer fires early and is armed again
        await asyncio.sleep(0.3)
        assert len(fired) == 1 and fired[0] >= t0 + 0.15
        idle = _Deadline(loop, lambda: fired.append(-1.0))
        idle.push(loop.time() + 0.05)
        idle.push(None)  # the reply came: nothing awaited
        stopped = _Deadline(loop, lambda: fired.append(-2.0))
        stopped.push(loop.time() + 0.05)
        stopped.cancel()
        await asyncio.sleep(0.15)
        return fired

    assert len(asyncio.run(run())) == 1


@pytest.fixture()
def chunking_sink():
    s = Sink(chunking=True)
    yield s
    s.down()


def _pipelined(port: int, raw: bytes, rcpt: bytes = b"bo@rcpt.test", bdat: bool = False) -> list[bytes]:
    """One message from a client that pipelines MAIL, one RCPT and DATA (as Postfix's SMTP client
    does), or MAIL, RCPT and ``BDAT <size> LAST`` with the message: every reply, in order."""
    c, fh, _ = _ehlo(port)
    try:
        head = b"MAIL FROM:<ana@sender.test>\r\nRCPT TO:<%b>\r\n" % rcpt
        if bdat:
            c.sendall(head + b"BDAT %d LAST\r\n" % len(raw) + raw)
            return smtp_replies(fh, 3)
        c.sendall(head + b"DATA\r\n")
        first = smtp_replies(fh, 3)
        c.sendall(raw + b".\r\n")
        return first + smtp_replies(fh, 1)
    finally:
        c.close()


@pytest.mark.parametrize("bdat", [False, True], ids=["data", "bdat"])
def test_lone_pipelined_recipient_goes_to_the_next_hop_with_the_message(chunking_sink, bdat):
    """A client pipelining MAIL, one RCPT and DATA (or BDAT) is answered at once, and MAIL, RCPT
    and the message go to a next hop that announces PIPELINING and CHUNKING in one write (one round
    trip); the next hop's refusal of the sender or of the recipient then comes at end of data,
    which for one recipient is the same outcome, and nothing is delivered."""
    sink = chunking_sink
    f = start(sink)
    try:
        replies = _pipelined(f.port, ham(subject=f"lone rcpt {bdat}"), bdat=bdat)
        assert replies[:2] == [b"250 2.1.0 Ok", b"250 2.1.5 Ok"] and replies[-1] == sink.data_reply, replies
        (got,) = sink.wait_for(marker(f"lone rcpt {bdat}"))
        assert got[:2] == ("ana@sender.test", ("bo@rcpt.test",)) and b"X-Spam-Flag: NO" in got[2]
        assert sink.bdat_grouped == [True]
        sink.refuse_rcpts = {"gone@rcpt.test": "550 5.1.1 No such user here",
                             "full@rcpt.test": "452 4.2.2 Mailbox full, try later"}
        replies = _pipelined(f.port, ham(subject="to nobody"), rcpt=b"gone@rcpt.test", bdat=bdat)
        assert replies[1] == b"250 2.1.5 Ok" and replies[-1] == b"550 5.1.1 No such user here", replies
        replies = _pipelined(f.port, ham(subject="to nobody"), rcpt=b"full@rcpt.test", bdat=bdat)
        assert replies[-1] == b"452 4.2.2 Mailbox full, try later", replies
        sink.refuse_senders = {"ana@sender.test": "553 5.7.1 Sender refused"}
        assert _pipelined(f.port, ham(subject="to nobody"), bdat=bdat)[-1] == b"553 5.7.1 Sender refused"
        sink.refuse_senders = {}
        sink.refuse = True  # the next hop refuses the message itself (4xx): passed back
        assert _pipelined(f.port, ham(subject="to nobody"), bdat=bdat)[-1].startswith(b"451 4.3.0 sink refusing")
        sink.refuse = False
        # after each refusal the next hop is in step (the refused connection was not reused)
        _pipelined(f.port, ham(subject=f"lone rcpt again {bdat}"), bdat=bdat)
        assert len(sink.wait_for(marker(f"lone rcpt again {bdat}"))) == 1
        assert sink.wait_for(marker("to nobody"), timeout=0.3) == []
    finally:
        sink.refuse_rcpts, sink.refuse_senders, sink.refuse = {}, {}, False
        f.stop()


def test_held_transaction_never_reaches_the_next_hop_when_refused_here(chunking_sink):
    """Before-queue spam refused at end of DATA: the next hop never saw its MAIL (nothing to undo
    there), and the kept connection carries the next message whole."""
    sink = chunking_sink
    f = start(sink, mode="before-queue", reject_reply="550 5.7.1 No spam here")
    try:
        assert _pipelined(f.port, spam(subject="held spam"))[-1] == b"550 5.7.1 No spam here"
        assert sink.bdat_grouped == []  # no MAIL reached the next hop
        assert _pipelined(f.port, ham(subject="held ham"))[-1] == sink.data_reply
        assert len(sink.wait_for(marker("held ham"))) == 1 and sink.bdat_grouped == [True]
    finally:
        f.stop()


def test_held_transaction_next_hop_down_or_restarted(chunking_sink):
    """A next hop that cannot be reached is still refused at MAIL (451, the client keeps the
    message); a kept connection the next hop closed while idle is replaced, and the message that
    found it closed arrives once."""
    sink = chunking_sink
    f = start(sink)
    try:
        sink.down()
        replies = _pipelined(f.port, ham(subject="hop away"))
        assert replies[0].startswith(b"451 4.4.1") and replies[1] == b"503 Error: need MAIL command", replies
        sink.up()
        assert _pipelined(f.port, ham(subject="hop back"))[-1] == sink.data_reply
        sink.down()  # closes the kept connection
        sink.up()
        assert _pipelined(f.port, ham(subject="hop restarted"))[-1] == sink.data_reply
        assert len(sink.wait_for(marker("hop back"))) == 1
        assert len(sink.wait_for(marker("hop restarted"))) == 1
        assert sink.wait_for(marker("hop away"), timeout=0.3) == []
    finally:
        f.stop()


def test_held_transaction_on_a_kept_connection_that_drops_is_sent_again_once(chunking_sink):
    """A kept connection that the next hop drops as the whole transaction reaches it, before any
    reply: the transaction goes again on a new connection and arrives once.  Dropped on a new
    connection too, the client gets 4xx and keeps the message."""
    sink = chunking_sink
    f = start(sink)
    try:
        assert _pipelined(f.port, ham(subject="keep this connection"))[-1] == sink.data_reply
        sink.hang_up_at_mail = 1
        assert _pipelined(f.port, ham(subject="sent again"))[-1] == sink.data_reply
        assert len(sink.wait_for(marker("sent again"))) == 1 and sink.bdat_grouped == [True, True, True]
        sink.hang_up_at_mail = 2
        assert _pipelined(f.port, ham(subject="dropped twice"))[-1].startswith(b"451 4.4.1")
        assert sink.wait_for(marker("dropped twice"), timeout=0.3) == []
    finally:
        f.stop()


def test_held_transaction_with_a_slow_next_hop_or_a_client_that_leaves(chunking_sink):
    """A next hop slower than ``next_hop_data_timeout`` with a held transaction: 451 at end of data
    (the client keeps the message).  A client that leaves in the middle of its data: the next hop
    never sees that transaction, and the kept connection carries the next message whole."""
    sink = chunking_sink
    f = start(sink, next_hop_data_timeout=0.5)
    try:
        sink.delay = 2.0
        assert _pipelined(f.port, ham(subject="slow held"))[-1].startswith(b"451 4.4.1")
        sink.delay = 0.0
        time.sleep(2.0)  # the slow next hop finishes with that message (SMTP cannot take it back)
        seen = len(sink.bdat_grouped)
        c, fh, _ = _ehlo(f.port)
        c.sendall(b"MAIL FROM:<ana@sender.test>\r\nRCPT TO:<bo@rcpt.test>\r\nDATA\r\n")
        assert smtp_replies(fh, 3)[2].startswith(b"354")
        c.sendall(ham(subject="left half way")[:200])
        c.close()
        time.sleep(0.3)
        assert _pipelined(f.port, ham(subject="after the one that left"))[-1] == sink.data_reply
        assert len(sink.wait_for(marker("after the one that left"))) == 1
        assert sink.bdat_grouped[seen:] == [True]  # one transaction reached the next hop: the last
        assert sink.wait_for(marker("left half way"), timeout=0.3) == []
    finally:
        sink.delay = 0.0
        f.stop()


# --------------------------------------------------------------------------- regressions


def _on_mail(sink: Sink, hook) -> None:
    """Run ``hook(server)`` at each MAIL the sink gets before its own handling; a true result ends
    that MAIL there (the hook has answered, or dropped the connection)."""
    handler = sink.controller.handler
    own = handler.handle_MAIL

    async def handle_MAIL(server, session, envelope, address, mail_options):  # type: ignore[no-untyped-def]
        if hook(server):
            return "421 4.3.2 not sent"  # the hook closed the connection: never written
        return await own(server, session, envelope, address, mail_options)

    handler.handle_MAIL = handle_MAIL


def _says_421_and_closes(server) -> None:  # type: ignore[no-untyped-def]
    """What Postfix's smtpd writes to a client idle past ``smtpd_timeout`` before it closes."""
    server._writer.write(b"421 4.4.2 sink.test Error: timeout exceeded\r\n")
    server.transport.close()


@pytest.mark.parametrize("event_loop", EVENT_LOOPS)
def test_kept_connection_the_next_hop_timed_out_is_not_reused(chunking_sink, event_loop):
    """A next hop that times out an idle kept connection as Postfix's smtpd does (a 421, then it
    closes): that connection counts as closed and is not taken for the next message, which goes on
    a new one and arrives once."""
    from antispam.servers.smtp import FastSMTP

    sink = chunking_sink

    class IdleTimeout(FastSMTP):
        line_length_limit = 64 * 1024

        def _timeout_cb(self) -> None:
            _says_421_and_closes(self)

    sink.controller.factory = lambda: IdleTimeout(sink.controller.handler, hostname="sink.test",
                                                  decode_data=False, timeout=1)
    f = start(sink, event_loop=event_loop)
    try:
        assert _pipelined(f.port, ham(subject="before idle"))[-1] == sink.data_reply
        time.sleep(1.6)  # the next hop's idle timeout passes: 421 and EOF wait unread on the kept one

        async def kept_closed() -> list[bool]:
            return [c.closed() for c in f.server._idle_connections]

        assert f.call(kept_closed()) == [True]
        assert _pipelined(f.port, ham(subject="after idle"))[-1] == sink.data_reply
        assert len(sink.wait_for(marker("after idle"))) == 1
    finally:
        f.stop()


@pytest.mark.parametrize("event_loop", EVENT_LOOPS)
def test_held_transaction_on_a_kept_connection_answered_421_is_sent_again_once(chunking_sink, event_loop):
    """The next hop says 421 and closes a kept connection just as the whole transaction reaches
    it (its idle timeout): a 421 as the first reply means it read none of it, so the transaction
    goes again on a new connection and arrives once; a 421 there too is 4xx for the client."""
    sink = chunking_sink
    closes: list[int] = []
    _on_mail(sink, lambda server: closes and (closes.pop(), _says_421_and_closes(server)))
    f = start(sink, event_loop=event_loop)
    try:
        assert _pipelined(f.port, ham(subject="keep it"))[-1] == sink.data_reply
        closes.append(1)
        assert _pipelined(f.port, ham(subject="after a 421"))[-1] == sink.data_reply
        assert len(sink.wait_for(marker("after a 421"))) == 1 and closes == []
        closes.extend([1, 1])
        assert _pipelined(f.port, ham(subject="two 421s"))[-1].startswith(b"451 4.4.2"), closes
        assert closes == [] and sink.wait_for(marker("two 421s"), timeout=0.3) == []
    finally:
        f.stop()


def _at_data(port: int):
    """A client past EHLO, MAIL, RCPT and DATA (one command at a time), ready to send its message."""
    c, fh, _ = _ehlo(port)
    for cmd in (b"MAIL FROM:<ana@sender.test>", b"RCPT TO:<bo@rcpt.test>", b"DATA"):
        c.sendall(cmd + b"\r\n")
        assert smtp_replies(fh, 1)[0][:1] in (b"2", b"3")
    return c, fh


@pytest.mark.parametrize("event_loop", EVENT_LOOPS)
def test_client_idle_timeout_does_not_cut_a_relay_in_progress(sink, event_loop):
    """The client's idle timeout does not run while the message is in our hands (the next hop's
    wait has ``next_hop_timeout``): a next hop slower than it still gets the message once and the
    client its 250; the timeout is back after the reply."""
    f = start(sink, event_loop=event_loop, timeout=1, next_hop_timeout=10.0)
    sink.delay = 2.0
    try:
        c, fh = _at_data(f.port)
        c.sendall(ham(subject="slow but once") + b".\r\n")
        assert smtp_replies(fh, 1) == [sink.data_reply]
        t = time.monotonic()
        assert fh.readline() == b""  # silence after the reply: dropped after the idle timeout
        assert 0.5 < time.monotonic() - t < 3.0
        c.close()
        assert len(sink.wait_for(marker("slow but once"))) == 1
    finally:
        f.stop()


@pytest.mark.parametrize("event_loop", EVENT_LOOPS)
def test_client_that_half_closes_after_its_data_still_gets_the_reply(sink, event_loop):
    """A client that pipelines QUIT after its data and shuts down its sending side while the
    message is relayed: the relay is not cut off, the client gets the next hop's 250 and the 221,
    and the message arrives once."""
    f = start(sink, event_loop=event_loop)
    sink.delay = 1.0
    try:
        c, fh = _at_data(f.port)
        c.sendall(ham(subject="half closed") + b".\r\n")
        time.sleep(0.3)
        c.sendall(b"QUIT\r\n")
        c.shutdown(socket.SHUT_WR)
        assert smtp_replies(fh, 2) == [sink.data_reply, b"221 Bye"]
        assert fh.read() == b""
        c.close()
        assert len(sink.wait_for(marker("half closed"))) == 1
        assert send(f.port, ham(subject="after half closed")) == {}  # the filter is in step
        assert len(sink.wait_for(marker("after half closed"))) == 1
    finally:
        f.stop()


def _pipelined_then_half_closed(port: int, stream: bytes) -> tuple[list[bytes], float]:
    """Connect, send ``stream`` in one write, shut our sending side at once, and read to the end:
    (every reply line, seconds from the shutdown to the filter closing the connection)."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as c:
        c.sendall(stream)
        c.shutdown(socket.SHUT_WR)
        t = time.monotonic()
        got = b""
        while chunk := c.recv(65536):
            got += chunk
        return got.splitlines(), time.monotonic() - t


@pytest.mark.parametrize("event_loop", EVENT_LOOPS)
def test_commands_pipelined_before_a_half_close_are_answered(sink, event_loop):
    """A client may send a whole session in one go and shut its sending side at once (RFC 2920
    pipelining, then EOF): each command already sent is answered, the message is relayed once, the
    QUIT gets its 221 (RFC 5321 4.1.1.10), and then the connection closes.  aiosmtpd alone ends
    the session at the EOF, with every one of those commands unanswered."""
    f = start(sink, event_loop=event_loop)
    try:
        data = ham(subject="whole session at once").replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        stream = (b"EHLO client.test\r\nMAIL FROM:<ana@sender.test>\r\nRCPT TO:<bo@rcpt.test>\r\nDATA\r\n"
                  + data + b".\r\nQUIT\r\n")
        lines, _ = _pipelined_then_half_closed(f.port, stream)
        finals = [ln for ln in lines if ln[3:4] != b"-"]
        assert [ln[:3] for ln in finals] == [b"220", b"250", b"250", b"250", b"354", b"250", b"221"]
        assert len(sink.wait_for(marker("whole session at once"))) == 1
        data = ham(subject="chunked at once").replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        stream = (b"EHLO client.test\r\nMAIL FROM:<ana@sender.test>\r\nRCPT TO:<bo@rcpt.test>\r\n"
                  b"BDAT %d LAST\r\n" % len(data) + data + b"QUIT\r\n")
        lines, _ = _pipelined_then_half_closed(f.port, stream)
        assert b"250-CHUNKING" in lines
        assert [ln[:3] for ln in lines if ln[3:4] != b"-"] == [b"220", b"250", b"250", b"250", b"250", b"221"]
        assert len(sink.wait_for(marker("chunked at once"))) == 1
    finally:
        f.stop()


@pytest.mark.parametrize("event_loop", EVENT_LOOPS)
def test_half_close_inside_unfinished_data_closes_at_once(sink, event_loop):
    """The EOF comes inside a message's data, or inside a command line: what was sent whole is
    answered, nothing is relayed, and the connection closes then, not at the idle timeout."""
    f = start(sink, event_loop=event_loop, timeout=30)
    try:
        stream = (b"EHLO client.test\r\nMAIL FROM:<ana@sender.test>\r\nRCPT TO:<bo@rcpt.test>\r\nDATA\r\n"
                  b"Subject: never ended\r\n\r\nno final dot\r\n")
        lines, waited = _pipelined_then_half_closed(f.port, stream)
        assert [ln[:3] for ln in lines if ln[3:4] != b"-"] == [b"220", b"250", b"250", b"250", b"354"]
        assert waited < 5
        lines, waited = _pipelined_then_half_closed(f.port, b"EHLO client.test\r\nNOOP")
        assert [ln[:3] for ln in lines if ln[3:4] != b"-"] == [b"220", b"250"]
        assert waited < 5
        assert sink.wait_for(marker("never ended"), timeout=0.3) == []
        assert send(f.port, ham(subject="after the half closes")) == {}  # the filter serves on
        assert len(sink.wait_for(marker("after the half closes"))) == 1
    finally:
        f.stop()


def test_a_half_close_anywhere_in_a_pipelined_session_ends_it_promptly(sink):
    """The EOF after any prefix of a pipelined session (DATA or BDAT, cut inside a command, inside the
    data, between commands): the connection closes within seconds, never waits for the idle timeout
    or spins, every reply is a whole line, and a message is relayed only when its end was sent."""
    import random

    f = start(sink, timeout=60)
    rnd = random.Random(7)
    try:
        data = ham(subject="cut somewhere").replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        opening = b"EHLO client.test\r\nMAIL FROM:<ana@sender.test>\r\nRCPT TO:<bo@rcpt.test>\r\n"
        streams = [opening + b"DATA\r\n" + data + b".\r\nQUIT\r\n",
                   opening + b"BDAT %d LAST\r\n" % len(data) + data + b"QUIT\r\n"]
        whole = 0
        for i in range(44):
            stream = streams[i % 2]
            # the whole session, and cut inside its QUIT, then anywhere
            cut = (len(stream), len(stream) - 3)[i // 2] if i < 4 else rnd.randrange(1, len(stream) + 1)
            lines, waited = _pipelined_then_half_closed(f.port, stream[:cut])
            assert waited < 5, (i, cut)
            assert all(ln[:3].isdigit() for ln in lines), (i, cut, lines)
            whole += cut >= len(stream) - len(b"QUIT\r\n")  # the message's end was sent
        assert whole >= 4
        assert len(sink.wait_for(marker("cut somewhere"), timeout=1.0)) == whole
        assert send(f.port, ham(subject="after the cuts")) == {}
        assert len(sink.wait_for(marker("after the cuts"))) == 1
    finally:
        f.stop()


def _eight_bit_sink(chunking: bool) -> Sink:
    """A next hop that takes 8-bit envelope addresses (aiosmtpd with SMTPUTF8 on), so the bytes
    that reach it can be compared."""
    from aiosmtpd.smtp import SMTP

    from antispam.servers.smtp import FastSMTP

    s = Sink(chunking=chunking)
    cls = FastSMTP if chunking else SMTP
    s.controller.factory = lambda: cls(s.controller.handler, hostname="sink.test", decode_data=False,
                                       enable_SMTPUTF8=True)
    return s


@pytest.mark.parametrize("chunking", [False, True], ids=["next-hop-plain", "next-hop-chunking"])
def test_8bit_envelope_addresses_go_to_the_next_hop_as_sent(chunking):
    """A non-UTF-8 byte in MAIL FROM or RCPT TO (aiosmtpd decodes them with surrogateescape) goes
    to the next hop as the same bytes, step by step, pipelined and as a held lone recipient;
    every reply is an SMTP reply and the next transaction starts clean."""
    sink = _eight_bit_sink(chunking)
    f = start(sink)
    raw_from, raw_rcpt = b"\xff\xfe@sender.test", b"b\xe9@rcpt.test"
    try:
        c, fh, _ = _ehlo(f.port)
        for cmd in (b"MAIL FROM:<%b>" % raw_from, b"RCPT TO:<%b>" % raw_rcpt, b"DATA"):  # step by step
            c.sendall(cmd + b"\r\n")
            assert smtp_replies(fh, 1)[0][:1] in (b"2", b"3")
        c.sendall(ham(subject="8bit one") + b".\r\n")
        assert smtp_replies(fh, 1) == [sink.data_reply]
        # pipelined with two recipients (MAIL goes with the first RCPT), then a lone one (held)
        c.sendall(b"MAIL FROM:<%b>\r\nRCPT TO:<%b>\r\nRCPT TO:<bo@rcpt.test>\r\nDATA\r\n" % (raw_from, raw_rcpt))
        assert [r[:3] for r in smtp_replies(fh, 4)] == [b"250", b"250", b"250", b"354"]
        c.sendall(ham(subject="8bit two") + b".\r\n")
        assert smtp_replies(fh, 1) == [sink.data_reply]
        c.sendall(b"MAIL FROM:<%b>\r\nRCPT TO:<%b>\r\nDATA\r\n" % (raw_from, raw_rcpt))
        assert [r[:3] for r in smtp_replies(fh, 3)] == [b"250", b"250", b"354"]
        c.sendall(ham(subject="8bit three") + b".\r\n")
        assert smtp_replies(fh, 1) == [sink.data_reply]
        c.sendall(b"MAIL FROM:<ana@sender.test>\r\n")
        assert smtp_replies(fh, 1) == [b"250 2.1.0 Ok"]  # not "503 nested MAIL"
        c.close()
        for n in ("one", "two", "three"):
            (got,) = sink.wait_for(marker(f"8bit {n}"))
            assert got[0].encode("utf-8", "surrogateescape") == raw_from
            assert got[1][0].encode("utf-8", "surrogateescape") == raw_rcpt
    finally:
        f.stop()
        sink.down()


@pytest.mark.parametrize("chunking", [False, True], ids=["next-hop-plain", "next-hop-chunking"])
def test_dsn_parameters_go_to_the_next_hop_as_sent(chunking):
    """RET and ENVID on MAIL, NOTIFY and ORCPT on RCPT (RFC 3461) reach a next hop that announces
    DSN as the client wrote them (ENVID and ORCPT are the client's text, case included), step by
    step, pipelined, and with a lone recipient held for the message; we announce DSN because it
    does.  Before, the filter announced no DSN, so Postfix's content_filter client dropped them
    (NOTIFY=NEVER lost: bounces to a sender who asked for none), and refused them with 555 when
    they came anyway (Postfix's before-queue proxy hands on what its client sent)."""
    sink = Sink(chunking=chunking, dsn=True)
    f = start(sink)
    mail = b"MAIL FROM:<ana@sender.test> RET=HDRS ENVID=Qq+2B314"
    rcpt = b"RCPT TO:<bo@rcpt.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;Bo@Rcpt.test"
    try:
        c, fh, ehlo = _ehlo(f.port)
        assert b"250-DSN\r\n" in ehlo
        for cmd in (mail, rcpt, b"RCPT TO:<cy@rcpt.test> NOTIFY=NEVER", b"DATA"):  # step by step
            c.sendall(cmd + b"\r\n")
            assert smtp_replies(fh, 1)[0][:1] in (b"2", b"3")
        c.sendall(ham(subject="dsn one") + b".\r\n")
        assert smtp_replies(fh, 1) == [sink.data_reply]
        c.sendall(mail + b"\r\n" + rcpt + b"\r\nDATA\r\n")  # pipelined, one recipient
        assert [r[:3] for r in smtp_replies(fh, 3)] == [b"250", b"250", b"354"]
        c.sendall(ham(subject="dsn two") + b".\r\n")
        assert smtp_replies(fh, 1) == [sink.data_reply]
        c.close()
        assert len(sink.wait_for(marker("dsn two"))) == 1
        sent = (mail, rcpt, b"RCPT TO:<cy@rcpt.test> NOTIFY=NEVER", mail, rcpt)
        assert sink.commands == [line.decode() for line in sent]
    finally:
        f.stop()
        sink.down()


def test_dsn_parameters_to_a_next_hop_without_dsn(sink):
    """A next hop that does not announce DSN: neither do we, so a client makes its own
    notifications; parameters sent all the same (by Postfix's before-queue proxy) are taken, and
    not passed on to a next hop that would refuse them."""
    f = start(sink)
    try:
        c, fh, ehlo = _ehlo(f.port)
        assert not any(b"DSN" in line for line in ehlo)
        c.sendall(b"MAIL FROM:<ana@sender.test> RET=FULL ENVID=x1\r\nRCPT TO:<bo@rcpt.test> NOTIFY=NEVER\r\n"
                  b"RCPT TO:<cy@rcpt.test> ORCPT=rfc822;cy@rcpt.test\r\nDATA\r\n")
        assert [r[:3] for r in smtp_replies(fh, 4)] == [b"250", b"250", b"250", b"354"]
        c.sendall(ham(subject="dsn dropped") + b".\r\n")
        assert smtp_replies(fh, 1) == [sink.data_reply]
        c.sendall(b"MAIL FROM:<ana@sender.test> NOTIFY=NEVER\r\n")  # a RCPT parameter on MAIL
        assert smtp_replies(fh, 1)[0][:3] == b"555"
        c.close()
        (got,) = sink.wait_for(marker("dsn dropped"))
        assert got[1] == ("bo@rcpt.test", "cy@rcpt.test")
        assert sink.commands == ["MAIL FROM:<ana@sender.test>", "RCPT TO:<bo@rcpt.test>", "RCPT TO:<cy@rcpt.test>"]
    finally:
        f.stop()


def test_smtputf8_is_announced_when_the_next_hop_announces_it(sink):
    """SMTPUTF8 (RFC 6531) is announced when the next hop announces it, and then passed on.  Before,
    it was announced always and dropped for a next hop without it, whose MAIL then carried a UTF-8
    address unflagged (section 3.4 forbids sending one to it); now the client hears the next hop has
    no SMTPUTF8 and bounces such a message or sends it without (Postfix does either, by the
    message), as it would to that next hop."""
    utf8_sink = _eight_bit_sink(chunking=False)
    plain, utf8 = start(sink), start(utf8_sink)
    sender = "jos\u00e9@sender.test".encode()
    try:
        c, fh, ehlo = _ehlo(utf8.port)
        assert b"250-SMTPUTF8\r\n" in ehlo
        c.sendall(b"MAIL FROM:<%b> SMTPUTF8\r\nRCPT TO:<bo@rcpt.test>\r\nDATA\r\n" % sender)
        assert [r[:3] for r in smtp_replies(fh, 3)] == [b"250", b"250", b"354"]
        c.sendall(ham(subject="utf8 flagged") + b".\r\n")
        assert smtp_replies(fh, 1) == [utf8_sink.data_reply]
        c.close()
        (got,) = utf8_sink.wait_for(marker("utf8 flagged"))
        assert got[0] == sender.decode()
        c, fh, ehlo = _ehlo(plain.port)
        assert not any(b"SMTPUTF8" in line for line in ehlo)
        c.close()
    finally:
        plain.stop()
        utf8.stop()
        utf8_sink.down()


def test_smtputf8_is_offered_while_the_next_hop_is_unknown_and_never_dropped(sink):
    """A next hop that cannot be reached at EHLO: SMTPUTF8 is still offered, or the client would
    bounce a message that needs it for good over a next hop down for a moment.  When the next hop
    then turns out to have none, MAIL ... SMTPUTF8 is refused for now (the client comes back and
    hears it at EHLO), not passed on without its flag."""
    sink.down()
    f = start(sink)
    sender = "jos\u00e9@sender.test".encode()
    try:
        c, fh, ehlo = _ehlo(f.port)
        assert b"250-SMTPUTF8\r\n" in ehlo
        sink.up()  # back, and without SMTPUTF8
        c.sendall(b"MAIL FROM:<%b> SMTPUTF8\r\n" % sender)
        assert smtp_replies(fh, 1)[0][:10] == b"451 4.3.3 "
        c.close()
        c, fh, ehlo = _ehlo(f.port)
        assert not any(b"SMTPUTF8" in line for line in ehlo)
        c.close()
        assert send(f.port, ham(subject="plain after utf8")) == {}
        assert [m[0] for m in sink.wait_for(marker("plain after utf8"))] == ["ana@sender.test"]
    finally:
        f.stop()


#: a line of 8-bit (UTF-8) text, and a message with it in its body, its MIME headers saying so
EIGHT_BIT = "Caf\u00e9 \u00e0 midi ?"


def eight_bit(subject: str) -> bytes:
    return ham(subject=subject, body=f"{EIGHT_BIT}\n").replace(
        b"charset=utf-8\r\n", b"charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n")


@pytest.mark.parametrize("chunking", [False, True], ids=["next-hop-plain", "next-hop-chunking"])
def test_8bitmime_is_offered_and_passed_on_only_as_the_next_hop_takes_it(chunking):
    """RFC 6152.  To a next hop with 8BITMIME, ``BODY=`` goes as the client wrote it (it went
    upper-cased).  To one without, 8BITMIME is not offered (it was: aiosmtpd announces it always),
    and 8-bit data declared ``BODY=8BITMIME`` all the same (Postfix's before-queue proxy hands on
    its client's MAIL as it came) is refused for now, ``451 4.6.3``: the parameter was dropped and
    the data sent undeclared to a server that had not said it takes 8 bits.  Declared but 7-bit
    data goes on, undeclared; the session goes on clean.  Both with the transaction mirrored step
    by step and held to go whole with the message (a lone recipient, pipelined)."""
    eight, seven = Sink(chunking=chunking), Sink(chunking=chunking, without=("8BITMIME",))
    f8, f7 = start(eight), start(seven)

    def transaction(fh, c, mail: bytes, raw: bytes) -> bytes:
        c.sendall(mail + b"\r\nRCPT TO:<bo@rcpt.test>\r\nDATA\r\n")
        assert [r[:3] for r in smtp_replies(fh, 3)] == [b"250", b"250", b"354"]
        c.sendall(raw + b".\r\n")
        return smtp_replies(fh, 1)[0]

    try:
        c, fh, ehlo = _ehlo(f8.port)
        assert b"250-8BITMIME\r\n" in ehlo
        assert transaction(fh, c, b"MAIL FROM:<ana@sender.test> body=8bitmime", eight_bit("to 8bit")) == eight.data_reply
        c.close()
        (got,) = eight.wait_for(marker("to 8bit"))
        assert EIGHT_BIT.encode() in got[2]
        assert eight.commands[0] == "MAIL FROM:<ana@sender.test> body=8bitmime"

        c, fh, ehlo = _ehlo(f7.port)
        assert not any(b"8BITMIME" in line for line in ehlo)
        end = transaction(fh, c, b"MAIL FROM:<ana@sender.test> BODY=8BITMIME", eight_bit("8bit to 7bit"))
        assert end.startswith(b"451 4.6.3 "), end
        end = transaction(fh, c, b"MAIL FROM:<ana@sender.test> BODY=8BITMIME", ham(subject="7bit declared 8bit"))
        assert end == seven.data_reply
        c.close()
        assert len(seven.wait_for(marker("7bit declared 8bit"))) == 1
        assert seven.wait_for(marker("8bit to 7bit"), timeout=0.3) == []
        # (the refused one's MAIL reached a next hop mirrored step by step, and was ended with RSET)
        assert {m for m in seven.commands if m.startswith("MAIL")} == {"MAIL FROM:<ana@sender.test>"}
    finally:
        f8.stop()
        f7.stop()
        eight.down()
        seven.down()


def test_8bitmime_offered_while_the_next_hop_is_unknown_is_never_dropped(sink):
    """8BITMIME is offered while the next hop cannot be reached (it may well have it); 8-bit data
    that then meets a next hop without it is refused for now, and the client, back at EHLO, is
    not offered it."""
    seven = Sink(without=("8BITMIME",))
    seven.down()
    f = start(seven)
    try:
        c, fh, ehlo = _ehlo(f.port)
        assert b"250-8BITMIME\r\n" in ehlo
        seven.up()
        c.sendall(b"MAIL FROM:<ana@sender.test> BODY=8BITMIME\r\nRCPT TO:<bo@rcpt.test>\r\nDATA\r\n")
        assert [r[:3] for r in smtp_replies(fh, 3)] == [b"250", b"250", b"354"]
        c.sendall(eight_bit("8bit, next hop unknown") + b".\r\n")
        assert smtp_replies(fh, 1)[0].startswith(b"451 4.6.3 ")
        c.close()
        c, fh, ehlo = _ehlo(f.port)
        assert not any(b"8BITMIME" in line for line in ehlo)
        c.close()
        assert seven.wait_for(marker("8bit, next hop unknown"), timeout=0.3) == []
    finally:
        f.stop()
        seven.down()


def test_smtputf8_sent_unoffered_is_never_dropped_from_mail_that_needs_it():
    """A next hop without SMTPUTF8 (here one that takes 8-bit addresses all the same, as Postfix's
    smtpd does with ``smtputf8_enable = no``): the filter does not offer it, but Postfix's
    before-queue proxy hands on its own client's ``MAIL ... SMTPUTF8`` as it came.  The flag was
    dropped and the UTF-8 address sent on unflagged.  Now what needs it is refused for good
    (RFC 6531 section 3.4; Postfix bounces such mail, 5.6.7): a UTF-8 sender at MAIL, a UTF-8
    recipient at its RCPT, a UTF-8 header at the end of the data; an ASCII message that asked for
    it goes on without, as Postfix sends it."""
    sink = _eight_bit_sink(chunking=False)
    sink.without = ("SMTPUTF8",)
    f = start(sink)
    try:
        c, fh, ehlo = _ehlo(f.port)
        assert not any(b"SMTPUTF8" in line for line in ehlo)
        c.sendall("MAIL FROM:<jos\u00e9@sender.test> SMTPUTF8\r\n".encode())
        assert smtp_replies(fh, 1)[0].startswith(b"553 5.6.7 ")
        c.sendall("MAIL FROM:<ana@sender.test> SMTPUTF8\r\nRCPT TO:<b\u00f6@rcpt.test>\r\n"
                  "RCPT TO:<bo@rcpt.test>\r\nDATA\r\n".encode())
        assert [r[:3] for r in smtp_replies(fh, 4)] == [b"250", b"553", b"250", b"354"]
        c.sendall(ham(subject="Caf\u00e9 header") + b".\r\n")
        assert smtp_replies(fh, 1)[0].startswith(b"554 5.6.7 ")
        c.sendall(b"MAIL FROM:<ana@sender.test> SMTPUTF8\r\nRCPT TO:<bo@rcpt.test>\r\nDATA\r\n")
        assert [r[:3] for r in smtp_replies(fh, 3)] == [b"250", b"250", b"354"]
        c.sendall(ham(subject="ascii asked utf8") + b".\r\n")
        assert smtp_replies(fh, 1) == [sink.data_reply]
        c.close()
        (got,) = sink.wait_for(marker("ascii asked utf8"))
        assert got[0] == "ana@sender.test" and got[1] == ("bo@rcpt.test",)
        assert sink.wait_for(lambda raw: b"Caf" in raw, timeout=0.3) == []
    finally:
        f.stop()
        sink.down()


def test_auth_and_size_parameters_are_taken_and_not_passed_on(sink):
    """``AUTH=`` on MAIL (RFC 4954): Postfix's before-queue proxy hands it on as its client sent it
    whenever SASL is on (``tests/test_postfix_e2e.py`` has it from real Postfix), and aiosmtpd
    refused it, 555: every such message was refused.  Taken, and not passed on: we authenticated
    nobody, and RFC 4954 section 5 has an identity we cannot vouch for go as ``AUTH=<>``.  SIZE is
    checked against ``max_size`` and not passed on either (the message grows by our fields)."""
    f = start(sink)
    try:
        c, fh, _ = _ehlo(f.port)
        c.sendall(b"MAIL FROM:<ana@sender.test> SIZE=900 AUTH=<ana@sender.test>\r\nRCPT TO:<bo@rcpt.test>\r\n"
                  b"DATA\r\n")
        assert [r[:3] for r in smtp_replies(fh, 3)] == [b"250", b"250", b"354"]
        c.sendall(ham(subject="auth param") + b".\r\n")
        assert smtp_replies(fh, 1) == [sink.data_reply]
        c.close()
        assert len(sink.wait_for(marker("auth param"))) == 1
        assert sink.commands[0] == "MAIL FROM:<ana@sender.test>"
    finally:
        f.stop()


def test_8bit_sender_refused_by_the_next_hop_gets_its_reply_never_an_empty_line(sink):
    """A next hop that refuses the 8-bit sender: its reply is the client's, pipelined or not (it
    was an empty line when MAIL went with the RCPT after it).  An 8-bit XFORWARD name is refused
    501, not aiosmtpd's 500 for a reply that could not be encoded."""
    f = start(sink)
    try:
        c, fh, _ = _ehlo(f.port)
        c.sendall(b"MAIL FROM:<\xff\xfe@sender.test>\r\n")
        assert smtp_replies(fh, 1) == [b"500 Error: strict ASCII mode"]  # aiosmtpd's own refusal
        c.sendall(b"MAIL FROM:<\xff\xfe@sender.test>\r\nRCPT TO:<bo@rcpt.test>\r\nRSET\r\nNOOP\r\n")
        assert smtp_replies(fh, 4) == [b"500 Error: strict ASCII mode", b"503 Error: need MAIL command",
                                       b"250 2.0.0 Ok", b"250 OK"]
        c.sendall(b"XFORWARD \xff=1\r\n")  # refused with the name shown escaped (a reply is ASCII)
        assert smtp_replies(fh, 1) == [b"501 5.5.4 Bad XFORWARD attribute \\xff"]
        c.close()
    finally:
        f.stop()


@pytest.mark.parametrize("chunking", [False, True], ids=["next-hop-plain", "next-hop-chunking"])
def test_internal_error_at_end_of_data_is_4xx_and_ends_the_transaction(chunking, monkeypatch):
    """An unexpected exception while handling the message is a temporary failure (451 4.3.0: the
    client keeps the message), never aiosmtpd's 500; the transaction ends, here and at the next
    hop, and the next one on the same connection is delivered."""
    import antispam.servers.smtp as smtp_mod

    sink = Sink(chunking=chunking)
    f = start(sink)
    own = smtp_mod.rewrite_headers

    def rewrite(raw: bytes, verdict):  # type: ignore[no-untyped-def]
        if b"break me" in raw:
            raise RuntimeError("a bug")
        return own(raw, verdict)

    monkeypatch.setattr(smtp_mod, "rewrite_headers", rewrite)
    try:
        c, fh, _ = _ehlo(f.port)
        c.sendall(b"MAIL FROM:<ana@sender.test>\r\nRCPT TO:<bo@rcpt.test>\r\nDATA\r\n")
        assert [r[:3] for r in smtp_replies(fh, 3)] == [b"250", b"250", b"354"]
        c.sendall(ham(subject="break me") + b".\r\n")
        assert smtp_replies(fh, 1)[0].startswith(b"451 4.3.0")
        c.sendall(b"MAIL FROM:<ana@sender.test>\r\nRCPT TO:<bo@rcpt.test>\r\nDATA\r\n")
        assert [r[:3] for r in smtp_replies(fh, 3)] == [b"250", b"250", b"354"]
        c.sendall(ham(subject="next one whole") + b".\r\n")
        assert smtp_replies(fh, 1) == [sink.data_reply]
        c.close()
        (got,) = sink.wait_for(marker("next one whole"))
        assert got[1] == ("bo@rcpt.test",)
        assert sink.wait_for(marker("break me"), timeout=0.3) == []
    finally:
        f.stop()
        sink.down()


def test_our_headers_land_in_the_header_block_the_next_hop_sees(sink):
    """Line ends are made CRLF before our fields go in: whatever mix of CRLF, bare LF and bare CR
    the message uses, the header/body boundary the next hop sees is the one our fields are put
    above, so they are header fields there, never body text."""
    import email

    gtube = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
    cases = [b"Subject: win TAG\r\n\n" + gtube + b"\r\n",  # CRLF header, bare-LF blank line
             b"Subject: win TAG\nFrom: a@sender.test\n\r\n" + gtube + b"\r\n",  # LF header, CRLF blank line
             b"Subject: win TAG\r\r\n" + gtube + b"\r\n",  # a bare CR: a blank line once it is CRLF
             b"Subject: win TAG\rFrom: a@sender.test\r\r" + gtube + b"\r"]  # bare CRs only
    f = start(sink)
    try:
        for i, raw in enumerate(cases):
            tag = b"boundary%d" % i
            send(f.port, raw.replace(b"TAG", tag))
            (got,) = sink.wait_for(marker(tag.decode()))
            parsed = email.message_from_bytes(got[2])
            assert parsed.get("X-Spam-Flag") in ("YES", "NO"), got[2]
            assert b"X-Spam-" not in got[2].split(b"\r\n\r\n", 1)[1], got[2]
    finally:
        f.stop()


@pytest.mark.parametrize("bdat", [False, True], ids=["data", "bdat"])
def test_a_message_without_line_ends_gets_our_fields_with_crlf(bdat):
    """An empty message (a lone dot after DATA, or BDAT 0 LAST), or one line without its end (BDAT,
    relayed as BDAT): our fields and the blank line after them reach the next hop with CRLF (RFC
    5321 section 2.3.8), where they took the message's own line ending and, with none to copy,
    went as bare LFs."""
    sink = Sink(chunking=bdat)
    f = start(sink)
    bodies = [b"", b"no line end here"] if bdat else [b""]
    try:
        for i, body in enumerate(bodies):
            c, fh, _ = _ehlo(f.port)
            c.sendall(b"MAIL FROM:<ana@sender.test>\r\nRCPT TO:<r%d@rcpt.test>\r\n" % i)
            assert [r[:3] for r in smtp_replies(fh, 2)] == [b"250", b"250"]
            c.sendall(b"BDAT %d LAST\r\n%b" % (len(body), body) if bdat else b"DATA\r\n.\r\n")
            assert smtp_replies(fh, 2 - bdat)[-1] == sink.data_reply
            c.close()
            assert sink.wait_for(lambda raw: len(sink.messages) > i)
            got = sink.messages[i][2]
            assert b"X-Spam-Flag: " in got and got.endswith(b"\r\n\r\n" + body), got
            assert b"\n" not in got.replace(b"\r\n", b""), got
    finally:
        f.stop()
        sink.down()


def test_bdat_size_that_is_not_ascii_digits_closes_the_connection(sink):
    """``BDAT ¹⁵``: Python's isdigit() takes superscripts, int() does not.  A size that cannot be
    read is 501 and the connection closes (the chunk's bytes are never read as commands)."""
    f = start(sink)
    try:
        c, fh, _ = _ehlo(f.port)
        c.sendall(b"MAIL FROM:<ana@sender.test>\r\nRCPT TO:<bo@rcpt.test>\r\n")
        assert smtp_replies(fh, 2) == [b"250 2.1.0 Ok", b"250 2.1.5 Ok"]
        c.sendall("BDAT \u00b9\u2075 LAST\r\n".encode() + b"NOOP smuggled\r\n")
        assert smtp_replies(fh, 1) == [b"501 5.5.4 Syntax: BDAT <size> [LAST]"]
        assert fh.readline() == b""
        c.close()
    finally:
        f.stop()


def test_xforward_describes_one_transaction(sink):
    """XFORWARD attributes hold for the transaction they precede, as in Postfix's smtpd (which
    forgets them when a transaction ends, at RSET and at HELO/EHLO): a later message on the same
    connection without XFORWARD is the connecting client's own."""
    probe = EnvelopeProbe()
    f = start(sink, engine=Engine(checks=[GtubeCheck(), probe]))
    try:
        with smtplib.SMTP("127.0.0.1", f.port, timeout=30) as s:
            s.ehlo("postfix.local")
            assert s.docmd("XFORWARD", "NAME=mail.sender.test ADDR=198.51.100.7 HELO=mail.sender.test")[0] == 250
            s.sendmail("ana@sender.test", ["bo@rcpt.test"], ham(subject="xf one"))
            assert probe.seen[-1][0].client_ip == "198.51.100.7"
            s.sendmail("ana@sender.test", ["bo@rcpt.test"], ham(subject="xf two"))
            assert probe.seen[-1][0].client_ip == "127.0.0.1" and probe.seen[-1][0].helo == "postfix.local"
            assert s.docmd("XFORWARD", "ADDR=198.51.100.8")[0] == 250
            assert s.rset()[0] == 250
            s.sendmail("ana@sender.test", ["bo@rcpt.test"], ham(subject="xf three"))
            assert probe.seen[-1][0].client_ip == "127.0.0.1"
    finally:
        f.stop()


def test_next_hop_reply_line_too_long_is_4xx(sink):
    """A next hop whose reply line is longer than the client reads (64 KiB) broke the protocol:
    451, as for any reply that is not one (it was aiosmtpd's 500 for a ValueError), and the next
    message goes through."""
    f = start(sink)
    sink.refuse_senders = {"long@sender.test": "550 5.7.1 " + "x" * 70000}
    try:
        with pytest.raises(smtplib.SMTPSenderRefused) as exc:
            send(f.port, ham(subject="long reply"), mail_from="long@sender.test")
        assert exc.value.smtp_code == 451
        assert send(f.port, ham(subject="after long reply")) == {}
        assert len(sink.wait_for(marker("after long reply"))) == 1
    finally:
        sink.refuse_senders = {}
        f.stop()


@pytest.mark.parametrize("key, value", [
    ("reject_reply", "Rejected as spam"),            # no code: the sending MTA reads a protocol error
    ("reject_reply", "550 4.7.1 Rejected"),          # enhanced status of another class
    ("reject_reply", "451 4.7.1 Not spam enough"),   # a retry where a refusal is meant
    ("reject_reply", "550-5.7.1 one\n550 5.7.1 two"),  # the filter sends one line
    ("tempfail_reply", "550 5.7.1 Not now"),
])
def test_a_malformed_reply_is_a_config_error(key, value):
    from antispam.config import Config, SmtpConfig
    from antispam.errors import ConfigError

    with pytest.raises(ConfigError, match=f"servers.smtp.{key}"):
        SmtpConfig(**{key: value})
    with pytest.raises(ConfigError, match=f"servers.smtp.{key}"):
        Config.load(overrides={"servers": {"smtp": {key: value}}})


def _failing_scans(f: ServerThread) -> None:
    """Make every scan of ``f`` fail as an engine bug would (a worker killed, an exception)."""

    async def boom(*args, **kw):  # type: ignore[no-untyped-def]
        raise RuntimeError("engine failure")

    f.server.scanner.scan = boom


def test_a_failed_scan_relays_the_message_unscanned_when_fail_open(sink):
    """``fail_open`` (the default): the message goes on unscanned, with its line ends made CRLF and
    without the X-Spam-* fields or Authentication-Results of ours a sender put in (downstream sieve
    rules would trust a forged ``X-Spam-Flag: NO``), as the milter delivers it; others' stay."""
    engine = Engine(checks=[GtubeCheck()])
    f = start(sink, engine=engine)
    _failing_scans(f)
    ours = engine.authserv_id
    raw = (f"Subject: unscanned one\nFrom: ana@sender.test\nX-Spam-Flag: NO\nX-Spam-Status: No, score=-50\n"
           f"Authentication-Results: {ours}; spf=pass smtp.mailfrom=sender.test\n"
           f"Authentication-Results: mx.other.test; dkim=pass header.d=sender.test\n"
           f"\nline one\nline two\r\n").encode()  # the end of data is CRLF . CRLF
    try:
        c, fh, _ = _ehlo(f.port)
        c.sendall(b"MAIL FROM:<ana@sender.test>\r\nRCPT TO:<bo@rcpt.test>\r\nDATA\r\n")
        assert [r[:3] for r in smtp_replies(fh, 3)] == [b"250", b"250", b"354"]
        c.sendall(raw + b".\r\n")
        assert smtp_replies(fh, 1) == [sink.data_reply]
        c.close()
        (got,) = sink.wait_for(marker("unscanned one"))
        data = got[2]
        assert b"\n" not in data.replace(b"\r\n", b""), data  # CRLF only
        assert b"X-Spam-" not in data, data
        assert f"Authentication-Results: {ours}".encode() not in data, data
        assert b"Authentication-Results: mx.other.test; dkim=pass" in data
        assert data.endswith(b"\r\n\r\nline one\r\nline two\r\n")
    finally:
        f.stop()


def test_a_failed_scan_is_a_temporary_failure_when_fail_closed(sink):
    """``fail_open = false``: the client hears ``tempfail_reply`` and keeps the message; nothing
    reaches the next hop, and the next message on the connection goes through the same way."""
    f = start(sink, engine=Engine(checks=[GtubeCheck()]), fail_open=False)
    _failing_scans(f)
    try:
        c, fh, _ = _ehlo(f.port)
        for tag in ("held one", "held two"):
            c.sendall(b"MAIL FROM:<ana@sender.test>\r\nRCPT TO:<bo@rcpt.test>\r\nDATA\r\n")
            assert [r[:3] for r in smtp_replies(fh, 3)] == [b"250", b"250", b"354"]
            c.sendall(ham(subject=tag) + b".\r\n")
            assert smtp_replies(fh, 1) == [SmtpConfig().tempfail_reply.encode()]
        c.close()
        assert sink.wait_for(marker("held"), timeout=0.5) == []
    finally:
        f.stop()
