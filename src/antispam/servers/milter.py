"""The Sendmail/Postfix milter protocol (version 6), on asyncio: ``antispam serve milter``.

The MTA opens one connection per SMTP session and sends length-prefixed
packets: a 4-byte big-endian length (counting the command byte), one command
byte, then the command's data.  A session is::

    O  option negotiation (version, actions, protocol flags)  -> we answer O
    D  macros for the next command ({client_addr}, i, {auth_authen}, ...)
    C  connect: hostname, family, port, address
    H  HELO    M  MAIL FROM    R  RCPT TO    T  DATA
    L  one header    N  end of headers    B  a body chunk
    E  end of message -> we answer with modifications, then the verdict
    A  abort (the message is dropped; the session goes on)
    Q  quit    K  quit, the next session reuses the connection

We ask the MTA (flags offered in negotiation permitting) not to wait for our
answers before end of message (the ``NR_*`` flags): one round trip per
message instead of one per header, which is most of the cost on loopback.

At end of message the verdict's action decides:

==================  ==============================================================
``no action``       add the X-Spam-* headers (and Authentication-Results), accept
``add header``      the same: the headers carry the verdict
``rewrite subject`` the headers, and the Subject prefixed
``greylist``,       ``tempfail_reply`` (4xx): the sender retries
``soft reject``
``reject``          ``reject_reply`` (5xx) at end of DATA; or, with ``quarantine`` and an
                    MTA that offers it, the headers and the MTA's quarantine (Postfix: hold queue)
scan failed         accept unscanned when ``fail_open`` (default), else 4xx; the same when
                    the answer to the verdict could not be built
too big             accepted unscanned (counted in the metrics as ``too_big``); 4xx when past
                    ``max_size`` it also carried more than :data:`LATE_HEADERS_MAX` bytes of
                    headers named like ours, which could not all be deleted
too many to change  ``tempfail_reply`` (4xx), unscanned, when over :data:`MAX_HEADER_CHANGES`
                    fields are named like ours, Authentication-Results or Subject: more
                    changes than Postfix can make to one message
==================  ==============================================================

Mail accepted unscanned still loses the ``X-Spam-*`` headers it came with (when the MTA lets us
change headers): a forged ``X-Spam-Flag: NO`` must not pass because the scan did not run.

Header values are kept as the MTA received them when it offers ``SMFIP_HDR_LEADSPC`` (Postfix
does, with ``milter_protocol = 6``): without it the MTA drops the space after the colon and
``Subject:x`` could not be told from ``Subject: x``, which breaks DKIM ``c=simple`` signatures.

Envelope facts come from the stream, so checks see the real connection:
client address from ``C``, HELO from ``H``, sender and recipients from ``M``/``R``,
the authenticated user from the ``{auth_authen}`` macro, queue id from ``i``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ..auth.authres import parse as parse_authres
from ..config import reply_lines
from ..message import Envelope, bare_address
from ..verdict import Verdict
from .common import OUR_NAMES, Connection, ProtocolError, Server, subject_tag

VERSION = 6

# Actions the milter may take (SMFIF_*).
ADDHDRS, CHGBODY, ADDRCPT, DELRCPT, CHGHDRS, QUARANTINE = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
# Protocol flags (SMFIP_*): steps not sent, and steps that get no reply (NR_*).
NOUNKNOWN = 0x100
NR_HDR, NR_CONN, NR_HELO, NR_MAIL, NR_RCPT, NR_DATA = 0x80, 0x1000, 0x2000, 0x4000, 0x8000, 0x10000
NR_UNKN, NR_EOH, NR_BODY = 0x20000, 0x40000, 0x80000
#: header values exactly as they follow the colon (libmilter's SMFIP_HDR_LEADSPC); the values we
#: send then carry their own leading space (milter8.c adds none)
HDR_LEADSPC = 0x100000
_NO_REPLY = {b"C": NR_CONN, b"H": NR_HELO, b"M": NR_MAIL, b"R": NR_RCPT, b"T": NR_DATA,
             b"L": NR_HDR, b"N": NR_EOH, b"B": NR_BODY, b"U": NR_UNKN}
WANTED_PROTOCOL = (NOUNKNOWN | NR_HDR | NR_CONN | NR_HELO | NR_MAIL | NR_RCPT | NR_DATA | NR_UNKN | NR_EOH | NR_BODY
                   | HDR_LEADSPC)
WANTED_ACTIONS = ADDHDRS | CHGHDRS | QUARANTINE

# Replies (SMFIR_*).
ACCEPT, CONTINUE, TEMPFAIL, REPLYCODE = b"a", b"c", b"t", b"y"
ADDHEADER, CHGHEADER, QUARANTINE_R = b"h", b"m", b"q"

MAX_PACKET = 1024 * 1024  # Postfix sends body chunks of at most 64 KiB; anything near this is hostile
#: bytes of the headers named like ours (their names; Authentication-Results with their values) kept
#: past ``max_size`` to delete them, at most: beyond it the message is refused for now (4xx)
LATE_HEADERS_MAX = 1024 * 1024
#: fields one message may have us change (SMFIR_CHGHEADER), at most; a message with more is refused
#: for now (4xx).  Postfix's cleanup follows one more pointer record of the queue file per change,
#: and past 10,000 of them in one file (record.c, REVERSE_JUMP_LIMIT) it fails the message ("queue
#: file write error"), its process aborts and the master throttles the cleanup service for all
#: mail: 16,000 forged X-Spam-Flag fields (a 270 KB message) did that.  No message that is not
#: hostile carries a thousand fields named like ours.
MAX_HEADER_CHANGES = 1000
_LENGTH = struct.Struct(">I")


def packet(cmd: bytes, data: bytes = b"") -> bytes:
    return struct.pack(">I", len(data) + 1) + cmd + data


#: the macros this server reads (``Session.envelope``, the queue id of its log lines)
_MACROS = frozenset({"i", "{auth_authen}"})

#: the answer to most packets, built once
_CONTINUE = packet(CONTINUE)

#: the fields (lower case) a verdict may have us change or delete: ours, Authentication-Results
#: claiming our authserv-id, a second Subject
_CHANGED = OUR_NAMES | {"authentication-results", "subject"}


def _cstrings(data: bytes) -> list[str]:
    """NUL-separated strings (the last NUL optional), decoded leniently: mail is not always UTF-8."""
    parts = data.split(b"\0")
    if parts and parts[-1] == b"":
        parts.pop()
    return [p.decode("utf-8", "surrogateescape") for p in parts]


def _address(arg: str) -> str:
    arg = arg.strip()
    return arg[1:-1] if arg.startswith("<") and arg.endswith(">") else arg


def _c(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape") + b"\0"


def _reply(text: str) -> bytes:
    """SMFIR_REPLYCODE with ``text`` (checked when the configuration was loaded).

    Lines are joined with CRLF, as libmilter's smfi_setmlreply joins them, and every ``%`` is
    doubled: milter8.c reads ``%`` as an escape of the next character and drops a single one
    (libmilter's smfi_setreply: "if there really should be '%' in the string, use '%%'").
    """
    return packet(REPLYCODE, _c("\r\n".join(reply_lines(text)).replace("%", "%%")))


@dataclass
class Session:
    """What the MTA told us about one SMTP session and its current message."""

    protocol: int = 0
    actions: int = 0
    macros: dict[str, str] = field(default_factory=dict)
    hostname: str | None = None
    client_ip: str | None = None
    helo: str | None = None
    #: the MTA made this connection up: Postfix's non_smtpd_milters (mail from sendmail(1)) tell
    #: of one from 127.0.0.1 port 0, which no TCP client has, and cannot refuse one of its
    #: recipients.  (An SMTP session whose port Postfix does not know, behind an XCLIENT proxy
    #: that sends none, also says port 0, but not from 127.0.0.1 as a rule.)
    submitted: bool = False
    # per message
    mail_from: str | None = None
    rcpts: list[str] = field(default_factory=list)
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    size: int = 0
    too_big: bool = False
    #: bytes of headers kept past max_size (see LATE_HEADERS_MAX)
    late: int = 0

    def new_message(self) -> None:
        self.mail_from = None
        self.rcpts = []
        self.headers = []
        self.body = bytearray()
        self.size = 0
        self.too_big = False
        self.late = 0

    def raw(self) -> bytes:
        """The message as the MTA received it: headers as sent (folding kept), CRLF, body."""
        # Line ends made CRLF on the whole block at once: the same bytes as header by header,
        # since each field's own CRLF comes through both replacements unchanged.  With
        # SMFIP_HDR_LEADSPC a value is everything after the colon; without it the MTA dropped a
        # space there (milter8.c), most likely one, which is put back.
        sep = ":" if self.protocol & HDR_LEADSPC else ": "
        head = "".join(f"{n}{sep}{v}\r\n" for n, v in self.headers).encode("utf-8", "surrogateescape")
        return head.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + b"\r\n" + bytes(self.body)

    def envelope(self) -> Envelope:
        m = self.macros
        return Envelope(client_ip=self.client_ip, helo=self.helo,
                        hostname=self.hostname if self.hostname and not self.hostname.startswith("[") and self.hostname != "unknown" else None,
                        mail_from=self.mail_from, rcpt_tos=tuple(self.rcpts),
                        user=m.get("{auth_authen}") or None, queue_id=m.get("i") or None)


class MilterServer(Server):
    """``antispam serve milter``: see the module docstring."""

    name = "milter"

    async def handle(self, conn: Connection) -> None:
        """Packets from the MTA, answered in order.  The stream is read in whatever chunks have
        arrived and split into packets here: an MTA sends a message as two or three dozen small
        packets in a few writes, and one read per packet (two, with its length) was the largest
        part of this server's own time per message."""
        s = Session()
        buf = bytearray()
        pos = 0
        while True:
            if len(buf) - pos >= 4:
                (length,) = _LENGTH.unpack_from(buf, pos)
                if length < 1 or length > MAX_PACKET:
                    raise ProtocolError(f"bad packet length {length}")
                if len(buf) - pos - 4 >= length:
                    cmd = bytes(buf[pos + 4:pos + 5])
                    data = bytes(buf[pos + 5:pos + 4 + length])
                    pos += 4 + length
                    if cmd == b"M":  # a message starts: shutdown waits for it to end
                        conn.busy = True
                    if cmd == b"E":  # the one step that waits (for the scan)
                        if data:  # a last body chunk may ride on end-of-message
                            self._command(conn, s, b"B", data)
                        reply = await self._end_of_message(conn, s)
                        s.new_message()
                    else:
                        reply = self._command(conn, s, cmd, data)
                    if reply is False:
                        return
                    if reply is not None and not (s.protocol & _NO_REPLY.get(cmd, 0)):
                        await conn.write(reply)
                    if cmd in (b"E", b"A", b"K"):
                        conn.busy = False
                        if self.closing:
                            return
                    continue
            del buf[:pos]
            pos = 0
            chunk = await conn.read_some(MAX_PACKET + 4)
            if not chunk:
                if buf or conn.busy:
                    raise ProtocolError("connection closed inside a packet or a message")
                return
            buf += chunk

    def _command(self, conn: Connection, s: Session, cmd: bytes, data: bytes) -> bytes | bool | None:
        """One packet other than end-of-message: its reply, None for none, False to end."""
        if cmd == b"L":  # name NUL value NUL: what _cstrings gives, without the list
            if data:
                within = self._grow(s, len(data))
                name, _, rest = data.partition(b"\0")
                text = name.decode("utf-8", "surrogateescape")
                # Headers count against max_size as the body does: only body chunks were counted,
                # and an MTA (or whoever holds its socket) sending header packets without end grew
                # the session without bound (300 MB of them took 1.1 GB), and had them all scanned.
                # Past max_size the message goes unscanned, and of its further headers only those
                # _unscanned deletes are kept (our names without their values, which it does not
                # read; Authentication-Results with them, to tell ours).
                # Those are bounded too (LATE_HEADERS_MAX): 10 MB of X-Spam-A: kept a tuple each.
                value = rest.split(b"\0", 1)[0]
                if within:
                    s.headers.append((text, value.decode("utf-8", "surrogateescape")))
                else:
                    lname = text.lower()
                    if lname in OUR_NAMES or lname == "authentication-results":
                        kept = value if lname == "authentication-results" else b""
                        s.late += len(name) + len(kept)
                        if s.late <= LATE_HEADERS_MAX:
                            s.headers.append((text, kept.decode("utf-8", "surrogateescape")))
            return _CONTINUE
        if cmd == b"B":
            if self._grow(s, len(data)):
                s.body += data
            return _CONTINUE
        if cmd == b"O":
            if len(data) < 12:
                raise ProtocolError("short option negotiation")
            version, actions, protocol = struct.unpack(">III", data[:12])
            if version < 2:
                raise ProtocolError(f"milter protocol version {version} is too old")
            s.actions = actions & WANTED_ACTIONS
            wanted = WANTED_PROTOCOL
            if self.scanner.engine.config.recipients:
                wanted &= ~NR_RCPT  # per-recipient settings: we may answer a RCPT (see below)
            s.protocol = protocol & wanted
            return packet(b"O", struct.pack(">III", min(version, VERSION), s.actions, s.protocol))
        if cmd == b"D":
            if data:
                items = _cstrings(data[1:])
                for k, v in zip(items[0::2], items[1::2]):
                    # only the macros read here are kept: every distinct name an MTA sent stayed
                    # in the session for its lifetime, a growth without bound
                    if k in _MACROS:
                        s.macros[k] = v
            return None
        if cmd == b"C":
            host, _, rest = data.partition(b"\0")
            s.hostname = host.decode("utf-8", "surrogateescape")
            if rest[:1] in (b"4", b"6") and len(rest) >= 3:
                s.client_ip = bare_address(rest[3:].split(b"\0", 1)[0].decode("ascii", "replace"))
                s.submitted = rest[1:3] == b"\0\0" and s.client_ip == "127.0.0.1"
            return _CONTINUE
        if cmd == b"H":
            s.helo = (_cstrings(data) or [""])[0]
            return _CONTINUE
        if cmd == b"M":
            s.new_message()
            args = _cstrings(data)
            s.mail_from = _address(args[0]) if args else ""
            return _CONTINUE
        if cmd == b"R":
            args = _cstrings(data)
            if args:
                rcpt = _address(args[0])
                # One message, one verdict: a recipient with other settings than the first is
                # deferred (452 4.5.3) and the MTA's client sends it in a separate transaction.
                # Not in mail Postfix submits itself: its cleanup takes a refused recipient there
                # for a milter configuration error and leaves the whole message undelivered in
                # its queue, refused again at every retry ("can't reject recipient in
                # non-smtpd(8) submission"); the first recipient's settings decide for all, as
                # when the MTA takes no RCPT answers.
                if s.rcpts and not s.protocol & NR_RCPT and not s.submitted and \
                        self.scanner.profile_for(rcpt) != self.scanner.profile_for(s.rcpts[0]):
                    return _reply("452 4.5.3 Recipients with other spam settings: send in a separate transaction")
                # recipients count against max_size too (a list without bound otherwise); once
                # the message is too big only the first, which picks the profile, is kept
                if self._grow(s, len(data)) or not s.rcpts:
                    s.rcpts.append(rcpt)
            return _CONTINUE
        if cmd in (b"T", b"N", b"U"):
            return _CONTINUE
        if cmd == b"A":
            s.new_message()
            return None
        if cmd == b"K":
            protocol, actions = s.protocol, s.actions
            s.__init__()  # type: ignore[misc]
            s.protocol, s.actions = protocol, actions
            return None
        if cmd == b"Q":
            return False
        raise ProtocolError(f"unknown milter command {cmd!r}")

    def _grow(self, s: Session, n: int) -> bool:
        """Count ``n`` more bytes of the message (header, recipient or body packets) against
        ``max_size``; whether it is still within it.  Past it the message goes unscanned and its
        body is not kept."""
        s.size += n
        if s.size > self.settings.max_size:
            s.too_big = True
            s.body = bytearray()
        return not s.too_big

    async def _end_of_message(self, conn: Connection, s: Session) -> bytes:
        qid = s.macros.get("i", "")
        if s.actions & CHGHDRS and self._too_many_to_change(s):
            self._count_error("too_many_headers")
            self.log.warning("message with more headers named like ours than the MTA can change: refused for now",
                             extra={"fields": {"server": self.name, "queue_id": qid, "max": MAX_HEADER_CHANGES}})
            return _reply(self.settings.tempfail_reply)  # type: ignore[attr-defined]
        if s.too_big:
            self._count_error("too_big")
            if s.late > LATE_HEADERS_MAX and s.actions & CHGHDRS:
                self.log.warning("message too big, with more headers named like ours than can be deleted: "
                                 "refused for now", extra={"fields": {"server": self.name, "queue_id": qid,
                                                                      "size": s.size}})
                return _reply(self.settings.tempfail_reply)  # type: ignore[attr-defined]
            self.log.info("message too big: accepted unscanned",
                          extra={"fields": {"server": self.name, "queue_id": qid, "size": s.size}})
            return self._unscanned(s)
        try:
            profile = self.scanner.profile_for(s.rcpts[0]) if s.rcpts else None
            verdict = await self.scan(s.raw(), s.envelope(), profile, peer=conn.peer_ip, queue_id=qid,
                                      client_ip=s.client_ip or "")
        except Exception:
            return self._failed(s)
        try:
            return self._verdict_reply(s, verdict)
        except Exception:
            # Without an answer the MTA drops the connection and applies its own default
            # (Postfix: milter_default_action): this server's fail_open decides instead.
            self._count_error("internal")
            self.log.exception("milter reply failed", extra={"fields": {"server": self.name, "queue_id": qid,
                                                                        "action": verdict.action}})
            return self._failed(s)

    @staticmethod
    def _too_many_to_change(s: Session) -> bool:
        """Whether the message has more fields that a verdict may change than ``MAX_HEADER_CHANGES``
        (counted before the scan, which such a message is not worth; only when it has that many
        fields at all, so the usual message costs nothing)."""
        return len(s.headers) > MAX_HEADER_CHANGES and \
            sum(name.lower() in _CHANGED for name, _ in s.headers) > MAX_HEADER_CHANGES

    def _failed(self, s: Session) -> bytes:
        """The answer when there is no verdict to give: accept unscanned when ``fail_open``, else 4xx."""
        if self.settings.fail_open:
            return self._unscanned(s)
        return _reply(self.settings.tempfail_reply)  # type: ignore[attr-defined]

    def _unscanned(self, s: Session) -> bytes:
        """Accept a message without a verdict: first delete the headers named like ours that came
        with it (and Authentication-Results claiming our authserv-id), as for scanned mail, since
        a forged ``X-Spam-Flag: NO`` would otherwise pass every message the scan did not see."""
        if not s.actions & CHGHDRS or not s.headers:
            return _CONTINUE
        try:
            lowered = [n.lower() for n, _ in s.headers]
            return (self._remove_forged(s, lowered, OUR_NAMES)
                    + self._remove_forged_authres(s, lowered, getattr(self.scanner.engine, "authserv_id", ""))
                    + _CONTINUE)
        except Exception:  # the deletes are a courtesy here: never the reason a message is lost
            self.log.exception("milter header cleanup failed", extra={"fields": {"server": self.name}})
            return _CONTINUE

    def _verdict_reply(self, s: Session, v: Verdict) -> bytes:
        cfg = self.settings
        action = v.action
        if action in ("greylist", "soft reject"):
            return _reply(cfg.tempfail_reply)  # type: ignore[attr-defined]
        # Quarantine needs the MTA to allow SMFIF_QUARANTINE at negotiation (libmilter's
        # smfi_quarantine fails otherwise); an MTA that does not would have us deliver the spam:
        # reject it then, as without quarantine.
        quarantine = cfg.quarantine and s.actions & QUARANTINE  # type: ignore[attr-defined]
        if action == "reject" and not quarantine:
            return _reply(cfg.reject_reply)  # type: ignore[attr-defined]
        out = bytearray()
        ours = v.headers()
        # With SMFIP_HDR_LEADSPC milter8.c puts our value right after the colon: we give the space.
        lead = b" " if s.protocol & HDR_LEADSPC else b""
        lowered = [n.lower() for n, _ in s.headers]  # once, not once per name looked for
        if s.actions & CHGHDRS:
            out += self._remove_forged(s, lowered, OUR_NAMES)
            out += self._remove_forged_authres(s, lowered, v.authserv_id)
        if action == "rewrite subject":
            out += self._tag_subject(s, lowered, v, lead)
        if s.actions & ADDHDRS:
            for name, value in ours:
                out += packet(ADDHEADER, _c(name) + lead + _c(value))
        if action == "reject":  # here only when quarantined
            out += packet(QUARANTINE_R, _c(cfg.quarantine_reason))  # type: ignore[attr-defined]
        return bytes(out) + _CONTINUE

    @staticmethod
    def _tag_subject(s: Session, lowered: list[str], v: Verdict, lead: bytes) -> bytes:
        """The packets that put the verdict's ``subject_prefix`` in front of the Subject.

        The new value is the first Subject exactly as the MTA sent it, not the decoded text the
        scan read (:meth:`Verdict.rewritten_subject`): written back decoded, an encoded word
        becomes 8-bit bytes in a header, one that decodes to CR LF starts a header of the
        sender's choosing, and one that decodes to NUL ends the packet's string early, which
        milter8.c answers by dropping the milter ("left-over data"; the message then goes by
        milter_default_action, untagged).  CR, LF (the folding) and NUL are taken out of it.
        Further Subject fields are deleted, last first so that the indexes stay valid, so that
        no reader shows an untagged one.  A message without a Subject gets one: the prefix.
        """
        count = lowered.count("subject")
        if not count:
            if not s.actions & ADDHDRS:
                return b""
            return packet(ADDHEADER, b"Subject\0" + lead + subject_tag(v.subject_prefix, b"").rstrip() + b"\0")
        if not s.actions & CHGHDRS:
            return b""
        name, value = s.headers[lowered.index("subject")]
        raw = value.encode("utf-8", "surrogateescape").translate(None, b"\r\n\0").lstrip(b" \t")
        if not (v.subject or "").startswith(v.subject_prefix):  # not tagged already (by an earlier pass)
            raw = subject_tag(v.subject_prefix, raw) + raw
        out = bytearray()
        for index in range(count, 1, -1):
            out += packet(CHGHEADER, struct.pack(">I", index) + _c(name) + b"\0")
        out += packet(CHGHEADER, struct.pack(">I", 1) + _c(name) + lead + raw + b"\0")
        return bytes(out)

    @staticmethod
    def _remove_forged_authres(s: Session, lowered: list[str], authserv_id: str) -> bytes:
        """Delete Authentication-Results that claim our authserv-id (RFC 8601 section 5): only
        we may write those, so any that came with the message are forged."""
        if not authserv_id or "authentication-results" not in lowered:
            return b""
        want = authserv_id.lower()
        ours = [k for k, v in enumerate((v for (_, v), n in zip(s.headers, lowered) if n == "authentication-results"), 1)
                if (p := parse_authres(v)) is not None and p.authserv_id == want]
        return b"".join(packet(CHGHEADER, struct.pack(">I", k) + _c("Authentication-Results") + _c(""))
                        for k in reversed(ours))

    @staticmethod
    def _remove_forged(s: Session, lowered: list[str], names: set[str]) -> bytes:
        """Delete headers named like ours that came with the message (a forged ``X-Spam-Flag: NO``
        would fool sieve rules).  CHGHEADER with an empty value deletes the n-th occurrence;
        deleting from the last occurrence down keeps the indexes valid."""
        out = bytearray()
        for name in sorted(names.intersection(lowered)):
            count = lowered.count(name)
            real = s.headers[lowered.index(name)][0]
            for index in range(count, 0, -1):
                out += packet(CHGHEADER, struct.pack(">I", index) + _c(real) + _c(""))
        return bytes(out)
