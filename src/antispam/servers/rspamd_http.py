"""An HTTP endpoint speaking rspamd's protocol, so ``rspamc`` and MTAs with rspamd support use
antispam unchanged: ``antispam serve rspamd-http``.

==================  =========================================================
``POST /checkv2``   the message in the body, envelope in request headers
                    (``IP``, ``Helo``, ``Hostname``, ``From``, ``Rcpt``, ``User``,
                    ``Queue-Id``); answers the verdict as JSON (``Verdict.to_dict``)
                    under the settings profile of ``Deliver-To`` or the first ``Rcpt``
``POST /learnspam`` ``POST /learnham``: teach the learners; ``{"success": true}``
``GET /ping``       ``pong``
``CHECK RSPAMC/1.3`` the older line protocol on the same port, for Exim's ``variant=rspamd``
``GET /metrics``    Prometheus metrics, when the server has them
==================  =========================================================

HTTP/1.1 with keep-alive, ``Content-Length`` or chunked request bodies; one small
parser here, since the protocol needs nothing more and a web framework would be
a dependency for four routes.
"""

from __future__ import annotations

import json
from typing import Any

from ..message import Envelope
from .common import Connection, ProtocolError, RequestError, Server

_REASONS = {200: "OK", 208: "Already Reported", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 403: "Forbidden",
            413: "Payload Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}
_MAX_LINE = 16 * 1024
_MAX_HEADERS = 100


def response(status: int, body: bytes, content_type: str = "application/json", keep_alive: bool = True) -> bytes:
    head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            f"Connection: {'keep-alive' if keep_alive else 'close'}\r\nServer: antispam\r\n\r\n")
    return head.encode() + body


def _json(status: int, obj: Any, keep_alive: bool = True) -> bytes:
    return response(status, json.dumps(obj).encode(), keep_alive=keep_alive)


class RspamdHttpServer(Server):
    """``antispam serve rspamd-http``: see the module docstring."""

    name = "rspamd_http"

    async def refuse(self, conn: Connection, reason: str) -> None:
        status = 403 if reason == "not allowed" else 503
        try:
            await conn.write(_json(status, {"error": reason}, keep_alive=False))
        except (OSError, TimeoutError):
            pass

    async def handle(self, conn: Connection) -> None:
        while not self.closing:
            first = await conn.readline(_MAX_LINE)
            if not first:
                return
            if first in (b"\r\n", b"\n"):
                continue
            parts = first.decode("latin-1").split()
            if len(parts) == 2 and parts[1].startswith("RSPAMC/"):
                await self._legacy(conn, parts[0])
                return
            if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                await conn.write(_json(400, {"error": "bad request line"}, keep_alive=False))
                return
            method, target, version = parts
            headers = await self._headers(conn)
            keep = (version == "HTTP/1.1" and headers.get("connection", [""])[-1].lower() != "close") or \
                headers.get("connection", [""])[-1].lower() == "keep-alive"
            conn.busy = True
            try:
                body = await self._body(conn, headers)
                out = await self._route(conn, method, target.split("?", 1)[0], headers, body, keep)
            except RequestError as exc:
                self._count_error("request")
                keep = keep and exc.code not in (400, 413)
                out = _json(exc.code, {"error": exc.text}, keep_alive=keep)
            await conn.write(out)
            conn.busy = False
            if not keep:
                return

    async def _legacy(self, conn: Connection, method: str) -> None:
        """rspamd's older line protocol, which Exim's ``spamd_address = ... variant=rspamd`` speaks:
        ``CHECK RSPAMC/1.3``, the same envelope headers as HTTP, ``Content-length``, the message;
        answered with ``RSPAMD/1.3 0 EX_OK``, a ``Metric: default; True; score / required / reject``
        line, ``Action:`` and one ``Symbol:`` line per symbol, then the connection closes."""
        headers = await self._headers(conn)
        if method not in ("CHECK", "SYMBOLS"):
            await conn.write(b"RSPAMD/1.3 76 EX_PROTOCOL unsupported command\r\n\r\n")
            return
        conn.busy = True
        try:
            body = await self._body(conn, headers)
        except RequestError as exc:
            await conn.write(f"RSPAMD/1.3 65 EX_DATAERR {exc.text}\r\n\r\n".encode())
            return
        env = _envelope(headers)
        profile = self.scanner.profile_for(env.rcpt_tos[0] if env.rcpt_tos else None)
        try:
            v = await self.scan(body, env, profile, peer=conn.peer_ip, client_ip=env.client_ip or "",
                                queue_id=env.queue_id or "", protocol="RSPAMC")
        except Exception:
            await conn.write(b"RSPAMD/1.3 70 EX_SOFTWARE scan failed\r\n\r\n")
            return
        reject = v.thresholds.get("reject", v.required_score)
        lines = ["RSPAMD/1.3 0 EX_OK",
                 f"Metric: default; {'True' if v.is_spam else 'False'}; {v.score:.2f} / {v.required_score:.2f} / {reject:.2f}",
                 f"Action: {v.action}"]
        lines += [f"Symbol: {s.name}({s.score:.2f})" + (f"; {','.join(s.options)}" if s.options else "")
                  for s in sorted(v.symbols.values(), key=lambda s: (-abs(s.score), s.name))]
        await conn.write(("\r\n".join(lines) + "\r\n\r\n").encode())

    async def _headers(self, conn: Connection) -> dict[str, list[str]]:
        headers: dict[str, list[str]] = {}
        for _ in range(_MAX_HEADERS + 1):
            line = await conn.readline(_MAX_LINE)
            if not line:
                raise ProtocolError("connection closed inside the request headers")
            if line in (b"\r\n", b"\n"):
                return headers
            name, sep, value = line.decode("utf-8", "surrogateescape").partition(":")
            if not sep:
                raise ProtocolError("bad header line")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
        raise ProtocolError("too many request headers")

    async def _body(self, conn: Connection, headers: dict[str, list[str]]) -> bytes:
        limit = self.settings.max_size
        if "chunked" in headers.get("transfer-encoding", [""])[-1].lower():
            body = bytearray()
            while True:
                size_line = await conn.readline(_MAX_LINE)
                try:
                    size = int(size_line.split(b";", 1)[0].strip() or b"x", 16)
                except ValueError:
                    raise RequestError(400, "bad chunk size") from None
                if size == 0:
                    while (await conn.readline(_MAX_LINE)) not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(body)
                if len(body) + size > limit:
                    raise RequestError(413, f"message larger than {limit} bytes")
                body += await conn.readexactly(size)
                await conn.readline(_MAX_LINE)
        try:
            n = int(headers.get("content-length", ["0"])[-1])
        except ValueError:
            raise RequestError(400, "bad Content-Length") from None
        if n < 0:
            raise RequestError(400, "bad Content-Length")
        if n > limit:
            await conn.discard(n)
            raise RequestError(413, f"message larger than {limit} bytes")
        return await conn.readexactly(n) if n else b""

    async def _route(self, conn: Connection, method: str, path: str, headers: dict[str, list[str]],
                     body: bytes, keep: bool) -> bytes:
        if path == "/ping":
            return response(200, b"pong\r\n", "text/plain", keep)
        if path == "/metrics" and method == "GET" and self.metrics is not None:
            return response(200, self.metrics.render(), "text/plain; version=0.0.4", keep)
        if path in ("/checkv2", "/symbols"):
            if method != "POST":
                raise RequestError(405, "use POST with the message as the body")
            env = _envelope(headers)
            # settings of the mailbox being delivered to (Deliver-To), else of the first recipient
            deliver_to = (headers.get("deliver-to") or [None])[-1]
            profile = self.scanner.profile_for(deliver_to or (env.rcpt_tos[0] if env.rcpt_tos else None))
            try:
                verdict = await self.scan(body, env, profile, peer=conn.peer_ip, client_ip=env.client_ip or "",
                                          queue_id=env.queue_id or "")
            except Exception:
                raise RequestError(500, "scan failed") from None
            return _json(200, verdict.to_dict(), keep)
        if path in ("/learnspam", "/learnham"):
            if method != "POST":
                raise RequestError(405, "use POST with the message as the body")
            spam = path == "/learnspam"
            learned = await self.scanner.learn(body, spam, "rspamd-http")
            self.log.info("learn", extra={"fields": {"server": self.name, "peer": conn.peer_ip,
                                                     "class": "spam" if spam else "ham", "learned": learned}})
            if any(learned.values()):
                return _json(200, {"success": True, "learned": sorted(k for k, v in learned.items() if v)}, keep)
            why = "no learner took the message (already learned, or no learning check is enabled)"
            return _json(208, {"success": False, "error": why}, keep)
        raise RequestError(404, f"no such endpoint {path}")


def _envelope(headers: dict[str, list[str]]) -> Envelope:
    def one(name: str) -> str | None:
        v = headers.get(name)
        return v[-1] if v and v[-1] else None

    rcpts: list[str] = []
    for v in headers.get("rcpt", []):
        rcpts.extend(a.strip().strip("<>") for a in v.split(",") if a.strip())
    mail_from = one("from")
    return Envelope(client_ip=one("ip"), helo=one("helo"), hostname=one("hostname"),
                    mail_from=mail_from.strip("<>") if mail_from else None, rcpt_tos=tuple(rcpts),
                    user=one("user"), queue_id=one("queue-id"))
