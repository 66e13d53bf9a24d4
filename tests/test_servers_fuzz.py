"""Regressions found by fuzzing the four servers over loopback sockets (mutated transcripts, cut-off
and stalled connections, floods of connections): each test is one defect's input, minimised."""

from __future__ import annotations

import logging
import socket
import time

import pytest

from antispam import Engine
from antispam.builtin import GtubeCheck
from antispam.config import SmtpConfig
from antispam.servers.smtp import SmtpFilterServer

from server_helpers import EVENT_LOOPS, ServerThread, Sink, ham, smtp_replies


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
