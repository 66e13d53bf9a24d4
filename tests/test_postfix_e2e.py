"""End to end: swaks -> Postfix (private instance, smtpd_milters) -> aiosmtpd sink, with our milter.

Checks that spam is rejected at end of DATA, ham arrives once with our headers,
and that nothing is lost when the milter is down or slow: Postfix applies
``milter_default_action`` (accept: delivered unscanned; tempfail: the sender
gets 4xx and delivers on retry).
"""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

from antispam import Check, Engine, SymbolDef
from antispam.builtin import GtubeCheck
from antispam.config import MilterConfig
from antispam.servers.milter import MilterServer

import postfix as pf
from server_helpers import ServerThread, Sink, ham, marker, smtp_replies, spam
from servers import free_port

why = pf.available()
pytestmark = pytest.mark.skipif(why is not None and not os.environ.get("CI"), reason=why or "")


@pytest.fixture(scope="module")
def sink():
    s = Sink()
    yield s
    s.down()


@pytest.fixture(scope="module")
def milter_port():
    return free_port()


@pytest.fixture(scope="module")
def engine():
    return Engine()


@pytest.fixture(scope="module")
def milter(milter_port, engine):
    st = ServerThread(MilterServer(engine, MilterConfig(port=milter_port)))
    yield st
    st.stop_if_running()


@pytest.fixture(scope="module")
def postfix(sink, milter_port):
    p = pf.Postfix(relay_port=sink.port, main={
        "smtpd_milters": f"inet:127.0.0.1:{milter_port}",
        "milter_protocol": "6",
        "milter_default_action": "accept",
        "milter_connect_timeout": "3s",
        "milter_command_timeout": "3s",
        "milter_content_timeout": "3s",
    })
    yield p
    p.stop()


def test_ham_arrives_once_with_our_headers(milter, postfix, sink):
    r = pf.swaks(postfix.port, ham(subject="e2e ham 1"))
    assert r.returncode == 0, r.stdout[-2000:]
    got = sink.wait_for(marker("e2e ham 1"))
    assert len(got) == 1, postfix.log()[-3000:]
    mail_from, rcpts, raw = got[0]
    assert mail_from == "ana@sender.test" and rcpts == ("bo@rcpt.test",)
    assert b"X-Spam-Flag: NO" in raw and b"X-Spam-Status: No, score=" in raw
    assert b"Shall we meet at noon" in raw


def test_spam_is_rejected_at_end_of_data(milter, postfix, sink):
    r = pf.swaks(postfix.port, spam(subject="e2e spam 1"))
    assert r.returncode != 0
    assert "550 5.7.1 Message rejected as spam" in r.stdout
    # the rejection came after DATA was sent, i.e. at end of DATA
    assert r.stdout.index("354 ") < r.stdout.index("550 5.7.1")
    time.sleep(1.0)
    assert sink.wait_for(marker("e2e spam 1"), timeout=0.5) == []
    assert "milter-reject: END-OF-MESSAGE" in postfix.log()


def test_as_many_sessions_as_postfix_runs_smtpd_processes_are_all_scanned(milter, postfix, sink):
    """Each smtpd process holds one milter connection for its whole SMTP session.  With the milter's
    default limit at 64 and Postfix's default_process_limit at 100, the 65th session's connection was
    closed unanswered and Postfix passed that session by milter_default_action: here ``accept``, so
    its spam was delivered unscanned.  70 sessions at once, spam sent on the last one opened."""
    import smtplib

    sessions: list[smtplib.SMTP] = []
    try:
        for _ in range(70):
            s = smtplib.SMTP("127.0.0.1", postfix.port, timeout=30)
            s.ehlo("client.sender.test")  # answered once Postfix has connected to the milter
            sessions.append(s)
        with pytest.raises(smtplib.SMTPDataError) as refused:
            sessions[-1].sendmail("ana@sender.test", ["bo@rcpt.test"], spam(subject="e2e session 70"))
        assert refused.value.smtp_code == 550, refused.value
    finally:
        for s in sessions:
            s.close()
    assert sink.wait_for(marker("e2e session 70"), timeout=0.5) == []


def test_milter_down_is_no_loss(milter, milter_port, postfix, sink, engine):
    milter.stop()
    # milter_default_action = accept: delivered, unscanned
    r = pf.swaks(postfix.port, ham(subject="e2e down accept"))
    assert r.returncode == 0, r.stdout[-1500:]
    got = sink.wait_for(marker("e2e down accept"))
    assert len(got) == 1 and b"X-Spam-Flag" not in got[0][2]
    # milter_default_action = tempfail: the sender is told to retry, and nothing is queued
    postfix.set(milter_default_action="tempfail")
    raw = ham(subject="e2e down tempfail")
    r = pf.swaks(postfix.port, raw)
    assert r.returncode != 0 and "451 4.7.1" in r.stdout, r.stdout[-1500:]
    assert sink.wait_for(marker("e2e down tempfail"), timeout=1.0) == []
    # the milter comes back; the sender's retry is delivered, scanned, exactly once
    back = ServerThread(MilterServer(engine, MilterConfig(port=milter_port)))
    try:
        r = pf.swaks(postfix.port, raw)
        assert r.returncode == 0, r.stdout[-1500:]
        got = sink.wait_for(marker("e2e down tempfail"))
        assert len(got) == 1 and b"X-Spam-Flag: NO" in got[0][2]
    finally:
        back.stop()
        postfix.set(milter_default_action="accept")


class Slow(Check):
    """A check slower than Postfix's milter_content_timeout."""

    name = "slow"
    symbols = (SymbolDef("SLOW", 0.0, "test", "test"),)

    def run(self, msg, ctx):  # type: ignore[no-untyped-def]
        time.sleep(2.5)
        return []


def test_slow_milter_is_no_loss(postfix, sink):
    port = free_port()
    slow = ServerThread(MilterServer(Engine(checks=[GtubeCheck(), Slow()]), MilterConfig(port=port, workers=0)))
    try:
        postfix.set(smtpd_milters=f"inet:127.0.0.1:{port}", milter_default_action="tempfail",
                    milter_content_timeout="1s")
        raw = ham(subject="e2e slow tempfail")
        r = pf.swaks(postfix.port, raw)
        assert r.returncode != 0 and "451 4.7.1" in r.stdout, r.stdout[-1500:]
        postfix.set(milter_default_action="accept")
        r = pf.swaks(postfix.port, ham(subject="e2e slow accept"))
        assert r.returncode == 0
        got = sink.wait_for(marker("e2e slow accept"))
        assert len(got) == 1 and b"X-Spam-Flag" not in got[0][2]
        assert sink.wait_for(marker("e2e slow tempfail"), timeout=0.5) == []
    finally:
        postfix.set(milter_content_timeout="3s")
        slow.stop()


# --------------------------------------------------------------------------- content_filter (after-queue)


def test_content_filter_after_queue_survives_kill_9(sink):
    """swaks -> Postfix (content_filter=scan:[127.0.0.1]:F) -> our filter -> Postfix re-injection
    smtpd (port R, no filter) -> sink.  The filter is frozen and then killed while Postfix is
    handing it a message: Postfix keeps the message queued, and once the filter is back the
    message arrives exactly once, scanned."""
    from test_smtp_filter import spawn_filter

    fport, rport = free_port(), free_port()
    p = pf.Postfix(relay_port=sink.port, main={
        "content_filter": f"scan:[127.0.0.1]:{fport}",
        "smtp_connect_timeout": "2s",
    }, extra_master=(
        "scan unix - - n - 4 smtp -o smtp_send_xforward_command=yes -o disable_mime_output_conversion=yes\n"
        f"127.0.0.1:{rport} inet n - n - - smtpd -o content_filter= -o smtpd_milters="
        " -o smtpd_authorized_xforward_hosts=127.0.0.0/8 -o receive_override_options=no_unknown_recipient_checks\n"))
    proc = spawn_filter(fport, rport)
    try:
        r = pf.swaks(p.port, spam(subject="cf spam"))
        assert r.returncode == 0  # after-queue: accepted by Postfix, then tagged
        (got,) = sink.wait_for(marker("cf spam"))
        assert b"X-Spam-Flag: YES" in got[2]
        # freeze the filter, let Postfix connect to it and wait, then kill it mid-transaction
        proc.send_signal(signal.SIGSTOP)
        raw = ham(subject="cf killed")
        r = pf.swaks(p.port, raw)
        assert r.returncode == 0, r.stdout[-1500:]  # Postfix has the message in its queue
        time.sleep(1.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 20
        while "status=deferred" not in p.log() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "status=deferred" in p.log(), p.log()[-3000:]
        assert sink.wait_for(marker("cf killed"), timeout=0.5) == []
        proc = spawn_filter(fport, rport)
        p.flush()
        got = sink.wait_for(marker("cf killed"), timeout=30)
        assert len(got) == 1, p.log()[-3000:]
        assert b"X-Spam-Flag: NO" in got[0][2]
        time.sleep(1.0)
        assert len(sink.wait_for(marker("cf killed"), timeout=0)) == 1
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait()
        p.stop()


# --------------------------------------------------------------------------- smtpd_proxy_filter (before-queue)


def test_proxy_filter_before_queue(sink):
    """swaks -> Postfix smtpd (smtpd_proxy_filter) -> our filter -> Postfix smtpd on R -> sink.
    Spam is refused at end of DATA with the client still connected; the checks see the real
    client's HELO through XFORWARD; with the filter down the client gets 4xx, not a lost message."""
    from antispam.config import SmtpConfig
    from antispam.servers.smtp import SmtpFilterServer
    from server_helpers import EnvelopeProbe

    fport, rport = free_port(), free_port()
    probe = EnvelopeProbe()
    filt = ServerThread(SmtpFilterServer(Engine(checks=[GtubeCheck(), probe]), SmtpConfig(
        port=fport, mode="before-queue", next_hop=f"127.0.0.1:{rport}")))
    p = pf.Postfix(relay_port=sink.port, smtpd_options=(
        f"  -o smtpd_proxy_filter=127.0.0.1:{fport}\n  -o smtpd_proxy_options=speed_adjust\n"),
        extra_master=(f"127.0.0.1:{rport} inet n - n - - smtpd -o smtpd_proxy_filter="
                      " -o smtpd_authorized_xforward_hosts=127.0.0.0/8"
                      " -o receive_override_options=no_unknown_recipient_checks\n"))
    try:
        r = pf.swaks(p.port, spam(subject="pf spam"))
        assert r.returncode != 0 and "550 5.7.1 Message rejected as spam" in r.stdout, r.stdout[-1500:]
        r = pf.swaks(p.port, ham(subject="pf ham"))
        assert r.returncode == 0, r.stdout[-1500:]
        got = sink.wait_for(marker("pf ham"))
        assert len(got) == 1 and b"X-Spam-Flag: NO" in got[0][2]
        env, _ = probe.seen[-1]
        assert env.helo == "client.sender.test" and env.client_ip == "127.0.0.1"  # via XFORWARD
        assert sink.wait_for(marker("pf spam"), timeout=0.3) == []
        filt.stop()
        r = pf.swaks(p.port, ham(subject="pf filter down"))
        assert r.returncode != 0 and re.search(r"<\*\* +4\d\d ", r.stdout), r.stdout[-1500:]
        assert sink.wait_for(marker("pf filter down"), timeout=1.0) == []
    finally:
        filt.stop_if_running()
        p.stop()


# --------------------------------------------------------------------------- recipient by recipient


def test_content_filter_next_hop_refusing_some_recipients(sink):
    """swaks -> Postfix (content_filter) -> our filter -> a next hop that refuses one recipient
    for good and one for now.  Postfix sees each refusal at RCPT time through the filter, so it
    delivers the good recipient once, bounces the unknown one and keeps the full one queued;
    once that mailbox has room the queued recipient arrives, once."""
    from antispam.config import SmtpConfig
    from antispam.servers.smtp import SmtpFilterServer

    fport = free_port()
    filt = ServerThread(SmtpFilterServer(Engine(checks=[GtubeCheck()]), SmtpConfig(
        port=fport, next_hop=f"127.0.0.1:{sink.port}", next_hop_timeout=5.0)))
    p = pf.Postfix(relay_port=sink.port, main={"content_filter": f"scan:[127.0.0.1]:{fport}"},
                   extra_master="scan unix - - n - 4 smtp -o smtp_send_xforward_command=yes\n")
    sink.refuse_rcpts = {"gone@rcpt.test": "550 5.1.1 No such user here",
                         "full@rcpt.test": "452 4.2.2 Mailbox full, try later"}

    def copies(rcpt: str) -> int:
        with sink._lock:
            return sum(1 for _, rcpts, raw in sink.messages if rcpt in rcpts and b"cf per rcpt" in raw)

    try:
        r = pf.swaks(p.port, ham(subject="cf per rcpt"), to="bo@rcpt.test,gone@rcpt.test,full@rcpt.test")
        assert r.returncode == 0, r.stdout[-1500:]
        deadline = time.monotonic() + 20
        while not ("status=bounced" in p.log() and "status=deferred" in p.log()) and time.monotonic() < deadline:
            time.sleep(0.2)
        log = p.log()
        assert re.search(r"to=<gone@rcpt\.test>.*status=bounced .*550 5\.1\.1 No such user here", log), log[-3000:]
        assert re.search(r"to=<full@rcpt\.test>.*status=deferred .*452 4\.2\.2 Mailbox full", log), log[-3000:]
        assert re.search(r"to=<bo@rcpt\.test>.*status=sent", log), log[-3000:]
        assert copies("bo@rcpt.test") == 1 and copies("full@rcpt.test") == 0
        sink.refuse_rcpts = {"gone@rcpt.test": "550 5.1.1 No such user here"}
        p.flush()
        deadline = time.monotonic() + 30
        while copies("full@rcpt.test") == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)
        assert (copies("bo@rcpt.test"), copies("full@rcpt.test"), copies("gone@rcpt.test")) == (1, 1, 0), p.log()[-3000:]
    finally:
        sink.refuse_rcpts = {}
        filt.stop()
        p.stop()


# --------------------------------------------------------------------------- Postfix as the next hop


def test_postfix_next_hop_gets_pipelined_mail_rcpt_and_one_bdat(sink):
    """Our filter re-injecting into Postfix's smtpd, which announces PIPELINING and CHUNKING: a
    client's pipelined group gets Postfix's own reply per recipient (a refused one mid-group
    included), the message goes as BDAT and arrives once for the accepted recipients; a message
    Postfix refuses at its end (header_checks) is refused to the client with Postfix's reply, and
    the next message on the same connections arrives whole.  A message to one recipient goes to
    Postfix as MAIL, RCPT and BDAT in one write, so Postfix's refusal of that recipient is the
    reply at end of data, and the next message still arrives."""
    import socket

    from antispam.config import SmtpConfig
    from antispam.servers.smtp import SmtpFilterServer, _SmtpClient

    p = pf.Postfix(relay_port=sink.port, main={
        "smtpd_recipient_restrictions": "check_recipient_access inline:{ {gone@rcpt.test=REJECT No such user here} },"
                                        " permit_mynetworks, reject_unauth_destination",
        "header_checks": "regexp:{ {/^Subject: .*refuse me/ REJECT refused by header_checks} }",
    })
    fport = free_port()
    filt = ServerThread(SmtpFilterServer(Engine(checks=[GtubeCheck()]), SmtpConfig(
        port=fport, next_hop=f"127.0.0.1:{p.port}", next_hop_timeout=10.0)))

    async def extensions() -> set[str]:
        c = await _SmtpClient.connect("127.0.0.1", p.port, helo="probe.test", timeout=10.0)
        c.close()
        return c.extensions

    try:
        import asyncio

        assert {"PIPELINING", "CHUNKING"} <= asyncio.run(extensions())  # the paths under test
        c = socket.create_connection(("127.0.0.1", fport), timeout=30)
        fh = c.makefile("rb")
        smtp_replies(fh, 1)
        c.sendall(b"EHLO client.test\r\n")
        smtp_replies(fh, 1)
        c.sendall(b"MAIL FROM:<ana@sender.test>\r\nRCPT TO:<bo@rcpt.test>\r\nRCPT TO:<gone@rcpt.test>\r\n"
                  b"RCPT TO:<cy@rcpt.test>\r\nDATA\r\n")
        got = smtp_replies(fh, 5)
        assert [r[:3] for r in got] == [b"250", b"250", b"554", b"250", b"354"], got
        assert b"No such user here" in got[2]
        c.sendall(ham(subject="via postfix bdat") + b".\r\n")
        assert smtp_replies(fh, 1)[0][:3] == b"250"

        def lone(rcpt: bytes, subject: str) -> bytes:
            """One message to one recipient, pipelined as Postfix sends it: our reply at its end."""
            c.sendall(b"MAIL FROM:<ana@sender.test>\r\nRCPT TO:<%b>\r\nDATA\r\n" % rcpt)
            assert [r[:3] for r in smtp_replies(fh, 3)] == [b"250", b"250", b"354"]
            c.sendall(ham(subject=subject) + b".\r\n")
            return smtp_replies(fh, 1)[0]

        end = lone(b"bo@rcpt.test", "please refuse me")
        assert end[:1] == b"5" and b"refused by header_checks" in end, end
        assert lone(b"dee@rcpt.test", "after the refused one")[:3] == b"250"
        # a lone recipient is held: MAIL, RCPT and BDAT reach Postfix in one write, so its refusal
        # of the recipient is the reply at end of data
        end = lone(b"gone@rcpt.test", "lone and gone")
        assert end[:1] == b"5" and b"No such user here" in end, end
        assert lone(b"eve@rcpt.test", "after the gone one")[:3] == b"250"
        c.sendall(b"QUIT\r\n")
        c.close()
        (first,) = sink.wait_for(marker("via postfix bdat"), timeout=30)
        assert sorted(first[1]) == ["bo@rcpt.test", "cy@rcpt.test"] and b"X-Spam-Flag: NO" in first[2]
        (after,) = sink.wait_for(marker("after the refused one"), timeout=30)
        assert after[1] == ("dee@rcpt.test",)
        (after,) = sink.wait_for(marker("after the gone one"), timeout=30)
        assert after[1] == ("eve@rcpt.test",)
        assert sink.wait_for(marker("please refuse me"), timeout=0.5) == []
        assert sink.wait_for(marker("lone and gone"), timeout=0.1) == []
    finally:
        filt.stop()
        p.stop()



class SlowSigner(Check):
    """A milter on the re-injecting smtpd slower at end of data than the filter's ``next_hop_timeout``
    (a DKIM signer waiting on its key server, say)."""

    name = "slow_signer"
    symbols = (SymbolDef("SLOW_SIGNER", 0.0, "test", "test"),)

    def run(self, msg, ctx):  # type: ignore[no-untyped-def]
        time.sleep(1.5)
        return []


def test_content_filter_slow_next_hop_at_end_of_data_delivers_once(sink):
    """Postfix (content_filter) -> our filter -> Postfix's re-injection smtpd, whose milter takes 1.5 s
    at end of data, past the filter's ``next_hop_timeout`` (0.5 s here; 60 s by default, and a
    milter's own timeout is 300 s).  That smtpd queues the message once it has all of it, whoever
    waits for its reply: the filter, giving up at ``next_hop_timeout``, answered Postfix 451, and
    Postfix's retries each made one more copy.  The reply to the message is awaited
    ``next_hop_data_timeout`` (RFC 5321's 10 minutes, less one): delivered once, at the first try."""
    from antispam.config import SmtpConfig
    from antispam.servers.smtp import SmtpFilterServer

    mport, fport, rport = free_port(), free_port(), free_port()
    signer = ServerThread(MilterServer(Engine(checks=[SlowSigner()]), MilterConfig(port=mport, workers=0)))
    filt = ServerThread(SmtpFilterServer(Engine(checks=[GtubeCheck()]), SmtpConfig(
        port=fport, next_hop=f"127.0.0.1:{rport}", next_hop_timeout=0.5)))
    p = pf.Postfix(relay_port=sink.port, main={"content_filter": f"scan:[127.0.0.1]:{fport}",
                                               "milter_content_timeout": "10s"}, extra_master=(
        "scan unix - - n - 4 smtp -o smtp_send_xforward_command=yes\n"
        f"127.0.0.1:{rport} inet n - n - - smtpd -o content_filter= -o smtpd_milters=inet:127.0.0.1:{mport}"
        " -o smtpd_authorized_xforward_hosts=127.0.0.0/8\n"))
    try:
        assert pf.swaks(p.port, ham(subject="slow signer")).returncode == 0
        assert len(sink.wait_for(marker("slow signer"))) == 1, p.log()[-3000:]
        time.sleep(2.5)  # a retry would have come by now (queue_run_delay 1s, backoff 1-2s)
        assert len(sink.wait_for(marker("slow signer"), timeout=0)) == 1, p.log()[-3000:]
        assert "status=deferred" not in p.log(), p.log()[-3000:]
    finally:
        filt.stop()
        signer.stop()
        p.stop()


def test_content_filter_to_a_next_hop_without_smtputf8():
    """Postfix (content_filter, SMTPUTF8 on) -> our filter -> a re-injecting smtpd with
    ``smtputf8_enable = no``.  The filter announces SMTPUTF8 only when its next hop does, so Postfix
    treats the message as it would for that next hop: one with a UTF-8 sender is bounced (5.6.7,
    RFC 6531 section 3.4), one that asked for SMTPUTF8 but needs none goes on without it.  Before,
    the filter took the first and sent its UTF-8 sender on unflagged."""
    import smtplib

    from test_smtp_filter import spawn_filter

    sink = Sink()
    fport, rport = free_port(), free_port()
    p = pf.Postfix(relay_port=sink.port, main={"content_filter": f"scan:[127.0.0.1]:{fport}", "smtputf8_enable": "yes"},
                   extra_master=(
        "scan unix - - n - 4 smtp -o smtp_send_xforward_command=yes\n"
        f"127.0.0.1:{rport} inet n - n - - smtpd -o content_filter= -o smtputf8_enable=no"
        " -o smtpd_authorized_xforward_hosts=127.0.0.0/8 -o receive_override_options=no_unknown_recipient_checks\n"))
    proc = spawn_filter(fport, rport)
    try:
        with smtplib.SMTP("127.0.0.1", p.port, timeout=30) as s:
            for sender, subject in (("jos\u00e9@sender.test", "utf8 sender"), ("ana@sender.test", "ascii sender")):
                s.sendmail(sender, ["bo@rcpt.test"], ham(subject=subject), mail_options=["SMTPUTF8"])
        assert len(sink.wait_for(marker("ascii sender"))) == 1
        deadline = time.monotonic() + 20
        while "dsn=5.6.7, status=bounced" not in p.log() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert re.search(r"to=<bo@rcpt\.test>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:\d+, .*dsn=5\.6\.7, status=bounced "
                         r"\(SMTPUTF8 is required", p.log()), p.log()[-3000:]
        assert sink.wait_for(marker("utf8 sender"), timeout=0.5) == []
    finally:
        proc.kill()
        proc.wait()
        p.stop()
        sink.down()


# --------------------------------------------------------------------------- DSN (RFC 3461)


def _dsn_session(port: int, subject: str) -> None:
    """A message whose sender asks for DSN: RET and ENVID, NOTIFY and ORCPT, in mixed case."""
    import smtplib

    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.sendmail("ana@sender.test", ["bo@rcpt.test"], ham(subject=subject),
                   mail_options=["RET=HDRS", "ENVID=Env42x"],
                   rcpt_options=["NOTIFY=NEVER", "ORCPT=rfc822;Bo@Rcpt.test"])


def _assert_dsn_passed_on(sink: Sink) -> None:
    """The next hop got the MAIL and RCPT of ``_dsn_session`` with their DSN parameters as sent."""
    mail, rcpt = [c.partition(" ")[2] for c in sink.commands]
    assert "ENVID=Env42x" in mail.split() and "RET=HDRS" in mail.split(), mail
    assert rcpt.split()[1:] == ["ORCPT=rfc822;Bo@Rcpt.test", "NOTIFY=NEVER"], rcpt


def test_content_filter_passes_dsn_requests_on():
    """swaks' role played by smtplib -> Postfix (content_filter) -> our filter -> Postfix's
    re-injection smtpd -> a next hop announcing DSN.  The sender's NOTIFY=NEVER, ORCPT, RET and
    ENVID reach the last hop as sent.  Before, the filter announced no DSN, so Postfix's
    content_filter client sent none of them: the re-injecting Postfix bounced to a sender who had
    asked for no bounce, and its notifications lost the sender's ENVID and ORCPT."""
    from test_smtp_filter import spawn_filter

    sink = Sink(dsn=True)
    fport, rport = free_port(), free_port()
    p = pf.Postfix(relay_port=sink.port, main={"content_filter": f"scan:[127.0.0.1]:{fport}"}, extra_master=(
        "scan unix - - n - 4 smtp -o smtp_send_xforward_command=yes\n"
        f"127.0.0.1:{rport} inet n - n - - smtpd -o content_filter= -o smtpd_authorized_xforward_hosts=127.0.0.0/8"
        " -o receive_override_options=no_unknown_recipient_checks\n"))
    proc = spawn_filter(fport, rport)
    try:
        _dsn_session(p.port, "cf dsn")
        (got,) = sink.wait_for(marker("cf dsn"))
        assert b"X-Spam-Flag: " in got[2]  # scanned
        _assert_dsn_passed_on(sink)
    finally:
        proc.kill()
        proc.wait()
        p.stop()
        sink.down()


def test_proxy_filter_takes_dsn_requests():
    """Postfix's before-queue proxy hands the client's MAIL and RCPT to the filter as they came,
    DSN parameters included, whatever the filter announced.  The filter refused them (aiosmtpd's
    ``555 ... parameters not recognized``): every message whose sender asked for a notification
    was refused.  Now taken, and passed on."""
    from antispam.config import SmtpConfig
    from antispam.servers.smtp import SmtpFilterServer

    sink = Sink(dsn=True)
    fport, rport = free_port(), free_port()
    filt = ServerThread(SmtpFilterServer(Engine(checks=[GtubeCheck()]), SmtpConfig(
        port=fport, mode="before-queue", next_hop=f"127.0.0.1:{rport}")))
    p = pf.Postfix(relay_port=sink.port, smtpd_options=f"  -o smtpd_proxy_filter=127.0.0.1:{fport}\n",
                   extra_master=(f"127.0.0.1:{rport} inet n - n - - smtpd -o smtpd_proxy_filter="
                                 " -o receive_override_options=no_unknown_recipient_checks\n"))
    try:
        _dsn_session(p.port, "pf dsn")
        assert len(sink.wait_for(marker("pf dsn"))) == 1
        _assert_dsn_passed_on(sink)
    finally:
        filt.stop()
        p.stop()
        sink.down()


# --------------------------------------------------------------------------- MAIL parameters: BODY, SMTPUTF8, AUTH


def test_content_filter_to_a_next_hop_without_8bitmime():
    """Postfix (content_filter) -> our filter -> a next hop without 8BITMIME.  The filter offers
    8BITMIME only when its next hop does, so Postfix converts an 8-bit message to quoted-printable
    as it would for that next hop (RFC 6152), and 7-bit data arrives.  Before, the filter offered it
    always: Postfix sent the 8-bit data with ``BODY=8BITMIME``, and the filter dropped the
    parameter and handed the 8-bit data undeclared to a server that had not said it takes them."""
    from antispam.config import SmtpConfig
    from antispam.servers.smtp import SmtpFilterServer
    from test_smtp_filter import eight_bit

    sink = Sink(without=("8BITMIME",))
    fport = free_port()
    filt = ServerThread(SmtpFilterServer(Engine(checks=[GtubeCheck()]), SmtpConfig(
        port=fport, next_hop=f"127.0.0.1:{sink.port}")))
    p = pf.Postfix(relay_port=sink.port, main={"content_filter": f"scan:[127.0.0.1]:{fport}"},
                   extra_master="scan unix - - n - 4 smtp -o smtp_send_xforward_command=yes\n")
    try:
        import smtplib

        with smtplib.SMTP("127.0.0.1", p.port, timeout=30) as s:
            s.sendmail("ana@sender.test", ["bo@rcpt.test"], eight_bit("cf 8bit"), mail_options=["BODY=8BITMIME"])
        (got,) = sink.wait_for(marker("cf 8bit"))
        assert got[2].isascii() and b"Content-Transfer-Encoding: quoted-printable" in got[2], got[2]
        assert b"Caf=C3=A9" in got[2]
        assert "BODY" not in sink.commands[0].upper()
    finally:
        filt.stop()
        p.stop()
        sink.down()


def test_proxy_filter_mail_parameters_against_a_next_hop_without_them():
    """swaks' role played by smtplib -> Postfix smtpd (smtpd_proxy_filter; SMTPUTF8 and SASL on)
    -> our filter -> Postfix's 10026 smtpd with no 8BITMIME and no SMTPUTF8.  Postfix's proxy
    hands the filter its client's MAIL as it came, whatever the filter announced.  Before:

    - ``BODY=8BITMIME`` was dropped, and the 8-bit message relayed undeclared (RFC 6152);
    - ``SMTPUTF8`` was dropped, and the UTF-8 sender relayed unflagged (RFC 6531 section 3.4);
    - ``AUTH=<>`` (Postfix takes it once SASL is on, authenticated or not) was refused 555 by the
      filter: every such message was refused.

    Now 8-bit data is refused for now (451 4.6.3: the message stays with the client until the next
    hop takes 8 bits again), a UTF-8 sender for good (553 5.6.7, as Postfix bounces it; Postfix
    gives it as its reply to the first RCPT), an ASCII message that asked for SMTPUTF8 or declared
    8BITMIME goes on, and AUTH is taken (not passed on)."""
    import smtplib

    from antispam.config import SmtpConfig
    from antispam.servers.smtp import SmtpFilterServer
    from test_smtp_filter import _eight_bit_sink, eight_bit

    sink = _eight_bit_sink(chunking=False)
    fport, rport = free_port(), free_port()
    filt = ServerThread(SmtpFilterServer(Engine(checks=[GtubeCheck()]), SmtpConfig(
        port=fport, mode="before-queue", next_hop=f"127.0.0.1:{rport}")))
    p = pf.Postfix(relay_port=sink.port, smtpd_options=(
        f"  -o smtpd_proxy_filter=127.0.0.1:{fport}\n  -o smtputf8_enable=yes\n  -o smtpd_sasl_auth_enable=yes\n"),
        extra_master=(f"127.0.0.1:{rport} inet n - n - - smtpd -o smtpd_proxy_filter= -o smtputf8_enable=no"
                      " -o smtpd_discard_ehlo_keywords=8bitmime -o receive_override_options=no_unknown_recipient_checks\n"))
    try:
        with smtplib.SMTP("127.0.0.1", p.port, timeout=30) as s:
            s.ehlo("client.sender.test")
            assert {"8bitmime", "smtputf8", "auth"} <= set(s.esmtp_features), s.esmtp_features
            with pytest.raises(smtplib.SMTPDataError) as refused:
                s.sendmail("ana@sender.test", ["bo@rcpt.test"], eight_bit("pf 8bit"), mail_options=["BODY=8BITMIME"])
            assert refused.value.smtp_code == 451 and refused.value.smtp_error.startswith(b"4.6.3 "), refused.value
            s.sendmail("ana@sender.test", ["bo@rcpt.test"], ham(subject="pf 7bit"), mail_options=["BODY=8BITMIME"])
            # Postfix opens the filter's transaction at the first recipient it accepts, and answers
            # that RCPT with the filter's refusal of the MAIL
            with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
                s.sendmail("jos\u00e9@sender.test", ["bo@rcpt.test"], ham(subject="pf utf8"), mail_options=["SMTPUTF8"])
            code, text = refused.value.recipients["bo@rcpt.test"]
            assert code == 553 and text.startswith(b"5.6.7 "), refused.value
            s.sendmail("ana@sender.test", ["bo@rcpt.test"], ham(subject="pf ascii utf8"), mail_options=["SMTPUTF8"])
            s.sendmail("ana@sender.test", ["bo@rcpt.test"], ham(subject="pf auth"), mail_options=["AUTH=<>"])
        for subject in ("pf auth", "pf 7bit", "pf ascii utf8"):
            assert len(sink.wait_for(marker(subject))) == 1, (subject, p.log()[-3000:])
        assert sink.wait_for(lambda raw: b"pf 8bit" in raw or b"pf utf8" in raw, timeout=0.5) == []
    finally:
        filt.stop()
        p.stop()
        sink.down()


def test_proxy_filter_passes_smtputf8_on():
    """Before-queue, with SMTPUTF8 on everywhere: a message with a UTF-8 sender, sent with
    SMTPUTF8, reaches the last hop with its flag and its address intact (Postfix's proxy -> our
    filter -> Postfix's 10026 smtpd -> the sink)."""
    import smtplib

    from antispam.config import SmtpConfig
    from antispam.servers.smtp import SmtpFilterServer
    from test_smtp_filter import _eight_bit_sink

    sink = _eight_bit_sink(chunking=False)
    fport, rport = free_port(), free_port()
    filt = ServerThread(SmtpFilterServer(Engine(checks=[GtubeCheck()]), SmtpConfig(
        port=fport, mode="before-queue", next_hop=f"127.0.0.1:{rport}")))
    p = pf.Postfix(relay_port=sink.port, main={"smtputf8_enable": "yes"},
                   smtpd_options=f"  -o smtpd_proxy_filter=127.0.0.1:{fport}\n",
                   extra_master=(f"127.0.0.1:{rport} inet n - n - - smtpd -o smtpd_proxy_filter="
                                 " -o receive_override_options=no_unknown_recipient_checks\n"))
    sender = "jos\u00e9@sender.test"
    try:
        with smtplib.SMTP("127.0.0.1", p.port, timeout=30) as s:
            s.sendmail(sender, ["bo@rcpt.test"], ham(subject="pf utf8 on"), mail_options=["SMTPUTF8"])
        (got,) = sink.wait_for(marker("pf utf8 on"))
        assert got[0] == sender and sink.mail_utf8 == [True], (sink.mail_utf8, p.log()[-3000:])
    finally:
        filt.stop()
        p.stop()
        sink.down()
