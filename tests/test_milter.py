"""The milter server driven by a small MTA-side client (tests/milter_client.py).

The same server is driven by real Postfix in test_postfix_e2e.py; these tests
cover the protocol corners Postfix does not reach on demand.
"""

from __future__ import annotations

import os
import smtplib
import struct

import pytest

from antispam import Config, Engine
from antispam.builtin import GtubeCheck
from antispam.config import MilterConfig
from antispam.servers.milter import MilterServer

import postfix as pf
from milter_client import LEADSPC, MilterClient
from server_helpers import EnvelopeProbe, ServerThread, Sink, ham, marker, spam
from servers import free_port


def headers_added(replies):
    """(name, value) of each ADDHEADER; the value without the space it starts with when the MTA
    agreed to SMFIP_HDR_LEADSPC (the header reads ``Name: value`` either way)."""
    out = []
    for cmd, data in replies:
        if cmd == b"h":
            name, value = (x.decode() for x in data.split(b"\0")[:2])
            out.append((name, value[1:] if value.startswith(" ") else value))
    return out


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


@pytest.mark.parametrize("sent", ["IPv6:2001:db8::25", "ipv6:2001:db8::25", "[2001:db8::25]"])
def test_an_ipv6_client_address_is_the_address_alone(milter, probe, sent):
    """Sendmail gives an IPv6 client as ``IPv6:2001:db8::25``; the scan (SPF, DNS lists) reads the address."""
    c = MilterClient(milter.port)
    c.negotiate()
    c.session(client_ip=sent, family=b"6")
    c.message(ham())
    assert probe.seen[-1][0].client_ip == "2001:db8::25"
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
    assert any(d[4:].startswith(b"Subject\0 ***SPAM*** You have won") for d in changes)  # " ": HDR_LEADSPC
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


def test_the_default_wait_for_the_mta_is_libmilters_not_smtpd_timeout():
    """Postfix tells a milter nothing of NOOP, VRFY, AUTH, STARTTLS, a RSET outside a transaction or
    its own policy lookups, so an SMTP session keeps the milter connection quiet for several of its
    smtpd_timeout (300 s) with each command within one.  At 300 s the server closed such a session's
    connection and Postfix passed its next message by milter_default_action: with ``accept``, spam
    delivered unscanned, its forged X-Spam-Flag kept (reproduced through Postfix, scaled down: NOOPs
    every 2 s against a 3 s timeout).  libmilter waits 7210 s (MI_TIMEOUT) for the MTA."""
    assert MilterConfig().timeout >= 7210


# --------------------------------------------------------------------------- regressions (review of the milter)

REWRITE = {"actions": {"reject": False, "add header": False, "rewrite subject": 5.0}}
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


def _changes(replies) -> list[tuple[int, bytes, bytes]]:
    """CHGHEADER packets as (index, name, value)."""
    out = []
    for cmd, d in replies:
        if cmd == b"m":
            name, value = d[4:].split(b"\0")[:2]
            out.append((struct.unpack(">I", d[:4])[0], name, value))
    return out


def _one_off_client(settings: MilterConfig, config: Config | None = None, raw: bytes | None = None, **negotiate):
    st = ServerThread(MilterServer(Engine(config, checks=[GtubeCheck()]), settings))
    try:
        c = client(st, **negotiate)
        replies = c.message(raw or spam())
        c.quit()
        return replies
    finally:
        st.stop()


def test_reply_text_percent_is_doubled_and_lines_joined_with_crlf():
    """milter8.c reads SMFIR_REPLYCODE text with '%' as an escape (libmilter's smfi_setreply:
    "use '%%'"), so a single '%' would be dropped; libmilter joins the lines of a multi-line reply
    with CRLF."""
    replies = _one_off(MilterConfig(port=0, reject_reply="550 5.7.1 Rejected: 100% sure, see http://x.test/a%20b"))
    assert replies == [(b"y", b"550 5.7.1 Rejected: 100%% sure, see http://x.test/a%%20b\0")]
    replies = _one_off(MilterConfig(port=0, reject_reply="550-5.7.1 line one\n550 5.7.1 line two"))
    assert replies == [(b"y", b"550-5.7.1 line one\r\n550 5.7.1 line two\0")]


@pytest.mark.parametrize("key, value", [
    ("reject_reply", "550 4.7.1 Rejected as spam"),    # enhanced status of another class than the code
    ("reject_reply", "Rejected as spam"),              # no code at all
    ("reject_reply", "550 Rejected as spam"),          # no enhanced status code
    ("reject_reply", "250 2.0.0 Fine"),                # not a refusal
    ("reject_reply", "550-5.7.1 the only line"),       # a continuation with nothing after it
    ("reject_reply", "550-5.7.1 one\n551 5.7.1 two"),  # a different code on the second line
    ("reject_reply", "550 5.7.1 one\n550 5.7.1 two"),  # the first line should say '-'
    ("reject_reply", "550 5.7.1 a\0b"),                # would end the packet's string early
    ("tempfail_reply", "550 5.7.1 Not now"),           # a permanent refusal where a retry is meant
    ("tempfail_reply", "451 5.7.1 Later"),
])
def test_malformed_reply_is_a_config_error(key, value):
    """Postfix logs "malformed reply" and applies milter_default_action (accept): spam delivered."""
    from antispam.errors import ConfigError

    with pytest.raises(ConfigError, match=f"servers.milter.{key}"):
        MilterConfig(**{key: value})
    with pytest.raises(ConfigError, match=f"servers.milter.{key}"):
        Config.load(overrides={"servers": {"milter": {key: value}}})


def test_wellformed_replies_are_accepted():
    for value in ("550 5.7.1 Message rejected as spam", "554 5.7.0 100% spam", "550-5.7.1 one\r\n550 5.7.1 two\n",
                  "451 4.7.1 Please try again later"):
        assert Config.load(overrides={"servers": {"milter": {"reject_reply": value}}}).servers.milter.reject_reply == value
    assert MilterConfig(tempfail_reply="421 4.3.2 Busy").tempfail_reply == "421 4.3.2 Busy"


@pytest.mark.parametrize("subject", [
    "=?utf-8?q?inj=0D=0AX-Spam-Flag:_NO?=",  # decodes to a line break: would start a header
    "=?utf-8?q?nul=00x?=",                   # decodes to NUL: would end the packet's string early
    "=?utf-8?b?w6l0w6k=?= enc",              # decodes to 8-bit text: would be a raw 8-bit header
    "=?utf-7?q?+2D0-?= surrogate",           # decodes to a lone surrogate: could not be encoded at all
])
def test_rewrite_subject_tags_the_subject_as_sent(subject):
    for negotiate, lead in (({}, b" "), ({"protocol": 0x1FFFFF & ~LEADSPC}, b"")):
        replies = _one_off_client(MilterConfig(port=0), Config().merged(REWRITE), ham(subject=subject, body=GTUBE + "\n"),
                                  **negotiate)
        assert replies[-1] == (b"c", b"")
        assert _changes(replies) == [(1, b"Subject", lead + b"***SPAM*** " + subject.encode())]


def test_rewrite_subject_unfolds_and_encodes_a_non_ascii_prefix():
    from email.header import decode_header, make_header

    cfg = Config().merged({**REWRITE, "engine": {"subject_prefix": "[SPÄM] "}})
    raw = ham(subject="Hello\r\n there", body=GTUBE + "\n")
    ((index, name, value),) = _changes(_one_off_client(MilterConfig(port=0), cfg, raw))
    assert (index, name) == (1, b"Subject") and value.isascii() and b"\n" not in value and b"\r" not in value
    assert str(make_header(decode_header(value.decode().strip()))) == "[SPÄM] Hello there"
    encoded = ham(subject="=?utf-8?q?caf=C3=A9?=", body=GTUBE + "\n")  # the prefix's space inside its word
    ((_, _, value),) = _changes(_one_off_client(MilterConfig(port=0), cfg, encoded))
    assert str(make_header(decode_header(value.decode().strip()))) == "[SPÄM] café"


def test_rewrite_subject_adds_one_when_there_is_none_and_keeps_a_tagged_one():
    raw = ham(body=GTUBE + "\n").replace(b"Subject: Lunch on Friday\r\n", b"")
    replies = _one_off_client(MilterConfig(port=0), Config().merged(REWRITE), raw)
    assert (b"h", b"Subject\0 ***SPAM***\0") in replies and not _changes(replies)
    tagged = ham(subject="***SPAM*** already", body=GTUBE + "\n")
    replies = _one_off_client(MilterConfig(port=0), Config().merged(REWRITE), tagged)
    assert _changes(replies) == [(1, b"Subject", b" ***SPAM*** already")]


def test_rewrite_subject_deletes_further_subjects():
    raw = spam(subject="first").replace(b"MIME-Version", b"Subject: second\r\nSubject: third\r\nMIME-Version")
    replies = _one_off_client(MilterConfig(port=0), Config().merged(REWRITE), raw)
    assert _changes(replies) == [(3, b"Subject", b""), (2, b"Subject", b""), (1, b"Subject", b" ***SPAM*** first")]


@pytest.mark.parametrize("fail_open", [True, False])
def test_a_failure_building_the_reply_follows_fail_open(fail_open):
    """Without an answer the MTA applies its own default (Postfix: milter_default_action)."""
    st = ServerThread(MilterServer(Engine(checks=[GtubeCheck()]), MilterConfig(port=0, fail_open=fail_open)))

    def broken(s, v):  # type: ignore[no-untyped-def]
        raise UnicodeEncodeError("utf-8", "\ud83d", 0, 1, "surrogates not allowed")

    st.server._verdict_reply = broken
    try:
        c = client(st)
        raw = ham().replace(b"MIME-Version", b"X-Spam-Flag: NO\r\nMIME-Version")
        replies = c.message(raw)
        if fail_open:
            assert replies == [(b"m", struct.pack(">I", 1) + b"X-Spam-Flag\0\0"), (b"c", b"")]
        else:
            assert replies == [(b"y", b"451 4.7.1 Please try again later\0")]
        assert c.message(ham())[-1][0] in (b"c", b"y")  # the connection goes on
        c.quit()
    finally:
        st.stop()


def test_header_values_keep_their_leading_space_when_the_mta_offers_it():
    """SMFIP_HDR_LEADSPC: the scan sees the header bytes as sent (``Subject:x`` stays so; DKIM with
    c=simple signs them), and the values we add start with the space Postfix then does not add."""
    probe = EnvelopeProbe()
    st = ServerThread(MilterServer(Engine(checks=[GtubeCheck(), probe]), MilterConfig(port=0)))
    raw = ham().replace(b"Subject: Lunch on Friday", b"Subject:Lunch\r\n\ton Friday").replace(b"To: Bo", b"To:\t Bo")
    try:
        c = MilterClient(st.port)
        assert c.negotiate()[2] & LEADSPC
        c.session()
        replies = c.message(raw)
        assert probe.seen[-1][1] == raw
        assert (b"h", b"X-Spam-Flag\0 NO\0") in replies
        c.quit()
        c = MilterClient(st.port)  # not offered: values as before, and Postfix adds the space
        assert not c.negotiate(protocol=0x1FFFFF & ~LEADSPC)[2] & LEADSPC
        c.session()
        replies = c.message(ham())
        assert probe.seen[-1][1] == ham()
        assert (b"h", b"X-Spam-Flag\0NO\0") in replies
        c.quit()
    finally:
        st.stop()


def test_quarantine_the_mta_does_not_offer_falls_back_to_reject():
    replies = _one_off_client(MilterConfig(port=0, quarantine=True), actions=0x01 | 0x10)
    assert replies == [(b"y", b"550 5.7.1 Message rejected as spam\0")]


FORGED = b"X-Spam-Flag: NO\r\nX-Spam-Status: No, score=-5.0\r\nMIME-Version"


def test_forged_headers_are_deleted_from_mail_accepted_unscanned():
    raw = spam(body="x" * 400 + "\n" + GTUBE + "\n").replace(b"MIME-Version", FORGED)
    deletes = [(1, b"X-Spam-Flag", b""), (1, b"X-Spam-Status", b"")]
    replies = _one_off_client(MilterConfig(port=0, max_size=300), raw=raw)  # too big
    assert sorted(_changes(replies)) == deletes and replies[-1] == (b"c", b"")
    st = ServerThread(MilterServer(Engine(checks=[GtubeCheck()]), MilterConfig(port=0)))

    async def boom(*a, **k):  # type: ignore[no-untyped-def]
        raise RuntimeError("engine down")

    st.server.scanner.scan = boom
    try:
        c = client(st)
        replies = c.message(raw)  # scan failed, fail_open
        assert sorted(_changes(replies)) == deletes and replies[-1] == (b"c", b"")
        c.quit()
    finally:
        st.stop()
    # without CHGHDRS there is nothing to send but the verdict
    assert _one_off_client(MilterConfig(port=0, max_size=300), raw=raw, actions=0x01) == [(b"c", b"")]



def test_a_message_with_more_fields_to_change_than_the_mta_can_take_is_refused_for_now():
    """Every forged X-Spam-* field is one SMFIR_CHGHEADER; Postfix's cleanup fails a message past
    10,000 such changes (see the Postfix test below).  Up to MAX_HEADER_CHANGES fields named like
    ours, Authentication-Results or Subject, they are deleted; past it the message gets 4xx."""
    from antispam.servers.milter import MAX_HEADER_CHANGES

    def raw(n: int) -> bytes:
        return ham(subject="many forged").replace(b"MIME-Version", b"X-Spam-Flag: NO\r\n" * (n - 1) + b"MIME-Version")

    at_most = _one_off_client(MilterConfig(port=0), raw=raw(MAX_HEADER_CHANGES))  # and the Subject
    assert len(_changes(at_most)) == MAX_HEADER_CHANGES - 1 and at_most[-1] == (b"c", b"")
    past = _one_off_client(MilterConfig(port=0), raw=raw(MAX_HEADER_CHANGES + 1))
    assert past == [(b"y", b"451 4.7.1 Please try again later\0")]
    # an MTA that lets us change nothing is asked for nothing: nothing to refuse
    assert _one_off_client(MilterConfig(port=0), raw=raw(MAX_HEADER_CHANGES + 1), actions=0x01)[-1] == (b"c", b"")


# --------------------------------------------------------------------------- the same, through Postfix

needs_postfix = pytest.mark.skipif(pf.available() is not None and not os.environ.get("CI"), reason=pf.available() or "")


@pytest.fixture(scope="module")
def pf_milter():
    """A private Postfix whose smtpd_milters is a milter rewriting the Subject of spam, and its sink."""
    probe = EnvelopeProbe()
    port = free_port()
    st = ServerThread(MilterServer(Engine(Config().merged(REWRITE), checks=[GtubeCheck(), probe]), MilterConfig(port=port)))
    sink = Sink()
    p = pf.Postfix(relay_port=sink.port, main={
        "smtpd_milters": f"inet:127.0.0.1:{port}", "milter_protocol": "6", "milter_default_action": "accept",
        "milter_connect_timeout": "3s", "milter_command_timeout": "3s", "milter_content_timeout": "3s"})
    try:
        yield p, sink, st, probe
    finally:
        p.stop()
        sink.down()
        st.stop()


def _head(raw: bytes) -> list[bytes]:
    return raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


@needs_postfix
@pytest.mark.parametrize("subject", [
    "=?utf-8?q?pf-inj=0D=0AX-Spam-Flag:_NO?=",
    "=?utf-8?q?pf-nul=00x?=",
    "=?utf-8?b?w6l0w6k=?= pf-enc",
    "=?utf-7?q?+2D0-?= pf-surrogate",
])
def test_postfix_delivers_the_subject_tagged_as_sent(pf_milter, subject):
    p, sink, _, _ = pf_milter
    tag = subject.split("pf-")[1][:3]
    r = pf.swaks(p.port, ham(subject=subject, body=f"{GTUBE}\nmark-{tag}\n"))
    assert r.returncode == 0, r.stdout[-1500:]
    (got,) = sink.wait_for(marker(f"mark-{tag}"))
    head = _head(got[2])
    assert [h for h in head if h.lower().startswith(b"subject")] == [b"Subject: ***SPAM*** " + subject.encode()]
    assert [h for h in head if h.startswith(b"X-Spam-Flag")] == [b"X-Spam-Flag: YES"]
    assert not [line for line in p.log().splitlines() if "warning" in line and "milter" in line]


@needs_postfix
def test_postfix_without_leadspc_gets_values_without_their_space(pf_milter):
    """milter_protocol 4 offers no SMFIP_HDR_LEADSPC: Postfix drops the space after the colon and
    adds one before each value we send, so ours must not start with one."""
    p, sink, _, probe = pf_milter
    try:
        p.set(milter_protocol="4")
        r = pf.swaks(p.port, ham(subject="=?utf-8?q?v4=C3=A9?= tagged", body=f"{GTUBE}\nmark-v4\n"))
        assert r.returncode == 0, r.stdout[-1500:]
        (got,) = sink.wait_for(marker("mark-v4"))
        head = _head(got[2])
        assert [h for h in head if h.startswith(b"Subject")] == [b"Subject: ***SPAM*** =?utf-8?q?v4=C3=A9?= tagged"]
        assert [h for h in head if h.startswith(b"X-Spam-Flag")] == [b"X-Spam-Flag: YES"]
        assert b"\r\nSubject: =?utf-8?q?v4=C3=A9?= tagged\r\n" in probe.seen[-1][1]
    finally:
        p.set(milter_protocol="6")


@needs_postfix
def test_postfix_reply_text_keeps_percent_signs():
    port = free_port()
    text = "550-5.7.1 Rejected: 100% sure\n550 5.7.1 see http://x.test/a%20b"
    st = ServerThread(MilterServer(Engine(checks=[GtubeCheck()]), MilterConfig(port=port, reject_reply=text)))
    sink = Sink()
    p = pf.Postfix(relay_port=sink.port, main={"smtpd_milters": f"inet:127.0.0.1:{port}", "milter_protocol": "6",
                                               "milter_default_action": "accept"})
    try:
        r = pf.swaks(p.port, spam())
        lines = r.stdout.splitlines()
        assert r.returncode != 0 and all(f"<** {line}" in lines for line in text.split("\n")), r.stdout[-1500:]
    finally:
        p.stop()
        sink.down()
        st.stop()


@needs_postfix
def test_postfix_passes_headers_verbatim_so_dkim_simple_verifies(pf_milter):
    """``Subject:x`` (no space after the colon) signed with c=simple/simple: through Postfix the scan
    must see the same bytes (SMFIP_HDR_LEADSPC) for the signature to verify."""
    import dkim

    from authkeys import AUTH_FACTORIES, rsa_key
    from dnsserver import DNSServer

    from antispam.engine import _load_factory

    p, sink, _, _ = pf_milter
    with DNSServer({"rsa._domainkey.example.org": [("TXT", rsa_key(2048).record)]}) as dns:
        cfg = Config().merged({"dns": {"nameservers": [dns.host], "port": dns.port, "timeout": 1, "attempts": 1},
                               "auth": {"spf": False, "dmarc": False}, "engine": {"authserv_id": "mx.rcpt.test"}})
        probe = EnvelopeProbe()
        checks = [c for c in (_load_factory(f)(cfg, None) for f in AUTH_FACTORIES) if c is not None] + [probe]
        port = free_port()
        st = ServerThread(MilterServer(Engine(cfg, checks), MilterConfig(port=port)))
        try:
            p.set(smtpd_milters=f"inet:127.0.0.1:{port}")
            for n, sep in enumerate(["", "\t", " "]):
                msg = (f"From: Alice <alice@example.org>\r\nTo: bo@rcpt.test\r\nSubject:{sep}Figures dk-{n}\r\n"
                       "Date: Tue, 24 Nov 2026 10:00:00 +0000\r\nMessage-ID: <t1@example.org>\r\n\r\nSee you at ten.\r\n").encode()
                raw = dkim.sign(msg, b"rsa", b"example.org", rsa_key().private, canonicalize=(b"simple", b"simple"),
                                include_headers=[b"from", b"to", b"subject", b"date"]) + msg
                assert pf.swaks(p.port, raw).returncode == 0
                (got,) = sink.wait_for(marker(f"dk-{n}"))
                assert f"Subject:{sep}Figures dk-{n}\r\n".encode() in probe.seen[-1][1]
                (status,) = [h for h in _head(got[2]) if h.startswith(b"X-Spam-Status")]
                assert b"R_DKIM_ALLOW" in status, status
        finally:
            p.set(smtpd_milters=f"inet:127.0.0.1:{pf_milter[2].port}")
            st.stop()


@needs_postfix
def test_postfix_local_submission_to_recipients_of_two_profiles_is_delivered():
    """Mail from sendmail(1) goes through non_smtpd_milters, whose RCPT Postfix only emulates (port 0).
    A 452 there is "milter configuration error: can't reject recipient in non-smtpd(8) submission":
    the message stayed in Postfix's queue, undelivered to anyone.  Both recipients must get it."""
    import subprocess

    cfg = Config().merged({"profiles": {"lenient": {"actions": {"reject": False, "add header": False}}},
                           "recipients": {"@lenient.rcpt.test": "lenient"}})
    port = free_port()
    st = ServerThread(MilterServer(Engine(cfg, checks=[GtubeCheck()]), MilterConfig(port=port)))
    sink = Sink()
    p = pf.Postfix(relay_port=sink.port, main={
        "smtpd_milters": f"inet:127.0.0.1:{port}", "non_smtpd_milters": "$smtpd_milters", "milter_protocol": "6",
        "milter_default_action": "tempfail", "relay_domains": "rcpt.test, lenient.rcpt.test",
        "transport_maps": f"inline:{{rcpt.test=smtp:[127.0.0.1]:{sink.port}, lenient.rcpt.test=smtp:[127.0.0.1]:{sink.port}}}"})
    try:
        rcpts = ["bo@rcpt.test", "cy@lenient.rcpt.test"]
        r = subprocess.run(["sendmail", "-C", str(p.conf), "-f", "ana@sender.test", *rcpts],
                           input=ham(subject="local two profiles"), capture_output=True, timeout=30)
        assert r.returncode == 0, r.stderr
        got = sink.wait_for(marker("local two profiles"))
        assert sorted(rcpt for m in got for rcpt in m[1]) == rcpts, p.log()[-2000:]
        assert all(b"X-Spam-Flag: NO" in m[2] for m in got)
        assert "milter configuration error" not in p.log()
        # an SMTP client is still told to send the other recipient separately
        with smtplib.SMTP("127.0.0.1", p.port, timeout=30) as s:
            s.ehlo("client.sender.test")
            s.mail("ana@sender.test")
            assert s.rcpt(rcpts[0])[0] == 250
            code, text = s.rcpt(rcpts[1])
            assert code == 452 and text.startswith(b"4.5.3"), (code, text)
    finally:
        p.stop()
        sink.down()
        st.stop()


@needs_postfix
def test_postfix_survives_a_message_with_thousands_of_forged_fields(pf_milter):
    """16,000 forged ``X-Spam-Flag: NO`` fields (270 KB): deleting each made Postfix's cleanup follow
    more than 10,000 pointer records of one queue file ("too many reverse jump records"): the
    sender got "451 4.3.0 Error: queue file write error", the cleanup process aborted and the master
    throttled the cleanup service for all mail.  Now the milter answers 4xx itself."""
    p, sink, _, _ = pf_milter
    raw = ham(subject="forged flood").replace(b"MIME-Version", b"X-Spam-Flag: NO\r\n" * 16000 + b"MIME-Version")
    r = pf.swaks(p.port, raw)
    assert r.returncode != 0 and "451 4.7.1 Please try again later" in r.stdout, r.stdout[-1500:]
    log = p.log()
    assert "reverse jump" not in log and "killed by signal" not in log and "throttling" not in log, log[-2000:]
    assert sink.wait_for(marker("forged flood"), timeout=0.5) == []
