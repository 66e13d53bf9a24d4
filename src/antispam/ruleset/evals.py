"""Built-in ``eval:`` tests: what a regular expression cannot say.

A rule ``header NAME eval:header_absent('Date')`` calls the Python function
registered here as ``header_absent`` with the message and the (quoted-string
or number) arguments.  A function returns a truth value, a hit count, or
``(hit, options)`` where options explain the hit (the spoofed domain, the
offending attachment name...).

Each function declares which rule kinds may call it and checks its arguments
at load time, so a typo is a lint error, not a rule that silently never fires.
Functions read only the :class:`~antispam.message.Message` views; none does I/O.
"""

from __future__ import annotations

import calendar
import datetime
import io
import ipaddress
import re
import zipfile
from dataclasses import dataclass
from email.utils import mktime_tz, parsedate_tz
from functools import lru_cache
from typing import Any, Callable, Iterable

from .. import fastscore
from ..domains import registered_domain
from ..message import Message, Part, Relay, domain_of, split_addresses, url_host


@dataclass(frozen=True)
class EvalFunc:
    name: str
    fn: Callable[..., Any]
    #: rule kinds that may use it (empty: any)
    kinds: tuple[str, ...]
    #: argument types, e.g. (str,) or (int, int); trailing ones may be omitted when they have defaults
    args: tuple[type, ...]
    required: int
    #: allowed values of the first argument, when it selects a sub-test
    choices: frozenset[str] | None = None

    def coerce_args(self, args: tuple[Any, ...]) -> tuple[Any, ...]:
        """Check the arguments and convert them to the declared types.

        Rule files often quote numbers (``eval:f('-6', '3')``), and ``'undef'``
        stands for "no bound"; both are accepted for number arguments.
        """
        if not self.required <= len(args) <= len(self.args):
            raise ValueError(f"takes {self.required}..{len(self.args)} arguments, got {len(args)}")
        if self.choices is not None and args and args[0] not in self.choices:
            raise ValueError(f"{args[0]!r} is not implemented (known: {', '.join(sorted(self.choices))})")
        out: list[Any] = []
        for a, t in zip(args, self.args):
            if t in (int, float) and isinstance(a, str):
                if a == "undef":
                    out.append(None)
                    continue
                try:
                    a = t(float(a)) if t is int else float(a)
                except ValueError:
                    raise ValueError(f"argument {a!r} should be a number") from None
            if t is float and isinstance(a, int):
                a = float(a)
            if not isinstance(a, t):
                raise ValueError(f"argument {a!r} should be {t.__name__}")
            out.append(a)
        return tuple(out)

    def __call__(self, msg: Message, args: tuple[Any, ...]) -> tuple[int, tuple[str, ...]]:
        r = self.fn(msg, *args)
        if isinstance(r, tuple):
            hit, opts = r
            return (int(hit), tuple(opts)) if hit else (0, ())
        return int(r), ()


EVALS: dict[str, EvalFunc] = {}
#: SpamAssassin's meaning of a name that this project's rules use for something else: what the
#: rules read from SpamAssassin's own files call instead (:func:`eval_function`)
SA_EVALS: dict[str, EvalFunc] = {}


def register(name: str, kinds: tuple[str, ...] = (), args: tuple[type, ...] = (), required: int | None = None,
             choices: Iterable[str] | None = None, *, spamassassin: bool = False):
    """Register ``fn(msg, *args)`` as ``eval:name(...)`` for rules of ``kinds``; with
    ``spamassassin``, as SpamAssassin's variant of ``name``, for its own rules only."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        table = SA_EVALS if spamassassin else EVALS
        table[name] = EvalFunc(name, fn, kinds, args, len(args) if required is None else required,
                               frozenset(choices) if choices is not None else None)
        return fn

    return deco


def eval_function(name: str, spamassassin: bool = False) -> EvalFunc | None:
    """The eval a rule calling ``name`` runs: for a rule of SpamAssassin's own files, its variant
    when there is one; else ours (None: not implemented)."""
    return (SA_EVALS.get(name) if spamassassin else None) or EVALS.get(name)


def per_message(fn: Callable[[Message], Any]) -> Callable[[Message], Any]:
    """``fn(msg)`` remembered for the last message asked, by identity.

    For measures that several rules of one scan ask of the same message (SpamAssassin's
    ten ``DATE_IN_*`` rules, its four upper-case ratios): the second asker gets the answer
    without building the inputs again, which a cache keyed on the inputs still did (the
    date's key, a tuple of every Received header, cost ~4 us a question).  One entry, so
    a loop over a corpus is never served from a previous round; a message is read-only
    once parsed, so its answer cannot change.  The last message is kept alive until the
    next one is asked about.
    """
    last: tuple[Message | None, Any] = (None, None)

    def cached(msg: Message) -> Any:
        nonlocal last
        seen, value = last  # one tuple, read and written whole: safe between threads
        if seen is msg:
            return value
        value = fn(msg)
        last = (msg, value)
        return value

    cached.__doc__, cached.__name__, cached.__wrapped__ = fn.__doc__, fn.__name__, fn  # type: ignore[attr-defined]
    return cached


# --------------------------------------------------------------------------- headers


@register("header_absent", ("header",), (str,))
def header_absent(msg: Message, name: str) -> bool:
    """The header is missing altogether (Date, Message-ID, From... are required by RFC 5322)."""
    return not msg.has(name)


@register("header_count_over", ("header",), (str, int))
def header_count_over(msg: Message, name: str, n: int) -> bool:
    """The header occurs more than ``n`` times (e.g. two Subject or From lines)."""
    return len(msg.get_raw(name)) > n


_ASCII_LOWER = re.compile("[a-z]")


@register("subject_is_all_caps", ("header",))
def subject_is_all_caps(msg: Message) -> bool:
    """A subject of at least two words and ten letters, none of them lower case."""
    s = msg.subject
    if len(s) < 10 or _ASCII_LOWER.search(s):
        return False  # too short for ten letters, or a lower-case letter: the common answers, found fast
    letters = [c for c in s if c.isalpha()]
    return len(letters) >= 10 and len(s.split()) >= 2 and not any(c.islower() for c in letters)


@register("subject_is_all_caps", ("header",), spamassassin=True)
def sa_subject_is_all_caps(msg: Message) -> bool:
    """SpamAssassin's ``subject_is_all_caps``: the subject, its reply and forward prefixes taken
    off (``Re:``, ``fwd:``, ``AW:``...), holds a blank, is ten bytes long or more, and has ASCII
    letters, all of them capitals.  Ours counts the prefixes' letters, so a lower-case ``Re:``
    before a shouted subject made it miss; and it asks ten letters, not ten bytes.  A subject
    encoded in a charset whose text reads as capitals (KOI8, the Japanese and Chinese ones...)
    never hits."""
    s = _REPLY_PREFIXES.sub("", msg.subject.strip(), count=1)
    if _ASCII_BLANK.search(s) is None or len(s.encode("utf-8", "surrogateescape")) < 10:
        return False
    letters = _NOT_ASCII_LETTER.sub("", s)
    if not letters or not letters.isupper():
        return False
    return not any(_CAPS_CHARSET_WORD.search(raw) for raw in msg.get_raw("Subject"))


_REPLY_PREFIXES = re.compile(r"^(?:(?:Re|Fwd|Fw|Aw|Antwort|WG|SV|VB|VS|VL):\s*)+", re.I | re.A)
_ASCII_BLANK = re.compile(r"\s", re.A)
_NOT_ASCII_LETTER = re.compile("[^a-zA-Z]+")
#: an encoded word in a charset whose encoded text is mostly capitals
_CAPS_CHARSET_WORD = re.compile(
    r"=\?[-_a-z0-9]*(?:koi|jp|jis|euc|gb|big5|isoir|cp1251|windows-1251|georgianps|pt154|tis)[-_a-z0-9]*\?",
    re.I | re.A)


@register("many_recipients", ("header",), (int,))
def many_recipients(msg: Message, n: int) -> tuple[bool, list[str]]:
    """More than ``n`` addresses in To and Cc together (a list blasted in the open)."""
    k = len(msg.to_addrs)
    return (True, [str(k)]) if k > n else (False, [])


def parse_date(value: str) -> tuple[int, ...] | None:
    """``email.utils.parsedate_tz``, with a fast path for the canonical form most mail uses.

    The fast path (``canonical_date``, a compiled kernel; the twin's regex is the
    definition) returns exactly what ``parsedate_tz`` returns for the strings it
    accepts (``tests/test_rules_evals.py`` checks it on every Date and Received
    stamp of the corpus); anything else goes to ``parsedate_tz`` itself, which
    handles the many broken forms but costs several microseconds per call.
    """
    t = fastscore.impl.canonical_date(value)
    return parsedate_tz(value) if t is None else t


@per_message
def _date_header(msg: Message) -> tuple[bool, tuple[int, ...] | None]:
    """Whether the message has a Date header, and its first one parsed (None: unreadable).

    Parsed once a message: the date rules and the skew read it.  (A cache keyed on the
    date's text cost more than the canonical form's parse.)
    """
    d = msg.get("Date")
    return (False, None) if d is None else (True, parse_date(d))


@register("date_invalid", ("header",))
def date_invalid(msg: Message) -> bool:
    """A Date header that RFC 5322 date parsing cannot read (or with an impossible zone)."""
    present, parsed = _date_header(msg)
    if not present:
        return False
    if parsed is None or parsed[0] < 1970:
        return True
    tz = parsed[9]
    return tz is not None and abs(tz) > 14 * 3600


_FROM_LOCALHOST = re.compile(r"\s*from\s+localhost\b", re.I)


def _local_handover(raw: str) -> bool:
    """A Received line of a local hand-over: fetchmail, or delivery from localhost / 127.0.0.1.

    Such hand-overs happen whenever the user collects the mail, so their time
    says nothing about when it was sent.  (Substring tests first: one
    case-insensitive regex with alternatives cost more than the date parsing.)
    """
    return "[127.0.0.1]" in raw or "fetchmail" in raw.lower() or _FROM_LOCALHOST.match(raw) is not None


@per_message
def _date_skew(msg: Message) -> float | None:
    """Seconds from the newest Received date (local hand-overs skipped) to the Date header (positive: Date in the future)."""
    parsed = _date_header(msg)[1]
    if parsed is None:
        return None
    for r in msg.received:
        if not _local_handover(r.raw):
            return _skew(parsed, r.raw)
    return None


_EPOCH_ORDINAL = datetime.date(1970, 1, 1).toordinal()
#: (year, month) -> days from the epoch to its first day: a calendar table filled as dates come
_MONTH_DAYS: dict[tuple[int, int], int] = {}


def epoch_seconds(t: tuple[int, ...]) -> float:
    """``email.utils.mktime_tz(t)`` for a parsed date with a zone, without its per-call date object.

    ``mktime_tz`` is ``calendar.timegm(t) - zone``, and ``timegm`` counts the days to the
    first of the month through a ``datetime.date``; that count comes from a table here.
    A date without a zone is local time, as ``mktime_tz`` reads it.
    """
    tz = t[9]
    if tz is None:
        return mktime_tz(t)
    key = (t[0], t[1])
    days = _MONTH_DAYS.get(key)
    if days is None:
        days = datetime.date(t[0], t[1], 1).toordinal() - _EPOCH_ORDINAL
        if len(_MONTH_DAYS) < 4096:
            _MONTH_DAYS[key] = days
    return (days + t[2] - 1) * 86400 + t[3] * 3600 + t[4] * 60 + t[5] - tz


def _parsed_epoch(value: str) -> float | None:
    """Epoch seconds of a date string, or None when it cannot be read (or lies outside the calendar)."""
    t = parse_date(value)
    return None if t is None else _epoch(t)


def _epoch(t: tuple[int, ...]) -> float | None:
    """Epoch seconds of a parsed date, or None when it lies outside the calendar."""
    try:
        return float(epoch_seconds(t))
    except (OverflowError, ValueError):
        return None


def _skew(date: tuple[int, ...], raw: str) -> float | None:
    """Seconds from the stamp after the last ``;`` of a Received header to the parsed ``date``."""
    semi = raw.rfind(";")
    got = _parsed_epoch(raw[semi + 1 :].strip()) if semi >= 0 else None
    sent = None if got is None else _epoch(date)
    return None if sent is None else sent - got  # type: ignore[operator]


@register("date_skew_over", ("header",), (float, float))
def date_skew_over(msg: Message, hours_future: float, hours_past: float) -> tuple[bool, list[str]]:
    """Date is more than ``hours_future`` ahead of, or ``hours_past`` behind, the last Received stamp."""
    skew = _date_skew(msg)
    if skew is None:
        return False, []
    h = skew / 3600.0
    return (True, [f"{h:+.1f}h"]) if h > hours_future or -h > hours_past else (False, [])


_DOMAIN_IN_NAME = re.compile(r"([A-Za-z0-9][A-Za-z0-9-]*(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,})")


def _registrable(host: str) -> str:
    """The registered domain (Public Suffix List), or the host itself for IPs and odd names."""
    return registered_domain(host) or host.lower().rstrip(".")


@register("from_name_spoofs_domain", ("header",))
def from_name_spoofs_domain(msg: Message) -> tuple[bool, list[str]]:
    """The From display name shows an address or domain that is not the sender's own domain."""
    name = msg.from_name
    dom = msg.from_domain
    if not name or not dom or "." not in name:
        return False, []
    m = _DOMAIN_IN_NAME.search(name.split("@")[-1] if "@" in name else name)
    if not m:
        return False, []
    shown = m.group(1).lower()
    if _registrable(shown) != _registrable(dom) and not shown.endswith(("." + dom, dom)):
        return True, [shown]
    return False, []


@register("reply_to_differs", ("header",))
def reply_to_differs(msg: Message) -> tuple[bool, list[str]]:
    """Reply-To points to another registrable domain than From (answers go elsewhere)."""
    rt = msg.reply_to  # the first Reply-To's first address (the message's view: others read it too)
    dom = msg.from_domain
    if not rt or not dom:
        return False, []
    rdom = domain_of(rt)
    if rdom and _registrable(rdom) != _registrable(dom):
        return True, [rdom]
    return False, []


@register("from_domain_mismatch_envelope", ("header",))
def from_domain_mismatch_envelope(msg: Message) -> bool:
    """The envelope sender's domain differs from the From domain (a weak signal alone)."""
    env = domain_of(msg.envelope.mail_from)
    dom = msg.from_domain
    return bool(env and dom and _registrable(env) != _registrable(dom))


# --------------------------------------------------------------------------- body and HTML


@register("html_text_ratio_below", ("body", "rawbody"), (float,))
def html_text_ratio_below(msg: Message, ratio: float) -> tuple[bool, list[str]]:
    """Visible HTML text is less than ``ratio`` of the markup (a page of tags around a few words)."""
    html = msg.html
    if len(html) < 400:
        return False, []
    r = len(msg.html_text) / len(html)
    return (True, [f"{r:.3f}"]) if r < ratio else (False, [])


#: ``<img`` in any case: ASCII case folding finds exactly what ``"<img" in html.lower()`` finds
#: (no other character lower-cases to a single i, m or g) without lower-casing the whole page
_IMG_TAG = re.compile("<img", re.I | re.A)


@register("html_image_only", ("body", "rawbody"), (float, float))
def html_image_only(msg: Message, lo: float, hi: float) -> tuple[bool, list[str]]:
    """HTML with images and between ``lo`` and ``hi`` characters of visible text in the whole message."""
    html = msg.html
    if not html:
        return False, []
    # The count first: it rules out most messages, and costs less than searching a page for <img.
    n = _visible_chars(msg)
    if not lo <= n < hi or _IMG_TAG.search(html) is None:
        return False, []
    return True, [f"{n} chars"]


def _visible_chars(msg: Message) -> int:
    """Characters of text that are not white space."""
    return fastscore.impl.visible_count(msg.text)


@register("html_image_only", ("body", "rawbody"), (float, float), spamassassin=True)
def sa_html_image_only(msg: Message, lo: float, hi: float) -> tuple[bool, list[str]]:
    """SpamAssassin's ``html_image_only``: an HTML part with an image tag whose length is over
    ``lo`` and at most ``hi``.  The length is that of the part's source, markup included
    (:func:`_html_source_length`), not of its text as our own eval counts it: SpamAssassin's
    HTML parser adds up the length of the input it is given, and its HTML_IMAGE_ONLY_* bands
    (up to 3,200) are drawn on that."""
    for part in sa_html_parts(msg):
        n = _html_source_length(part)
        if lo < n <= hi and _IMG_TAG_BYTES.search(part.body) is not None:
            return True, [f"{n} characters of HTML"]
    return False, []


def sa_html_parts(msg: Message) -> list[Part]:
    """The parts SpamAssassin reads as HTML: the text/html ones, and any other named like an HTML
    file (``*.html``, ``*.htm``, ``*.shtml``), whatever its type says (spam attaches its page as
    ``application/octet-stream; name="offer.html"``)."""
    return [p for p in msg.parts if p.content_type == "text/html" or _HTML_FILE.search(p.filename or "")]


_HTML_FILE = re.compile(r"\.s?html?$", re.I)


def _html_source_length(part: Part) -> int:
    """The length of an HTML part as SpamAssassin measures it: in characters when the part is
    in UTF-8 (or ASCII, or has no charset) and reads as UTF-8, else in bytes (it decodes no
    other charset before parsing)."""
    body = part.body
    if (part.charset or "us-ascii").lower() in ("us-ascii", "utf-8") and not body.isascii():
        try:
            return len(body.decode("utf-8"))
        except UnicodeDecodeError:
            pass
    return len(body)


#: an ``img`` tag, start or end, as an HTML parser reads one (a name of its own: not ``<imgx``)
_IMG_TAG_BYTES = re.compile(rb"</?img[\s/>]", re.I)


@register("html_only", ("body", "rawbody"))
def html_only(msg: Message) -> bool:
    """HTML text with no plain-text alternative."""
    return bool(msg.html) and not msg.plain_text.strip()


@register("body_caps_ratio_over", ("body",), (float,))
def body_caps_ratio_over(msg: Message, ratio: float) -> tuple[bool, list[str]]:
    """More than ``ratio`` of the body's letters are capitals (at least 200 letters)."""
    letters, upper = _letter_counts(msg)
    if letters < 200:
        return False, []
    r = upper / letters
    return (True, [f"{r:.2f}"]) if r > ratio else (False, [])


@per_message
def _letter_counts(msg: Message) -> tuple[int, int]:
    """Latin-1 letters and capitals in the first 20,000 characters of the text (a compiled kernel;
    SpamAssassin's rules ask it four times a message)."""
    return fastscore.impl.letter_counts(msg.text, 20000)


@register("body_short", ("body",), (int,))
def body_short(msg: Message, n: int) -> bool:
    """Fewer than ``n`` non-blank characters of text in the whole body."""
    # A beginning with n visible characters settles it without counting the whole text.
    if fastscore.impl.visible_count(msg.text[: 8 * n + 64]) >= n:
        return False
    return _visible_chars(msg) < n


# --------------------------------------------------------------------------- URIs

_URLISH = re.compile(r"^\s*(?:https?://|www\.)([^\s/<>\"']+)", re.I)


@register("uri_text_href_mismatch", ("uri", "body"))
def uri_text_href_mismatch(msg: Message) -> tuple[bool, list[str]]:
    """A link whose visible text is a URL on another host than the link's target (phishing)."""
    for u in msg.urls:
        if u.source != "html" or not u.text:
            continue
        m = _URLISH.match(u.text)
        if not m:
            continue
        shown = url_host(u.text.strip())
        real = u.host
        if shown and real and _registrable(shown) != _registrable(real):
            return True, [f"{shown}->{real}"]
    return False, []


@register("uri_distinct_domains_over", ("uri", "body"), (int,))
def uri_distinct_domains_over(msg: Message, n: int) -> tuple[bool, list[str]]:
    """Links to more than ``n`` distinct registrable domains."""
    doms = {_registrable(h) for h in msg.url_hosts if "." in h}
    return (True, [str(len(doms))]) if len(doms) > n else (False, [])


# --------------------------------------------------------------------------- attachments

_EXEC_EXT = ("exe", "scr", "pif", "com", "bat", "cmd", "vbs", "vbe", "js", "jse", "wsf", "wsh", "hta", "cpl",
             "msi", "jar", "lnk", "ps1", "reg", "dll", "iso", "img", "msc", "application", "gadget")
_DOC_EXT = ("pdf", "doc", "docx", "xls", "xlsx", "txt", "jpg", "jpeg", "png", "gif", "zip", "rtf", "htm", "html")


def _ext(name: str) -> str:
    return name.rsplit(".", 1)[-1].lower().strip() if "." in name else ""


@register("attachment_executable", ("body", "rawbody", "full"))
def attachment_executable(msg: Message) -> tuple[bool, list[str]]:
    """An attachment whose name ends in a Windows-executable extension."""
    for a in msg.attachments:
        if a.name and _ext(a.name) in _EXEC_EXT:
            return True, [a.name]
    return False, []


@register("attachment_double_extension", ("body", "rawbody", "full"))
def attachment_double_extension(msg: Message) -> tuple[bool, list[str]]:
    """An attachment named like ``invoice.pdf.exe``: a harmless-looking extension before an executable one."""
    for a in msg.attachments:
        if not a.name:
            continue
        parts = a.name.lower().split(".")
        if len(parts) >= 3 and parts[-1].strip() in _EXEC_EXT and parts[-2].strip() in _DOC_EXT:
            return True, [a.name]
    return False, []


@register("archive_hides_executable", ("body", "rawbody", "full"))
def archive_hides_executable(msg: Message) -> tuple[bool, list[str]]:
    """A zip attachment that contains an executable (the names are read; nothing is extracted)."""
    for p in msg.parts:
        if not p.is_attachment or not p.body[:4] == b"PK\x03\x04":
            continue
        try:
            with zipfile.ZipFile(io.BytesIO(p.body)) as z:
                for info in z.infolist()[:200]:
                    if _ext(info.filename) in _EXEC_EXT:
                        return True, [f"{p.filename or 'archive'}:{info.filename}"]
        except (zipfile.BadZipFile, ValueError, OSError, NotImplementedError, EOFError):
            continue
    return False, []


@lru_cache(maxsize=64)
def _word_set(words: str) -> frozenset[str]:
    """A rule's space-separated argument as a set, lower-cased: split once per rule, not per message."""
    return frozenset(words.lower().split())


@lru_cache(maxsize=16)
def _blank_run(n: int) -> re.Pattern[str]:
    """A run of ``n`` or more white-space characters (one pattern per ``n``, built once)."""
    return re.compile(r"\s{%d,}" % n)


@register("attachment_extension", ("body", "rawbody", "full"), (str,))
def attachment_extension(msg: Message, extensions: str) -> tuple[bool, list[str]]:
    """A MIME part named with one of ``extensions`` (space-separated, no dots): archives and disk
    images, HTML pages, macro documents.  The name is the parsed one (RFC 2231 and 2047 decoded),
    from Content-Disposition's filename or Content-Type's name."""
    wanted = _word_set(extensions)
    for p in msg.parts:
        if p.filename and _ext(p.filename.strip().strip('"')) in wanted:
            return True, [p.filename]
    return False, []


@register("attachment_name_padded", ("body", "rawbody", "full"), (int,))
def attachment_name_padded(msg: Message, n: int) -> tuple[bool, list[str]]:
    """A MIME part whose name has a run of ``n`` or more blanks before its extension, which pushes
    the real extension out of sight in a mail client (``invoice.pdf        .exe``)."""
    pad = _blank_run(n)
    for p in msg.parts:
        f = p.filename
        if f and "." in f and pad.search(f.rsplit(".", 1)[0]):
            return True, [f.strip()[:60]]
    return False, []


@register("attachment_type", ("body", "rawbody", "full"), (str,))
def attachment_type(msg: Message, types: str) -> tuple[bool, list[str]]:
    """A MIME part declared as one of ``types`` (space-separated ``type/subtype``), e.g. the
    content types of Windows programs."""
    wanted = _word_set(types)
    for p in msg.parts:
        if p.content_type in wanted:
            return True, [p.content_type]
    return False, []


@register("attachment_count_over", ("body", "rawbody", "full"), (int,))
def attachment_count_over(msg: Message, n: int) -> bool:
    return len(msg.attachments) > n


# --------------------------------------------------------------------------- SpamAssassin names
# Evals under the names SpamAssassin's rule files use, written here from their
# documented meaning, so that those rules load (``antispam rules load-sa``).


@register("check_for_missing_to_header", ("header",))
def check_for_missing_to_header(msg: Message) -> bool:
    """No To header (and no Apparently-To)."""
    return not msg.has("To") and not msg.has("Apparently-To")


def sa_date_epoch(value: str) -> float | None:
    """Epoch seconds of a date as SpamAssassin reads one for its date tests, or None.

    Its reading is looser and differs from RFC 5322's where dates are odd, and its
    DATE_IN_PAST_* / DATE_IN_FUTURE_* bands fall where it reads them: the day, month and
    year (``1 Jan 2024``, ``Jan 1 hh:mm:ss 2024`` whose time is then not read, or a two- or
    three-digit year), then ``hh:mm`` or ``hh:mm:ss`` with two-digit minutes and seconds
    (``10:28:3`` is no time: midnight), then a zone: four digits with a sign (``-400`` is no
    zone: UTC), else the first word of two to four capitals if it is a zone name it knows
    (:data:`_SA_ZONES`), else UTC.  Out-of-range times are pulled in (second 61 -> 59, hour
    25 -> 23), a day past the month's end is the 1st of the next, years outside 1970-2037
    are clamped; day 0 is no date."""
    s = " " + _BLANKS.sub(" ", _COMMA_BLANKS.sub(" ", value)) + " "
    m = _SA_DMY.search(s) or _SA_CTIME.search(s) or _SA_DMY_SHORT.search(s)
    if m is None:
        return None
    day, month, year = m.group("d", "m", "y")
    s = s[:m.start()] + " " + s[m.end():]
    yyyy = int(year) + (2000 if len(year) == 2 and int(year) < 50 else 1900 if len(year) != 4 else 0)
    hh = mm = ss = 0
    t = _SA_TIME.search(s)
    if t is not None:
        hh, mm, ss = int(t.group(1)), int(t.group(2)), int(t.group(3) or 0)
        s = s[:t.start()] + " " + s[t.end():]
    return _sa_epoch(yyyy, _MONTHS[month.lower()], int(day), min(hh, 23), min(mm, 59), min(ss, 59), _sa_zone(s))


def _sa_zone(rest: str) -> int:
    """The zone offset in seconds that SpamAssassin reads from what is left of a date."""
    z = _SA_NUMERIC_ZONE.search(rest)
    if z is not None:
        sign = -1 if z.group(1) == "-" else 1
        return sign * (int(z.group(2)) * 3600 + int(z.group(3)) * 60)
    word = _SA_ZONE_WORD.search(rest)
    return _SA_ZONES.get(word.group(1), 0) * 60 if word is not None else 0


def _sa_epoch(yyyy: int, month: int, day: int, hh: int, mm: int, ss: int, zone: int) -> float | None:
    """Epoch seconds of a broken-down UTC time less ``zone``, after SpamAssassin's repairs."""
    if day > calendar.monthrange(yyyy, month)[1]:
        day, month = 1, month + 1
        if month > 12:
            month, yyyy = 1, yyyy + 1
    if day < 1:
        return None  # no day 0: SpamAssassin's conversion refuses it
    yyyy = min(max(yyyy, 1970), 2037)
    t = calendar.timegm((yyyy, month, day, hh, mm, ss))
    return float(max(t - zone, 0) if zone > 0 else t - zone)


_MONTH_NAMES = "Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec"
_MONTHS = {name.lower(): i for i, name in enumerate(_MONTH_NAMES.split("|"), 1)}
_COMMA_BLANKS = re.compile(r", *")
_BLANKS = re.compile(r"\s+", re.A)
_SA_DMY = re.compile(rf" (?P<d>\d+) (?P<m>{_MONTH_NAMES}) (?P<y>\d{{4}}) ", re.I | re.A)
_SA_CTIME = re.compile(rf" (?P<m>{_MONTH_NAMES}) +(?P<d>\d+) \d+:\d+:\d+ (?P<y>\d{{4}}) ", re.I | re.A)
_SA_DMY_SHORT = re.compile(rf" (?P<d>\d+) (?P<m>{_MONTH_NAMES}) (?P<y>\d{{2,3}}) ", re.I | re.A)
_SA_TIME = re.compile(r" (\d?\d):(\d\d)(?::(\d\d))? ", re.A)
_SA_NUMERIC_ZONE = re.compile(r" ([-+])(\d\d)(\d\d) ", re.A)
_SA_ZONE_WORD = re.compile(r"\b([A-Z]{2,4}(?:-DST)?)\b", re.A)
#: the zone names SpamAssassin's date reading knows, and their offsets from UTC in minutes
_SA_ZONES = {
    "UT": 0, "UTC": 0, "GMT": 0, "WET": 0,
    "AST": -240, "ADT": -180, "NST": -210, "NDT": -150, "EST": -300, "EDT": -240, "CST": -360, "CDT": -300,
    "MST": -420, "MDT": -360, "PST": -480, "PDT": -420, "HST": -600, "HAST": -600, "HADT": -540,
    "AKST": -540, "AKDT": -480,
    "BST": 60, "IST": 60, "WEST": 60, "CET": 60, "MET": 60, "MEZ": 60, "CEST": 120, "MEST": 120, "MESZ": 120,
    "EET": 120, "EEST": 180, "MSK": 180, "MSD": 240, "IDT": 180,
    "BRT": -180, "BRST": -120,
    "AWST": 480, "ACST": 570, "ACDT": 630, "AEST": 600, "AEDT": 660, "NZST": 720, "NZDT": 780,
    "JST": 540, "KST": 540, "HKT": 480, "SGT": 480, "PHT": 480,
}


#: a Received header's time stamp wherever it stands: "day Mon year hh:mm:ss zone"
_RCVD_STAMP = re.compile(r"\s.?\d+ \S\S\S \d+ \d+:\d+:\d+ \S+")
#: the newest Received header of a local hand-over (fetchmail run over localhost, qmail-inject)
_SA_LOCAL = re.compile(r"\bfrom (?:localhost\s|(?:\S+ ){1,2}\S*\b127\.0\.0\.1\b)|qmail \d+ invoked by uid \d+")
_SA_FETCHMAIL = re.compile(r"\bby localhost with \w+ \(fetchmail-[\d.]+")


@per_message
def shifted_date_diff(msg: Message) -> float:
    """Seconds from the Received time stamps to the message's date, as SpamAssassin's
    ``check_for_shifted_date`` measures it: the date is the first readable Resent-Date,
    else Date; against it, every Received header's stamp but a local fetchmail hand-over
    at the top (a ``from localhost`` / ``127.0.0.1`` or qmail-inject header followed by a
    ``by localhost ... (fetchmail-`` one: both left out), and the difference kept is the
    smallest in size (the oldest header's is left out when it is exactly 0 and there are
    others).  0 when there is no date or no stamp, as in SpamAssassin.  Dates are read as
    SpamAssassin reads them (:func:`sa_date_epoch`).
    """
    # SpamAssassin's rules ask this of one message ten times (DATE_IN_PAST_*, DATE_IN_FUTURE_*):
    # remembered for the message (~20 us each time otherwise).
    date = next((t for value in (*msg.get_all("Resent-Date"), *msg.get_all("Date"))
                 if value and (t := sa_date_epoch(value)) is not None), None)
    if date is None:
        return 0.0
    # a folded header reads with its fold as one space, as SpamAssassin unfolds it (ours keeps the
    # blanks of the continuation line, and the stamp's pattern wants single spaces)
    received = [" ".join(r.raw.split()) for r in msg.received if r.raw.strip()]
    if received and _SA_LOCAL.search(received[0]) and len(received) > 1 and _SA_FETCHMAIL.search(received[1]):
        received = received[2:]
    diffs = []
    for raw in received:
        m = _RCVD_STAMP.search(raw)
        if m is not None and (t := sa_date_epoch(m.group(0))) is not None:
            diffs.append(date - t)
    if len(diffs) > 1 and diffs[-1] == 0:
        diffs.pop()
    return min(diffs, key=abs) if diffs else 0.0


@register("check_for_shifted_date", ("header",), (float, float), required=2)
def check_for_shifted_date(msg: Message, lo: float | None, hi: float | None) -> tuple[bool, list[str]]:
    """The date is between ``lo`` and ``hi`` hours from the Received stamps (negative: before
    them; ``'undef'`` leaves a side open), measured as SpamAssassin does (:func:`shifted_date_diff`)."""
    h = shifted_date_diff(msg) / 3600.0
    if (lo is None or h >= lo) and (hi is None or h < hi):
        return True, [f"{h:+.1f}h"]
    return False, []  # options are read only for a hit: ten rules ask, one at most hits


@register("html_tag_exists", ("body", "rawbody"), (str,))
def html_tag_exists(msg: Message, tag: str) -> bool:
    """The HTML contains a ``<tag`` element."""
    html = msg.html
    return bool(html) and _tag_start(tag).search(html) is not None


@lru_cache(maxsize=64)
def _tag_start(tag: str) -> re.Pattern[str]:
    """``<tag`` as a whole word in any case (one pattern per tag, built once)."""
    return re.compile(r"<" + re.escape(tag) + r"\b", re.I)


@register("html_tag_exists", ("body", "rawbody"), (str,), spamassassin=True)
def sa_html_tag_exists(msg: Message, tag: str) -> bool:
    """SpamAssassin's ``html_tag_exists``: a ``<tag`` element in one of the parts it reads as HTML
    (:func:`sa_html_parts`), an attached ``*.html`` file's included."""
    pattern = _tag_start_bytes(tag)
    return any(pattern.search(p.body) is not None for p in sa_html_parts(msg))


@lru_cache(maxsize=64)
def _tag_start_bytes(tag: str) -> re.Pattern[bytes]:
    """:func:`_tag_start` for a part's bytes."""
    return re.compile(rb"<" + re.escape(tag.encode("utf-8")) + rb"\b", re.I)


_IMG_TYPES = {"gif": ("image/gif",), "png": ("image/png",), "jpeg": ("image/jpeg", "image/jpg", "image/pjpeg")}


@register("image_count", ("body", "rawbody"), (str, int, int), required=2)
def image_count(msg: Message, kind: str, lo: int, hi: int | None = None) -> tuple[bool, list[str]]:
    """Between ``lo`` and ``hi`` (inclusive) image parts of ``kind`` (all, gif, png, jpeg)."""
    types = _IMG_TYPES.get(kind.lower())
    n = sum(1 for p in msg.parts if p.content_type.startswith("image/") and (types is None or p.content_type in types))
    return (n >= lo and (hi is None or n <= hi)), [str(n)]


@register("check_for_mime_html", ("body", "rawbody"))
def check_for_mime_html(msg: Message) -> bool:
    """The message has a text/html part."""
    return any(p.content_type == "text/html" for p in msg.text_parts)


@register("check_for_mime_html_only", ("body", "rawbody"))
def check_for_mime_html_only(msg: Message) -> bool:
    """Every text part is text/html."""
    parts = msg.text_parts
    return bool(parts) and all(p.content_type == "text/html" for p in parts)


@register("check_header_count_range", ("header",), (str, int, int))
def check_header_count_range(msg: Message, name: str, lo: int, hi: int) -> tuple[bool, list[str]]:
    """The header occurs between ``lo`` and ``hi`` times (inclusive)."""
    n = len(msg.get_raw(name))
    return lo <= n <= hi, [str(n)]


@register("check_for_uppercase", ("body",), (float, float))
def check_for_uppercase(msg: Message, lo: float, hi: float) -> tuple[bool, list[str]]:
    """Between ``lo`` and ``hi`` percent of the body's letters are capitals (needs 200+ letters)."""
    letters, upper = _letter_counts(msg)
    if letters < 200:
        return False, []
    pct = 100.0 * upper / letters
    return lo <= pct < hi or (hi >= 100 and pct >= lo), [f"{pct:.0f}%"]


def envelope_sender(msg: Message) -> str | None:
    """The envelope sender: the MTA's (``msg.envelope.mail_from``) when it gave one, else
    guessed from the headers as SpamAssassin guesses its ``EnvelopeFrom``: the one a receiving
    MTA wrote into its Received header (:func:`_relay_envelope_sender`); else none when an
    ``X-Sender`` address comes with a fetchmail Received header (fetchmail re-uses it, so the
    headers cannot be trusted); else ``X-Envelope-From`` (none if a Received header stands
    above it: a list may have changed the sender since), ``Envelope-Sender``, then
    ``Return-Path``, each only when no Received header stands above it (the final delivery
    writes it at the top)."""
    ef = msg.envelope.mail_from
    if ef is not None:
        return ef
    ef = _relay_envelope_sender(msg)
    if ef is not None:
        return ef
    if "@" in (msg.get("X-Sender") or "") and any("(fetchmail" in r.raw for r in msg.received):
        return None
    index = msg.header_index
    first_received = min(index.get("received", [len(msg.raw_headers)]))
    for name in ("x-envelope-from", "envelope-sender", "return-path"):
        pos = index.get(name)
        if not pos:
            continue
        if max(pos) > first_received:
            if name == "x-envelope-from":
                return None
            continue
        return msg.headers[pos[0]][1].lstrip("<").rstrip("> \t\r\n")
    return None


def _relay_envelope_sender(msg: Message) -> str | None:
    """The envelope sender as the MTA that took the message from the outside world noted it in
    its Received header (``(envelope-from <a@b>)``, ``envelope-sender a@b``, ``return-path: a@b``):
    that of the newest untrusted relay, or of the oldest trusted one when every relay is trusted
    (:func:`relays_by_trust`).  SpamAssassin reads it there before any header written for it,
    since the MTA saw the SMTP ``MAIL FROM`` itself; mailing-list mail passed on by a local
    relay keeps the list's sender that way, not the delivery's."""
    trusted, untrusted = relays_by_trust(msg)
    relay = untrusted[0] if untrusted else trusted[-1] if trusted else None
    if relay is None:
        return None
    text = relay.raw.lstrip()
    m = _RCVD_ENVELOPE_FROM.search(text) if text.startswith("from ") else None
    if m is None:
        return None
    addr = m.group(1).lstrip("<").rstrip(">")
    return addr if addr.find("@") > 0 else None


#: an envelope sender noted in a Received header; the address runs to the last word character
_RCVD_ENVELOPE_FROM = re.compile(r"(?:return-path:?\s+|envelope-(?:sender|from)[\s=])(\S+)\b", re.I | re.A)


@per_message
def relays_by_trust(msg: Message) -> tuple[tuple[Relay, ...], tuple[Relay, ...]]:
    """The relays (Received headers that name an IP), newest first, as (trusted, untrusted).

    Trust is inferred as SpamAssassin infers it without configured networks, approximately:
    the newest relays from private or loopback addresses are trusted; from the first public
    address on, every relay is untrusted."""
    relays = tuple(r for r in msg.received if r.ip)
    k = 0
    while k < len(relays) and _is_private(relays[k].ip or ""):
        k += 1
    return relays[:k], relays[k:]


@lru_cache(maxsize=256)
def _is_private(ip: str) -> bool:
    # Cached: the same relays (the local ones above all) recur from message to message.
    try:
        a = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return a.is_private or a.is_loopback or a.is_link_local


#: SpamAssassin's "second-level domain" for check_equal_from_domains: the last two labels
_LAST_TWO_LABELS = re.compile(r"^.+\.([^.]+\.[^.]+)$", re.S)


@register("check_equal_from_domains", ("header",))
def check_equal_from_domains(msg: Message) -> tuple[bool, list[str]]:
    """The From address and the envelope sender (:func:`envelope_sender`) end in different
    domains, compared on their last two labels as SpamAssassin compares them."""
    def last_two(addr: str | None) -> str:
        dom = addr.rpartition("@")[2] if addr and "@" in addr else ""
        m = _LAST_TWO_LABELS.match(dom)
        return (m.group(1) if m else dom).lower()

    dom = last_two(msg.from_addr)
    env = envelope_sender(msg)
    env_addrs = split_addresses(env) if env else []
    env_dom = last_two(env_addrs[0][1] if env_addrs else env)
    if env_dom and dom and env_dom != dom:
        return True, [f"{env_dom}/{dom}"]
    return False, []


@register("html_test", ("body", "rawbody"), (str,), choices=("html", "embeds", "form_action_mailto"))
def html_test(msg: Message, what: str) -> bool:
    """``html``: the message has HTML; ``embeds``: embedded objects; ``form_action_mailto``: a form posting by mail."""
    html = msg.html
    if not html:
        return False
    if what == "html":
        return True
    if what == "embeds":
        return re.search(r"<(?:embed|object|applet)\b", html, re.I) is not None
    return re.search(r"<form\b[^>]{0,300}action\s*=\s*[\"']?mailto:", html, re.I) is not None


@register("check_for_mime", ("body", "rawbody"), (str,),
          choices=("mime_base64_count", "mime_qp_count", "mime_attachment", "mime_base64_encoded_text"))
def check_for_mime(msg: Message, what: str) -> bool:
    """MIME facts: a base64 part, a quoted-printable part, an attachment, a base64-encoded text part
    (:func:`_base64_ascii_text`)."""
    parts = msg.parts
    if what == "mime_base64_count":
        return any(p.encoding == "base64" for p in parts)
    if what == "mime_qp_count":
        return any(p.encoding == "quoted-printable" for p in parts)
    if what == "mime_attachment":
        return any(p.is_attachment for p in parts)
    return any(map(_base64_ascii_text, parts))


def _base64_ascii_text(part: Part) -> bool:
    """A text part in base64 that needs no encoding: its charset is absent or names ASCII, and it
    is not marked as an attachment or inline.  SpamAssassin's test (MIME_BASE64_TEXT): base64 is
    to be expected for text in another charset (Latin-1, Big5), not for ASCII."""
    if part.encoding != "base64" or not part.content_type.startswith("text/"):
        return False
    if part.charset and _ASCII_CHARSET.search(part.charset.lower()) is None:
        return False
    return not (part.disposition or "").startswith(("attachment", "inline"))


#: ASCII's names as SpamAssassin looks for them in a charset: anywhere in it, so any charset
#: whose name holds "us" counts as ASCII too
_ASCII_CHARSET = re.compile(r"ascii|us|ansi_x3\.4-19(?:68|86)|iso-ir-6|iso_646\.irv:1991|(?:ibm|cp)367")


@register("check_msg_parse_flags", (), (str,), choices=("missing_head_body_separator", "truncated_header"))
def check_msg_parse_flags(msg: Message, what: str) -> bool:
    """Parser findings: no blank line after the header; header cut at the limit."""
    msg.parts  # noqa: B018  (parse fully so every defect is known)
    flag = {"missing_head_body_separator": "MISSING_HEADER_BODY_SEPARATOR", "truncated_header": "HEADER_TOO_MANY"}[what]
    return flag in msg.defects


@register("check_illegal_chars", ("header",), (str, float, int))
def check_illegal_chars(msg: Message, name: str, ratio: float, count: int) -> tuple[bool, list[str]]:
    """Unencoded 8-bit bytes in a header (``ALL``: the whole header block): more than
    ``ratio`` of its characters and at least ``count`` of them."""
    if name == "ALL":
        text = msg.header_bytes
    else:
        text = "\n".join(msg.get_raw(name)).encode("utf-8", "surrogateescape")
    if not text:
        return False, []
    bad = len(text) - len(text.translate(None, _HIGH_BYTES))  # bytes >= 0x80, counted in C
    return (bad >= count and bad / len(text) > ratio), [str(bad)]


_HIGH_BYTES = bytes(range(0x80, 0x100))
