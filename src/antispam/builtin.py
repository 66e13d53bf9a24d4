"""Checks built into the engine itself: GTUBE and MIME/header defects.

GTUBE is the Generic Test for Unsolicited Bulk Email: a fixed 68-byte string
that every spam filter classifies as spam, so that operators can test their
delivery path end to end without sending real spam.
"""

from __future__ import annotations

from typing import Iterable

from .check import Check, Hit, ScanContext, SymbolDef
from .config import Config
from .message import Message
from .store import Store

# The standard GTUBE line (SpamAssassin documents it; it is a test token, not content).
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


class GtubeCheck(Check):
    """Fires on the GTUBE test string anywhere in the raw message (forces ``reject``)."""

    name = "gtube"
    symbols = (SymbolDef("GTUBE", 1000.0, "Generic Test for Unsolicited Bulk Email: a test message", "gtube"),)

    def run(self, msg: Message, ctx: ScanContext) -> Iterable[Hit]:
        if GTUBE in msg.raw:
            return (Hit("GTUBE"),)
        # Also when a transfer encoding hides it (the parts are decoded for every scan anyway).
        for p in msg.parts:
            if p.encoding in ("base64", "quoted-printable") and GTUBE in p.body:
                return (Hit("GTUBE"),)
        return ()


_DEFECTS = (
    ("MISSING_HEADER_BODY_SEPARATOR", 0.5, "No empty line between header and body"),
    ("HEADER_TOO_MANY", 1.0, "More headers than the configured limit"),
    ("HEADER_8BIT", 0.5, "Raw 8-bit bytes in the header block (not RFC 2047 encoded)"),
    ("HEADER_BAD_ENCODING", 0.5, "A malformed RFC 2047 encoded-word in a header"),
    ("MIME_MISSING_BOUNDARY", 1.0, "A multipart with no boundary parameter, or the boundary never appears"),
    ("MIME_MISSING_CLOSE_BOUNDARY", 0.2, "A multipart without its closing boundary"),
    ("MIME_BAD_BASE64", 1.0, "A base64 part that does not decode cleanly"),
    ("MIME_BAD_CONTENT_TYPE", 0.5, "A Content-Type that is not type/subtype"),
    ("MIME_UNKNOWN_CHARSET", 0.5, "A text part in a charset nobody knows"),
    ("MIME_BAD_CHARSET_DATA", 0.3, "Text bytes that are invalid in their declared charset"),
    ("MIME_8BIT_UNDECLARED", 0.3, "8-bit text without a declared charset"),
    ("MIME_UNKNOWN_ENCODING", 0.5, "An unknown Content-Transfer-Encoding"),
    ("MIME_TOO_DEEP", 1.0, "MIME nesting deeper than the configured limit"),
    ("MIME_TOO_MANY_PARTS", 1.0, "More MIME parts than the configured limit"),
)


class MimeDefectsCheck(Check):
    """Turns the parser's defects into scored symbols: malformed mail is evidence."""

    name = "mime_defects"
    symbols = tuple(SymbolDef(n, s, d, "mime") for n, s, d in _DEFECTS)
    _known = frozenset(n for n, _, _ in _DEFECTS)

    def run(self, msg: Message, ctx: ScanContext) -> Iterable[Hit]:
        msg.parts  # noqa: B018  (walk the MIME tree so every defect is known)
        found = msg.defects
        if not found:
            return ()
        return tuple(Hit(d) for d in sorted(found) if d in self._known)


def gtube_check(config: Config, store: Store) -> Check:
    return GtubeCheck()


def mime_defects_check(config: Config, store: Store) -> Check:
    return MimeDefectsCheck()
