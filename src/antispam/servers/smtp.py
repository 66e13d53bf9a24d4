"""SMTP content filter on aiosmtpd: ``antispam serve smtp``.

Two modes, one code path:

* ``after-queue`` (Postfix ``content_filter``): Postfix has already queued the
  message and hands it to us; we scan, add the X-Spam-* headers, and re-inject
  it into ``next_hop`` (Postfix's second smtpd).  Spam is tagged, never
  rejected: a rejection here would make Postfix bounce to a sender address
  that spam forges (backscatter).  Sieve or procmail act on the headers.
* ``before-queue`` (Postfix ``smtpd_proxy_filter``): the sending client is still
  connected, so a ``reject`` verdict is answered 5xx at end of DATA and
  ``soft reject``/``greylist`` 4xx, and only ham and tagged spam go on.

No message is ever lost or duplicated, recipient by recipient.  The envelope
is passed through in real time: our MAIL FROM opens a transaction at the next
hop, and each RCPT TO is answered with the next hop's own reply to that
recipient.  So a recipient the next hop refuses (5xx: unknown user; 4xx: over
quota, try later) is refused to our client at RCPT time, and the client
bounces or retries that recipient alone, while the others go on.  At end of
DATA every recipient we accepted is one the next hop accepted, so its single
reply to DATA is the right answer for all of them: we answer ``250`` only after
the next hop answered ``250``.  If the next hop is down, slow past
``next_hop_timeout`` (``next_hop_data_timeout`` for its reply to the message,
10 minutes less one as RFC 5321 wants: giving up there makes a second copy), or
fails mid-transaction, the client gets 4xx and keeps the message (Postfix
leaves it in its queue and retries).  If this process
dies mid-transaction the client never saw 250 and retries, and the next hop
drops the transaction it never saw end.

One case is not mirrored step by step: a client that pipelines MAIL, a single
RCPT and DATA (Postfix's SMTP client does, for a message to one recipient) to
a next hop that announces PIPELINING and CHUNKING.  Its MAIL and RCPT are
answered at once and sent to the next hop with the message, all in one write,
so the next hop's refusal of the sender or the recipient becomes our reply at
the end of the data.  With one recipient that is the same outcome (a 5xx
bounces it, a 4xx keeps it queued), and it saves a round trip and two writes.

Postfix's ``XFORWARD`` is accepted (we announce it in EHLO), so checks see the
original client's address, name and HELO rather than Postfix's loopback
connection; and it is passed on to a next hop that announces it, so the
re-injecting Postfix logs the original client too.
"""

from __future__ import annotations

import asyncio
import re
import socket
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, Envelope as SmtpEnvelope, Session as SmtpSession, syntax

from .. import fastscore
from ..config import SMTP_MODES
from ..message import Envelope
from .common import Server, _has_input, rewrite_headers, split_headers, without_ours

XFORWARD_ATTRS = ("NAME", "ADDR", "PORT", "PROTO", "HELO", "IDENT", "SOURCE")
#: the DSN parameters (RFC 3461) of RCPT, passed on as sent to a next hop that announces DSN
_DSN_RCPT_PARAMS = ("NOTIFY", "ORCPT")
#: the parameters taken beyond aiosmtpd's (BODY, SMTPUTF8, SIZE), which it refuses with 555: the
#: DSN ones, and MAIL's AUTH (RFC 4954), which Postfix's before-queue proxy hands on as its client
#: sent it when SASL is on, authenticated or not (see :meth:`_FilterSMTP._getparams`)
_TAKEN_PARAMS = {"MAIL": ("RET", "ENVID", "AUTH"), "RCPT": _DSN_RCPT_PARAMS}
#: the MAIL parameters passed on, as the client wrote them, to a next hop announcing the extension
#: that defines each (RFC 6152, RFC 6531, RFC 3461); SIZE (RFC 1870) is not: the message grows by
#: our fields, past what the client declared, and the next hop's limit holds at the end of the
#: data all the same.  AUTH (RFC 4954) is not: we authenticated nobody, so the identity is one we
#: cannot vouch for, and RFC 4954 section 5 has it treated as ``AUTH=<>``, which is no parameter.
_MAIL_PASSED = {"BODY": "8BITMIME", "SMTPUTF8": "SMTPUTF8", "RET": "DSN", "ENVID": "DSN"}
#: an address aiosmtpd's parser would return unchanged: ``<dot-atom@dot-atom>`` and the parameters
_PLAIN_PATH = re.compile(r"\s*<((?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
                         r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>(.*)", re.S)
#: XFORWARD values that say nothing (None: not sent), where the connection's own are taken
_UNAVAILABLE: frozenset[str | None] = frozenset({None, "[UNAVAILABLE]", "[TEMPUNAVAIL]", ""})
#: handle_MAIL's answer when the next hop's reply comes with the following RCPT's
_MAIL_DEFERRED = object()
#: :meth:`_FilterSMTP.handle_exception`'s answer at the end of the client's input: no reply
_SESSION_ENDED = "\0session ended"
#: aiosmtpd's reply to a RCPT without an accepted MAIL
_NEED_MAIL = "503 Error: need MAIL command"
#: our reply when something of ours failed: temporary (RFC 3463 4.3.0, "other or undefined mail
#: system status"), so that the client keeps the message and tries again
_INTERNAL_ERROR = "451 4.3.0 Internal error, try again later"
#: our reply to 8-bit data declared ``BODY=8BITMIME`` for a next hop without 8BITMIME (RFC 6152
#: forbids sending it there, and we do not convert it): temporary, so the message stays with the
#: client, which at its next EHLO is not offered 8BITMIME and converts it itself (Postfix does), or
#: until the next hop is given 8BITMIME back; RFC 3463 X.6.3, conversion required but not supported
_NO_8BITMIME = "451 4.6.3 The next hop does not take 8-bit data (no 8BITMIME); try again later"
#: our reply to an address or a header that needs SMTPUTF8 (RFC 6531 section 3.4) for a next hop
#: without it, when we had not offered it: for good, as Postfix's own SMTP client bounces it (5.6.7)
_NEEDS_UTF8 = "5.6.7 SMTPUTF8 is required, but the next hop does not take it"


def _one_line(text: Any) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return " ".join(str(text).split())


#: commands RFC 2920 lets stand anywhere in a pipelined group: their replies may wait for the next
_GROUPABLE = frozenset({"MAIL", "RCPT", "RSET"})


class _Deadline:
    """A deadline pushed back often (at every command; at every reply awaited), kept with one timer.

    Cancelling a timer and arming another at every push costs the event loop a heap operation
    each time; here the timer stays while the deadline only moves later, and when it fires early
    it is armed again for what is left: the same moment of expiry, about one timer per timeout
    instead of one per push.  ``expire`` is called once, when the deadline has passed.  Its
    ``cancel`` is a timer handle's, so aiosmtpd can hold one as its ``_timeout_handle``.
    """

    __slots__ = ("loop", "expire", "when", "_handle")

    def __init__(self, loop: asyncio.AbstractEventLoop, expire: Any):
        self.loop = loop
        self.expire = expire
        #: the deadline (loop time), None when nothing is awaited
        self.when: float | None = None
        self._handle: asyncio.TimerHandle | None = None

    def push(self, when: float | None) -> None:
        """Expire at ``when``; None: nothing to wait for until the next push."""
        self.when = when
        handle = self._handle
        if when is not None and (handle is None or handle.when() > when):
            if handle is not None:
                handle.cancel()
            self._handle = self.loop.call_at(when, self._fire)

    def cancel(self) -> None:
        self.when = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        if self.when is None:  # nothing awaited: the next push arms the timer again
            return
        if self.loop.time() < self.when:
            self._handle = self.loop.call_at(self.when, self._fire)
        else:
            self.when = None
            self.expire()


class FastSMTP(SMTP):
    """aiosmtpd's SMTP server with its costliest steps per message made cheap, accepting
    and refusing exactly what aiosmtpd does (``tests/test_smtp_fast.py`` compares the two on
    the same byte streams), and its replies sent as RFC 2920 pipelining wants them (the
    filter announces PIPELINING in its EHLO).

    Pipelining: aiosmtpd reads commands one line at a time from a buffer, so a client may send
    MAIL, RCPT and DATA in one go and each is answered in turn.  What RFC 2920 adds on the
    server's side is sending the replies of a group together: a reply to MAIL, RCPT or RSET
    waits while the next command is already in the buffer, and goes out with the next reply
    that does not (at the latest the reply to DATA, which ends a group).  Each reply sent
    alone is a system call through the TCP stack and a wake-up of the client: three replies a
    message became one write on the benchmark."""

    #: replies held back for the rest of their pipelined group (RFC 2920 section 3.2 (6))
    _held = b""
    #: the reply being pushed answers a command that may stand mid-group
    _groupable = False

    def _reset_timeout(self, duration: float | None = None) -> None:
        """The idle timeout, pushed back at every command.  aiosmtpd cancels its timer and arms
        a new one each time; here one :class:`_Deadline` keeps it (the same moment of closing)."""
        idle = self._timeout_handle
        if idle is None:
            idle = self._timeout_handle = _Deadline(self.loop, self._timeout_cb)  # type: ignore[assignment]
        idle.push(self.loop.time() + (duration or self._timeout_duration))  # type: ignore[attr-defined]

    async def _call_handler_hook(self, command: str, *args: Any) -> Any:
        status = await super()._call_handler_hook(command, *args)
        self._groupable = command in _GROUPABLE
        return status

    def _next_line_here(self) -> bytes | None:
        """The client's next command line if it has already arrived whole (pipelined), else None."""
        buffer = getattr(self._reader, "_buffer", b"")
        i = buffer.find(b"\n")
        return None if i < 0 else bytes(buffer[:i + 1])

    async def push(self, status: str | bytes, hold: bool = False) -> None:
        """aiosmtpd's push, holding a reply back while the client's next command is already
        here (see the class docstring), or when ``hold``; any other reply flushes those held
        with it."""
        response = (status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii") if isinstance(status, str)
                    else status) + b"\r\n"
        if not hold:
            hold, self._groupable = self._groupable and b"\n" in getattr(self._reader, "_buffer", b""), False
        if hold:
            self._held += response
            return
        if self._held:
            response, self._held = self._held + response, b""
        self._writer.write(response)
        await self._writer.drain()

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """The address of MAIL FROM / RCPT TO and the rest of the line.  aiosmtpd parses every
        address with the e-mail package's RFC 5322 parser (about 40 us each); an address that is a
        plain ``<local@domain>`` of dot-atoms, nearly all mail, parses to itself, so only the others
        go to that parser."""
        m = _PLAIN_PATH.fullmatch(arg)
        if m is None:
            return self._parsed_addr(arg)
        address, rest = m.group(1), m.group(2)
        if rest[:1] in (" ", "\t"):  # the parser drops the white space after the address
            rest = rest.lstrip(" \t")
        if rest[:1] == "(":  # ... and comments: left to it
            return self._parsed_addr(arg)
        if self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return address, rest

    def _parsed_addr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's parse of an address, with the parser's own failures taken as a malformed
        address.  aiosmtpd catches only HeaderParseError, but the e-mail package's parser raises
        others on some inputs: ``RCPT TO:<a@`` (a domain cut off) is an IndexError in its
        get_domain.  Uncaught, that reached the client as ``451 4.3.0`` (a failure of ours, logged
        as an internal error, and the client retrying the same bad address for days) instead of
        aiosmtpd's ``553 5.1.3 Error: malformed address`` (or 501 for VRFY)."""
        try:
            return super()._getaddr(arg)
        except Exception:
            return None, None

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """DATA read in chunks rather than line by line: aiosmtpd's loop costs a few microseconds
        a line, a third of this server's own CPU per message.  What it accepts and refuses is
        aiosmtpd's: the data ends at the first line that is a lone dot; the size counted against
        ``data_size_limit`` is the dot-stuffed bytes before it; a line longer than
        ``line_length_limit`` (CRLF included) is refused 500, a message over the size 552 (whichever
        comes first), after reading to the end; one leading dot is removed from each line."""
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        if self._chunks is not None or self._chunks_refused:
            await self.push("503 5.5.1 Error: DATA after BDAT in the same transaction")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            state, content = await self._read_data()
        except asyncio.CancelledError:
            self._writer.close()  # the connection went during DATA
            raise
        if state is None:
            return
        if state:
            await self.push(state)
            self._set_post_data_state()
            return
        self.envelope.content = self.envelope.original_content = content
        await self._end_of_data()

    async def _end_of_data(self) -> None:
        """The message is here whole (after DATA, or at ``BDAT ... LAST``): the handler's reply to
        it ends the transaction.  One step, so that a subclass can hold the session around it."""
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)

    async def _read_data(self) -> tuple[str | None, bytes]:
        """("", the unstuffed message), or (the refusal, b""), or (None, b"") at end of stream.

        The data after DATA is searched for ``CRLF . CRLF`` (or a lone dot on the first line).
        Each read takes everything the stream has buffered, so bytes that came after the end
        (a pipelined next command) are handed back to the stream at once, before any others
        can arrive: nothing runs between the read and the hand-back."""
        reader = self._reader
        limit = self.data_size_limit
        data = bytearray()
        counted = 0  # stuffed bytes read and dropped once the message was known to be too big
        refusal = ""
        while True:
            chunk = await reader.read(1 << 30)
            if not chunk:
                return None, b""
            start = max(0, len(data) - 4)
            data += chunk
            if counted == 0 and data[:3] == b".\r\n":  # a lone dot as the first line: no message
                end = 0
            else:
                i = data.find(b"\r\n.\r\n", start)
                end = -1 if i < 0 else i + 2  # the message keeps its last CRLF
            if end >= 0:
                if len(data) > end + 3:
                    _hand_back(reader, bytes(data[end + 3:]))
                del data[end:]
            # Until the end is seen, up to 2 bytes at the end may be the start of the final dot line.
            if not refusal and limit and counted + len(data) - (0 if end >= 0 else 2) > limit:
                refusal = ("500 Line too long (see RFC5321 4.5.3.1.6)" if self._long_line(data[:limit + 1])
                           else "552 Error: Too much mail data")
            if refusal:  # keep only what the search for the end needs
                counted += max(0, len(data) - 4)
                del data[:-4]
            if end >= 0:
                break
        if refusal:
            return refusal, b""
        if len(data) > self.line_length_limit and self._long_line(data):
            return "500 Line too long (see RFC5321 4.5.3.1.6)", b""
        if data[:1] == b".":
            del data[:1]
        return "", bytes(data).replace(b"\r\n.", b"\r\n")

    #: the BDAT chunks of the transaction so far (None: no BDAT yet); ``_chunks_refused``: a chunk
    #: was refused, and the transaction's further chunks are read and refused until it ends
    _chunks: list[bytes] | None = None
    _chunks_size = 0
    _chunks_refused = False

    def _set_post_data_state(self) -> None:
        self._chunks, self._chunks_size, self._chunks_refused = None, 0, False
        super()._set_post_data_state()

    @syntax("BDAT <size> [LAST]")
    async def smtp_BDAT(self, arg: str) -> None:
        """RFC 3030 CHUNKING: ``BDAT <size> [LAST]`` and exactly that many bytes, taken as they are
        (no dot-stuffing, no line limit).  The chunks of a transaction are joined; at ``LAST`` the
        message goes to the handler as after DATA, and its reply is the transaction's.  Whatever
        is refused (no recipient, over ``data_size_limit``, a chunk after a refused one) is read
        through first, so the stream stays in step with the client.  A size that cannot be read
        leaves no way to find the next command: refused, and the connection closed.  RFC 3030's
        chunk-size is ``1*DIGIT``, ASCII digits: ``str.isdigit`` alone takes superscripts and other
        digits ``int`` refuses."""
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("BDAT"):
            return
        words = (arg or "").split()
        last = len(words) == 2 and words[1].upper() == "LAST"
        if not words or len(words) > 2 or (len(words) == 2 and not last) \
                or not (words[0].isascii() and words[0].isdigit()):
            await self.push("501 5.5.4 Syntax: BDAT <size> [LAST]")
            assert self.transport is not None
            self.transport.close()
            return
        size = int(words[0])
        assert self.envelope is not None
        refusal = ""
        if not self.envelope.rcpt_tos:
            refusal = "503 5.5.1 Error: need RCPT command"
        elif self._chunks_refused:
            refusal = "503 5.5.1 Error: an earlier chunk of this message was refused"
        elif self.data_size_limit and self._chunks_size + size > self.data_size_limit:
            refusal = "552 5.3.4 Error: Too much mail data"
        try:
            if refusal:
                await self._discard(size)
            else:
                chunk = await self._reader.readexactly(size)
        except asyncio.IncompleteReadError:
            return  # the client went mid-chunk: no message
        except asyncio.CancelledError:
            self._writer.close()
            raise
        if refusal:
            if self.envelope.rcpt_tos:  # a transaction's chunk refused: the transaction fails
                self._chunks_refused = True
                if last:
                    self._set_post_data_state()
            await self.push(refusal)
            return
        if self._chunks is None:
            self._chunks = []
        self._chunks.append(chunk)
        self._chunks_size += size
        if not last:
            self._groupable = True  # RFC 3030 lets chunks be pipelined: this reply may wait for the next
            await self.push(f"250 2.0.0 Ok: {size} octets received")
            return
        self.envelope.content = self.envelope.original_content = b"".join(self._chunks)
        await self._end_of_data()

    async def _discard(self, size: int) -> None:
        """Read and drop ``size`` bytes, a bounded piece at a time."""
        while size > 0:
            got = await self._reader.read(min(size, 1 << 16))
            if not got:
                raise asyncio.IncompleteReadError(b"", size)
            size -= len(got)

    def _long_line(self, data: bytes | bytearray) -> bool:
        """Whether a CRLF-ended line of ``data`` (or its unfinished last one) is longer than
        ``line_length_limit`` with its CRLF."""
        cap = self.line_length_limit
        if len(data) <= cap:
            return False
        pos = 0
        while True:
            i = data.find(b"\r\n", pos)
            if i < 0:
                return len(data) - pos > cap
            if i + 2 - pos > cap:
                return True
            pos = i + 2


def _hand_back(reader: asyncio.StreamReader, data: bytes) -> None:
    """Put ``data``, read past where it was wanted, back into the emptied ``reader``.  Once the
    client's end is known (a half-close, see ``_FilterSMTP.eof_received``) ``feed_data`` refuses
    it, so it then goes into the buffer the reader reads from (``_buffer``, as ``FastSMTP`` reads it)."""
    if reader.at_eof():
        reader._buffer.extend(data)  # type: ignore[attr-defined]
    else:
        reader.feed_data(data)


class _FilterSMTP(FastSMTP):
    """aiosmtpd's SMTP with our admission control (allow-list, connection limit) and XFORWARD.

    While a message is in our hands (from the end of its data until our reply: the scan and the
    next hop's answer), nothing of the client's side cuts the relay short.  The next hop may
    already have the message when it is cut: the client, never told 250, sends it again, and
    the next hop gets two copies.  So the idle timeout does not run then (the wait for the next
    hop is bounded by ``next_hop_timeout`` and ``next_hop_data_timeout``), and the client's EOF or the connection's loss,
    which aiosmtpd answers by cancelling the session (and the relay in it), wait for the relay
    to end (see :meth:`_end_of_data`).
    """

    #: RFC 5321 caps lines at 1000 octets, but a filter that refused longer ones would bounce mail
    #: its MTA already accepted (after-queue): take them and let the next hop decide.
    line_length_limit = 64 * 1024

    #: the message is in our hands: from the end of its data until our reply is written
    _relaying = False
    #: the client's EOF came while relaying: aiosmtpd's handling of it is run after the reply
    _eof_pending = False
    #: the connection was lost while relaying: ``connection_lost``'s argument, for after the relay
    _loss_pending: tuple[Exception | None] | None = None
    #: the client's EOF came with whole commands unread: its reader ends after them
    _eof_after_input = False
    #: admitted (``SmtpFilterServer._admit``): what ``max_connections`` counts
    _let_in = False
    #: the DSN parameters the command being read may carry (see :meth:`_getparams`)
    _dsn_keys: tuple[str, ...] = ()
    #: SMTPUTF8 was announced to this client (``SmtpFilterServer.handle_EHLO``)
    utf8_offered = False

    def __init__(self, server: "SmtpFilterServer", **kw: Any):
        #: the original client's attributes (XFORWARD) for the transaction they precede
        self.xforward: dict[str, str] = {}
        #: the parameters of the last MAIL or RCPT read, as the client wrote them (aiosmtpd's are upper-cased)
        self.params_sent: list[str] = []
        super().__init__(server, **kw)
        self.filter = server
        #: this session's transaction at the next hop
        self.next_hop = _NextHop(server)
        #: the reply to MAIL waits for the next hop's, to come with the RCPT's
        self._mail_deferred = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.filter._protocols.add(self)
        if self.filter.metrics is not None:
            self.filter.metrics.connections.labels(self.filter.name).inc()

    def connection_lost(self, error: Exception | None) -> None:
        if self._relaying and not self.filter.closing:
            # handled once the relay has ended (see _end_of_data); at shutdown the relay is cut as
            # before (``stop`` closes the connections left after its grace period)
            self._loss_pending = (error,)
            return
        if self in self.filter._protocols:
            self.filter._protocols.discard(self)
            if self.filter.metrics is not None:
                self.filter.metrics.connections.labels(self.filter.name).dec()
        if self.next_hop.conn is not None and not self.next_hop.busy:
            # the client left between commands: end our transaction at the next hop (a step in
            # flight is cancelled with the handler, and drops the connection itself)
            task = self.loop.create_task(self.next_hop.reset())
            self.filter._background.add(task)
            task.add_done_callback(self.filter._background.discard)
        super().connection_lost(error)

    def eof_received(self) -> bool | None:
        """The client shut its sending side.  aiosmtpd cancels the session at once, leaving the
        commands the client sent before its EOF unanswered (a client may pipeline a whole session,
        QUIT included, and half-close: RFC 5321 section 4.1.1.10 wants the QUIT answered).  Here:

        - while a message is being relayed, nothing happens until the relay has ended and the
          client, who may still read, has our reply (see :meth:`_end_of_data`);
        - when whole command lines are still unread, the reader is told of the end after them:
          they are answered in turn, and the session ends where it would wait for more
          (:meth:`handle_exception`), a message's data cut short included;
        - else the session ends now, as aiosmtpd ends it."""
        if self._relaying:
            self._eof_pending = True
            return True  # our side stays open for the reply
        if self._next_line_here() is not None:
            self._eof_after_input = True
            return asyncio.StreamReaderProtocol.eof_received(self)  # the reader's end, after its lines
        return super().eof_received()

    async def _end_of_data(self) -> None:
        """The message, relayed with the idle timeout held and the client's EOF or connection loss
        put off until the relay has ended (see the class docstring): the next hop's outcome is
        final either way, and this way the client hears it whenever it can still read.

        An unexpected error here is our reply ``451 4.3.0``, temporary, rather than aiosmtpd's
        ``500`` (the client would bounce mail that a later try may deliver), and the transaction
        ends all the same, here and at the next hop."""
        if self.transport is None or self.transport.is_closing():
            # We closed the connection (aiosmtpd's 502 after too many unknown commands, our 501
            # for a BDAT size we cannot read), but aiosmtpd goes on with the commands already
            # buffered until connection_lost runs: a message among them was relayed, and the
            # client, never told 250, sends it again.  Not relayed; the next hop's transaction
            # is ended when the connection goes (connection_lost).
            self._set_post_data_state()
            return
        self._timeout_handle.push(None)  # type: ignore[union-attr]  # a _Deadline (FastSMTP)
        self._relaying = True
        try:
            status = await self._call_handler_hook("DATA")
        except Exception as exc:
            status = await self._internal_error(exc)
        finally:
            self._relaying = False
        self._set_post_data_state()
        if self._loss_pending is not None:  # nobody to tell: the session ends as aiosmtpd ends it
            self.connection_lost(self._loss_pending[0])
            return
        self._reset_timeout()  # idle again from our reply on
        await self.push(status)
        if self._eof_pending:
            # The EOF is handled once the session would wait for more: the commands the client
            # sent before it, already here, are answered first (its QUIT too: RFC 5321 section
            # 4.1.1.10 wants a QUIT answered before the channel closes).
            self._eof_pending = False
            self.loop.call_soon(self.eof_received)

    async def _internal_error(self, exc: BaseException) -> str:
        """Log a failure of ours at end of data, end the next hop's transaction, and answer 451."""
        self.filter._count_error("internal")
        self.filter.log.error("message not relayed: internal error", exc_info=exc,
                              extra={"fields": {"server": self.filter.name}})
        try:
            await self.next_hop.reset()
        except Exception:  # the connection is dropped: the next hop drops the transaction with it
            self.next_hop._lose()
        return _INTERNAL_ERROR

    async def handle_exception(self, error: Exception) -> str:
        """aiosmtpd's reply to an exception in a command: ours is temporary (451 4.3.0), not its 500.
        A permanent reply to a failure of ours would make the client bounce the mail.

        The end of the client's input (after the commands it sent before its EOF, see
        :meth:`eof_received`) is no failure: the session ends there, with no reply."""
        if self._eof_after_input and isinstance(error, asyncio.IncompleteReadError):
            self._writer.close()  # after what is written; the session's task ends at the next step
            assert self._handler_coroutine is not None
            self._handler_coroutine.cancel()
            return _SESSION_ENDED
        self.filter._count_error("internal")
        self.filter.log.error("command failed: internal error", exc_info=error,
                              extra={"fields": {"server": self.filter.name}})
        return _INTERNAL_ERROR

    def _set_post_data_state(self) -> None:
        """A transaction ends (after its message, at RSET, HELO or EHLO): the XFORWARD attributes
        go with it, as Postfix's smtpd forgets them in its ``mail_reset()``; a Postfix client
        sends them again before each MAIL (XFORWARD_README)."""
        super()._set_post_data_state()
        if self.xforward:
            self.xforward.clear()

    async def push(self, status: str | bytes, hold: bool = False) -> None:
        """A deferred MAIL (see ``SmtpFilterServer.handle_MAIL``) is answered here, just before
        the RCPT that follows it, with the next hop's own reply to MAIL.  No reply is ever an
        empty line (a MAIL whose relay failed before any reply came): that is ``451 4.3.0``."""
        if status is _MAIL_DEFERRED:
            self._groupable = False
            self._mail_deferred = True
            return
        if status is _SESSION_ENDED:  # nothing to say: let the cancelled session's task end here
            await asyncio.sleep(0)
            return
        if not status:
            status = _INTERNAL_ERROR
        if self._mail_deferred:  # this is the reply to the RCPT line that was waiting
            self._mail_deferred = False
            mail_reply = await self.next_hop.deferred_mail_reply() or _INTERNAL_ERROR
            if not mail_reply.startswith("2"):
                self.filter._mail_refused(self.envelope, mail_reply)
                status = _NEED_MAIL
            await super().push(mail_reply, hold=True)
        await super().push(status, hold)

    async def _handle_client(self) -> None:
        refusal = self.filter._admit(self.session.peer)
        if refusal is not None:
            await self.push(refusal)
            assert self.transport is not None
            self.transport.close()
            return
        self._let_in = True
        await super()._handle_client()

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str) -> None:
        """aiosmtpd's MAIL, taking RET and ENVID too (see :meth:`_getparams`)."""
        await self._with_dsn("MAIL", super().smtp_MAIL(arg))

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg: str) -> None:
        """aiosmtpd's RCPT, taking NOTIFY and ORCPT too (see :meth:`_getparams`)."""
        await self._with_dsn("RCPT", super().smtp_RCPT(arg))

    async def _with_dsn(self, verb: str, command: Any) -> None:
        self._dsn_keys, self.params_sent = _TAKEN_PARAMS[verb], []
        try:
            await command
        finally:
            self._dsn_keys = ()

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """The address and the rest, the parameters kept as sent (``params_sent``): aiosmtpd hands
        the handler its parameters upper-cased, and the values of ENVID and ORCPT are the
        client's own text, to come back unchanged in a delivery status notification."""
        address, rest = super()._getaddr(arg)
        self.params_sent = (rest or "").split()
        return address, rest

    def _getparams(self, params: Any) -> dict[str, str | bool] | None:
        """aiosmtpd's parameters without the DSN ones and AUTH (``_TAKEN_PARAMS``) of the command
        being read: aiosmtpd refuses any it does not know with ``555``, and Postfix hands them on as
        its client sent them (the before-queue proxy as they come, AUTH whenever its SASL is on; the
        content_filter client the DSN ones to a filter that announces DSN).  A refusal there bounced
        every message whose sender asked for a notification, and refused every MAIL with AUTH=.
        The DSN ones go on to the next hop as sent, which judges them as it judges the addresses;
        AUTH does not (see ``_MAIL_PASSED``)."""
        found = super()._getparams(params)
        if found is not None:
            for key in self._dsn_keys:
                found.pop(key, None)
        return found

    @syntax("XFORWARD attribute=value ...")
    async def smtp_XFORWARD(self, arg: str) -> None:
        """Postfix tells us about the original client (only from allowed clients, like Postfix)."""
        if not arg:
            await self.push("501 5.5.4 Syntax: XFORWARD attribute=value ...")
            return
        for item in arg.split():
            name, sep, value = item.partition("=")
            if not sep or name.upper() not in XFORWARD_ATTRS:
                # a reply is ASCII: an 8-bit name (aiosmtpd decoded it with surrogateescape) is shown escaped
                shown = name.encode("utf-8", "surrogateescape").decode("ascii", "backslashreplace")
                await self.push(f"501 5.5.4 Bad XFORWARD attribute {_one_line(shown)[:40]}")
                return
            self.xforward[name.upper()] = value
        await self.push("250 2.0.0 Ok")


class SmtpFilterServer(Server):
    """``antispam serve smtp``: see the module docstring.  The server object is also the
    aiosmtpd handler (``handle_EHLO``, ``handle_DATA``)."""

    name = "smtp"

    def __init__(self, *args: Any, **kw: Any):
        super().__init__(*args, **kw)
        cfg = self.settings
        host, _, port = cfg.next_hop.rpartition(":")  # type: ignore[attr-defined]
        if not host or not port.isdigit():
            from ..errors import ConfigError

            raise ConfigError(f"next_hop must be host:port, got {cfg.next_hop!r}", key="servers.smtp.next_hop")  # type: ignore[attr-defined]
        if cfg.mode not in SMTP_MODES:  # type: ignore[attr-defined]
            from ..errors import ConfigError

            raise ConfigError(f"mode must be after-queue or before-queue, got {cfg.mode!r}", key="servers.smtp.mode")  # type: ignore[attr-defined]
        self.next_hop = (host.strip("[]"), int(port))
        self._protocols: set[_FilterSMTP] = set()
        self._in_flight = 0
        self._idle = asyncio.Event()
        #: every open connection to the next hop (closed at shutdown), and the idle ones
        self._connections: set[_SmtpClient] = set()
        self._idle_connections: list[_SmtpClient] = []
        #: transactions being ended for clients that left (kept referenced until done)
        self._background: set[asyncio.Task] = set()
        #: the EHLO keywords of the newest connection to the next hop (None: never connected)
        self._hop_extensions: set[str] | None = None

    # ------------------------------------------------------------ lifecycle

    def _protocol(self) -> _FilterSMTP:
        cfg = self.settings
        return _FilterSMTP(self, hostname=cfg.hostname, data_size_limit=cfg.max_size,  # type: ignore[attr-defined]
                           timeout=int(max(1, cfg.timeout)), decode_data=False, enable_SMTPUTF8=True,
                           ident="antispam filter")

    async def _listen(self, sock: socket.socket | None = None) -> asyncio.AbstractServer:
        """aiosmtpd's protocol makes its own streams: the server is made on it, not on ``_accept``."""
        cfg = self.settings
        loop = asyncio.get_running_loop()
        if sock is not None:
            return await loop.create_unix_server(self._protocol, sock=sock)
        return await loop.create_server(self._protocol, cfg.host, cfg.port, reuse_address=True)

    def _started(self) -> None:
        """aiosmtpd keeps its own idle timeout: no sweeper; nothing is in flight yet."""
        self._idle.set()

    def _described(self) -> dict[str, Any]:
        cfg = self.settings
        return {"mode": cfg.mode, "next_hop": cfg.next_hop}  # type: ignore[attr-defined]

    async def _adopt(self, sock: socket.socket) -> None:
        await asyncio.get_running_loop().connect_accepted_socket(self._protocol, sock)

    def _open_count(self) -> int:
        return len(self._protocols)

    async def stop(self) -> None:
        """Stop accepting; wait for messages being scanned or relayed; then close every connection.
        A sender cut off before our 250 still has its message and retries."""
        self.closing = True
        self._stop_accepting()
        try:
            await asyncio.wait_for(self._idle.wait(), self.settings.shutdown_timeout)
        except (asyncio.TimeoutError, TimeoutError):
            self.log.warning("shutdown cut off in-flight messages",
                             extra={"fields": {"server": self.name, "count": self._in_flight}})
        for proto in list(self._protocols):
            if proto.transport is not None:
                proto.transport.close()
        await asyncio.sleep(0)
        if self._background:
            await asyncio.wait(list(self._background), timeout=2.0)
        await self._close_relays()
        if self._own_scanner:
            self.scanner.close()
        if self.metrics is not None:
            self.metrics.close()

    def _admit(self, peer: Any) -> str | None:
        ip = str(peer[0]) if peer else ""
        if self.closing:
            return "421 4.3.2 Shutting down, try again later"
        if not self.local_socket and not self.allow.allows(ip):
            self._count_error("not_allowed")
            self.log.warning("client refused: not in allow-list", extra={"fields": {"server": self.name, "peer": ip}})
            return "554 5.7.1 Not allowed"
        # Counted against the connections already let in, not every one connected: a burst of
        # connections made together (Postfix starting its deliveries at once) is all connected
        # before the first is admitted, and counting those refused every one of the burst, the
        # first max_connections too, where the other servers serve those and refuse the rest.
        if sum(p._let_in for p in self._protocols) >= self.settings.max_connections:
            self._count_error("too_many_connections")
            return "421 4.3.2 Too many connections, try again later"
        return None

    # ------------------------------------------------------------ aiosmtpd hooks

    async def handle_EHLO(self, server: _FilterSMTP, session: SmtpSession, envelope: SmtpEnvelope,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        hop = await self._next_hop_extensions()
        ours = ["250-PIPELINING", "250-CHUNKING", "250-XFORWARD " + " ".join(XFORWARD_ATTRS)]
        if hop is not None and "DSN" in hop:
            ours.append("250-DSN")
        # RFC 6531 section 3.4: a message that needs SMTPUTF8 cannot go to a next hop without it,
        # and the client, not offered it here, bounces such a message or sends it without (Postfix
        # does either, by the message), as it would to that next hop itself.  Offered while the
        # next hop cannot be reached: a client not offered it would bounce such a message for
        # good over a next hop that is down for a moment (MAIL is then refused for now).
        server.utf8_offered = hop is None or "SMTPUTF8" in hop
        if not server.utf8_offered:
            responses.remove("250-SMTPUTF8")
        # RFC 6152: 8-bit data must not go to a next hop without 8BITMIME.  Not offered then, the
        # client converts it or sends it undeclared, as it would to that next hop; offered while
        # the next hop is unknown, 8-bit data that meets one without it is refused for now
        # (``_unsendable``).  aiosmtpd announces it always (``decode_data=False``).
        if hop is not None and "8BITMIME" not in hop:
            responses.remove("250-8BITMIME")
        responses[-1:-1] = ours  # the last line is "250 HELP"
        return responses

    async def _next_hop_extensions(self) -> set[str] | None:
        """What the next hop announced when we last connected to it; connected to now (the
        connection then kept for the client's MAIL) when we never have; None when it cannot be
        reached.  DSN and SMTPUTF8 are announced only when the next hop announces them: a client
        that is told DSN leaves its notifications to the next hop (a "relayed" one for
        NOTIFY=SUCCESS from Postfix when no DSN is announced), and without DSN there the
        parameters could only be dropped."""
        if self._hop_extensions is None:
            try:
                self._give_back((await self._borrow())[0])
            except (OSError, TimeoutError, NextHopError):
                return None
        return self._hop_extensions

    async def _utf8_refusal(self, server: _FilterSMTP, envelope: SmtpEnvelope, address: str) -> str | None:
        """The reply to a MAIL (or RCPT) of a transaction asking SMTPUTF8 whose next hop has none;
        None otherwise (and for every transaction not asking it, at the cost of one attribute).

        - We offered it, while the next hop was unknown: MAIL is refused for now, so the client
          comes back, hears at EHLO that it is not offered and bounces or downgrades the message
          itself, rather than its flag being dropped on the way.
        - We did not (Postfix's before-queue proxy hands on its own client's MAIL as it came):
          the flag is dropped, as Postfix's SMTP client drops it, when the message needs none, and
          an address that needs it (not ASCII) is refused for good, ``553 5.6.7``, as Postfix
          bounces it.  Its flag dropped, the address went on unflagged, to a next hop that may take
          it as bytes of no known charset.  A header that needs it is seen at the end of the data
          (``_unsendable``)."""
        if not envelope.smtp_utf8:
            return None
        hop = await self._next_hop_extensions()
        if hop is None or "SMTPUTF8" in hop:
            return None
        if server.utf8_offered and envelope.mail_from is None:
            return "451 4.3.3 The next hop does not take SMTPUTF8 mail; try again"
        if not address.isascii():
            self._next_hop_refused("MAIL" if envelope.mail_from is None else "RCPT", _NEEDS_UTF8)
            return "553 " + _NEEDS_UTF8
        return None

    async def handle_MAIL(self, server: _FilterSMTP, session: SmtpSession, envelope: SmtpEnvelope,
                          address: str, mail_options: list[str]) -> str:
        """Open the transaction at the next hop; its reply is ours.

        When the client pipelined (RFC 2920) and its next command, already here, is a RCPT, the
        MAIL is deferred to go with that RCPT: one round trip to the next hop for both (in one
        write when the next hop announces PIPELINING too).  Our reply to MAIL is held until then
        anyway, and is still the next hop's own.  Meanwhile the envelope counts the sender as
        accepted; if the next hop refuses it, the RCPT is answered as aiosmtpd answers a RCPT
        without MAIL, and the sender is forgotten (``_mail_refused``)."""
        refusal = await self._utf8_refusal(server, envelope, address)
        if refusal is not None:
            return refusal
        line = server._next_line_here()
        if line is not None and line[:5].upper() == b"RCPT ":
            server.next_hop.defer_mail(address, server.params_sent, dict(server.xforward))
            envelope.mail_from = address
            envelope.mail_options.extend(mail_options)
            return _MAIL_DEFERRED  # type: ignore[return-value]  # answered by _FilterSMTP.push
        reply = await server.next_hop.mail(address, server.params_sent, dict(server.xforward))
        if reply.startswith("2"):
            envelope.mail_from = address
            envelope.mail_options.extend(mail_options)
        elif reply.startswith("4"):  # a 5xx is the next hop's policy, passed on; a 4xx may be ours to fix
            self._next_hop_refused("MAIL", reply)
        return reply

    def _mail_refused(self, envelope: SmtpEnvelope, reply: str) -> None:
        """The next hop refused a deferred MAIL: no sender, as if our MAIL had been refused."""
        envelope.mail_from = None
        envelope.mail_options.clear()
        if reply.startswith("4"):
            self._next_hop_refused("MAIL", reply)

    async def handle_RCPT(self, server: _FilterSMTP, session: SmtpSession, envelope: SmtpEnvelope,
                          address: str, rcpt_options: list[str]) -> str:
        """The next hop's reply to this recipient, so that it is accepted or refused on its own.

        Per-recipient settings: one transaction carries recipients of one settings profile.
        A recipient whose profile differs from the first one's is deferred with 452 4.5.3, which
        SMTP clients (Postfix included) answer by sending it in a new transaction; each message
        then gets the verdict, headers and reply of its own recipients' settings.

        A lone recipient pipelined with MAIL and DATA (or BDAT) is the exception: it is accepted
        here and goes to the next hop with the message (``_NextHop.rcpt_with_message``)."""
        if envelope.rcpt_tos and self.scanner.profile_for(address) != self.scanner.profile_for(envelope.rcpt_tos[0]):
            return "452 4.5.3 Recipients with other spam settings: send in a separate transaction"
        if envelope.smtp_utf8 and not address.isascii():
            refusal = await self._utf8_refusal(server, envelope, address)
            if refusal is not None:
                return refusal
        if server.next_hop.deferred is not None and not envelope.rcpt_tos and _ends_group(server._next_line_here()):
            reply = await server.next_hop.rcpt_with_message((address, server.params_sent))
        else:
            reply = await server.next_hop.rcpt((address, server.params_sent))
        if server._mail_deferred and not (await server.next_hop.deferred_mail_reply()).startswith("2"):
            return _NEED_MAIL  # the next hop refused the sender (see handle_MAIL)
        if reply.startswith("2"):
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
        elif reply.startswith("4"):
            self._next_hop_refused("RCPT", reply)
        return reply

    async def handle_RSET(self, server: _FilterSMTP, session: SmtpSession, envelope: SmtpEnvelope) -> str:
        return await server.next_hop.reset()

    async def handle_DATA(self, server: _FilterSMTP, session: SmtpSession, envelope: SmtpEnvelope) -> str:
        self._in_flight += 1
        self._idle.clear()
        try:
            return await self._filter(server, session, envelope)
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def _filter(self, server: _FilterSMTP, session: SmtpSession, envelope: SmtpEnvelope) -> str:
        cfg = self.settings
        raw = envelope.original_content or b""
        xf = server.xforward
        peer_ip = str(session.peer[0]) if session.peer else ""
        env = Envelope(
            client_ip=xf.get("ADDR") if xf.get("ADDR") not in _UNAVAILABLE else peer_ip,
            helo=xf.get("HELO") if xf.get("HELO") not in _UNAVAILABLE else session.host_name,
            hostname=xf.get("NAME") if xf.get("NAME") not in _UNAVAILABLE and xf.get("NAME") != "unknown" else None,
            mail_from=envelope.mail_from or "", rcpt_tos=tuple(envelope.rcpt_tos))
        profile = self.scanner.profile_for(envelope.rcpt_tos[0]) if envelope.rcpt_tos else None
        try:
            verdict = await self.scan(raw, env, profile, peer=peer_ip, client_ip=env.client_ip or "",
                                      rcpts=len(envelope.rcpt_tos))
        except Exception:
            if not cfg.fail_open:
                await server.next_hop.reset()
                return cfg.tempfail_reply  # type: ignore[attr-defined]
            # fail open: deliver unscanned rather than hold mail hostage to a bug (CRLF: see below)
            out = without_ours(_crlf(raw), self.scanner.engine.authserv_id)
        else:
            if cfg.mode == "before-queue":  # type: ignore[attr-defined]
                reply = None
                if verdict.action == "reject":
                    reply = cfg.reject_reply  # type: ignore[attr-defined]
                elif verdict.action in ("soft reject", "greylist"):
                    reply = cfg.tempfail_reply  # type: ignore[attr-defined]
                if reply is not None:
                    await server.next_hop.reset()
                    return reply
            # SMTP carries CRLF line ends only (RFC 5321 section 2.3.8): the message goes on with
            # every bare LF and bare CR made CRLF.  That is done first, so that our fields go
            # above the header/body boundary the next hop will see: converted afterwards, a bare
            # CR or a mix of CRLF and LF can make a blank line elsewhere, and our fields body text.
            raw = _crlf(raw)
            out = rewrite_headers(raw, verdict)
            if b"\n" not in raw:
                # no line end for ours to copy (an empty message, a line without its end): they
                # took a bare LF, and went to the next hop with it
                out = _crlf(out)
        reply = await server.next_hop.data(out)
        if not reply.startswith("2"):
            self._next_hop_refused("DATA", reply)
        return reply

    def _next_hop_refused(self, stage: str, reply: str) -> None:
        self._count_error("next_hop")
        self.log.warning("next hop did not take the message", extra={"fields": {
            "server": self.name, "stage": stage, "reply": reply, "next_hop": self.settings.next_hop}})  # type: ignore[attr-defined]

    # ------------------------------------------------------------ connections to the next hop

    async def _borrow(self, fresh: bool = False) -> tuple["_SmtpClient", bool]:
        """A connection for one transaction, and whether it was kept from an earlier one.

        Connections stay open between transactions (connect, greeting and EHLO cost about as much
        as the transaction); the most recently used one is taken first, as the least likely to
        have been closed by the next hop meanwhile, and one the next hop visibly closed is dropped.
        ``fresh``: a new connection (a second try, after a kept one turned out closed: the others
        kept as long may be closed too)."""
        while self._idle_connections and not fresh:
            c = self._idle_connections.pop()
            if not c.closed():
                return c, True
            self._discard(c)
        cfg = self.settings
        c = await _SmtpClient.connect(*self.next_hop, helo=cfg.hostname, timeout=cfg.next_hop_timeout,  # type: ignore[attr-defined]
                                      data_timeout=cfg.next_hop_data_timeout)  # type: ignore[attr-defined]
        self._connections.add(c)
        self._hop_extensions = c.extensions
        return c, False

    def _give_back(self, c: "_SmtpClient") -> None:
        """A connection whose transaction ended cleanly, kept for the next one."""
        if not self.closing and c in self._connections and not c.closed():
            self._idle_connections.append(c)
        else:
            self._discard(c)

    def _discard(self, c: "_SmtpClient") -> None:
        self._connections.discard(c)
        c.close()

    async def _close_relays(self) -> None:
        conns, self._connections = list(self._connections), set()
        self._idle_connections.clear()
        await asyncio.gather(*(c.quit() for c in conns), return_exceptions=True)


def _ends_group(line: bytes | None) -> bool:
    """``line`` is DATA or BDAT: the command that ends a client's pipelined group of recipients."""
    if line is None:
        return False
    word = line[:5].upper()
    return word == b"BDAT " or word.rstrip(b"\r\n") == b"DATA"


def _reply(code: int, msg: Any) -> str:
    """The next hop's reply, for our client.  Its 421 (closing the connection) becomes 451: it is
    the next hop's connection that closes, not ours, and a 421 tells our client to hang up."""
    return f"{451 if code == 421 else code} {_one_line(msg)}"


def _unavailable(exc: BaseException) -> str:
    return f"451 4.4.1 Next hop unavailable, try again later ({_one_line(type(exc).__name__)})"


class NextHopError(Exception):
    """The next hop broke the protocol (a reply that is not one)."""


_EOL = re.compile(rb"\r\n|\n|\r(?!\n)")


def _crlf(payload: bytes) -> bytes:
    """Every line end as CRLF, as SMTP wants them (a message SMTP delivered has only those already:
    then it is returned as it is, which is what the regular expression would give)."""
    return payload if fastscore.impl.crlf_only(payload) else _EOL.sub(b"\r\n", payload)


class _SmtpClient:
    """A minimal SMTP client on asyncio streams: what re-injection needs and nothing more
    (EHLO, XFORWARD, MAIL, RCPT, DATA, RSET, QUIT).  It runs in the server's event loop, so a
    message costs no hop to a thread, and every wait for the next hop is bounded by ``timeout``,
    but the wait for the reply to the message itself, bounded by ``data_timeout``.

    That reply comes once the next hop has done with the message (its milters, its queue file),
    and RFC 5321 section 4.5.3.2.6 gives it 10 minutes: a message the next hop has taken in full
    is usually queued there whether or not we wait for the reply, so giving up early makes our
    client send it again, a second copy at every try for as long as the next hop stays that slow.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float,
                 data_timeout: float | None = None):
        self.reader = reader
        self.writer = writer
        self.timeout = timeout
        self.data_timeout = timeout if data_timeout is None else data_timeout
        #: EHLO keywords, upper case
        self.extensions: set[str] = set()
        #: the wait for a reply, bounded by ``timeout`` (see ``reply``)
        self._wait = _Deadline(asyncio.get_running_loop(), self._late)

    @classmethod
    async def connect(cls, host: str, port: int, helo: str, timeout: float,
                      data_timeout: float | None = None) -> "_SmtpClient":
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, limit=64 * 1024)
        c = cls(reader, writer, timeout, data_timeout)
        try:
            code, msg = await c.reply()
            if code != 220:
                raise NextHopError(f"greeting {code} {_one_line(msg)}")
            code, msg = await c.command(f"EHLO {helo}")
            if code == 250:
                c.extensions = {line.split(" ", 1)[0].upper() for line in msg.split("\n")[1:] if line}
            elif (await c.command(f"HELO {helo}"))[0] != 250:
                raise NextHopError(f"EHLO/HELO refused: {code} {_one_line(msg)}")
        except BaseException:
            c.close()
            raise
        return c

    def closed(self) -> bool:
        """Whether the connection cannot carry a new transaction: closed on either side, failed,
        or, idle, with anything at all from the next hop unread.  An idle server has nothing to
        say but its farewell: Postfix's smtpd writes ``421 4.4.2 ... Error: timeout exceeded`` to
        a client idle past ``smtpd_timeout`` and closes, and that 421 waits in the buffer ahead of
        the EOF (``at_eof()`` is true only once the buffer is empty)."""
        reader = self.reader
        return (_has_input(reader) or reader._eof or self.writer.is_closing()
                or reader.exception() is not None)

    def close(self) -> None:
        self._wait.cancel()
        self.writer.close()

    async def quit(self) -> None:
        try:
            if not self.closed():
                await asyncio.wait_for(self.command("QUIT"), 2.0)
        finally:
            self.close()

    async def reply(self, timeout: float | None = None) -> tuple[int, str]:
        """One reply: its code and its text (lines joined with newlines).

        The wait is bounded by ``timeout`` (default: the connection's) without a timer per reply (``asyncio.timeout`` arms
        and cancels one each time, a few per message): one :class:`_Deadline` per connection
        ends a wait that outlives it by failing the stream with TimeoutError (the connection is
        then dropped, as after any timeout)."""
        wait = self._wait
        wait.push(wait.loop.time() + (self.timeout if timeout is None else timeout))
        lines = []
        try:
            while True:
                try:
                    line = await self.reader.readline()
                except ValueError:  # a line over the stream's limit (64 KiB): no SMTP reply line is
                    raise NextHopError("reply line too long") from None
                if not line.endswith(b"\n"):
                    raise ConnectionError("next hop closed the connection")
                if len(line) < 4 or not line[:3].isdigit() or line[3:4] not in (b" ", b"-", b"\r", b"\n"):
                    raise NextHopError(f"not an SMTP reply: {line[:60]!r}")
                lines.append(line[4:].rstrip(b"\r\n").decode("utf-8", "replace"))
                if line[3:4] != b"-":
                    return int(line[:3]), "\n".join(lines)
        finally:
            wait.push(None)

    def _late(self) -> None:
        self.reader.set_exception(TimeoutError("the next hop did not answer in time"))

    async def command(self, line: str) -> tuple[int, str]:
        """``line`` (its addresses as aiosmtpd decoded them: UTF-8, any other byte a surrogate, which
        ``surrogateescape`` turns back into that byte: the next hop gets what our client sent)."""
        self.writer.write(line.encode("utf-8", "surrogateescape") + b"\r\n")
        return await self.reply()

    async def commands(self, lines: list[str]) -> list[tuple[int, str]]:
        """Each command's reply, in order: in one write when the next hop announced PIPELINING
        (RFC 2920: the commands used here may all stand in one group), else one at a time."""
        if "PIPELINING" not in self.extensions:
            return [await self.command(line) for line in lines]
        self.writer.write("".join(line + "\r\n" for line in lines).encode("utf-8", "surrogateescape"))
        replies = []
        for _ in lines:
            replies.append(await self.reply())
            if replies[-1][0] == 421:  # the next hop is closing: no more replies
                break
        return replies

    async def data(self, body: bytes) -> tuple[int, str, bool]:
        """The message and its end: (code, text, whether the transaction may still be open at
        the next hop, to be ended with RSET).  ``body`` has CRLF line ends only, as SMTP wants
        them: ``SmtpFilterServer._filter`` made them so, once, before our fields went in (and our
        fields take the message's line ending, folds included).

        With CHUNKING (RFC 3030) the message goes as one ``BDAT <size> LAST``, written with its
        command: one write and one reply, where DATA takes two of each (the command, then the
        message after the 354), and no dot-stuffing.  A refused BDAT leaves the transaction in a
        state RFC 3030 leaves open; the caller ends it with RSET, as after a refused DATA."""
        if "CHUNKING" in self.extensions:
            self.writer.write(b"BDAT %d LAST\r\n%b" % (len(body), body))
            await self._drain()
            code, msg = await self.reply(self.data_timeout)
            return code, msg, not 200 <= code < 300
        code, msg = await self.command("DATA")
        if code != 354:
            return code, msg, True
        # a dot starting a line gets another (``body`` is CRLF-only: a line starts only after CRLF)
        body = (b"." if body[:1] == b"." else b"") + body.replace(b"\r\n.", b"\r\n..")
        self.writer.write(body + (b".\r\n" if body.endswith(b"\r\n") else b"\r\n.\r\n"))
        await self._drain()
        code, msg = await self.reply(self.data_timeout)
        return code, msg, False

    async def transaction(self, lines: list[str], body: bytes, replies: list[tuple[int, str]]) -> None:
        """``lines`` (MAIL and RCPT, XFORWARD before them) and the message as ``BDAT <size> LAST``,
        all in one write (RFC 2920 and RFC 3030 let BDAT stand anywhere in a pipelined group), and
        their replies appended to ``replies`` in order: one round trip for the whole transaction.
        The caller checks that the next hop announced PIPELINING and CHUNKING.  ``replies`` holds
        what had come when an error is raised; a 421 ends them early (the next hop is closing).
        ``body`` has CRLF line ends only, as in :meth:`data`.  Each reply is awaited ``data_timeout``:
        a server may hold the replies of a pipelined group back until its last (RFC 2920 section
        3.2), the one to the message, so even the first may come only once the message is queued."""
        self.writer.write("".join(line + "\r\n" for line in lines).encode("utf-8", "surrogateescape")
                          + b"BDAT %d LAST\r\n%b" % (len(body), body))
        await self._drain()
        for _ in range(len(lines) + 1):
            replies.append(await self.reply(self.data_timeout))
            if replies[-1][0] == 421:
                return

    async def _drain(self) -> None:
        """Wait, within the timeout, for what the socket did not take at once (a large message)."""
        if self.writer.transport.get_write_buffer_size():
            async with asyncio.timeout(self.timeout):
                await self.writer.drain()


def _path(address: str) -> str:
    return "<>" if address in ("", "<>") else f"<{address}>"


#: a recipient: its address and its parameters as sent
Rcpt = tuple[str, list[str]]


def _rcpt_line(conn: _SmtpClient, rcpt: Rcpt) -> str:
    """RCPT with the recipient's DSN parameters as sent, for a next hop that announces DSN; none
    for one that does not (it would refuse them)."""
    address, params = rcpt
    if params and "DSN" in conn.extensions:
        return " ".join([f"RCPT TO:{_path(address)}",
                         *(p for p in params if p.partition("=")[0].upper() in _DSN_RCPT_PARAMS)])
    return f"RCPT TO:{_path(address)}"


def _opening(conn: _SmtpClient, mail_from: str, mail_options: list[str], xforward: dict[str, str]) -> list[str]:
    """The commands that open a transaction on ``conn``: MAIL with the parameters of
    ``_MAIL_PASSED`` whose extension it announced, as our client wrote them (``mail_options``:
    ``BODY=8bitmime`` stays so, where aiosmtpd's are upper-cased), after XFORWARD when there is one
    to pass on.  A parameter whose extension the next hop lacks is dropped: it would refuse it,
    and what it asked for is checked before (SMTPUTF8: ``SmtpFilterServer._utf8_refusal``) or at
    the end of the data (``_unsendable``).  XFORWARD describes one transaction (the next hop
    forgets it after), so it goes every time; its reply does not matter (the next hop ignores what
    it does not allow)."""
    extensions = conn.extensions
    lines = [" ".join([f"MAIL FROM:{_path(mail_from)}",
                       *(p for p in mail_options if _MAIL_PASSED.get(p.partition("=")[0].upper()) in extensions)])]
    if xforward and "XFORWARD" in conn.extensions:
        lines.insert(0, "XFORWARD " + " ".join(f"{k}={v}" for k, v in xforward.items()))
    return lines


def _unsendable(conn: _SmtpClient, mail_options: list[str], payload: bytes) -> str | None:
    """Our refusal of a message that ``conn`` cannot take as its MAIL (``mail_options``, as sent)
    declared it, its parameter dropped (``_opening``); None when it can.

    - ``BODY=8BITMIME`` and 8-bit data, for a next hop without 8BITMIME: RFC 6152 forbids sending
      it there.  Dropping the parameter alone handed a 7-bit server undeclared 8-bit data.  We do
      not convert the message (that would break its signatures, and it is the client's to do);
      ``_NO_8BITMIME``, temporary: the message stays with the client.  Declared but 7-bit data
      goes on undeclared, which is what it is.
    - ``SMTPUTF8`` and a header that is not ASCII, for a next hop without SMTPUTF8 (addresses
      were checked at MAIL and RCPT): ``554 5.6.7``, as Postfix bounces it.

    A next hop with both extensions (Postfix's smtpd) costs two set look-ups."""
    extensions = conn.extensions
    if "8BITMIME" in extensions and "SMTPUTF8" in extensions:
        return None
    for param in mail_options:
        key, _, value = param.partition("=")
        key = key.upper()
        if key == "BODY" and "8BITMIME" not in extensions and value.upper() == "8BITMIME" \
                and not payload.isascii():
            return _NO_8BITMIME
        if key == "SMTPUTF8" and "SMTPUTF8" not in extensions:
            if not split_headers(payload)[0].isascii():
                return "554 " + _NEEDS_UTF8
    return None


class _NextHop:
    """One client session's transaction at the next hop, mirrored step by step (or held and sent
    whole with the message, see :meth:`rcpt_with_message`).

    The connection is borrowed from the server's idle ones at MAIL and given back when the
    transaction ends (after DATA, at RSET, or when the client goes), so two transactions never
    share one.  Any failure or cancellation in the middle of a step drops the connection: its
    state is unknown, and the next hop drops a transaction whose connection goes.  Every method
    returns the SMTP reply to give our client.
    """

    def __init__(self, server: SmtpFilterServer):
        self.server = server
        self.conn: _SmtpClient | None = None
        #: a step is talking to the next hop
        self.busy = False
        #: MAIL's arguments, kept to go with the following RCPT (``defer_mail``), and its reply
        self.deferred: tuple[str, list[str], dict[str, str]] | None = None
        self.mail_reply = ""
        #: MAIL's arguments and the lone recipient, kept to go with the message (``rcpt_with_message``)
        #: on ``conn``, which has seen nothing of them yet; ``kept``: that connection is a kept one
        self.held: tuple[tuple[str, list[str], dict[str, str]], Rcpt] | None = None
        self.kept = False
        #: the parameters of the MAIL that opened the transaction on ``conn``, as sent
        self.mail_options: list[str] = []

    def defer_mail(self, mail_from: str, mail_options: list[str], xforward: dict[str, str]) -> None:
        """Keep MAIL to send with the RCPT that follows (``SmtpFilterServer.handle_MAIL``)."""
        self.deferred = (mail_from, mail_options, xforward)
        self.mail_reply = ""

    async def deferred_mail_reply(self) -> str:
        """The next hop's reply to the deferred MAIL: sent with the RCPT that followed it, or
        now, alone, when that RCPT was refused before it reached us (a syntax error)."""
        if self.deferred is not None:
            self.mail_reply = await self.mail(*self.deferred)
        return self.mail_reply

    async def mail(self, mail_from: str, mail_options: list[str], xforward: dict[str, str]) -> str:
        self.busy = True
        try:
            return (await self._mail(mail_from, mail_options, xforward))[0]
        finally:
            self.busy = False

    async def _mail(self, mail_from: str, mail_options: list[str], xforward: dict[str, str],
                    rcpt: Rcpt | None = None) -> tuple[str, str]:
        """Open a transaction: the replies to MAIL and, when ``rcpt`` is given, to its RCPT (the
        next hop's, or ours when MAIL was refused), pipelined when the next hop allows it."""
        self.deferred = None
        await self._end()  # a transaction our client dropped without RSET (EHLO, a refused DATA)
        for attempt in (0, 1):
            try:
                conn, kept = await self.server._borrow(fresh=attempt > 0)
            except (OSError, TimeoutError, NextHopError) as exc:
                return _unavailable(exc), _NEED_MAIL
            pipelined = rcpt is not None and "PIPELINING" in conn.extensions
            try:
                lines = _opening(conn, mail_from, mail_options, xforward)
                if pipelined:
                    lines.append(_rcpt_line(conn, rcpt))  # type: ignore[arg-type]
                replies = await conn.commands(lines)
                code, msg = replies[len(lines) - 1 - pipelined] if len(replies) == len(lines) else replies[-1]
            except (OSError, TimeoutError, NextHopError) as exc:
                self.server._discard(conn)
                if kept:  # the next hop closed the kept connection meanwhile: once more, on a new one
                    continue
                return _unavailable(exc), _NEED_MAIL
            except BaseException:
                self.server._discard(conn)
                raise
            if code == 421:
                self.server._discard(conn)
                if kept:
                    continue
            elif code == 250:
                self.conn, self.mail_options = conn, mail_options
                if rcpt is None:
                    return _reply(code, msg), ""
                if pipelined:
                    return _reply(code, msg), self._rcpt_reply(*replies[-1])
                return _reply(code, msg), await self._rcpt(rcpt)
            else:
                self.server._give_back(conn)  # sender refused: no transaction was opened
            return _reply(code, msg), _NEED_MAIL
        return "451 4.4.1 Next hop unavailable, try again later", _NEED_MAIL

    async def rcpt(self, rcpt: Rcpt) -> str:
        self.busy = True
        try:
            if self.deferred is not None:  # MAIL and this RCPT in one round trip
                self.mail_reply, reply = await self._mail(*self.deferred, rcpt=rcpt)
                return reply
            return await self._rcpt(rcpt)
        finally:
            self.busy = False

    async def rcpt_with_message(self, rcpt: Rcpt) -> str:
        """Our reply to the transaction's first and only recipient (its client pipelined MAIL, this
        RCPT and DATA or BDAT), with MAIL deferred (``defer_mail``): the whole transaction, MAIL,
        RCPT and the message, then goes to the next hop in one write once the message is here
        (:meth:`_whole`), where step by step it takes two round trips, four writes on our side.

        So this recipient is accepted here before the next hop has, and the next hop's refusal of
        it, if any, is our reply at the end of the data.  For a lone recipient that is the same
        outcome, a refusal of the one recipient (a 5xx bounces it, a 4xx keeps it queued); a second
        recipient would make it wrong for the other, and is never held.  The connection is taken
        now, so that a next hop that cannot be reached is still refused at MAIL; one that does not
        announce PIPELINING and CHUNKING is mirrored step by step, as before."""
        self.busy = True
        try:
            mail, self.deferred = self.deferred, None
            assert mail is not None
            await self._end()
            try:
                conn, kept = await self.server._borrow()
            except (OSError, TimeoutError, NextHopError) as exc:
                self.mail_reply = _unavailable(exc)
                return _NEED_MAIL
            if not {"PIPELINING", "CHUNKING"} <= conn.extensions:
                self.server._give_back(conn)  # taken again at once by _mail (the most recent idle one)
                self.mail_reply, reply = await self._mail(*mail, rcpt=rcpt)
                return reply
            self.conn, self.kept, self.held = conn, kept, (mail, rcpt)
            self.mail_reply = "250 2.1.0 Ok"
            return "250 2.1.5 Ok"
        finally:
            self.busy = False

    async def _whole(self, payload: bytes) -> str:
        """The held transaction (``rcpt_with_message``) and its message in one write; our reply is
        the first refusal among the next hop's replies to MAIL, RCPT and BDAT, or its 250.

        A kept connection the next hop closed while it was idle is replaced once, as at MAIL: one
        that ends with no reply at all, or whose first reply is a 421 (Postfix's smtpd writes
        ``421 4.4.2 ... Error: timeout exceeded`` to a client idle past ``smtpd_timeout``, then
        closes).  Replies come in order (RFC 2920), and a 421 closes the session (RFC 5321 section
        3.8), so the next hop took none of the transaction: sending it again cannot make a second
        copy.  After any refusal the connection is closed rather than kept: what a next hop does
        with the chunk of a refused BDAT is its own (RFC 3030 leaves the state open), and the
        bytes of a message must never be read as commands."""
        assert self.held is not None
        (mail_from, mail_options, xforward), rcpt = self.held
        conn, kept = self.conn, self.kept
        self.held, self.conn = None, None
        assert conn is not None
        for attempt in (0, 1):
            lines = _opening(conn, mail_from, mail_options, xforward)
            lines.append(_rcpt_line(conn, rcpt))
            replies: list[tuple[int, str]] = []
            try:
                await conn.transaction(lines, payload, replies)
            except (OSError, TimeoutError, NextHopError) as exc:
                self.server._discard(conn)
                if not (kept and attempt == 0 and not replies and not isinstance(exc, TimeoutError)):
                    return _unavailable(exc)
                failed = _unavailable(exc)
            except BaseException:
                self.server._discard(conn)
                raise
            else:
                if kept and attempt == 0 and replies[0][0] == 421:
                    self.server._discard(conn)
                    failed = _reply(*replies[0])
                else:
                    # the replies that matter: MAIL's, RCPT's and BDAT's (XFORWARD's, first, does not)
                    for code, msg in replies[len(lines) - 2:]:
                        if not 200 <= code < 300:  # 251 and the like accept a recipient too
                            self.server._discard(conn)
                            return _reply(code if 400 <= code < 600 else 451, msg)
                    if len(replies) == len(lines) + 1:
                        self.server._give_back(conn)
                        return _reply(*replies[-1])
                    self.server._discard(conn)
                    return "451 4.4.1 Next hop unavailable, try again later"
            # the kept connection had been closed: once more, on a new one
            try:
                conn, kept = await self.server._borrow(fresh=True)
            except (OSError, TimeoutError, NextHopError) as exc:
                return _unavailable(exc)
            if not {"PIPELINING", "CHUNKING"} <= conn.extensions:
                self.server._give_back(conn)  # the next hop changed: our client retries, step by step
                return failed
        return "451 4.4.1 Next hop unavailable, try again later"  # not reached: the second try returns

    async def _rcpt(self, rcpt: Rcpt) -> str:
        if self.conn is None:
            return "451 4.4.1 Next hop unavailable, try again later"
        try:
            code, msg = await self.conn.command(_rcpt_line(self.conn, rcpt))
        except (OSError, TimeoutError, NextHopError) as exc:
            self._lose()
            return _unavailable(exc)
        except BaseException:
            self._lose()
            raise
        return self._rcpt_reply(code, msg)

    def _rcpt_reply(self, code: int, msg: str) -> str:
        if code == 421:
            self._lose()
        return _reply(code, msg)

    async def data(self, payload: bytes) -> str:
        self.busy = True
        try:
            return await self._data(payload)
        finally:
            self.busy = False

    async def _data(self, payload: bytes) -> str:
        """Send the message; the next hop's one reply covers every recipient it accepted.  One
        the next hop cannot take as its MAIL declared it (``_unsendable``) is not sent: the
        transaction ends there, and that is our reply."""
        if self.conn is not None:
            refusal = _unsendable(self.conn, self.held[0][1] if self.held is not None else self.mail_options, payload)
            if refusal is not None:
                await self._end()
                return refusal
        if self.held is not None:
            return await self._whole(payload)
        conn, self.conn = self.conn, None
        if conn is None:
            return "451 4.4.1 Next hop unavailable, try again later"
        try:
            code, msg, still_open = await conn.data(payload)
        except (OSError, TimeoutError, NextHopError) as exc:  # cut off or too slow: the message is not there
            self.server._discard(conn)
            return _unavailable(exc)
        except BaseException:
            self.server._discard(conn)
            raise
        if still_open:  # DATA or BDAT refused: end the transaction
            self.conn = conn
            await self._end()
            return _reply(code if 400 <= code < 600 else 451, msg)
        if code == 421:
            self.server._discard(conn)
        else:
            self.server._give_back(conn)
        return _reply(code, msg)

    async def reset(self) -> str:
        """End the transaction without a message (our client's RSET, a refused message, a
        disconnect)."""
        self.busy = True
        try:
            await self._end()
        finally:
            self.busy = False
        return "250 2.0.0 Ok"

    async def _end(self) -> None:
        conn, self.conn = self.conn, None
        if conn is None:
            return
        if self.held is not None:  # the next hop has seen nothing of this transaction
            self.held = None
            self.server._give_back(conn)
            return
        try:
            code, _ = await conn.command("RSET")
        except (OSError, TimeoutError, NextHopError):
            code = 0
        except BaseException:
            self.server._discard(conn)
            raise
        if code == 250:
            self.server._give_back(conn)
        else:
            self.server._discard(conn)

    def _lose(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            self.server._discard(conn)
