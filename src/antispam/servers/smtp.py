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

No message is ever lost: we answer ``250`` only after the next hop answered
``250`` to the same DATA.  If the next hop is down, slow past
``next_hop_timeout``, or refuses a recipient temporarily, the sender gets 4xx
and keeps the message (Postfix leaves it in its queue and retries).  A
recipient refused permanently by the next hop makes the whole message fail
with that 5xx (nothing is delivered partially, so a retry never duplicates).
If this process dies mid-transaction the sender never saw 250 and retries.

Postfix's ``XFORWARD`` is accepted (we announce it in EHLO), so checks see the
original client's address, name and HELO rather than Postfix's loopback
connection; and it is passed on to a next hop that announces it, so the
re-injecting Postfix logs the original client too.
"""

from __future__ import annotations

import asyncio
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
        self._local = threading.local()
        self._connections: set[smtplib.SMTP] = set()
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

    async def handle_RCPT(self, server: _FilterSMTP, session: SmtpSession, envelope: SmtpEnvelope,
                          address: str, rcpt_options: list[str]) -> str:
        """Per-recipient settings: one transaction carries recipients of one settings profile.
        A recipient whose profile differs from the first one's is deferred with 452 4.5.3, which
        SMTP clients (Postfix included) answer by sending it in a new transaction; each message
        then gets the verdict, headers and reply of its own recipients' settings."""
        if envelope.rcpt_tos and self.scanner.profile_for(address) != self.scanner.profile_for(envelope.rcpt_tos[0]):
            return "452 4.5.3 Recipients with other spam settings: send in a separate transaction"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

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
                return cfg.tempfail_reply  # type: ignore[attr-defined]
            out = raw  # fail open: deliver unscanned rather than hold mail hostage to a bug
        else:
            if cfg.mode == "before-queue":  # type: ignore[attr-defined]
                if verdict.action == "reject":
                    return cfg.reject_reply  # type: ignore[attr-defined]
                if verdict.action in ("soft reject", "greylist"):
                    return cfg.tempfail_reply  # type: ignore[attr-defined]
            out = rewrite_headers(raw, verdict)
        loop = asyncio.get_running_loop()
        reply = await loop.run_in_executor(self._relay_pool, self._relay, envelope.mail_from or "",
                                           list(envelope.rcpt_tos), out, dict(xf),
                                           list(envelope.mail_options))
        if not reply.startswith("2"):
            self._count_error("next_hop")
            self.log.warning("next hop did not take the message", extra={"fields": {
                "server": self.name, "reply": reply, "next_hop": cfg.next_hop}})  # type: ignore[attr-defined]
        return reply

    # ------------------------------------------------------------ re-injection (in a thread)

    def _relay(self, mail_from: str, rcpts: list[str], data: bytes, xforward: dict[str, str],
               mail_options: list[str]) -> str:
        """Hand the message to the next hop; the SMTP reply to give our client.

        Each relay thread keeps its connection to the next hop open between messages (connect,
        greeting and EHLO cost about as much as the transaction).  A kept connection the next
        hop has meanwhile closed fails at its first command, before anything was sent: then the
        message goes again on a fresh connection.  Any failure later is a 4xx to our client.
        """
        for attempt in (0, 1):
            s = getattr(self._local, "smtp", None)
            kept = s is not None
            try:
                if s is None:
                    s = self._connect()
                return self._transaction(s, mail_from, rcpts, data, xforward, mail_options, stale_ok=kept)
            except _Stale:
                self._drop()
            except smtplib.SMTPResponseException as exc:
                self._drop()
                code = exc.smtp_code if 400 <= exc.smtp_code < 600 else 451
                return f"{code} {_one_line(exc.smtp_error)}"
            except (OSError, smtplib.SMTPException) as exc:
                self._drop()
                return f"451 4.4.1 Next hop unavailable, try again later ({_one_line(type(exc).__name__)})"
        return "451 4.4.1 Next hop unavailable, try again later"

    def _connect(self) -> smtplib.SMTP:
        cfg = self.settings
        host, port = self.next_hop
        s = smtplib.SMTP(host, port, local_hostname=cfg.hostname, timeout=cfg.next_hop_timeout)  # type: ignore[attr-defined]
        try:
            s.ehlo_or_helo_if_needed()
        except BaseException:
            s.close()
            raise
        self._local.smtp = s
        with self._conn_lock:
            self._connections.add(s)
        return s

    def _drop(self) -> None:
        s = getattr(self._local, "smtp", None)
        self._local.smtp = None
        if s is not None:
            with self._conn_lock:
                self._connections.discard(s)
            s.close()

    def _transaction(self, s: smtplib.SMTP, mail_from: str, rcpts: list[str], data: bytes,
                     xforward: dict[str, str], mail_options: list[str], stale_ok: bool) -> str:
        try:
            # XFORWARD describes one transaction (the next hop forgets it after), so it goes every time.
            if xforward and s.has_extn("xforward"):
                s.docmd("XFORWARD", " ".join(f"{k}={v}" for k, v in xforward.items()))
            wanted = {o.upper() for o in mail_options}
            options = [o for o, ext in (("BODY=8BITMIME", "8bitmime"), ("SMTPUTF8", "smtputf8"))
                       if o in wanted and s.has_extn(ext)]
            code, msg = s.mail(mail_from, options)
        except (smtplib.SMTPServerDisconnected, ConnectionError) as exc:
            if stale_ok:
                raise _Stale() from exc
            raise
        if code == 421 and stale_ok:
            raise _Stale()
        if code != 250:
            s.rset()
            return f"{code} {_one_line(msg)}"
        refused = []
        for r in rcpts:
            code, msg = s.rcpt(r)
            if code not in (250, 251):
                refused.append((code, _one_line(msg)))
        if refused:
            s.rset()
            code, msg = next((c for c in refused if 400 <= c[0] < 500), refused[0])
            return f"{code} {msg}"
        code, msg = s.data(data)
        return f"{code} {_one_line(msg)}"

    def _close_relays(self) -> None:
        with self._conn_lock:
            conns, self._connections = list(self._connections), set()
        for s in conns:
            try:
                s.quit()
            except (OSError, smtplib.SMTPException):
                s.close()


class _Stale(Exception):
    """A kept connection to the next hop turned out closed before the transaction began."""
