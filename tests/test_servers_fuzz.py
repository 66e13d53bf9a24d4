"""Regressions found by fuzzing the four servers over loopback sockets (mutated transcripts, cut-off
and stalled connections, floods of connections): each test is one defect's input, minimised."""

from __future__ import annotations

import logging
import socket
import struct
import time

import pytest

from antispam import Engine
from antispam.builtin import GtubeCheck
from antispam.config import MilterConfig, SmtpConfig, SpamdConfig
from antispam.servers.milter import MilterServer
from antispam.servers.smtp import SmtpFilterServer
from antispam.servers.spamd import SpamdServer

from server_helpers import EVENT_LOOPS, MemoryLearner, ServerThread, Sink, ham, smtp_replies


@pytest.fixture()
def sink():
    s = Sink()
    yield s
    s.down()


def _filter(sink, event_loop: str = "auto", **settings) -> ServerThread:
    return ServerThread(SmtpFilterServer(Engine(checks=[GtubeCheck()]),
                                         SmtpConfig(port=0, next_hop=f"127.0.0.1:{sink.port}", next_hop_timeout=5.0,
                                                    **settings)), event_loop=event_loop)


def test_smtp_address_the_parser_chokes_on_is_malformed_not_our_failure(sink, caplog):
    """``RCPT TO:<a@`` made the e-mail package's address parser raise IndexError, which aiosmtpd
    does not catch: the client got ``451 4.3.0`` (retry later, for ever) and the log an internal
    error.  It is a malformed address, answered as aiosmtpd answers one (553), and the session
    goes on."""
    f = _filter(sink)
    try:
        with caplog.at_level(logging.INFO), socket.create_connection(("127.0.0.1", f.port), timeout=10) as c:
            fh = c.makefile("rb")
            c.sendall(b"EHLO client.test\r\n")
            smtp_replies(fh, 2)  # greeting, EHLO
            for line in (b"MAIL FROM:<a@", b"MAIL FROM:<ana@sender.test>", b"RCPT TO:<a@", b"VRFY <a@"):
                c.sendall(line + b"\r\n")
                (reply,) = smtp_replies(fh, 1)
                if line == b"MAIL FROM:<ana@sender.test>":
                    assert reply.startswith(b"250"), reply
                else:
                    assert reply[:1] == b"5" and not reply.startswith(b"500"), (line, reply)
            c.sendall(b"RCPT TO:<bo@rcpt.test>\r\nDATA\r\n" + ham(msgid="fuzz-addr") + b".\r\nQUIT\r\n")
            assert smtp_replies(fh, 4)[:3] == [b"250 2.1.5 Ok", b"354 End data with <CR><LF>.<CR><LF>",
                                               b"250 2.0.0 stored"]
    finally:
        f.stop()
    assert not [r for r in caplog.records if r.exc_info or "internal error" in r.getMessage()]


@pytest.mark.parametrize("event_loop", EVENT_LOOPS)
def test_smtp_burst_of_connections_serves_max_connections(sink, event_loop):
    """Connections that arrive together were all connected before the first was admitted, and
    each counted the others: the whole burst was refused 421, the first max_connections too."""
    f = _filter(sink, event_loop, max_connections=4)
    socks = []
    try:
        # the server's loop held up while they connect: the kernel queues all twelve, and the loop
        # then takes them in one go, as when many clients connect at the same moment
        f.loop.call_soon_threadsafe(time.sleep, 0.5)
        socks = [socket.create_connection(("127.0.0.1", f.port), timeout=10) for _ in range(12)]
        greetings = [s.makefile("rb").readline() for s in socks]
        assert sum(g.startswith(b"220") for g in greetings) == 4, greetings
        assert sum(g.startswith(b"421") for g in greetings) == 8, greetings
    finally:
        for s in socks:
            s.close()
        f.stop()


def _pk(cmd: bytes, data: bytes = b"") -> bytes:
    return struct.pack(">I", len(data) + 1) + cmd + data


def _milter_message(port: int, packets: list[bytes]) -> list[bytes]:
    """Negotiate (add and change headers, no no-reply flags), send ``packets`` and end-of-message;
    the commands of the replies to end-of-message."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        c.sendall(_pk(b"O", struct.pack(">III", 6, 0x11, 0x100000 | 0x80 | 0x40000 | 0x80000 | 0x4000 | 0x8000)))
        fh = c.makefile("rb")

        def recv() -> bytes:
            (n,) = struct.unpack(">I", fh.read(4))
            return fh.read(n)

        assert recv()[:1] == b"O"
        c.sendall(b"".join(packets) + _pk(b"N") + _pk(b"B", b"hello\r\n") + _pk(b"E"))
        out = []
        while True:
            r = recv()
            out.append(r[:1] + (r[5:].split(b"\0")[0] if r[:1] == b"m" else b""))
            if r[:1] in (b"a", b"c", b"r", b"t", b"y"):
                return out


def test_milter_headers_and_recipients_count_against_max_size():
    """Only body chunks counted against max_size: header (and recipient) packets were kept without
    bound and scanned (300 MB of headers grew the server by 1.1 GB).  Past max_size the message is
    accepted unscanned, as a big body is, and a forged X-Spam-Flag after the limit is still deleted."""
    st = ServerThread(MilterServer(Engine(checks=[GtubeCheck()]), MilterConfig(port=0, max_size=4096)))
    try:
        small = [_pk(b"M", b"<a@b.test>\0"), _pk(b"R", b"<c@d.test>\0"), _pk(b"L", b"Subject\0 hi\0")]
        assert b"h" in _milter_message(st.port, small)  # scanned: our headers added
        big = small + [_pk(b"L", b"X-Filler\0 " + b"v" * 1000 + b"\0")] * 8 + [_pk(b"L", b"X-Spam-Flag\0 NO\0")]
        assert _milter_message(st.port, big) == [b"mX-Spam-Flag", b"c"]  # unscanned, forged field gone
        many = [_pk(b"M", b"<a@b.test>\0")] + [_pk(b"R", b"<r%d@%s.test>\0" % (i, b"d" * 200)) for i in range(40)]
        assert _milter_message(st.port, many) == [b"c"]
    finally:
        st.stop()


def test_milter_keeps_a_bounded_amount_of_headers_past_max_size(monkeypatch):
    """Past max_size a header named like ours was kept (to delete it) however many came: 10 MB of
    ``X-Spam-A:`` a tuple each.  Up to LATE_HEADERS_MAX bytes of them are deleted as before; a message
    with more is refused for now (4xx), since it could not leave without some of them."""
    from antispam.servers import milter as milter_module

    monkeypatch.setattr(milter_module, "LATE_HEADERS_MAX", 200)
    st = ServerThread(MilterServer(Engine(checks=[GtubeCheck()]), MilterConfig(port=0, max_size=4096)))
    try:
        big = [_pk(b"M", b"<a@b.test>\0"), _pk(b"R", b"<c@d.test>\0")] + [_pk(b"L", b"X-Filler\0 " + b"v" * 1000 + b"\0")] * 5
        few = big + [_pk(b"L", b"X-Spam-Flag\0 NO\0")] * 10  # 110 bytes of names
        assert _milter_message(st.port, few) == [b"mX-Spam-Flag"] * 10 + [b"c"]
        many = big + [_pk(b"L", b"X-Spam-Flag\0 NO\0")] * 10 + [_pk(b"L", b"Authentication-Results\0 x" + b"y" * 100 + b"\0")]
        assert _milter_message(st.port, many) == [b"y"]
    finally:
        st.stop()


class _SlowLearner(MemoryLearner):
    """Learns after a pause (in the thread learning runs in), so the client can go meanwhile."""

    def learn(self, msg, spam, source="api"):  # type: ignore[no-untyped-def]
        time.sleep(0.3)
        return super().learn(msg, spam, source)


@pytest.mark.parametrize("event_loop", EVENT_LOOPS)
def test_spamd_client_reset_while_its_request_runs_is_a_lost_connection(event_loop, caplog):
    """A client that resets the connection (SO_LINGER 0) before its answer: on uvloop the answer's
    write raised RuntimeError, logged as "handler failed" with a traceback."""
    st = ServerThread(SpamdServer(Engine(checks=[_SlowLearner()]), SpamdConfig(port=0)), event_loop=event_loop)
    try:
        raw = ham(msgid="fuzz-reset")
        with caplog.at_level(logging.INFO):
            c = socket.create_connection(("127.0.0.1", st.port), timeout=10)
            c.sendall(b"TELL SPAMC/1.5\r\nContent-length: %d\r\nMessage-class: spam\r\nSet: local\r\n\r\n" % len(raw) + raw)
            time.sleep(0.1)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()
            time.sleep(0.6)
            with socket.create_connection(("127.0.0.1", st.port), timeout=10) as c:
                c.sendall(b"PING SPAMC/1.5\r\n\r\n")
                assert c.recv(100).startswith(b"SPAMD/1.5 0 PONG")
    finally:
        st.stop()
    assert not [r for r in caplog.records if r.exc_info or "handler failed" in r.getMessage()]


@pytest.mark.parametrize("closing", [b"BDAT x\r\n", b"NOPE\r\n" * 5])
def test_smtp_message_after_we_closed_the_connection_is_not_relayed(sink, closing):
    """After a reply that closes the connection (501 for a BDAT size we cannot read, aiosmtpd's
    502 after too many unknown commands) aiosmtpd went on with the commands already buffered: a
    message among them reached the next hop, though its client never got a 250 (and sends it again)."""
    f = _filter(sink)
    try:
        with socket.create_connection(("127.0.0.1", f.port), timeout=10) as c:
            raw = ham(msgid="fuzz-after-close")
            c.sendall(b"EHLO client.test\r\nMAIL FROM:<ana@sender.test>\r\nRCPT TO:<bo@rcpt.test>\r\n" + closing
                      + b"BDAT %d LAST\r\n" % len(raw) + raw + b"QUIT\r\n")
            out = b""
            while chunk := c.recv(65536):
                out += chunk
        assert b"stored" not in out
        time.sleep(0.5)
        assert not sink.messages
    finally:
        f.stop()
