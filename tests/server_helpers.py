"""Helpers for the MTA-integration tests: test messages, and a server running in its own thread."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from typing import Any

import pytest

from antispam import Check, Hit, SymbolDef

GTUBE_LINE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


def message(subject: str = "Lunch on Friday", body: str = "Shall we meet at noon by the fountain?\n",
            sender: str = "ana@sender.test", to: str = "bo@rcpt.test", eol: str = "\r\n", msgid: str = "") -> bytes:
    """A small plain message; GTUBE in ``body`` makes it spam whatever other checks exist."""
    lines = [f"From: Ana <{sender}>", f"To: Bo <{to}>", f"Subject: {subject}",
             "Date: Tue, 10 Nov 2026 09:13:55 +0100", f"Message-ID: <{msgid or hashlib.sha1((subject + body).encode()).hexdigest()[:16]}@sender.test>",
             "MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8", ""]
    lines += body.splitlines()
    return (eol.join(lines) + eol).encode()


def ham(**kw: Any) -> bytes:
    return message(**kw)


def spam(**kw: Any) -> bytes:
    kw.setdefault("subject", "You have won")
    kw.setdefault("body", f"Claim your prize now.\n{GTUBE_LINE}\n")
    return message(**kw)


class MemoryLearner(Check):
    """A real learning check kept in memory: a message learned as spam scores LEARNED_SPAM.

    It lets TELL tests see learning take effect without depending on the classifier.
    """

    name = "memory_learner"
    symbols = (SymbolDef("LEARNED_SPAM", 20.0, "Message was taught as spam", "test"),
               SymbolDef("LEARNED_HAM", -20.0, "Message was taught as ham", "test"))

    def __init__(self) -> None:
        self.labels: dict[str, bool] = {}
        self.sources: list[str] = []

    @staticmethod
    def _key(msg: Any) -> str:
        return hashlib.sha256(msg.raw).hexdigest()

    def run(self, msg, ctx):  # type: ignore[no-untyped-def]
        label = self.labels.get(self._key(msg))
        if label is None:
            return []
        return [Hit("LEARNED_SPAM" if label else "LEARNED_HAM", 1.0)]

    def learn(self, msg, spam, source="api"):  # type: ignore[no-untyped-def]
        key = self._key(msg)
        if self.labels.get(key) is spam:
            return False
        self.labels[key] = spam
        self.sources.append(source)
        return True

    def unlearn(self, msg):  # type: ignore[no-untyped-def]
        return self.labels.pop(self._key(msg), None) is not None


class EnvelopeProbe(Check):
    """Records the envelope and bytes each scan saw, so tests can check what a server passed on."""

    name = "envelope_probe"
    symbols = (SymbolDef("ENVELOPE_SEEN", 0.0, "test probe", "test"),)

    def __init__(self) -> None:
        self.seen: list = []

    def run(self, msg, ctx):  # type: ignore[no-untyped-def]
        self.seen.append((ctx.envelope, msg.raw))
        return [Hit("ENVELOPE_SEEN", 1.0)]


def _uvloop_installed() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


#: the event loops a server test can run on: asyncio's own always, uvloop when installed (and on CI,
#: where the test extra installs it, always: a missing uvloop there fails rather than skips)
EVENT_LOOPS = ["asyncio", pytest.param("uvloop", marks=pytest.mark.skipif(
    not _uvloop_installed() and not os.environ.get("CI"), reason="uvloop is not installed"))]


class ServerThread:
    """Runs an antispam server (any ``servers.common.Server``) on an event loop in a thread."""

    def __init__(self, server: Any, event_loop: str = "auto"):
        from antispam.servers.common import event_loop_factory

        self.server = server
        # the loop ``antispam serve`` would run (uvloop when installed), unless a test names one
        self.loop = event_loop_factory(event_loop)()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(server.start())
        self.port = server.port

    def call(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        try:
            self.call(self.server.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()

    def stop_if_running(self) -> None:
        """Stop, unless a test already stopped the server (to see the MTA cope with it down)."""
        if self.loop.is_running():
            self.stop()


class Sink:
    """An aiosmtpd server that keeps every message it accepts: the next hop in end-to-end tests.

    ``refuse`` makes it answer every DATA with ``451``; ``refuse_rcpts`` maps recipient addresses
    to the reply their RCPT TO gets instead of 250, ``refuse_senders`` sender addresses to their
    MAIL FROM's; ``down()`` / ``up()`` stop and restart it on the same port.  With ``pipelining``
    it announces PIPELINING (aiosmtpd reads commands from a buffer, so it serves pipelined
    commands in order; it just does not say so), and ``mail_grouped`` records for each MAIL
    whether the command after it had arrived with it.  With ``chunking`` it also announces
    CHUNKING and takes BDAT (it then runs on the filter's own ``FastSMTP``, which implements BDAT
    where aiosmtpd does not), and ``bdat_grouped`` records for each MAIL whether a BDAT had come
    with it: the filter's whole transaction in one write.  With ``dsn`` it announces DSN and takes
    its parameters (RFC 3461), and ``commands`` keeps every MAIL and RCPT line as it came.
    ``without`` names EHLO keywords it does not announce (``8BITMIME``, ``SMTPUTF8``): a next hop
    lacking them, which still takes what comes.
    """

    def __init__(self, port: int | None = None, pipelining: bool = False, chunking: bool = False,
                 dsn: bool = False, without: tuple[str, ...] = ()):
        from servers import free_port

        self.port = port or free_port()
        self.pipelining = pipelining or chunking
        self.chunking = chunking
        self.dsn = dsn
        self.without = without
        self.commands: list[str] = []
        self.bdat_grouped: list[bool] = []
        #: the next this many MAILs drop their connection unanswered (a next hop that closed a kept
        #: connection just as the filter wrote to it)
        self.hang_up_at_mail = 0
        self.messages: list[tuple[str, tuple[str, ...], bytes]] = []
        self.refuse = False
        self.refuse_rcpts: dict[str, str] = {}
        self.refuse_senders: dict[str, str] = {}
        self.mail_grouped: list[bool] = []
        #: for each MAIL, whether it asked for SMTPUTF8
        self.mail_utf8: list[bool] = []
        #: seconds handle_DATA waits before storing and answering (a slow next hop)
        self.delay = 0.0
        #: the sink's reply to a message it stores
        self.data_reply = b"250 2.0.0 stored"
        self._lock = threading.Lock()
        self.controller: Any = None
        self.up()

    def up(self) -> None:
        from aiosmtpd.controller import Controller

        sink = self

        class Handler:
            async def handle_EHLO(self, server, session, envelope, hostname, responses):  # type: ignore[no-untyped-def]
                session.host_name = hostname
                if sink.pipelining:
                    responses.insert(-1, "250-PIPELINING")
                if sink.chunking:
                    responses.insert(-1, "250-CHUNKING")
                if sink.dsn:
                    responses.insert(-1, "250-DSN")
                return [r for r in responses if r[4:] not in sink.without]

            async def handle_MAIL(self, server, session, envelope, address, mail_options):  # type: ignore[no-untyped-def]
                sink.mail_grouped.append(b"\n" in server._reader._buffer)
                sink.mail_utf8.append(envelope.smtp_utf8)
                sink.bdat_grouped.append(b"\nBDAT " in server._reader._buffer)
                if sink.hang_up_at_mail:
                    sink.hang_up_at_mail -= 1
                    server.transport.abort()
                    return "421 4.3.2 never sent"
                if address in sink.refuse_senders:
                    return sink.refuse_senders[address]
                envelope.mail_from = address
                envelope.mail_options.extend(mail_options)
                return "250 2.1.0 Ok"

            async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # type: ignore[no-untyped-def]
                if address in sink.refuse_rcpts:
                    return sink.refuse_rcpts[address]
                envelope.rcpt_tos.append(address)
                return "250 2.1.5 Ok"

            async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
                if sink.delay:
                    await asyncio.sleep(sink.delay)
                if sink.refuse:
                    return "451 4.3.0 sink refusing on purpose"
                with sink._lock:
                    sink.messages.append((envelope.mail_from, tuple(envelope.rcpt_tos), envelope.original_content))
                return sink.data_reply.decode()

        from aiosmtpd.smtp import SMTP

        from antispam.servers.smtp import FastSMTP

        class LongLines(FastSMTP if self.chunking else SMTP):  # type: ignore[misc]
            line_length_limit = 64 * 1024  # like Postfix's smtpd, which takes long lines

            async def smtp_MAIL(self, arg):  # type: ignore[no-untyped-def]
                sink.commands.append(f"MAIL {arg}")
                await super().smtp_MAIL(arg)

            async def smtp_RCPT(self, arg):  # type: ignore[no-untyped-def]
                sink.commands.append(f"RCPT {arg}")
                await super().smtp_RCPT(arg)

            def _getparams(self, params):  # type: ignore[no-untyped-def]
                found = super()._getparams(params)
                if sink.dsn and found is not None:
                    for key in ("RET", "ENVID", "NOTIFY", "ORCPT"):
                        found.pop(key, None)
                return found

        class SinkController(Controller):
            def factory(self):  # type: ignore[no-untyped-def]
                return LongLines(self.handler, hostname="sink.test", decode_data=False)

        self.controller = SinkController(Handler(), hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def down(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def wait_for(self, predicate: Any, timeout: float = 20.0) -> list[tuple[str, tuple[str, ...], bytes]]:
        """Messages matching ``predicate(raw)``, waiting up to ``timeout`` for at least one."""
        import time

        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                found = [m for m in self.messages if predicate(m[2])]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.1)


def smtp_replies(fh, n: int) -> list[bytes]:
    """The next ``n`` SMTP replies (the last line of each), read from a socket file."""
    out = []
    for _ in range(n):
        while (line := fh.readline())[3:4] == b"-":
            pass
        out.append(line.rstrip(b"\r\n"))
    return out


def marker(tag: str):
    """A predicate for :meth:`Sink.wait_for`: the message carries ``tag``."""
    return lambda raw: tag.encode() in raw
