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
``next_hop_timeout``, or fails mid-transaction, the client gets 4xx and keeps
the message (Postfix leaves it in its queue and retries).  If this process
dies mid-transaction the client never saw 250 and retries, and the next hop
drops the transaction it never saw end.

Postfix's ``XFORWARD`` is accepted (we announce it in EHLO), so checks see the
original client's address, name and HELO rather than Postfix's loopback
connection; and it is passed on to a next hop that announces it, so the
re-injecting Postfix logs the original client too.
"""

from __future__ import annotations

import asyncio
import contextlib
import smtplib
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope as SmtpEnvelope, Session as SmtpSession, syntax

from ..message import Envelope
from .common import Server, rewrite_headers

XFORWARD_ATTRS = ("NAME", "ADDR", "PORT", "PROTO", "HELO", "IDENT", "SOURCE")
_UNAVAILABLE = {"[UNAVAILABLE]", "[TEMPUNAVAIL]", ""}


def _one_line(text: Any) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return " ".join(str(text).split())


class _FilterSMTP(SMTP):
    """aiosmtpd's SMTP with our admission control (allow-list, connection limit) and XFORWARD."""

    #: RFC 5321 caps lines at 1000 octets, but a filter that refused longer ones would bounce mail
    #: its MTA already accepted (after-queue): take them and let the next hop decide.
    line_length_limit = 64 * 1024

    def __init__(self, server: "SmtpFilterServer", **kw: Any):
        super().__init__(server, **kw)
        self.filter = server
        self.xforward: dict[str, str] = {}
        #: this session's transaction at the next hop
        self.next_hop = _NextHop(server)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.filter._protocols.add(self)
        if self.filter.metrics is not None:
            self.filter.metrics.connections.labels(self.filter.name).inc()

    def connection_lost(self, error: Exception | None) -> None:
        if self in self.filter._protocols:
            self.filter._protocols.discard(self)
            if self.filter.metrics is not None:
                self.filter.metrics.connections.labels(self.filter.name).dec()
        if self.next_hop.conn is not None:  # the client left mid-transaction: end ours at the next hop
            with contextlib.suppress(RuntimeError):  # the relay threads are already shut down
                self.loop.run_in_executor(self.filter._relay_pool, self.next_hop.reset)
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        refusal = self.filter._admit(self.session.peer)
        if refusal is not None:
            await self.push(refusal)
            assert self.transport is not None
            self.transport.close()
            return
        await super()._handle_client()

    @syntax("XFORWARD attribute=value ...")
    async def smtp_XFORWARD(self, arg: str) -> None:
        """Postfix tells us about the original client (only from allowed clients, like Postfix)."""
        if not arg:
            await self.push("501 5.5.4 Syntax: XFORWARD attribute=value ...")
            return
        for item in arg.split():
            name, sep, value = item.partition("=")
            if not sep or name.upper() not in XFORWARD_ATTRS:
                await self.push(f"501 5.5.4 Bad XFORWARD attribute {_one_line(name)[:40]}")
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
        if cfg.mode not in ("after-queue", "before-queue"):  # type: ignore[attr-defined]
            from ..errors import ConfigError

            raise ConfigError(f"mode must be after-queue or before-queue, got {cfg.mode!r}", key="servers.smtp.mode")  # type: ignore[attr-defined]
        self.next_hop = (host.strip("[]"), int(port))
        self._protocols: set[_FilterSMTP] = set()
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._relay_pool = ThreadPoolExecutor(max_workers=max(2, cfg.max_connections), thread_name_prefix="relay")
        #: every open connection to the next hop (closed at shutdown), and the idle ones
        self._connections: set[smtplib.SMTP] = set()
        self._idle_connections: list[smtplib.SMTP] = []
        self._conn_lock = threading.Lock()

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.settings

        def factory() -> _FilterSMTP:
            return _FilterSMTP(self, hostname=cfg.hostname, data_size_limit=cfg.max_size,  # type: ignore[attr-defined]
                               timeout=int(max(1, cfg.timeout)), decode_data=False, enable_SMTPUTF8=True,
                               ident="antispam filter")

        self._server = await loop.create_server(factory, cfg.host, cfg.port, reuse_address=True)
        self._idle.set()
        if self.metrics is not None:
            self.metrics.start_http(cfg)
        self.log.info("listening", extra={"fields": {"server": self.name, "host": cfg.host, "port": self.port,
                                                     "mode": cfg.mode, "next_hop": cfg.next_hop}})  # type: ignore[attr-defined]

    async def stop(self) -> None:
        """Stop accepting; wait for messages being scanned or relayed; then close every connection.
        A sender cut off before our 250 still has its message and retries."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        try:
            await asyncio.wait_for(self._idle.wait(), self.settings.shutdown_timeout)
        except (asyncio.TimeoutError, TimeoutError):
            self.log.warning("shutdown cut off in-flight messages",
                             extra={"fields": {"server": self.name, "count": self._in_flight}})
        for proto in list(self._protocols):
            if proto.transport is not None:
                proto.transport.close()
        await asyncio.sleep(0)
        self._relay_pool.shutdown(wait=False, cancel_futures=True)
        await asyncio.to_thread(self._close_relays)
        if self._own_scanner:
            self.scanner.close()
        if self.metrics is not None:
            self.metrics.close()

    def _admit(self, peer: Any) -> str | None:
        ip = str(peer[0]) if peer else ""
        if self.closing:
            return "421 4.3.2 Shutting down, try again later"
        if not self.allow.allows(ip):
            self._count_error("not_allowed")
            self.log.warning("client refused: not in allow-list", extra={"fields": {"server": self.name, "peer": ip}})
            return "554 5.7.1 Not allowed"
        if len(self._protocols) > self.settings.max_connections:
            self._count_error("too_many_connections")
            return "421 4.3.2 Too many connections, try again later"
        return None

    # ------------------------------------------------------------ aiosmtpd hooks

    async def handle_EHLO(self, server: _FilterSMTP, session: SmtpSession, envelope: SmtpEnvelope,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        responses.insert(-1, "250-XFORWARD " + " ".join(XFORWARD_ATTRS))  # the last line is "250 HELP"
        return responses

    async def handle_MAIL(self, server: _FilterSMTP, session: SmtpSession, envelope: SmtpEnvelope,
                          address: str, mail_options: list[str]) -> str:
        """Open the transaction at the next hop; its reply is ours."""
        reply = await self._next_hop(server.next_hop.mail, address, list(mail_options), dict(server.xforward))
        if reply.startswith("2"):
            envelope.mail_from = address
            envelope.mail_options.extend(mail_options)
        elif reply.startswith("4"):  # a 5xx is the next hop's policy, passed on; a 4xx may be ours to fix
            self._next_hop_refused("MAIL", reply)
        return reply

    async def handle_RCPT(self, server: _FilterSMTP, session: SmtpSession, envelope: SmtpEnvelope,
                          address: str, rcpt_options: list[str]) -> str:
        """The next hop's reply to this recipient, so that it is accepted or refused on its own.

        Per-recipient settings: one transaction carries recipients of one settings profile.
        A recipient whose profile differs from the first one's is deferred with 452 4.5.3, which
        SMTP clients (Postfix included) answer by sending it in a new transaction; each message
        then gets the verdict, headers and reply of its own recipients' settings."""
        if envelope.rcpt_tos and self.scanner.profile_for(address) != self.scanner.profile_for(envelope.rcpt_tos[0]):
            return "452 4.5.3 Recipients with other spam settings: send in a separate transaction"
        reply = await self._next_hop(server.next_hop.rcpt, address)
        if reply.startswith("2"):
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
        elif reply.startswith("4"):
            self._next_hop_refused("RCPT", reply)
        return reply

    async def handle_RSET(self, server: _FilterSMTP, session: SmtpSession, envelope: SmtpEnvelope) -> str:
        await self._next_hop(server.next_hop.reset)
        return "250 2.0.0 Ok"

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
                await self._next_hop(server.next_hop.reset)
                return cfg.tempfail_reply  # type: ignore[attr-defined]
            out = raw  # fail open: deliver unscanned rather than hold mail hostage to a bug
        else:
            if cfg.mode == "before-queue":  # type: ignore[attr-defined]
                reply = None
                if verdict.action == "reject":
                    reply = cfg.reject_reply  # type: ignore[attr-defined]
                elif verdict.action in ("soft reject", "greylist"):
                    reply = cfg.tempfail_reply  # type: ignore[attr-defined]
                if reply is not None:
                    await self._next_hop(server.next_hop.reset)
                    return reply
            out = rewrite_headers(raw, verdict)
        reply = await self._next_hop(server.next_hop.data, out)
        if not reply.startswith("2"):
            self._next_hop_refused("DATA", reply)
        return reply

    async def _next_hop(self, method: Any, *args: Any) -> str:
        """Run one step of a session's next-hop transaction in a relay thread (smtplib blocks)."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._relay_pool, method, *args)
        except RuntimeError:  # the relay threads are shut down: we are stopping
            return "421 4.3.2 Shutting down, try again later"

    def _next_hop_refused(self, stage: str, reply: str) -> None:
        self._count_error("next_hop")
        self.log.warning("next hop did not take the message", extra={"fields": {
            "server": self.name, "stage": stage, "reply": reply, "next_hop": self.settings.next_hop}})  # type: ignore[attr-defined]

    # ------------------------------------------------------------ connections to the next hop (in threads)

    def _borrow(self) -> tuple[smtplib.SMTP, bool]:
        """A connection for one transaction, and whether it was kept from an earlier one.

        Connections stay open between transactions (connect, greeting and EHLO cost about as much
        as the transaction); the most recently used one is taken first, as the least likely to
        have been closed by the next hop meanwhile."""
        with self._conn_lock:
            if self._idle_connections:
                return self._idle_connections.pop(), True
        cfg = self.settings
        host, port = self.next_hop
        s = smtplib.SMTP(host, port, local_hostname=cfg.hostname, timeout=cfg.next_hop_timeout)  # type: ignore[attr-defined]
        try:
            s.ehlo_or_helo_if_needed()
        except BaseException:
            s.close()
            raise
        with self._conn_lock:
            self._connections.add(s)
        return s, False

    def _give_back(self, s: smtplib.SMTP) -> None:
        """A connection whose transaction ended cleanly, kept for the next one."""
        with self._conn_lock:
            if not self.closing and s in self._connections:
                self._idle_connections.append(s)
                return
        self._discard(s)

    def _discard(self, s: smtplib.SMTP) -> None:
        with self._conn_lock:
            self._connections.discard(s)
        s.close()

    def _close_relays(self) -> None:
        with self._conn_lock:
            conns, self._connections = list(self._connections), set()
            self._idle_connections.clear()
        for s in conns:
            try:
                s.quit()
            except (OSError, smtplib.SMTPException):
                s.close()


def _reply(code: int, msg: Any) -> str:
    """The next hop's reply, for our client.  Its 421 (closing the connection) becomes 451: it is
    the next hop's connection that closes, not ours, and a 421 tells our client to hang up."""
    return f"{451 if code == 421 else code} {_one_line(msg)}"


def _unavailable(exc: BaseException) -> str:
    return f"451 4.4.1 Next hop unavailable, try again later ({_one_line(type(exc).__name__)})"


class _NextHop:
    """One client session's transaction at the next hop, mirrored step by step.

    smtplib blocks, so every method runs in a relay thread; a lock keeps the steps of one
    session in order (the client's disconnect can race with a step still running).  The
    connection is borrowed from the server's idle ones at MAIL and given back when the
    transaction ends (after DATA, at RSET, or when the client goes), so two transactions
    never share one.  Every method returns the SMTP reply to give our client.
    """

    def __init__(self, server: SmtpFilterServer):
        self.server = server
        self.conn: smtplib.SMTP | None = None
        self._lock = threading.Lock()

    def mail(self, mail_from: str, mail_options: list[str], xforward: dict[str, str]) -> str:
        with self._lock:
            self._end()  # a transaction our client dropped without RSET (EHLO, a refused DATA)
            for _ in (0, 1):
                try:
                    conn, kept = self.server._borrow()
                except (OSError, smtplib.SMTPException) as exc:
                    return _unavailable(exc)
                try:
                    # XFORWARD describes one transaction (the next hop forgets it after), so it goes every time.
                    if xforward and conn.has_extn("xforward"):
                        conn.docmd("XFORWARD", " ".join(f"{k}={v}" for k, v in xforward.items()))
                    wanted = {o.upper() for o in mail_options}
                    options = [o for o, ext in (("BODY=8BITMIME", "8bitmime"), ("SMTPUTF8", "smtputf8"))
                               if o in wanted and conn.has_extn(ext)]
                    code, msg = conn.mail(mail_from, options)
                except (OSError, smtplib.SMTPException) as exc:
                    self.server._discard(conn)
                    if kept:  # the next hop closed the kept connection meanwhile: once more, on a new one
                        continue
                    return _unavailable(exc)
                if code == 421:
                    self.server._discard(conn)
                    if kept:
                        continue
                elif code == 250:
                    self.conn = conn
                else:
                    self.server._give_back(conn)  # sender refused: no transaction was opened
                return _reply(code, msg)
            return "451 4.4.1 Next hop unavailable, try again later"

    def rcpt(self, address: str) -> str:
        with self._lock:
            if self.conn is None:
                return "451 4.4.1 Next hop unavailable, try again later"
            try:
                code, msg = self.conn.rcpt(address)
            except (OSError, smtplib.SMTPException) as exc:
                self._lose()
                return _unavailable(exc)
            if code == 421:
                self._lose()
            return _reply(code, msg)

    def data(self, payload: bytes) -> str:
        """Send the message; the next hop's one reply covers every recipient it accepted."""
        with self._lock:
            conn, self.conn = self.conn, None
            if conn is None:
                return "451 4.4.1 Next hop unavailable, try again later"
            try:
                code, msg = conn.data(payload)
            except smtplib.SMTPDataError as exc:  # DATA itself refused: the transaction is still open
                self.conn = conn
                self._end()
                return _reply(exc.smtp_code if 400 <= exc.smtp_code < 600 else 451, exc.smtp_error)
            except (OSError, smtplib.SMTPException) as exc:  # cut off or too slow: the message is not there
                self.server._discard(conn)
                return _unavailable(exc)
            if code == 421:
                self.server._discard(conn)
            else:
                self.server._give_back(conn)
            return _reply(code, msg)

    def reset(self) -> str:
        """End the transaction without a message (our client's RSET, a refused message, a
        disconnect)."""
        with self._lock:
            self._end()
        return "250 2.0.0 Ok"

    def _end(self) -> None:
        conn, self.conn = self.conn, None
        if conn is None:
            return
        try:
            code, _ = conn.rset()
        except (OSError, smtplib.SMTPException):
            self.server._discard(conn)
            return
        if code == 250:
            self.server._give_back(conn)
        else:
            self.server._discard(conn)

    def _lose(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            self.server._discard(conn)
