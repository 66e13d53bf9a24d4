"""Envelope and Message: a raw e-mail parsed once, viewed many ways.

Why not :mod:`email`?  The standard library parser builds a full object tree
for every message (about 3,000 msgs/s here with ``compat32``, 600 with the
default policy) and raises or silently "fixes" on malformed input.  A filter
needs the opposite trade-off: most checks read a few headers and the decoded
text, malformed input is evidence rather than an error, and every view should
cost nothing until somebody asks for it.  So :class:`Message` splits the raw
bytes with ``bytes.find`` and C-level regular expressions, and computes each
view (headers, MIME tree, decoded text, HTML text, URLs, Received relays) the
first time it is read, caching it on the instance.

Nothing here raises on bad mail.  Problems are recorded as *defects* (symbol
names such as ``MIME_BAD_BASE64``) that the ``mime_defects`` check scores, and
limits that were hit are listed in :attr:`Message.skipped` so a verdict can say
what it did not look at.
"""

from __future__ import annotations

import binascii
import codecs
import encodings
import encodings.aliases
import hashlib
import html as _html
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pkgutil import iter_modules
from typing import Iterator
from urllib.parse import unquote_to_bytes

from . import fastscore
from ._fastscore_py import HTML_TAG_RE as _HTML_TAG_RE  # one definition of a tag, shared with the text kernels
from ._fastscore_py import sub_tags as _sub_tags
from .frozen import quick_init

__all__ = ["Envelope", "Limits", "Message", "Part", "Relay", "Url", "Attachment"]


# --------------------------------------------------------------------------- envelope


@dataclass(frozen=True, slots=True)
class Envelope:
    """What the MTA knows about a message that is not in its bytes.

    Every field is optional: a scan of a file on disk has none of them, and the
    checks that need one (SPF needs ``client_ip``) report that they could not
    run instead of guessing.

    Every field but ``rcpt_tos`` is a ``str`` or None, and ``rcpt_tos`` is any
    iterable of ``str`` (kept as a tuple) or one ``str`` (one recipient); anything
    else is a ``TypeError`` naming the field, here, rather than a ``CHECK_ERROR``
    in each check that reads it (bytes from a milter library, an int address).
    ``client_ip`` is kept as the address alone when it comes as an RFC 5321
    address literal (``[192.0.2.1]``, ``IPv6:2001:db8::1``, as Sendmail's
    ``{client_addr}`` gives IPv6) or with blanks around it, so that every check
    reads the same address (the DNS lists took ``[192.0.2.1]``, SPF did not).
    Anything else is kept as given (an IPv6 zone too: the DNS lists are never
    asked about a scoped address); the checks that need an address say when it
    is not one.
    """

    client_ip: str | None = None
    helo: str | None = None
    #: reverse DNS name of ``client_ip`` as the MTA resolved it
    hostname: str | None = None
    mail_from: str | None = None
    rcpt_tos: tuple[str, ...] = ()
    #: SASL-authenticated user, if any
    user: str | None = None
    queue_id: str | None = None

    def __post_init__(self) -> None:
        for name in _ENVELOPE_TEXT_FIELDS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"Envelope.{name} must be a str or None, not {type(value).__name__}"
                                + (" (decode it first)" if isinstance(value, (bytes, bytearray)) else ""))
        rcpts = self.rcpt_tos
        if not isinstance(rcpts, tuple):
            # Any iterable of recipients (a list from an MTA hook), stored as a tuple; a lone string is
            # one recipient, not one per character.
            if rcpts is None:
                rcpts = ()
            elif isinstance(rcpts, str):
                rcpts = (rcpts,)
            elif isinstance(rcpts, (bytes, bytearray)):
                raise TypeError("Envelope.rcpt_tos must be str addresses, not bytes (decode them first)")
            else:
                rcpts = tuple(rcpts)
            object.__setattr__(self, "rcpt_tos", rcpts)
        for r in rcpts:
            if not isinstance(r, str):
                raise TypeError(f"Envelope.rcpt_tos must be str addresses, not {type(r).__name__}")
        ip = self.client_ip
        if ip and (ip[0] in "[Ii \t" or ip[-1] in " \t"):
            object.__setattr__(self, "client_ip", bare_address(ip))


#: the Envelope fields that are text (``rcpt_tos`` is checked on its own)
_ENVELOPE_TEXT_FIELDS = ("client_ip", "helo", "hostname", "mail_from", "user", "queue_id")


def bare_address(ip: str) -> str:
    """``client_ip`` as the address alone: without blanks around it, RFC 5321 literal brackets
    or the ``IPv6:`` tag."""
    ip = ip.strip()
    if ip.startswith("[") and ip.endswith("]"):
        ip = ip[1:-1]
    if ip[:5].lower() == "ipv6:":
        ip = ip[5:]
    return ip


# --------------------------------------------------------------------------- limits


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on the work one message may cause.  Past them the scan goes on
    with what was parsed and :attr:`Message.skipped` says what was left out."""

    max_bytes: int = 32 * 1024 * 1024
    max_parts: int = 256
    max_depth: int = 16
    max_headers: int = 1000
    #: decoded text kept per part, and for the whole message, in characters
    max_text_chars: int = 1_000_000
    #: distinct links kept (the first ones, in order): rules and lists cost per link
    max_urls: int = 10_000


DEFAULT_LIMITS = Limits()


# --------------------------------------------------------------------------- results


@quick_init
@dataclass(frozen=True, slots=True)
class Relay:
    """One parsed ``Received`` header: who handed the message to whom."""

    ip: str | None
    rdns: str | None
    helo: str | None
    by: str | None
    raw: str


@quick_init
@dataclass(frozen=True, slots=True)
class Url:
    """A link found in the message.  ``text`` is the anchor text for HTML links."""

    url: str
    host: str
    source: str  # "text" or "html"
    text: str | None = None


@dataclass(frozen=True, slots=True)
class Attachment:
    name: str | None
    content_type: str
    size: int


@dataclass(slots=True)
class Part:
    """A leaf of the MIME tree (multiparts are walked, not kept).

    ``body`` is the transfer-decoded payload (bytes); ``text`` is its decoded
    text for ``text/*`` parts and None otherwise.
    """

    content_type: str
    charset: str | None
    encoding: str
    disposition: str | None
    filename: str | None
    depth: int
    headers: list[tuple[str, str]]
    body: bytes
    text: str | None = None
    is_attachment: bool = False
    size: int = field(default=0)


# --------------------------------------------------------------------------- helpers


class cached_property:  # noqa: N801 - same name and use as functools.cached_property
    """A view computed on first read and stored in the instance ``__dict__``.

    Like :func:`functools.cached_property` but without the per-class lock that
    Python 3.11 takes on every first computation: a Message is never shared
    between threads while its views are being built, and the lock showed up in
    profiles of the parser.  Later reads hit ``__dict__`` directly.
    """

    def __init__(self, fn):  # type: ignore[no-untyped-def]
        self.fn = fn
        self.name = fn.__name__
        self.__doc__ = fn.__doc__

    def __set_name__(self, owner, name):  # type: ignore[no-untyped-def]
        self.name = name

    def __get__(self, obj, cls=None):  # type: ignore[no-untyped-def]
        if obj is None:
            return self
        value = obj.__dict__[self.name] = self.fn(obj)
        return value


_ENCODED_WORD_RE = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
#: adjacent encoded-words (after the blanks between them are dropped)
_ENCODED_WORD_RUN_RE = re.compile(r"(?:=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=)+")
_EW_GAP_RE = re.compile(r"(\?=)[ \t\r\n]+(=\?)")
_PARAM_RE = re.compile(r';\s*([^\s=;]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]*))', re.S)
_ADDR_RE = re.compile(r"<([^<>]*)>")
#: a bare address: a run of address characters holding an "@" with one after it.  The local part may
#: be a quoted string (``"victim@paypal.example"@evil.example`` is a mailbox at evil.example, RFC 5322
#: 3.4.1, and Python's email package and mail clients read it so) or hold apostrophes between its
#: characters (``o'brien@example.org``); a run of address characters cut at either gave the wrong
#: address, and the wrong domain.  The look-behinds start a match only where a run starts (not after a
#: character or an apostrophe inside one), which changes no leftmost match (one starting inside a run
#: starts at the run's beginning too, the first repeat taking the characters before); without them
#: ``re`` read on from every position of a long run without an "@" (a From of 30,000 letters: 2 s)
_BARE_ADDR_RE = re.compile(r"(?<![^\s<>()\"',;:])(?<![^\s<>()\"',;:]')"
                           r"(?:\"[^\"]*\"|[^\s<>()\"',;:]+(?:'[^\s<>()\"',;:@]+)*)@[^\s<>()\"',;:]+")
_COMMENT_RE = re.compile(r"\([^()]*\)")

# HTML -> text.  Regular expressions rather than a DOM: the filter wants the
# visible words and the links, quickly, from HTML that is often broken on purpose.
#: what a browser never shows: comments, scripts, styles and the title.  Not the ``<head>`` as a
#: whole: an unclosed one (``<head><title>x</title><body>...``) would hide every word after it, where a
#: browser ends the head at the first tag or text that cannot be in it (WHATWG HTML, "in head"
#: insertion mode); what else a head holds is tags (meta, link, base), removed with the others.
_HTML_DROP_RE = re.compile(
    r"<!--.*?(?:-->|$)|<(script|style|title)\b[^>]*>.*?(?:</\1\s*>|$)", re.S | re.I
)
#: An anchor's text runs to its ``</a>``, to the next ``<a``, or to the end.  Written as an unrolled
#: loop (runs of ``[^<]``, then one ``<`` that starts neither) rather than a lazy ``.*?`` that tries
#: the three endings at every character: twice as fast on long anchors.  The one difference, a
#: newline at the very end of the document kept in the text, goes with the anchor's blank-stripping.
_HTML_ANCHOR_RE = re.compile(r"<a\b([^>]*)>([^<]*(?:<(?!/a\s*>|a\b)[^<]*)*)(?:</a\s*>|(?=<a\b)|$)", re.S | re.I)
_HTML_HREF_RE = re.compile(r"""\bhref\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))""", re.I)
_HTML_SRC_RE = re.compile(r"""<(?:img|form|iframe|area)\b[^>]*?\b(?:src|action|href)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))""", re.I)
_BLANKS_RE = re.compile(r"\n\s*\n+")
#: where a match of the patterns above can begin, for the searches in linear time (:func:`_tag_matches`)
_HTML_DROP_START_RE = re.compile(r"<(?:!--|(?:script|style|title)\b)", re.I)
_HTML_ANCHOR_START_RE = re.compile(r"<a\b", re.I)
_HTML_SRC_START_RE = re.compile(r"<(?:img|form|iframe|area)\b", re.I)

# Text URLs are found by a compiled kernel, ``fastscore.impl.text_urls`` (its twin is the definition).
#: a URL's authority: what a browser reads between ``//`` and the path, query or fragment (WHATWG URL
#: ends it at a backslash too, for the web's schemes)
_URL_AUTHORITY_RE = re.compile(r"^(?:[a-z][a-z0-9+.-]*:)?//([^/?#\\]*)", re.I)
#: full stops a browser reads as "." in a host name (UTS #46 maps them)
_HOST_DOTS = str.maketrans("\u3002\uff0e\uff61", "...")

#: text codecs that still raise on bad bytes with errors="replace" (or on any bytes)
_UNUSABLE_CODECS = frozenset({"idna", "punycode", "undefined"})


def _codec(charset: str | None) -> str | None:
    """Normalise a MIME charset to a Python codec name, or None if unknown."""
    if not charset:
        return "ascii"
    return _codec_of(charset)


#: MIME charset aliases Python's codec registry does not know, or knows as something else
_CHARSET_ALIASES = {"x-unknown": None, "unknown-8bit": None, "iso-8859-8-i": "iso-8859-8", "x-gbk": "gb18030",
                    "windows-874": "cp874", "x-sjis": "cp932", "chinesebig5": "big5hkscs"}
#: Python codecs that mail clients read as a superset: the WHATWG Encoding Standard's label table, which
#: Thunderbird and every browser follow (Latin-1 is windows-1252 there, EUC-KR is Microsoft's UHC, and
#: so on), keyed by the codec Python finds for a label so that each label's spellings are covered
#: (iso-8859-1, latin1, l1, cp819, ...; ks_c_5601-1987 is Python's euc_kr)
_WHATWG_CODECS = {"iso8859-1": "cp1252", "iso8859-9": "cp1254", "iso8859-11": "cp874", "tis-620": "cp874",
                  "euc_kr": "cp949", "shift_jis": "cp932", "big5": "big5hkscs", "gb2312": "gb18030", "gbk": "gb18030"}


#: every name the standard codec search can find a codec under: its aliases and the modules of the
#: ``encodings`` package (:func:`_registry_name`)
_REGISTRY_NAMES = frozenset({*encodings.aliases.aliases, *encodings.aliases.aliases.values(),
                             *(m.name for m in iter_modules(encodings.__path__))})


def _registry_name(key: str) -> str | None:
    """The name to ask ``codecs.lookup`` for a charset, or None when no codec can be found under it.

    The codec registry keeps every name it is asked, for good: ``encodings`` caches a miss, and
    the registry a hit under each spelling.  Names straight from the mail (``x-bogus-1``,
    ``x-bogus-2``..., or ``utf--8``, ``utf---8``... for one codec) grew those caches by one entry per
    message, however small :func:`_codec_of`'s own cache.  So the registry is asked only the
    normalised name (what its search normalises to anyway, so the answer is the same), and only
    when it is one of the finitely many it can know.
    """
    norm = encodings.normalize_encoding(key)
    return norm if norm in _REGISTRY_NAMES or norm.replace(".", "_") in _REGISTRY_NAMES else None


@lru_cache(maxsize=1024)
def _codec_of(charset: str) -> str | None:
    """:func:`_codec` of a charset as written, cached.  Bounded: the charset names come from the mail,
    and a server scanning spam that names a new one in every message would otherwise keep them all."""
    key = charset.strip().strip('"').strip().lower()
    if key.endswith("_charset"):  # a Windows font charset written as a MIME one: GB2312_CHARSET, CHINESEBIG5_CHARSET
        key = key[:-8]
    if key in _CHARSET_ALIASES:
        return _CHARSET_ALIASES[key]
    name = _registry_name(key)
    if name is None:
        return None
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError):
        return None
    # A charset must name a text codec whose decode(..., "replace") cannot fail: codecs.lookup
    # also finds bytes-to-bytes and str-to-str codecs (base64, zlib, rot13: bytes.decode raises
    # LookupError), and idna, punycode and undefined raise a bare UnicodeError or refuse
    # "replace".  ``=?rot13?Q?x?=`` in a header made every scan raise from Message.headers.
    usable = getattr(info, "_is_text_encoding", True) and info.name not in _UNUSABLE_CODECS
    return _WHATWG_CODECS.get(info.name, info.name) if usable else None


#: a lone surrogate code point: no character, and no UTF-8 encoding
_SURROGATE_RE = re.compile(r"[\ud800-\udfff]")
#: the text codecs whose decoding (strict or with "replace") can leave one: decoding random bytes
#: with every text codec Python has, only these did
_SURROGATE_CODECS = frozenset({"utf-7", "unicode-escape", "raw-unicode-escape"})


#: the Windows code pages as the WHATWG Encoding Standard decodes them (:func:`_whatwg_table`)
_C1_FILLED = frozenset({"cp874", *(f"cp{n}" for n in range(1250, 1259))})


@lru_cache(maxsize=None)  # one table per code page of _C1_FILLED
def _whatwg_table(codec: str) -> str:
    """``codec``'s decoding table as WHATWG's index of the code page has it: a byte in 0x80-0x9F
    that Python's codec leaves undefined (windows-1252's 0x81, 0x8D, 0x8F, 0x90, 0x9D; nearly half
    of that row in windows-874) is the C1 control of the same number, as browsers and Thunderbird
    decode it, not a decoding error that marks the text as broken; other undefined bytes stay
    errors (U+FFFE: undefined to ``codecs.charmap_decode``)."""
    return "".join(bytes([b]).decode(codec, "ignore") or (chr(b) if 0x80 <= b <= 0x9F else "\ufffe")
                   for b in range(256))


def _decode(data: bytes, codec: str, errors: str = "strict") -> str:
    """``data.decode(codec, errors)`` without lone surrogates (each becomes U+FFFD).

    UTF-7 decoding with "replace" leaves half a UTF-16 pair for a broken shift sequence (``+353``,
    a phone number, gives ``\\udf9d``), and unicode-escape decodes ``\\ud800`` to one.  Such a str
    cannot be encoded to UTF-8: the rules check raised on it (a ``CHECK_ERROR``), as would anything
    writing the text out.  The decoded text of a message therefore never holds one.

    The Windows code pages are decoded as WHATWG's (:func:`_whatwg_table`), as mail clients do.
    """
    if codec in _C1_FILLED:
        return codecs.charmap_decode(data, errors, _whatwg_table(codec))[0]
    text = data.decode(codec, errors)
    # only where the codec can leave one: the search is a second pass over every non-ASCII part
    if codec in _SURROGATE_CODECS and not text.isascii() and _SURROGATE_RE.search(text):
        text = _SURROGATE_RE.sub("\ufffd", text)
    return text


def _decode_undeclared(data: bytes) -> str:
    """8-bit text in no charset we know: most often UTF-8, else windows-1252."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return _decode(data, "cp1252")


def _decode_text(data: bytes, charset: str | None, defects: set[str]) -> str:
    """Bytes of a text part to str.  Never raises: unknown charsets and bad
    bytes become defects and replacement characters.

    A charset we do not know (``DEFAULT_CHARSET``, a typo) is read as no charset: ASCII, else UTF-8,
    else windows-1252, as a mail client falls back to its default for a label it cannot decode.
    Decoding it as UTF-8 with replacement lost every non-ASCII letter of legacy 8-bit text.
    """
    codec = _codec(charset)
    if codec is None:
        defects.add("MIME_UNKNOWN_CHARSET")
        return _decode_undeclared(data)
    if codec == "ascii":
        try:
            return data.decode("ascii")
        except UnicodeDecodeError:
            defects.add("MIME_8BIT_UNDECLARED")
            return _decode_undeclared(data)
    try:
        return _decode(data, codec)
    except UnicodeDecodeError:
        defects.add("MIME_BAD_CHARSET_DATA")
        return _decode(data, codec, "replace")
    except LookupError:  # pragma: no cover - codec vanished
        return data.decode("utf-8", "replace")


def _decode_b64(data: bytes, defects: set[str]) -> bytes:
    try:
        return binascii.a2b_base64(data)
    except binascii.Error:
        defects.add("MIME_BAD_BASE64")
        # Salvage what is there: drop the junk and re-pad the last quantum.  A final quantum of 2 or 3
        # characters holds 1 or 2 bytes (RFC 2045 6.8; mail clients decode it without its "="); one of
        # 1 character holds none.
        clean = re.sub(rb"[^A-Za-z0-9+/]", b"", data)
        rem = len(clean) % 4
        clean = clean[:-1] if rem == 1 else clean + b"=" * (-rem % 4)
        try:
            return binascii.a2b_base64(clean)
        except binascii.Error:  # pragma: no cover - cannot happen after cleaning
            return b""


def decode_rfc2047(value: str, defects: set[str] | None = None) -> str:
    """Decode RFC 2047 encoded-words in a header value.

    Whitespace between adjacent encoded-words is dropped (RFC 2047 section 6.2).
    Bad encodings or charsets decode with replacement characters and add the
    ``HEADER_BAD_ENCODING`` defect; this never raises.

    The bytes of adjacent encoded-words in one charset are decoded together: mailers cut a long
    value into words by length, splitting a multi-byte character between two (``=?utf-8?B?4oI=?=
    =?utf-8?B?rCA1?=`` is a euro sign and " 5"), and Python's email package and Thunderbird join them.
    """
    if "=?" not in value:
        return value
    value = _EW_GAP_RE.sub(r"\1\2", value)
    return _ENCODED_WORD_RUN_RE.sub(lambda run: _decode_words(run.group(0), defects), value)


def _decode_words(run: str, defects: set[str] | None) -> str:
    """A run of adjacent encoded-words, decoded (see :func:`decode_rfc2047`)."""
    out: list[str] = []
    chunks: list[bytes] = []  # the bytes of the words of one charset, not yet decoded
    charset = ""
    for m in _ENCODED_WORD_RE.finditer(run):
        cs = m.group(1).split("*", 1)[0].lower()  # RFC 2231 language suffix
        text = m.group(3)
        try:
            if m.group(2) in "bB":
                raw = binascii.a2b_base64(text + "=" * (-len(text) % 4))
            else:
                raw = binascii.a2b_qp(text.encode("ascii", "replace"), header=True)
        except (binascii.Error, ValueError):
            if defects is not None:
                defects.add("HEADER_BAD_ENCODING")
            raw = None
        if chunks and (raw is None or cs != charset):
            out.append(_decode_word_bytes(b"".join(chunks), charset, defects))
            chunks.clear()
        if raw is None:
            out.append(m.group(0))  # kept as written
        else:
            chunks.append(raw)
            charset = cs
    if chunks:
        out.append(_decode_word_bytes(b"".join(chunks), charset, defects))
    return "".join(out)


def _decode_word_bytes(raw: bytes, charset: str, defects: set[str] | None) -> str:
    codec = _codec(charset)
    try:
        return _decode(raw, codec or "utf-8")
    except (UnicodeDecodeError, LookupError):
        if defects is not None:
            defects.add("HEADER_BAD_ENCODING")
        return _decode(raw, codec or "utf-8", "replace")


def parse_params(value: str) -> tuple[str, dict[str, str]]:
    """Split ``type/subtype; a=b; c="d"`` into the lower-cased main value and parameters.

    Handles RFC 2231 ``name*=charset''pct-encoded`` and continuations ``name*0=``.
    """
    semi = value.find(";")
    main = (value if semi < 0 else value[:semi]).strip().lower()
    params: dict[str, str] = {}
    if semi < 0:
        return main, params
    pieces: dict[str, dict[int, tuple[str, bool]]] = {}
    for m in _PARAM_RE.finditer(value, semi):
        name = m.group(1).lower()
        val = m.group(2) if m.group(2) is not None else m.group(3)
        if m.group(2) is not None and "\\" in val:
            val = re.sub(r"\\(.)", r"\1", val)
        if "*" in name:
            base, _, rest = name.partition("*")
            encoded = rest.endswith("*") or rest == ""
            idx_txt = rest.rstrip("*")
            # An ASCII number of a few digits: str.isdigit() is also true of "²" and "١", which int()
            # refuses or reads, and int() refuses more than 4,300 digits; a ValueError here failed
            # every check that read the MIME tree.  Anything else is section 0, as a missing number is.
            idx = int(idx_txt) if idx_txt.isascii() and idx_txt.isdigit() and len(idx_txt) <= 9 else 0
            pieces.setdefault(base, {})[idx] = (val, encoded)
        elif name not in params:
            params[name] = val
    for base, chunks in pieces.items():
        text_parts = []
        charset = "utf-8"
        for i in sorted(chunks):
            val, encoded = chunks[i]
            if encoded:
                if i == 0 and val.count("'") >= 2:
                    charset, _, val = val.split("'", 2)
                val = _decode(unquote_to_bytes(val), _codec(charset) or "utf-8", "replace")
            text_parts.append(val)
        params[base] = "".join(text_parts)
    return main, params


@lru_cache(maxsize=256)
def split_addresses(value: str) -> tuple[tuple[str, str], ...]:
    """``'"Ann" <a@x.example>, b@y.example'`` -> ``(("Ann", "a@x.example"), ("", "b@y.example"))``.

    Tolerant of the junk spam carries: a value with no parsable address yields ().
    Cached by value: the same From/To/Reply-To values are read by the rules,
    the classifier and reputation within one scan.  Sized for a scan and the
    senders of the last few hundred: a benchmark looping over a corpus must
    not be served its second round from the first.
    """
    if not value:
        return ()
    # Split on commas outside quotes and angle brackets.  Without quotes (most headers),
    # a comma inside <...> would need a quoted local part, so a plain split is exact.
    items = value.split(",") if '"' not in value else _split_quoted(value)
    out: list[tuple[str, str]] = []
    for item in items:
        m = _ADDR_RE.search(item)
        if m:
            addr = m.group(1).strip()
            name = item[: m.start()].strip().strip('"').strip()
        else:
            bare = _BARE_ADDR_RE.search(_COMMENT_RE.sub("", item) if "(" in item else item)
            if not bare:
                continue
            addr = bare.group(0)
            cm = _COMMENT_RE.search(item) if "(" in item else None
            name = cm.group(0)[1:-1].strip() if cm else ""
        if addr:
            out.append((name, addr))
    return tuple(out)


def _split_quoted(value: str) -> list[str]:
    """Split on commas that are outside double quotes and angle brackets."""
    items, buf, quote, angle = [], [], False, 0
    for ch in value:
        if ch == '"':
            quote = not quote
        elif not quote:
            if ch == "<":
                angle += 1
            elif ch == ">" and angle:
                angle -= 1
            elif ch == "," and not angle:
                items.append("".join(buf))
                buf = []
                continue
        buf.append(ch)
    items.append("".join(buf))
    return items


def domain_of(addr: str | None) -> str | None:
    """The lower-cased domain of an address, without a trailing dot; None if there is none."""
    if not addr:
        return None
    at = addr.rfind("@")
    if at < 0:
        return None
    dom = addr[at + 1 :].strip().strip(">").rstrip(".").lower()
    return dom or None


def url_host(url: str) -> str:
    """Lower-cased host of a URL (``www.x`` without a scheme counts as ``http://www.x``).

    The host a browser would open, since that is what reputation must look up: after the *last*
    ``@`` of the authority (``http://x.example@listed.example/`` opens listed.example),
    percent-decoded (``%6Cisted.example``), ideographic full stops read as dots
    (``listed。example``), without port or trailing dot.  An IP literal keeps its brackets off.
    """
    if url[:4].lower() == "www.":
        url = "http://" + url
    m = _URL_AUTHORITY_RE.match(url)
    if not m:
        return ""
    host = m.group(1)
    at = host.rfind("@")
    if at >= 0:
        host = host[at + 1:]
    if host.startswith("["):
        end = host.find("]")
        return host[1:end].lower() if end > 0 else ""
    host = host.partition(":")[0]
    if "%" in host:
        host = unquote_to_bytes(host).decode("utf-8", "replace")
    if not host.isascii():
        host = host.translate(_HOST_DOTS)
    return host.lower().rstrip(".")


def _parse_header_block(block: str, max_headers: int, defects: set[str]) -> list[tuple[str, str]]:
    """Header block (text, LF line ends) -> ``[(name, value)]``, unfolded, not decoded.

    A compiled kernel (``header_fields``: unfold, then one pass over the lines); the
    twin's one ``findall`` of a line pattern over the unfolded block is the definition.
    """
    found = fastscore.impl.header_fields(block)
    if len(found) > max_headers:
        defects.add("HEADER_TOO_MANY")
        # The fields that say who wrote and signed the message are kept past the limit (a bounded
        # number of them): with only the first fields kept, 1,000 Received lines before a forged
        # From hid it, and DMARC, finding no From, applied no policy to a p=reject domain.
        later = [f for f in found[max_headers:] if f[0].lower() in _KEPT_PAST_LIMIT]
        found = found[:max_headers] + later[:_MAX_KEPT_PAST_LIMIT]
    return found


#: fields kept beyond ``Limits.max_headers``: the author and sender fields DMARC and the rules read,
#: and the signatures and seals that vouch for them
_KEPT_PAST_LIMIT = frozenset({"from", "sender", "reply-to", "to", "cc", "subject", "date", "message-id",
                              "dkim-signature", "arc-seal", "arc-message-signature", "arc-authentication-results"})
_MAX_KEPT_PAST_LIMIT = 100


def _split_head_body(data: bytes) -> tuple[bytes, bytes, bool]:
    """Split raw bytes at the first empty line.  Returns (head, body, had_separator)."""
    if data.startswith(b"\n") or data.startswith(b"\r\n"):
        return b"", data[1 if data[:1] == b"\n" else 2 :], True
    # The earlier of an LF and a CRLF empty line.  The line ending of the first line says which
    # to look for first; the other is then only looked for before it (a search for the one a
    # message does not use would read the whole message).
    nl = data.find(b"\n")
    if nl > 0 and data[nl - 1] == 13:  # CRLF mail
        j = data.find(b"\n\r\n", nl)
        i = data.find(b"\n\n", nl, len(data) if j < 0 else j + 1)
    else:
        i = data.find(b"\n\n", max(nl, 0))
        j = data.find(b"\n\r\n", max(nl, 0), len(data) if i < 0 else i + 2)
    if j >= 0 and (i < 0 or j < i):
        return data[:j], data[j + 3 :], True
    if i >= 0:
        return data[:i], data[i + 2 :], True
    return data, b"", False


#: the Content-Type field of a header block, folded lines and all (``[^\n]`` and ``\n[ \t]`` cannot both
#: match at one place, so the search is linear)
_HEAD_CTYPE_RE = re.compile(r"^content-type:((?:[^\n]|\n[ \t])*)", re.I | re.M)
#: every ASCII byte, the backslash as the start of an escape sequence (which the escape codecs read as another character)
_ASCII_PROBE = bytes(b for b in range(128) if b != 0x5C) + rb"\u0041"


@lru_cache(maxsize=None)  # keyed by codec names, not by what the mail writes: a few dozen at most
def _reads_ascii(codec: str) -> bool:
    """Whether ``codec`` decodes every ASCII byte as itself, as a header block's charset must (names,
    colons and line ends stay what they are).  Not UTF-16, UTF-7 or unicode-escape: a Content-Type
    naming one would otherwise turn every header of the block into other characters."""
    try:
        return _decode(_ASCII_PROBE, codec) == _ASCII_PROBE.decode("ascii")
    except (UnicodeDecodeError, ValueError):
        return False


def _head_text(head: bytes, defects: set[str]) -> str:
    """A header block's bytes as text.  Raw 8-bit header text (no encoded-words) that is not UTF-8 is
    read as Thunderbird reads it: in the charset the block's Content-Type names (a Korean or Chinese
    spam sends its Subject raw in the body's charset), else as Latin-1."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        defects.add("HEADER_8BIT")
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError:
            text = head.decode("latin-1")
            m = _HEAD_CTYPE_RE.search(text)
            codec = _codec(parse_params(m.group(1))[1].get("charset")) if m else None
            if codec not in (None, "ascii", "utf-8") and _reads_ascii(codec):
                try:
                    text = _decode(head, codec)
                except UnicodeDecodeError:
                    pass  # not all in that charset: Latin-1, which reads any bytes
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    return text


def html_to_text(markup: str) -> tuple[str, list[tuple[str, str]]]:
    """Visible text of an HTML document, and its links as ``(href, anchor_text)``.

    Scripts, styles, comments and the title are dropped; block-level tags become
    line breaks; entities are unescaped.  Image, form and frame targets are
    links with empty anchor text.
    """
    markup = _drop_hidden(markup)
    links: list[tuple[str, str]] = []
    if "<a" in markup or "<A" in markup:
        # An anchor fails to open only with no ">" after it: ``re`` alone is linear unless one opens after the last.
        anchors = (_HTML_ANCHOR_RE.finditer(markup) if _HTML_ANCHOR_START_RE.search(markup, markup.rfind(">") + 1) is None
                   else _tag_matches(_HTML_ANCHOR_RE, _HTML_ANCHOR_START_RE, markup))
        for m in anchors:
            h = _HTML_HREF_RE.search(m.group(1))
            if h:
                href = h.group(1) if h.group(1) is not None else (h.group(2) if h.group(2) is not None else h.group(3))
                anchor = m.group(2)
                if "<" in anchor:
                    anchor = _sub_tags(_HTML_TAG_RE, "", anchor)
                if "&" in anchor:
                    anchor = _html.unescape(anchor)
                links.append((_html.unescape(href.strip()) if "&" in href else href.strip(), fastscore.impl.collapse_blanks(anchor).strip()))
    for m in _tag_matches(_HTML_SRC_RE, _HTML_SRC_START_RE, markup):
        src = m.group(1) if m.group(1) is not None else (m.group(2) if m.group(2) is not None else m.group(3))
        links.append((src.strip(), ""))
    text = fastscore.impl.html_strip_tags(markup)  # block-level tags -> line breaks, other tags removed
    if "&" in text:
        text = _html.unescape(text)
    text = fastscore.impl.collapse_blanks(text)
    text = _BLANKS_RE.sub("\n", text)
    return text.strip(), links


def _tag_matches(pattern: re.Pattern[str], starts: re.Pattern[str], text: str) -> Iterator[re.Match[str]]:
    """``pattern.finditer(text)`` in time linear in ``len(text)``, for the anchor and the link patterns:
    ``<name`` (found by ``starts``), then the tag's attributes read as ``[^>]*``.

    ``re`` tries every place a tag opens, and where no match begins it has read on to the next ``>``
    (to the end when there is none): for ``<img <img ...`` with no link and no ``>``, the square of the
    length, minutes for a part of 100 KB, and a scan has no deadline there.  Where no match begins,
    none begins before that ``>`` either (what the pattern looks for among the attributes does not
    depend on where the tag opened), so the search goes on after it.
    """
    pos = 0
    while (c := starts.search(text, pos)) is not None:
        m = pattern.match(text, c.start())
        if m is not None:
            yield m
            pos = m.end()
        else:
            gt = text.find(">", c.start())
            if gt < 0:
                return
            pos = gt + 1


def _drop_hidden(markup: str) -> str:
    """``_HTML_DROP_RE.sub("", markup)`` in time linear in ``len(markup)``.

    What is dropped becomes nothing, not a space: a comment or a style shows nothing, so
    ``V<!--x-->iagra`` reads "Viagra" in every client, and a space there split the word.

    A script, style or title tag cannot open with no ``>`` after it, and ``re`` trying each one
    there reads on to the end (see :func:`_tag_matches`): those places are passed over.  A comment
    opens anywhere (one left open runs to the end).
    """
    last = markup.rfind(">")
    if _HTML_DROP_START_RE.search(markup, last + 1) is None:
        return _HTML_DROP_RE.sub("", markup)  # nothing opens after the last ">": ``re`` alone is linear
    out: list[str] = []
    done = pos = 0
    while (c := _HTML_DROP_START_RE.search(markup, pos)) is not None:
        s = c.start()
        m = _HTML_DROP_RE.match(markup, s) if s < last or markup[s + 1] == "!" else None
        if m is None:
            pos = s + 1
            continue
        out.append(markup[done:s])
        done = pos = m.end()
    if not out:
        return markup
    out.append(markup[done:])
    return "".join(out)


# --------------------------------------------------------------------------- learning ledgers


def ledger_digests(raw: bytes) -> tuple[str, ...]:
    """What the learning ledgers call a message: ``(digest, *older digests)``, sha256 hex strings.

    ``digest`` is the sha256 of the message with each CRLF line end made LF
    (``raw.replace(b"\\r\\n", b"\\n")``), so that one message counts once however it
    arrives: ``antispam learn`` reads files and mailboxes with LF line ends, the
    milter (and spamd TELL, from most clients) hands over the wire's CRLF.  Both
    ledgers key their entries with it (``learn:cls:`` in
    :mod:`antispam.classifier.learn`, ``h:learned:`` in
    :mod:`antispam.reputation.history`).  Why this normalisation and no other:

    * Only CRLF, not a bare CR.  The ledgers may equate only copies that every
      learner reads as the same message, because relearning and unlearning move or
      take out the counts of the copy presented.  :class:`Message` reads CRLF and
      LF alike (every message of the SpamAssassin corpus gives the classifier the
      same features either way), but a bare CR is no line end to it: a message
      with CR line ends parses as one long header, with other tokens and URLs, and
      equating it with its LF copy would let an unlearn take out counts that were
      never added.
    * To LF, not to CRLF: an LF-only message (a file, the usual thing to learn
      from) is hashed as it is, without a copy, and keeps the key that ledgers
      written before this normalisation gave it.
    * Exactly one CR before each LF goes, as the parser reads a line end:
      ``a\\r\\r\\n`` (a stray CR, then a CRLF) stays apart from ``a\\r\\n``.

    The older digests are keys that ledgers written before the normalisation
    (sha256 of the bytes as learned) may hold this message under: the bytes as
    given when they have a CRLF, then the all-CRLF form when it differs from them
    (the wire's copy of an LF file, so that what spamd learned before can be
    unlearned from the file).  An original with mixed line ends is found only
    from its own bytes.  A ledger keeps a message's entry under the first of
    these keys that holds one, and writes a new entry only under ``digest``.
    Cost: one sha256 of the message, plus one per older form (usually one).
    """
    sha256 = hashlib.sha256
    if b"\r\n" not in raw:
        digest = sha256(raw).hexdigest()
        if b"\n" not in raw:
            return (digest,)
        return digest, sha256(raw.replace(b"\n", b"\r\n")).hexdigest()
    lf = raw.replace(b"\r\n", b"\n")
    digests = (sha256(lf).hexdigest(), sha256(raw).hexdigest())
    if raw.count(b"\n") != raw.count(b"\r\n"):  # some LF without its CR: the all-CRLF form is another
        digests += (sha256(lf.replace(b"\n", b"\r\n")).hexdigest(),)
    return digests


# --------------------------------------------------------------------------- message


#: the envelope of a message scanned without one (frozen, so one instance serves every message)
_NO_ENVELOPE = Envelope()


class Message:
    """A raw message with lazily computed, cached views.

    Build it from the exact bytes received (a leading mbox ``From `` line and
    CRLF line ends are accepted).  Construction is cheap: nothing is parsed
    until a view is read.  Views never raise; see :attr:`defects`.
    """

    def __init__(self, raw: bytes, envelope: Envelope | None = None, limits: Limits | None = None):
        if not isinstance(raw, (bytes, bytearray, memoryview)):
            raise TypeError(f"Message needs the raw bytes of a message, not {type(raw).__name__}")
        if envelope is not None and not isinstance(envelope, Envelope):
            # A dict or an address string would be ignored by content checks and break every network check.
            raise TypeError(f"the envelope must be an antispam.Envelope or None, not {type(envelope).__name__}")
        raw = bytes(raw)
        self.envelope = envelope or _NO_ENVELOPE
        self.limits = limits or DEFAULT_LIMITS
        self._defects: set[str] = set()
        self._skipped: list[str] = []
        self.size = len(raw)
        if raw.startswith(b"From ") and not raw.startswith(b"From: "):
            nl = raw.find(b"\n")
            raw = raw[nl + 1 :] if nl >= 0 else b""
        if len(raw) > self.limits.max_bytes:
            self._skipped.append(f"bytes>{self.limits.max_bytes}")
            raw = raw[: self.limits.max_bytes]
        #: the message bytes as scanned (mbox line removed, truncated past ``max_bytes``)
        self.raw = raw

    def __repr__(self) -> str:
        return f"<Message {self.size} bytes subject={self.subject[:40]!r}>"

    @cached_property
    def ledger_digests(self) -> tuple[str, ...]:
        """:func:`ledger_digests` of :attr:`raw`, computed once per message: one ``learn`` or ``unlearn``
        goes through both learning ledgers (the classifier's and the reputation history's), and each
        digest is a sha256 pass over the whole message."""
        return ledger_digests(self.raw)

    # ---------------------------------------------------------------- top level split

    @cached_property
    def _split(self) -> tuple[bytes, bytes]:
        head, body, ok = _split_head_body(self.raw)
        if not ok:
            self._defects.add("MISSING_HEADER_BODY_SEPARATOR")
        return head, body

    @property
    def header_bytes(self) -> bytes:
        """The raw header block."""
        return self._split[0]

    @property
    def body_bytes(self) -> bytes:
        """The raw body, before any MIME decoding (what ``rawbody`` rules read)."""
        return self._split[1]

    # ---------------------------------------------------------------- headers

    @cached_property
    def raw_headers(self) -> list[tuple[str, str]]:
        """Every header in order as ``(name, value)``, value unfolded but not decoded."""
        return _parse_header_block(_head_text(self._split[0], self._defects), self.limits.max_headers, self._defects)

    @cached_property
    def headers(self) -> list[tuple[str, str]]:
        """Every header in order as ``(name, value)``, RFC 2047 decoded and unfolded."""
        d = self._defects
        return [(n, decode_rfc2047(v, d) if "=?" in v else v) for n, v in self.raw_headers]

    @cached_property
    def header_index(self) -> dict[str, list[int]]:
        """Lower-cased header name -> positions in :attr:`headers` / :attr:`raw_headers`, in order.

        Built once per message; checks that read many headers look names up here
        instead of walking the header list each time.
        """
        idx: dict[str, list[int]] = {}
        get = idx.get
        for i, (n, _) in enumerate(self.raw_headers):
            k = n.lower()
            pos = get(k)
            if pos is None:
                idx[k] = [i]
            else:
                pos.append(i)
        return idx

    def get(self, name: str, default: str | None = None) -> str | None:
        """First occurrence of a header, decoded; ``default`` when absent."""
        pos = self.header_index.get(name.lower())
        return self.headers[pos[0]][1] if pos else default

    def get_all(self, name: str) -> list[str]:
        """All occurrences of a header, decoded, in order."""
        h = self.headers
        return [h[i][1] for i in self.header_index.get(name.lower(), ())]

    def get_raw(self, name: str) -> list[str]:
        """All occurrences of a header, undecoded (unfolded), in order."""
        h = self.raw_headers
        return [h[i][1] for i in self.header_index.get(name.lower(), ())]

    def has(self, name: str) -> bool:
        return name.lower() in self.header_index

    @cached_property
    def subject(self) -> str:
        return self.get("Subject", "") or ""

    @cached_property
    def from_addresses(self) -> tuple[tuple[str, str], ...]:
        """``[(display_name, address)]`` of the (first) From header, usually one.

        Parsed from the value as sent, then the display names decoded: an encoded-word never
        holds an address (RFC 2047 section 5), so a name that decodes to ``<x@other.example>``
        or to a comma must not be read as one, or an author could be hidden behind it.
        """
        raw = self.get_raw("From")
        if not raw:
            return ()
        pairs = split_addresses(raw[0])
        if "=?" in raw[0]:
            d = self._defects
            pairs = tuple((decode_rfc2047(n, d) if "=?" in n else n, a) for n, a in pairs)
        return pairs

    @property
    def from_name(self) -> str:
        return self.from_addresses[0][0] if self.from_addresses else ""

    @property
    def from_addr(self) -> str | None:
        return self.from_addresses[0][1] if self.from_addresses else None

    @cached_property
    def from_domain(self) -> str | None:
        return domain_of(self.from_addr)

    @cached_property
    def to_addrs(self) -> list[str]:
        out: list[str] = []
        for name in ("To", "Cc"):
            for v in self.get_all(name):
                out.extend(a for _, a in split_addresses(v))
        return out

    @cached_property
    def reply_to(self) -> str | None:
        v = split_addresses(self.get("Reply-To", "") or "")
        return v[0][1] if v else None

    @cached_property
    def message_id(self) -> str | None:
        v = self.get("Message-ID")
        return v.strip() if v else None

    @cached_property
    def received(self) -> tuple[Relay, ...]:
        """The Received chain, newest (closest to us) first."""
        fields = fastscore.impl.received_fields
        relays = []
        for value in self.get_raw("Received"):
            ip, rdns, helo, by = fields(value.partition(";")[0])
            relays.append(Relay(ip=ip, rdns=rdns, helo=helo, by=by, raw=value))
        return tuple(relays)

    # ---------------------------------------------------------------- MIME

    @cached_property
    def parts(self) -> tuple[Part, ...]:
        """Leaf MIME parts, depth-first, transfer-decoded (bounded by :class:`Limits`)."""
        out: list[Part] = []
        self._walk(self.raw_headers, self.headers, self._split[1], 0, out, top=True)
        return tuple(out)

    def _walk(self, raw_fields: list[tuple[str, str]], fields: list[tuple[str, str]], body: bytes, depth: int,
              out: list[Part], top: bool = False) -> None:
        """Add the leaf parts of the entity with these header fields (as sent, and RFC 2047 decoded) and body.

        Content-Type and Content-Disposition are parsed from the values as sent: an encoded-word is
        no parameter syntax (RFC 2047 section 5 allows none in a parameter), so one that decodes to a
        quote or a semicolon must not end a parameter; the file name is decoded after it is parsed,
        as Python's email package and mail clients decode it.
        """
        limits, defects = self.limits, self._defects
        ctype_raw = encoding = disp_raw = ""
        for n, v in raw_fields:
            ln = n.lower()
            if ln == "content-type" and not ctype_raw:
                ctype_raw = v
            elif ln == "content-transfer-encoding" and not encoding:
                encoding = v.strip().lower()
            elif ln == "content-disposition" and not disp_raw:
                disp_raw = v
        ctype, params = parse_params(ctype_raw) if ctype_raw else ("text/plain", {})
        if "/" not in ctype:
            if ctype_raw:
                defects.add("MIME_BAD_CONTENT_TYPE")
            ctype = "text/plain"
        if ctype.startswith("multipart/"):
            boundary = params.get("boundary")
            # No boundary, or one that no line of the body is: the body is text, as Python's email
            # package shows it (SpamAssassin parses it as one part).  Read as a multipart it would be
            # all preamble, which RFC 2046 says to ignore: a message a reader sees whole, its words
            # hidden from the rules and the classifier.
            subs = self._split_multipart(body, boundary.encode("utf-8", "replace")) if boundary else None
            if subs is None:
                defects.add("MIME_MISSING_BOUNDARY")
                ctype = "text/plain"
            elif depth >= limits.max_depth:
                defects.add("MIME_TOO_DEEP")
                self._skip(f"depth>{limits.max_depth}")
                return
            else:
                for sub in subs:
                    if len(out) >= limits.max_parts:
                        defects.add("MIME_TOO_MANY_PARTS")
                        self._skip(f"parts>{limits.max_parts}")
                        return
                    head, sbody, _ = _split_head_body(sub)
                    self._walk(*self._entity_fields(head), sbody, depth + 1, out)
                return
        if ctype == "message/rfc822" and depth < limits.max_depth and encoding in ("", "7bit", "8bit", "binary"):
            head, sbody, _ = _split_head_body(body)
            self._walk(*self._entity_fields(head), sbody, depth + 1, out)
            return
        if len(out) >= limits.max_parts:
            defects.add("MIME_TOO_MANY_PARTS")
            self._skip(f"parts>{limits.max_parts}")
            return
        # Leaf part.
        if encoding == "base64":
            payload = _decode_b64(body, defects)
        elif encoding == "quoted-printable":
            payload = binascii.a2b_qp(body)
        elif encoding in ("", "7bit", "8bit", "binary"):
            payload = body
        else:
            if encoding not in ("x-uuencode", "uuencode"):
                defects.add("MIME_UNKNOWN_ENCODING")
            payload = body
        disposition, dparams = parse_params(disp_raw) if disp_raw else (None, {})
        filename = dparams.get("filename") or params.get("name")
        if filename and "=?" in filename:
            filename = decode_rfc2047(filename, defects)
        is_att = disposition == "attachment" or (filename is not None and not ctype.startswith("text/")) or not (
            ctype.startswith("text/") or ctype.startswith("message/") or ctype.startswith("multipart/")
        )
        text = None
        if ctype.startswith("text/") and not (disposition == "attachment" and filename):
            if payload.startswith(b"\xef\xbb\xbf"):
                payload = payload[3:]
            text = _decode_text(payload[: limits.max_text_chars * 4], params.get("charset"), defects)
            if "\r" in text:
                text = text.replace("\r\n", "\n")
            if len(text) > limits.max_text_chars:
                text = text[: limits.max_text_chars]
                self._skip(f"text>{limits.max_text_chars}")
        out.append(Part(content_type=ctype, charset=params.get("charset"), encoding=encoding or "7bit",
                        disposition=disposition, filename=filename, depth=depth, headers=fields,
                        body=payload, text=text, is_attachment=is_att and text is None, size=len(payload)))

    def _entity_fields(self, head: bytes) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """The header fields of a body part or an enclosed message: as sent, and RFC 2047 decoded."""
        d = self._defects
        raw = _parse_header_block(_head_text(head, d), self.limits.max_headers, d)
        return raw, [(n, decode_rfc2047(v, d) if "=?" in v else v) for n, v in raw]

    def _split_multipart(self, body: bytes, boundary: bytes) -> Iterator[bytes] | None:
        """The bodies between ``--boundary`` delimiter lines (RFC 2046 5.1.1), one by one; None
        when no line of ``body`` is a delimiter.

        A delimiter line is the boundary, then ``--`` for the close delimiter, then only blanks to
        the line end (RFC 2046 5.1.1: ``"--" boundary [ "--" ] transport-padding CRLF``), as Python's
        email package and Thunderbird read it.  A line that merely starts with it is body text: the
        usual case is an inner multipart's boundary that extends the outer one (``----=_NextPart_X``
        and ``----=_NextPart_XAA``), which would otherwise split the outer part inside the inner one.
        """
        delim = b"--" + boundary
        pos = 0
        starts: list[int] = []
        closed = False
        n = len(body)
        while True:
            i = body.find(delim, pos)
            if i < 0:
                break
            if i == 0 or body[i - 1] == 10:  # at a line start
                end = i + len(delim)
                is_close = body[end : end + 2] == b"--"
                k = end + 2 if is_close else end
                while k < n and body[k] in b" \t\r":  # transport padding (each byte read once: it ends at a line end)
                    k += 1
                if k < n and body[k] != 10:  # more text on the line: not this boundary's delimiter
                    pos = end
                    continue
                starts.append(i)
                if is_close:
                    closed = True
                    break
            pos = i + len(delim)
            if pos >= n:
                break
        if not starts:
            return None
        if not closed:
            self._defects.add("MIME_MISSING_CLOSE_BOUNDARY")
        return self._segments(body, starts, closed)

    @staticmethod
    def _segments(body: bytes, starts: list[int], closed: bool) -> Iterator[bytes]:
        """The body parts after each delimiter line at ``starts`` (the last one a close delimiter
        when ``closed``)."""
        n = len(body)
        for k, s in enumerate(starts):
            if closed and k == len(starts) - 1:
                break
            nl = body.find(b"\n", s)
            if nl < 0:
                continue
            seg_start = nl + 1
            seg_end = starts[k + 1] if k + 1 < len(starts) else n
            seg = body[seg_start:seg_end]
            # The CRLF before the next delimiter belongs to the delimiter.
            if seg.endswith(b"\r\n"):
                seg = seg[:-2]
            elif seg.endswith(b"\n"):
                seg = seg[:-1]
            yield seg

    def _skip(self, what: str) -> None:
        if what not in self._skipped:
            self._skipped.append(what)

    # ---------------------------------------------------------------- text views

    @cached_property
    def text_parts(self) -> tuple[Part, ...]:
        return tuple(p for p in self.parts if p.text is not None)

    @cached_property
    def plain_text(self) -> str:
        """Decoded text of the ``text/plain`` parts."""
        return "\n".join(p.text for p in self.text_parts if p.content_type != "text/html")  # type: ignore[misc]

    @cached_property
    def html(self) -> str:
        """Decoded markup of the ``text/html`` parts (what HTML rules inspect)."""
        return "\n".join(p.text for p in self.text_parts if p.content_type == "text/html")  # type: ignore[misc]

    @cached_property
    def _html_render(self) -> tuple[str, list[tuple[str, str]]]:
        if not self.html:
            return "", []
        return html_to_text(self.html)

    @property
    def html_text(self) -> str:
        """Visible text of the HTML parts."""
        return self._html_render[0]

    @cached_property
    def text(self) -> str:
        """The message's readable text: plain parts and the visible text of HTML parts.

        When a message has both (multipart/alternative), both are included:
        spam often says different things in each.
        """
        pieces = [self.plain_text, self.html_text] if self.html else [self.plain_text]
        return "\n".join(p for p in pieces if p)

    @property
    def html_links(self) -> list[tuple[str, str]]:
        """Every link of the HTML parts as written, ``(href or img src, anchor text)``, in order:
        ``mailto:``, ``cid:``, relative links and repeats included (:attr:`urls` leaves them out)."""
        return self._html_render[1]

    @cached_property
    def urls(self) -> tuple[Url, ...]:
        """Links from the plain text and the HTML, in order of appearance, de-duplicated; the
        first ``limits.max_urls`` of them (no record is built for the rest)."""
        seen: set[str] = set()
        out: list[Url] = []
        limit = self.limits.max_urls
        for href, anchor in self._html_render[1]:
            if href and href not in seen and (":" in href or href[:4].lower() == "www."):
                low = href[:11].lower()
                if low.startswith(("mailto:", "javascript:", "cid:", "data:", "tel:", "#")):
                    continue
                if len(out) == limit:
                    break
                seen.add(href)
                out.append(Url(url=href, host=url_host(href), source="html", text=anchor))
        else:
            for u in fastscore.impl.text_urls(self.plain_text):
                if u not in seen:
                    if len(out) == limit:
                        break
                    seen.add(u)
                    out.append(Url(url=u, host=url_host(u), source="text"))
            else:
                return tuple(out)
        self._skip(f"urls>{limit}")
        return tuple(out)

    @cached_property
    def url_hosts(self) -> tuple[str, ...]:
        """Distinct URL hosts, in order of first appearance."""
        return tuple(dict.fromkeys(u.host for u in self.urls if u.host))

    @cached_property
    def attachments(self) -> tuple[Attachment, ...]:
        return tuple(Attachment(name=p.filename, content_type=p.content_type, size=p.size)
                     for p in self.parts if p.is_attachment)

    # ---------------------------------------------------------------- problems

    @property
    def defects(self) -> frozenset[str]:
        """Defects found in the views computed so far (read :meth:`parse_all` first for all)."""
        return frozenset(self._defects)

    @property
    def skipped(self) -> tuple[str, ...]:
        """Limits that were hit, e.g. ``("parts>256",)``; empty when everything was scanned."""
        return tuple(self._skipped)

    def parse_all(self) -> "Message":
        """Compute every view now (for benchmarks and for complete defect lists)."""
        self.headers, self.received, self.parts, self.text, self.urls, self.attachments  # noqa: B018
        return self

