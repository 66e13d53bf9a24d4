"""The SpamAssassin spamd protocol (SPAMC/1.2 to 1.5), so ``spamc``, Exim's ``spamd_address``
and every client library talk to antispam unchanged.

One request per connection, like HTTP/1.0::

    CHECK SPAMC/1.5\\r\\n             methods: CHECK SYMBOLS REPORT REPORT_IFSPAM PROCESS
    Content-length: 1234\\r\\n                  HEADERS TELL (with a body), PING SKIP (without)
    User: alice\\r\\n                 optional: User, Compress: zlib, and for TELL
    \\r\\n                            Message-class, Set, Remove
    <message bytes>

    SPAMD/1.1 0 EX_OK\\r\\n
    Content-length: 27\\r\\n
    Spam: True ; 15.0 / 5.0\\r\\n
    \\r\\n
    <body: symbols, report, rewritten message or headers>

Status codes are sysexits.h numbers with their names (``76 EX_PROTOCOL``);
``spamc`` turns them into its exit codes.

Clients older than SPAMC/1.3 (Exim and milters such as lcsam send ``REPORT
SPAMC/1.2``) read one response header, and get spamd's replies for them:
``Spam:`` alone for SYMBOLS and the REPORTs, ``Content-length`` alone for
PROCESS and HEADERS, and below SPAMC/1.2 a ``SPAMD/1.0`` status line and the
message with no header at all.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
import zlib

from .. import __version__
from ..message import Envelope
from ..verdict import Verdict, shown_required, shown_score
from .common import (Connection, ProtocolError, RequestError, Server, parse_length, rewrite_headers, split_headers,
                     without_ours)

EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_TEMPFAIL = 75
EX_PROTOCOL = 76
EX_NOPERM = 77
EX_TIMEOUT = 79
_NAMES = {EX_OK: "EX_OK", EX_USAGE: "EX_USAGE", EX_DATAERR: "EX_DATAERR", EX_UNAVAILABLE: "EX_UNAVAILABLE",
          EX_SOFTWARE: "EX_SOFTWARE", EX_TEMPFAIL: "EX_TEMPFAIL", EX_PROTOCOL: "EX_PROTOCOL",
          EX_NOPERM: "EX_NOPERM", EX_TIMEOUT: "EX_TIMEOUT"}

SCAN_METHODS = frozenset({"CHECK", "SYMBOLS", "REPORT", "REPORT_IFSPAM", "PROCESS", "HEADERS"})
_REQUEST = re.compile(rb"^([A-Z_]+) SPAMC/(\d+)\.(\d+)\r?\n$")
_MAX_LINE = 8192
#: seconds a message whose Content-length ends inside a line waits for the rest of that line (a
#: client that counted characters sends it at once, with the rest of the message)
REST_OF_LINE_WAIT = 0.2
_MAX_HEADERS = 64


def status_line(code: int, text: str | None = None) -> bytes:
    return f"SPAMD/1.1 {code} {text or _NAMES.get(code, 'EX_SOFTWARE')}\r\n".encode()


def error_response(code: int, text: str) -> bytes:
    """A status line alone, as spamd answers errors: ``spamc -x`` and ``-L`` report them as a
    failure (exit 74), never as a verdict or a learned message."""
    return status_line(code, f"{_NAMES.get(code, 'EX_SOFTWARE')} {text}"[:200])


def score_pair(v: Verdict) -> tuple[str, str]:
    """(score, required) as spamd prints them: ``%2.1f`` each, a ham's score kept below the required
    score (spamd's Util::get_tag_value_for_score; clients such as Exim compare the printed pair),
    and an infinite required score (a profile without spam actions) shown finite, since spamc
    reads ``inf`` as 0.0."""
    return shown_score(v.score, v.required_score, v.is_spam), f"{shown_required(v.required_score):.1f}"


def spam_header(v: Verdict) -> str:
    # spamd sends "Yes"/"No" instead of "True"/"False" for REPORT_IFSPAM; libspamc compares with
    # "true" (strcasecmp), so spamc -r would then lose its score line and -E its exit code.  We send
    # True/False for every method, which is what spamc(1) documents.
    score, required = score_pair(v)
    return f"Spam: {'True' if v.is_spam else 'False'} ; {score} / {required}"


def report_text(v: Verdict, eol: str = "\r\n") -> str:
    """A plain-text explanation, one line per symbol, largest contribution first."""
    score, required = score_pair(v)
    lines = [f"antispam {__version__} on {socket.gethostname()}: action '{v.action}', "
             f"score {score}, required {required}", "",
             " score  symbol                          description",
             "------  ------------------------------  -----------"]
    for s in sorted(v.symbols.values(), key=lambda s: (-abs(s.score), s.name)):
        desc = s.description + (f" [{', '.join(s.options)}]" if s.options else "")
        lines.append(f"{s.score:6.1f}  {s.name:30}  {desc}")
    if not v.symbols:
        lines.append("   0.0  (no symbols)")
    return eol.join(lines) + eol


def _decompress(data: bytes, limit: int) -> bytes:
    """zlib, refusing output past ``limit`` so a small bomb cannot exhaust memory, and refusing a
    stream that does not end: a truncated body would otherwise be scanned as the fragment that did
    decompress, and a verdict given for a message the client never sent.

    spamd (zlib_inflate_read) requires Z_STREAM_END ("failed to find end of zlib stream") and
    ignores bytes after the end, as this does (``unused_data``).  It answers every zlib failure
    with EX_UNAVAILABLE; this server answers EX_DATAERR, as for the other bad zlib data.
    """
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, limit + 1)
    except zlib.error as exc:
        raise RequestError(EX_DATAERR, f"bad zlib data: {exc}") from None
    if len(out) > limit:
        raise RequestError(EX_DATAERR, "message too big after decompression")
    # Output under max_length means every input byte was consumed: the stream is whole iff it ended.
    if not d.eof:
        raise RequestError(EX_DATAERR, "failed to find end of zlib stream")
    return out


class SpamdServer(Server):
    """``antispam serve spamd``: see the module docstring for the wire format."""

    name = "spamd"
    #: a request is in flight from its first byte: a graceful stop lets a client still sending it finish
    in_flight_on_input = True
    #: spamd's answer when its client is too slow (SpamAssassin's service_timeout: EX_TIMEOUT)
    timeout_reply = error_response(EX_TIMEOUT, "timeout")

    async def handle(self, conn: Connection) -> None:
        # One request per connection: it must have arrived whole within request_timeout of the
        # connection's start (``timeout`` bounds each read only; see Server._sweep).
        conn.request_since = time.monotonic()
        try:
            await self._request(conn)
        except RequestError as exc:
            conn.request_since = None  # answered: no timeout answer after this one
            self._count_error("request")
            self.log.warning("request refused", extra={"fields": {"server": self.name, "peer": conn.peer_ip,
                                                                  "code": exc.code, "error": exc.text}})
            await conn.write(error_response(exc.code, exc.text))
        except ProtocolError as exc:
            conn.request_since = None
            await conn.write(error_response(EX_PROTOCOL, str(exc)))
            raise

    async def refuse(self, conn: Connection, reason: str) -> None:
        code = EX_NOPERM if reason == "not allowed" else EX_TEMPFAIL
        try:
            await conn.write(error_response(code, reason))
        except (OSError, TimeoutError):
            pass

    async def _request(self, conn: Connection) -> None:
        first = await conn.readline(_MAX_LINE)
        if not first:
            return
        # in flight from here: a graceful stop waits for the rest of the request (and the bytes of
        # a request line not yet whole keep it waiting too: Server.stop)
        conn.busy = True
        m = _REQUEST.match(first)
        if not m:
            raise ProtocolError(f"bad request line {first[:60]!r}")
        method = m.group(1).decode()
        version = (int(m.group(2)), int(m.group(3)))
        if method == "SKIP":
            return
        if method == "PING":
            await conn.write(b"SPAMD/1.5 0 PONG\r\n")
            return
        if method not in SCAN_METHODS and method != "TELL":
            raise RequestError(EX_PROTOCOL, f"unknown method {method}")
        headers = await self._headers(conn)
        raw = await self._body(conn, headers)
        conn.request_since = None  # read in time; the scan has its own deadline
        if method == "TELL":
            await self._tell(conn, raw, headers)
            return
        user = headers.get("user")
        try:
            # User is spamd's per-user settings key: it picks the user's profile ([recipients]).
            verdict = await self.scan(raw, Envelope(), self.scanner.profile_for(user), peer=conn.peer_ip,
                                      method=method, user=user or "")
        except Exception:
            raise RequestError(EX_SOFTWARE, "scan failed") from None
        await conn.write(self._response(method, version, raw, verdict))

    async def _headers(self, conn: Connection) -> dict[str, str]:
        headers: dict[str, str] = {}
        for _ in range(_MAX_HEADERS + 1):
            line = await conn.readline(_MAX_LINE)
            if not line:
                raise ProtocolError("connection closed inside the request headers")
            if line in (b"\r\n", b"\n"):
                return headers
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep:
                raise ProtocolError(f"bad header line {line[:60]!r}")
            headers[name.strip().lower()] = value.strip()
        raise ProtocolError("too many request headers")

    async def _body(self, conn: Connection, headers: dict[str, str]) -> bytes:
        limit = self.settings.max_size
        if "content-length" in headers:
            n = parse_length(headers["content-length"])
            if n is None:
                raise RequestError(EX_PROTOCOL, "Content-length is not a number (1 to 18 ASCII digits)")
            if n > limit:
                # Read and drop what the client sends, so that it is reading when the error comes
                # (a reset mid-send would reach it as an I/O error instead of this answer).
                await conn.discard(n)
                raise RequestError(EX_DATAERR, f"message larger than {limit} bytes")
            raw = await conn.readexactly(n)
            if not raw.endswith(b"\n") and "compress" not in headers:
                # spamd reads whole lines: a length that ends inside a line is read on to the line's
                # end (or the end of the stream), and a byte past it is a mismatch, refused rather
                # than scanned (and for PROCESS sent back) as the part that fits: the client counted
                # characters, not bytes.  spamc and aiospamc shut their sending side after the
                # message, which ends the wait at once; spamd would wait for ever for a client that
                # keeps it open and sent a message without a final line end (until our read timeout:
                # the message went unscanned), so the rest of the line is waited for a moment only.
                try:
                    more = await asyncio.wait_for(conn.readline(_MAX_LINE), REST_OF_LINE_WAIT)
                except TimeoutError:
                    more = b""
                if more:
                    raise RequestError(EX_PROTOCOL, f"Content-Length mismatch: expected {n} bytes, got {n + len(more)}")
        else:  # very old clients: the message runs to the end of the stream
            raw = b""
            while len(raw) <= limit:
                chunk = await conn.read_some()
                if not chunk:
                    break
                raw += chunk
            if len(raw) > limit:
                raise RequestError(EX_DATAERR, f"message larger than {limit} bytes")
        comp = headers.get("compress", "").lower()
        if comp:
            if comp != "zlib":
                raise RequestError(EX_PROTOCOL, f"unsupported Compress: {comp}")
            raw = _decompress(raw, limit)
        return raw

    def _response(self, method: str, version: tuple[int, int], raw: bytes, v: Verdict) -> bytes:
        """The reply in the shape spamd gives the client's protocol version.  From SPAMC/1.3 on:
        Content-length and Spam.  Older clients read one header (milters such as lcsam take the
        verdict from ``Spam:``, SimpleLogin from the reply's second line, Exim's sscanf reads it too):
        Spam alone for SYMBOLS and the REPORTs, Content-length alone for PROCESS and HEADERS, and
        below 1.2 no header at all, the message running to the end of the stream."""
        spam = spam_header(v)
        if method == "CHECK":
            return status_line(EX_OK) + f"{spam}\r\n\r\n".encode()
        if method == "SYMBOLS":
            body = ",".join(sorted(v.symbols)).encode()
            if version < (1, 3):  # spamd ends the list with a line end for them
                body += b"\r\n"
        elif method in ("REPORT", "REPORT_IFSPAM"):
            body = (report_text(v) if (method == "REPORT" or v.is_spam) else "").encode()
        elif method == "PROCESS":
            body = rewrite_headers(raw, v)
        else:  # HEADERS: the rewritten header block and its blank line, without the body
            new = rewrite_headers(raw, v)
            head, _ = split_headers(new)
            eol = b"\r\n" if new[len(head):len(head) + 2] == b"\r\n" else b"\n"
            body = head + eol + eol
        if version >= (1, 3):
            return status_line(EX_OK) + f"Content-length: {len(body)}\r\n{spam}\r\n\r\n".encode() + body
        if method not in ("PROCESS", "HEADERS"):
            return status_line(EX_OK) + f"{spam}\r\n\r\n".encode() + body
        if version >= (1, 2):
            return status_line(EX_OK) + f"Content-length: {len(body)}\r\n\r\n".encode() + body
        return b"SPAMD/1.0 0 EX_OK\r\n" + body

    async def _tell(self, conn: Connection, raw: bytes, headers: dict[str, str]) -> None:
        if not self.settings.allow_tell:  # type: ignore[attr-defined]
            raise RequestError(EX_NOPERM, "TELL is disabled (servers.spamd.allow_tell)")
        klass = headers.get("message-class", "").lower()
        to_set = _locations(headers.get("set", ""))
        to_remove = _locations(headers.get("remove", ""))
        # Neither Set nor Remove: spamd's dotell learns nothing and answers EX_OK ("Did nothing").
        if to_set & to_remove:
            raise RequestError(EX_PROTOCOL, "TELL cannot Set and Remove the same location")
        if to_set and klass not in ("spam", "ham"):
            raise RequestError(EX_PROTOCOL, "TELL with Set needs Message-class: spam or ham")
        user = headers.get("user", "")
        # What a user reports is the copy in the mailbox, which PROCESS rewrote: without the fields we
        # add and our Subject tag it is the message that was scanned, so the original and the
        # delivered copy are learned (and forgotten) as one message, as spamd's dotell makes them
        # (remove_spamassassin_markup).
        engine = self.scanner.engine
        raw = without_ours(raw, engine.authserv_id, untag=engine.config.engine.subject_prefix)
        out = status_line(EX_OK)
        # One store holds what is learned; "remote" reports are recorded with their own source so
        # that reputation sharing can tell them apart.  A location counts as done when a learner
        # took the message (learning the same message twice counts once, as spamd reports).
        if to_remove:
            removed = await self.scanner.unlearn(raw)
            if any(removed.values()):
                out += f"DidRemove: {','.join(sorted(to_remove))}\r\n".encode()
        if to_set:
            source = "spamd-remote" if "remote" in to_set else "spamd"
            learned = await self.scanner.learn(raw, klass == "spam", f"{source}:{user}" if user else source)
            if any(learned.values()):
                out += f"DidSet: {','.join(sorted(to_set))}\r\n".encode()
        self.log.info("tell", extra={"fields": {"server": self.name, "peer": conn.peer_ip, "class": klass,
                                                "set": ",".join(sorted(to_set)), "remove": ",".join(sorted(to_remove)),
                                                "user": user}})
        await conn.write(out + b"Content-length: 0\r\n\r\n")


def _locations(value: str) -> set[str]:
    out = {p.strip().lower() for p in value.split(",") if p.strip()}
    bad = out - {"local", "remote"}
    if bad:
        raise RequestError(EX_PROTOCOL, f"unknown location(s): {', '.join(sorted(bad))}")
    return out

