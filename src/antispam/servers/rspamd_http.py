"""An HTTP endpoint speaking rspamd's protocol, so ``rspamc`` and MTAs with rspamd support use
antispam unchanged: ``antispam serve rspamd-http``.

==================  =========================================================
``POST /checkv2``   the message in the body, envelope in request headers
                    (``IP``, ``Helo``, ``Hostname``, ``From``, ``Rcpt``, ``User``,
                    ``Queue-Id``); answers the verdict as JSON (``Verdict.to_dict``)
                    under the profile ``Settings-ID`` names, else that of
                    ``Deliver-To`` or the first ``Rcpt``
``POST /learnspam`` ``POST /learnham``: teach the learners; ``{"success": true}``
(GET, PUT)          as POST, as rspamd takes them: rspamd_proxy sends GET, the message
                    as the body or, from a loopback peer, in shared memory (``Shm``)
``POST /check``     ``/symbols``: the same, in rspamd's older JSON shape (protocol v1:
                    ``{"default": {"is_spam", "score", ..., SYMBOL: {...}}}``)
``GET /ping``       ``pong``
``CHECK RSPAMC/1.3`` the older line protocol on the same port, for Exim's ``variant=rspamd``
``CHECK SPAMC/1.5`` ``SYMBOLS``: spamc's, as rspamd answers them (``spamc -c``, ``-y``)
``GET /metrics``    Prometheus metrics, when the server has them
==================  =========================================================

HTTP/1.1 with keep-alive, ``Content-Length`` or chunked request bodies and
``Expect: 100-continue``; a ``Compression: zstd`` body (``rspamc -z``) is decompressed.
One small parser here, since the protocol needs nothing more and a web framework
would be a dependency for four routes.  A request the
parser cannot take is answered (400, 413, 414 or 431 with a JSON ``error``) and
the connection closed: without an answer a client cannot tell a bad request from
a server that died.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import stat
import time
from typing import Any

try:  # a dependency of the servers extra; a zstd-compressed request is refused without it
    import zstandard
except ImportError:  # pragma: no cover - depends on the installation
    zstandard = None

from ..config import ACTIONS
from ..message import Envelope
from ..verdict import Verdict, shown_required, shown_score
from .common import Connection, ProtocolError, RequestError, Server, linger, parse_length

_REASONS = {200: "OK", 208: "Already Reported", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 403: "Forbidden",
            408: "Request Timeout", 413: "Content Too Large", 414: "URI Too Long", 415: "Unsupported Media Type",
            431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}
_MAX_LINE = 16 * 1024
_MAX_HEADERS = 100
#: RFC 9112 7.1: chunk-size = 1*HEXDIG, then optional chunk extensions (BWS ";" ...) we ignore.
#: int(x, 16) alone would take "-5" (a negative read), "0x5", "+5" and "5_0".
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]+)[ \t]*(?:;[^\r\n]*)?\r?\n")
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


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
    #: a request is in flight from its first byte: a graceful stop lets a client still sending it finish
    in_flight_on_input = True
    #: RFC 9110 15.5.9: the request did not arrive whole within request_timeout (or a read of it
    #: within timeout); the connection is closed after it
    timeout_reply = _json(408, {"error": "request timeout"}, keep_alive=False)

    def __init__(self, *args: Any, **kw: Any):
        super().__init__(*args, **kw)
        #: the unknown ``Settings-ID`` values already logged (see ``_profile``)
        self._unknown_ids: set[str] = set()

    async def refuse(self, conn: Connection, reason: str) -> None:
        status = 403 if reason == "not allowed" else 503
        try:
            await conn.write(_json(status, {"error": reason}, keep_alive=False))
        except (OSError, TimeoutError):
            pass

    async def handle(self, conn: Connection) -> None:
        """The requests of one connection, in turn, while the client keeps it alive."""
        while not self.closing:
            try:
                first = await conn.readline(_MAX_LINE)
            except ProtocolError:
                # RFC 9112 3: a request-target longer than the server parses is answered 414
                self._count_error("request")
                await linger(conn, _json(414, {"error": "request line too long"}, keep_alive=False))
                return
            if not first:
                return
            if first in (b"\r\n", b"\n"):
                continue
            # A request has begun: it is in flight (a graceful stop waits for it), and its headers
            # and body must arrive within request_timeout (the sweeper reads this timestamp).
            conn.busy = True
            conn.request_since = time.monotonic()
            parts = first.decode("latin-1").split()
            if len(parts) == 2 and parts[1].startswith(("RSPAMC/", "SPAMC/")):
                await self._legacy(conn, parts[0], spamc=parts[1].startswith("SPAMC/"))
                return
            if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                await linger(conn, _json(400, {"error": "bad request line"}, keep_alive=False))
                return
            method, target, version = parts
            keep = refused = False
            try:
                headers = await self._headers(conn)
                keep = (version == "HTTP/1.1" and headers.get("connection", [""])[-1].lower() != "close") or \
                    headers.get("connection", [""])[-1].lower() == "keep-alive"
                # RFC 9110 10.1.1: an HTTP/1.0 request's 100-continue expectation is ignored
                if version == "HTTP/1.1" and any(v.lower() == "100-continue" for v in headers.get("expect", [])):
                    await self._continue(conn, headers)
                body = await self._body(conn, headers)
                conn.request_since = None  # read in time; the scan has its own deadline
                out = await self._route(conn, method, target.split("?", 1)[0], headers, body, keep)
            except RequestError as exc:
                conn.request_since = None  # answered below: no timeout answer after this one
                self._count_error("request")
                # after a malformed or refused request the connection is out of step: close it
                keep = keep and exc.code not in (400, 413, 431)
                refused = True
                out = _json(exc.code, {"error": exc.text}, keep_alive=keep)
            except ProtocolError as exc:
                # cut off inside the headers or the body, a chunk line too long: answer 400 if the
                # client still reads (RFC 9110 15.5.1), then close; the caller counts and logs it
                with contextlib.suppress(OSError, TimeoutError):
                    await linger(conn, _json(400, {"error": str(exc)}, keep_alive=False))
                raise
            if refused and not keep:
                await linger(conn, out)
                return
            await conn.write(out)
            conn.busy = False
            if not keep:
                return

    async def _legacy(self, conn: Connection, method: str, spamc: bool = False) -> None:
        """rspamd's older line protocol, which Exim's ``spamd_address = ... variant=rspamd`` speaks:
        ``CHECK RSPAMC/1.3``, the same envelope headers as HTTP, ``Content-length``, the message;
        answered with ``RSPAMD/1.3 0 EX_OK``, a ``Metric: default; True; score / required / reject``
        line, ``Action:`` and one ``Symbol:`` line per symbol, then the connection closes.
        Malformed requests are answered in this protocol's words (``76 EX_PROTOCOL``; ``65
        EX_DATAERR`` for a message over ``max_size``), never with HTTP, a timeout's too.

        spamc's ``CHECK SPAMC/1.x`` and ``SYMBOLS SPAMC/1.x`` are answered too, as rspamd answers
        them on this port (``spamc -c`` / ``-y`` pointed at it): ``SPAMD/1.1 0 EX_OK``, a ``Spam:
        True ; score / required`` line and the symbol names as the body; other spamc commands
        (spamc's default PROCESS among them) get ``76 EX_PROTOCOL``: ``serve spamd`` has them."""
        version = "SPAMD/1.1" if spamc else "RSPAMD/1.3"
        conn.timeout_reply = f"{version} 79 EX_TIMEOUT timeout\r\n\r\n".encode()
        try:
            headers = await self._headers(conn)
            if method not in ("CHECK", "SYMBOLS"):
                await linger(conn, f"{version} 76 EX_PROTOCOL unsupported command\r\n\r\n".encode())
                return
            body = await self._body(conn, headers)
            conn.request_since = None
        except RequestError as exc:
            code = "65 EX_DATAERR" if exc.code == 413 else "76 EX_PROTOCOL"
            await linger(conn, f"{version} {code} {exc.text}\r\n\r\n".encode())
            return
        except ProtocolError as exc:
            conn.request_since = None
            with contextlib.suppress(OSError, TimeoutError):
                await conn.write(f"{version} 76 EX_PROTOCOL {exc}\r\n\r\n".encode())
            raise
        env = _envelope(headers)
        profile = self._profile(conn, headers, env)
        try:
            v = await self.scan(body, env, profile, peer=conn.peer_ip, client_ip=env.client_ip or "",
                                queue_id=env.queue_id or "", protocol="SPAMC" if spamc else "RSPAMC")
        except Exception:
            await conn.write(f"{version} 70 EX_SOFTWARE scan failed\r\n\r\n".encode())
            return
        symbols = sorted(v.symbols.values(), key=lambda s: (-abs(s.score), s.name))
        if spamc:
            # a ham's printed score stays below the printed required score, and no threshold is
            # printed as "inf"
            score = shown_score(v.score, v.required_score, v.is_spam, digits=2)
            names = (",".join(s.name for s in symbols) + "\r\n").encode()
            await conn.write(f"SPAMD/1.1 0 EX_OK\r\nContent-length: {len(names)}\r\n"
                             f"Spam: {v.is_spam} ; {score} / {shown_required(v.required_score):.2f}\r\n\r\n".encode()
                             + names)
            return
        reject = shown_required(v.thresholds.get("reject", v.required_score))
        lines = ["RSPAMD/1.3 0 EX_OK", metric_line(v, reject), f"Action: {v.action}"]
        lines += [f"Symbol: {s.name}({s.score:.2f})" + (f"; {','.join(s.options)}" if s.options else "")
                  for s in symbols]
        await conn.write(("\r\n".join(lines) + "\r\n\r\n").encode())

    def _profile(self, conn: Connection, headers: dict[str, list[str]], env: Envelope) -> str | None:
        """The settings profile of a request.  rspamd's ``Settings-ID`` names a settings block the
        client chose (outbound mail, a class of users): a ``[profiles]`` entry of that name is our
        equivalent, and wins over the recipient's, as there.  An unknown ID is logged and ignored,
        as rspamd does.  Otherwise the profile of the mailbox being delivered to (``Deliver-To``),
        else of the first recipient."""
        settings_id = (headers.get("settings-id") or [""])[-1]
        if settings_id:
            if settings_id in self.scanner.engine.config.profiles:
                return settings_id
            # once per ID: a proxy that sends one of its own on every message must not write a
            # warning per message (the first few IDs are remembered, not all a client could invent)
            if settings_id not in self._unknown_ids and len(self._unknown_ids) < 64:
                self._unknown_ids.add(settings_id)
                self.log.warning("unknown Settings-ID (no [profiles] entry of that name): scanned without it",
                                 extra={"fields": {"server": self.name, "peer": conn.peer_ip,
                                                   "settings_id": settings_id[:200]}})
        deliver_to = (headers.get("deliver-to") or [None])[-1]
        return self.scanner.profile_for(deliver_to or (env.rcpt_tos[0] if env.rcpt_tos else None))

    async def _headers(self, conn: Connection) -> dict[str, list[str]]:
        """The request's header fields, names lower-cased.  A malformed section is a RequestError,
        answered 400 (RFC 9112 5: a field line without a colon) or 431 (RFC 6585 5: too many or too
        long field lines), then the connection is closed; EOF is a ProtocolError."""
        headers: dict[str, list[str]] = {}
        for _ in range(_MAX_HEADERS + 1):
            try:
                line = await conn.readline(_MAX_LINE)
            except ProtocolError:
                raise RequestError(431, f"header line longer than {_MAX_LINE} bytes") from None
            if not line:
                raise ProtocolError("connection closed inside the request headers")
            if line in (b"\r\n", b"\n"):
                return headers
            name, sep, value = line.decode("utf-8", "surrogateescape").partition(":")
            if not sep:
                raise RequestError(400, "bad header line (no colon)")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
        raise RequestError(431, f"more than {_MAX_HEADERS} header lines")

    async def _continue(self, conn: Connection, headers: dict[str, list[str]]) -> None:
        """Answer ``Expect: 100-continue`` before the body, as RFC 9110 10.1.1 asks: with the final
        status at once when the announced body is too large (the client then never sends it: no
        reading it to drop it), else with ``100 Continue``.  Without this a client waits for the
        interim answer before it sends the body (curl a second per request, others until the
        server's read timeout)."""
        if not _chunked(headers):
            n = _content_length(headers)
            if n > self.settings.max_size:
                raise RequestError(413, f"message larger than {self.settings.max_size} bytes")
        await conn.write(_CONTINUE)

    async def _body(self, conn: Connection, headers: dict[str, list[str]]) -> bytes:
        limit = self.settings.max_size
        if _chunked(headers):
            body = bytearray()
            while True:
                m = _CHUNK_SIZE.fullmatch(await conn.readline(_MAX_LINE))
                if not m:
                    raise RequestError(400, "bad chunk size")
                size = int(m.group(1), 16)
                if size == 0:
                    while (await conn.readline(_MAX_LINE)) not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(body)
                if len(body) + size > limit:
                    raise RequestError(413, f"message larger than {limit} bytes")
                body += await conn.readexactly(size)
                # RFC 9112 7.1: chunk-data is followed by CRLF; anything else means the chunk was
                # longer than its size said, and its rest must not be read as the next size line
                if (await conn.readline(_MAX_LINE)) not in (b"\r\n", b"\n"):
                    raise RequestError(400, "chunk longer than its chunk size")
        n = _content_length(headers)
        if n > limit:
            await conn.discard(n)
            raise RequestError(413, f"message larger than {limit} bytes")
        return await conn.readexactly(n) if n else b""

    def _message(self, conn: Connection, method: str, headers: dict[str, list[str]], body: bytes) -> bytes:
        """The message a check or learn request carries: its body, or the shared memory segment
        ``Shm`` names, decompressed when it came compressed.  rspamd takes any method here, and
        rspamd_proxy sends its upstream ``GET`` with the message as the body (milter mode) or in
        shared memory (an upstream on a local address): GET and PUT are taken as POST is."""
        if method not in ("POST", "GET", "PUT"):
            raise RequestError(405, "use POST (or GET, PUT) with the message as the body")
        if headers.get("shm"):
            body = self._shared(conn, headers)
        return _decompressed(headers, body, self.settings.max_size)

    def _shared(self, conn: Connection, headers: dict[str, list[str]]) -> bytes:
        """The message in the POSIX shared memory segment rspamd_proxy names in ``Shm: /rhm.<hex>``,
        from ``Shm-Offset`` (0 without it), ``Shm-Length`` bytes (the rest of the segment without
        it).  A client could name any file this process may read, so only a loopback peer may ask
        (rspamd_proxy uses it for a local upstream only), only a name of rspamd's form, opened in
        /dev/shm without following a symbolic link or blocking on a FIFO, only a regular file with
        no other name (a hard link could give a file outside shared memory), never more than
        max_size bytes of it."""
        if not (self.local_socket or _loopback(conn.peer_ip)):
            raise RequestError(403, "Shm (a message in shared memory) is taken from a loopback peer only")
        name = headers["shm"][-1]
        if not _SHM_NAME.fullmatch(name):
            raise RequestError(400, f"bad Shm segment name {name[:100]!r} (not /rhm.<hex>)")
        offset = parse_length((headers.get("shm-offset") or ["0"])[-1])
        length = parse_length(headers["shm-length"][-1]) if headers.get("shm-length") else None
        if offset is None or (headers.get("shm-length") and length is None):
            raise RequestError(400, "bad Shm-Offset or Shm-Length")
        try:
            fd = os.open("/dev/shm" + name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise RequestError(400, f"cannot open shared memory segment {name}: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                raise RequestError(400, f"shared memory segment {name} is not a plain segment")
            if length is None:
                length = max(st.st_size - offset, 0)
            if offset + length > st.st_size:
                raise RequestError(400, f"Shm-Offset and Shm-Length past the end of segment {name}")
            if length > self.settings.max_size:
                raise RequestError(413, f"message larger than {self.settings.max_size} bytes")
            data = os.pread(fd, length, offset)
        finally:
            os.close(fd)
        if len(data) != length:
            raise RequestError(400, f"shared memory segment {name} shrank while it was read")
        return data

    async def _route(self, conn: Connection, method: str, path: str, headers: dict[str, list[str]],
                     body: bytes, keep: bool) -> bytes:
        if path == "/ping":
            return response(200, b"pong\r\n", "text/plain", keep)
        if path == "/metrics" and method == "GET" and self.metrics is not None:
            return response(200, self.metrics.render(), "text/plain; version=0.0.4", keep)
        if path in ("/checkv2", "/check", "/symbols"):
            body = self._message(conn, method, headers, body)
            env = _envelope(headers)
            profile = self._profile(conn, headers, env)
            try:
                verdict = await self.scan(body, env, profile, peer=conn.peer_ip, client_ip=env.client_ip or "",
                                          queue_id=env.queue_id or "")
            except Exception:
                raise RequestError(500, "scan failed") from None
            return _json(200, verdict.to_dict() if path == "/checkv2" else _v1(verdict), keep)
        if path in ("/learnspam", "/learnham"):
            body = self._message(conn, method, headers, body)
            if not body:
                # rspamd's words: an empty request is a client's mistake (a file that was not
                # read, a pipe that broke), not a message to learn
                raise RequestError(400, "Empty body is not permitted")
            spam = path == "/learnspam"
            learned = await self.scanner.learn(body, spam, "rspamd-http")
            self.log.info("learn", extra={"fields": {"server": self.name, "peer": conn.peer_ip,
                                                     "class": "spam" if spam else "ham", "learned": learned}})
            if any(learned.values()):
                return _json(200, {"success": True, "learned": sorted(k for k, v in learned.items() if v)}, keep)
            why = "no learner took the message (already learned, or no learning check is enabled)"
            return _json(208, {"success": False, "error": why}, keep)
        raise RequestError(404, f"no such endpoint {path}")


#: the actions whose thresholds rspamd weighs for its required score (greylist is below them all)
_SPAM_ACTIONS = ("add header", "rewrite subject", "soft reject", "reject")


def rspamd_required(v: Verdict) -> tuple[float, bool]:
    """rspamd's ``required_score`` for ``v``, and whether the message reaches it.

    rspamd's required score is its highest action threshold (reject's, 15 by default), not the
    lowest spam one antispam calls ``required_score``; Exim's ``variant=rspamd`` takes ``score >=
    required`` from the Metric line as spam, so with rspamd ``spam = nobody`` is true for the
    messages rspamd rejects only.  A message reaches it when its action is that threshold's or more
    severe (a forced action included, as rspamd counts it); infinite when no spam action is enabled."""
    enabled = {a: t for a, t in v.thresholds.items() if a in _SPAM_ACTIONS}
    if not enabled:
        return float("inf"), False
    top = max(enabled, key=lambda a: enabled[a])
    return enabled[top], ACTIONS.index(v.action) >= ACTIONS.index(top)


def metric_line(v: Verdict, reject: float) -> str:
    """The RSPAMC reply's ``Metric: default; True; score / required / reject`` line, the numbers as
    Exim compares them: required is rspamd's (:func:`rspamd_required`); a message that reaches it
    prints a score at least that high (rspamd raises a forced action's score to its threshold),
    one that does not prints a score below it, and no threshold prints as "inf"."""
    required, reached = rspamd_required(v)
    score = shown_score(max(v.score, required) if reached else v.score, required, reached, digits=2)
    return (f"Metric: default; {'True' if reached else 'False'}; {score} / {shown_required(required):.2f}"
            f" / {reject:.2f}")


def _v1(verdict: Verdict) -> dict[str, Any]:
    """The verdict in the shape rspamd answers the older ``/check`` and ``/symbols`` in (protocol
    v1, which older clients parse): the verdict and one key per symbol (without ``metric_score``)
    inside ``{"default": {...}}``, no ``thresholds``, the rest at the top, where the ``milter``
    block is named ``rmilter``."""
    d = verdict.to_dict()
    default: dict[str, Any] = {"is_spam": verdict.is_spam, "is_skipped": d.pop("is_skipped"), "score": d.pop("score"),
                               "required_score": d.pop("required_score"), "action": d.pop("action")}
    for name, sym in d.pop("symbols").items():
        default[name] = {k: v for k, v in sym.items() if k != "metric_score"}
    del d["thresholds"]
    if "milter" in d:
        d["rmilter"] = d.pop("milter")
    return {"default": default, **d}


#: a shared memory segment's name as rspamd makes them (rspamd_shmem_mkstemp: ``/rhm.`` and random
#: hex): one name directly in /dev/shm, nothing that could lead elsewhere
_SHM_NAME = re.compile(r"/rhm\.[0-9A-Fa-f]{1,64}")


def _loopback(ip: str) -> bool:
    """Whether a peer address is this host's own (127.0.0.0/8, ::1, or ::ffff:127.x.x.x)."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)
    return addr.is_loopback or (mapped is not None and mapped.is_loopback)


#: compressed bytes fed to the zstd decompressor at a time: a block (at most 128 KiB of output)
#: takes at least 3 bytes, so one step inflates to at most ~2.7 MiB before the size is checked again
_ZSTD_STEP = 64


def _decompressed(headers: dict[str, list[str]], body: bytes, limit: int) -> bytes:
    """The message of a body sent with ``Compression: zstd`` (``rspamc -z``, rspamd_proxy's
    ``compression = yes``), refused (413) as soon as it grows past ``limit``: a small bomb must not
    inflate past ``max_size`` in memory.  Scanning or learning the compressed bytes as the message
    would give a wrong verdict, or teach the classifier garbage, with no error anywhere: any other
    method, or zstd without the zstandard module, is refused (415); corrupt or cut-off data is a 400
    (zstandard's streaming readers take a cut-off frame for its end: only ``eof`` tells).  Several
    frames one after the other are read in turn, as rspamd reads them."""
    method = (headers.get("compression") or [""])[-1].strip().lower()
    if not method:
        return body
    if method != "zstd":
        raise RequestError(415, f"unsupported compression method {method!r} (only zstd)")
    if zstandard is None:
        raise RequestError(415, "zstd-compressed request, but the zstandard module is not installed")
    out = bytearray()
    frame = None
    pos = 0
    try:
        while pos < len(body):
            if frame is None or frame.eof:
                frame = zstandard.ZstdDecompressor().decompressobj()
            piece = body[pos:pos + _ZSTD_STEP]
            out += frame.decompress(piece)
            pos += len(piece) - len(frame.unused_data)  # what follows a frame's end is the next frame
            if len(out) > limit:
                raise RequestError(413, f"message larger than {limit} bytes")
    except zstandard.ZstdError as exc:
        raise RequestError(400, f"bad zstd data: {exc}") from None
    if frame is None or not frame.eof:
        raise RequestError(400, "bad zstd data: the body ends inside a frame")
    return bytes(out)


def _chunked(headers: dict[str, list[str]]) -> bool:
    return "chunked" in headers.get("transfer-encoding", [""])[-1].lower()


def _content_length(headers: dict[str, list[str]]) -> int:
    """The announced body length (0 without one).  RFC 9110 8.6: 1*DIGIT, and several values must
    agree (RFC 9112 6.3: otherwise the message is invalid, a 400): a lenient reading could take a
    different length than an intermediary did and read the rest as the next request."""
    values = headers.get("content-length")
    if not values:
        return 0
    lengths = {parse_length(v) for v in values}
    if None in lengths or len(lengths) != 1:
        raise RequestError(400, "bad Content-Length")
    return lengths.pop()  # type: ignore[return-value]


#: an address with a port after it: IPv4 ``a.b.c.d:port`` or bracketed IPv6 ``[addr]:port``
_IP_WITH_PORT = re.compile(r"(\d{1,3}(?:\.\d{1,3}){3}):\d{1,5}|\[([0-9A-Fa-f:.]+)\]:\d{1,5}")


def _envelope(headers: dict[str, list[str]]) -> Envelope:
    def one(name: str) -> str | None:
        v = headers.get(name)
        return v[-1] if v and v[-1] else None

    rcpts: list[str] = []
    for v in headers.get("rcpt", []):
        rcpts.extend(a.strip().strip("<>") for a in v.split(",") if a.strip())
    mail_from = one("from")
    ip = one("ip")
    if ip and (m := _IP_WITH_PORT.fullmatch(ip)):
        # rspamd_proxy's milter mode sends the SMTP client's port too ("IP: 192.0.2.1:40000"), and
        # rspamd takes the address from it; kept whole, each connection would be a new client to
        # greylisting and rate limits, and no address to DNS lists or SPF
        ip = m.group(1) or m.group(2)
    return Envelope(client_ip=ip, helo=one("helo"), hostname=one("hostname"),
                    mail_from=mail_from.strip("<>") if mail_from else None, rcpt_tos=tuple(rcpts),
                    user=one("user"), queue_id=one("queue-id"))
