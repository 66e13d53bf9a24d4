"""From a parsed :class:`~antispam.message.Message` to hashed feature ids.

The work is split in two, for speed:

* Here, in Python, the message's *views* are gathered once: the case-folded
  subject, the case-folded readable text (plain parts and the visible text of
  HTML parts, bounded to :data:`MAX_TEXT_CHARS`), and a short list of *meta*
  tokens for evidence that is not running text.  Meta tokens are namespaced
  strings, in the spirit of SpamBayes:

  ``from:dom:<domain>`` ``from:tld:<tld>`` ``from:name:<word>`` ``from:noname``
  ``reply-to:other-domain`` ``to:n:<bucket>`` ``header:<name>`` (presence of a
  chosen header) ``header:<name>:<first word of value>`` ``mime:<type>``
  ``mime:parts:<bucket>`` ``mime:html-only`` ``mime:image-only`` ``mime:no-text``
  ``charset:<name>`` ``attach:<extension>`` ``url:host:<host>``
  ``url:dom:<last two labels>`` ``url:ip`` ``url:n:<bucket>`` ``url:anchor-mismatch``
  ``rcvd:n:<bucket>`` ``rcvd:ip16:<a.b>`` ``text:8bit`` ``text:len:<bucket>``; since version 2
  ``hname:<name>`` (every header name the sender could have written, see
  :data:`UNREAD_HEADER_PREFIXES`), ``mid:shape:<shape>`` ``mid:dom:same|other`` ``mid:none``,
  ``from:local:<shape>`` ``from:local:digits`` ``from:localw:<word>``; since version 3
  ``date:shape:<shape>`` ``date:tz:<offset>`` ``date:none``, ``mailer:<shape>`` (of X-Mailer or
  User-Agent) and ``rcvd:helo:<shape>`` for the three newest Received headers; since version 5
  ``to:local:<shape>`` (the first recipient's local part), ``list:html`` and ``list:new:html``
  (list mail with an HTML part; not a reply).  Version 6 dropped ``header:list-id`` and
  ``header:list-unsubscribe``.

* The compiled kernel (:func:`antispam.fastscore.impl.features`) then splits the
  subject and text into words, adds the namespaced and bigram tokens, hashes
  everything and returns the sorted distinct ids.  Its rules for words, the
  hash and the id space are documented in ``antispam/_fastscore_py.py``.

Headers are chosen to generalise beyond one corpus: headers that mail
*collection* adds (``Delivery-Date``, ``X-Keywords``, ``X-Status``,
``Delivered-To``, ``Return-Path``, any ``X-Spam-*``) are never read, because in a
corpus they say which mailbox a message came from rather than what it is.  For
the same reason a Message-ID gives its *shape* and whether its domain is the
From domain, never the domain itself: a message that arrives without one gets
it from the receiving server, whose name is a fact about the mailbox.

Version 2 added the ``hname:``, ``mid:``, ``from:local*`` groups (and URL path
words, subject shape and script tokens): 5-fold cross-validation on the TRAIN
split raised the NBSVM's spam recall at 0.2% ham FPR from 0.961 to 0.979 (ROC
AUC 0.99971 to 0.99980); HTML tag tokens, CJK character bigrams, RFC 2047
charset tokens and the Message-ID domain itself were tried and left out (no
gain, or a loss; figures in ``docs/classifier.md``).  Version 3 added the
shapes of the Date header, the mailer name and the Received HELO names: recall
at 0.2% FPR +0.2 to +1.4 points on three different 5-fold cuts of TRAIN.
Version 4 dropped the URL path, subject shape and script tokens again: with the
version 3 groups present they no longer changed cross-validated recall (0.9739
with them, 0.9725 without, mean of three cuts; AUC 0.99978 / 0.99979) and cost
9 us of the 50 us budget per message.  Version 5 added the shape of the first
recipient's local part: a sub-address tag (``name+shop``, ``name-shop``: an
address handed to one sender), digits or dots (harvested and generated lists)
say how the address reached the sender; and two list-mail conjunctions,
``list:html`` and ``list:new:html`` (half the spam the engine misses in nested
cross-validation came through mailing lists, whose headers read as ham).  In
the nested fit of the whole engine (three classifier cuts, three outer cuts each),
recall at 0.2% held-out FPR 0.9770 -> 0.9785 (recipient shape) -> 0.9805 (both),
at 0.1% 0.9612 -> 0.9674 -> 0.9685; figures in ``docs/classifier.md``.  Version 6 no longer
makes the presence of List-Id and List-Unsubscribe a token: on TRAIN they are ham evidence only
because the corpus owners subscribed to lists, and half the spam missed in nested cross-validation
came through one; the model now judges list mail by what it says and who sent it (``list:html``
and ``list:new:html`` stay).  Nested CV: recall 0.9805 -> 0.9816 at a held-out FPR of 0.19%.

:data:`TOKENIZER_VERSION` changes whenever any of this changes the ids a
message gets; a model trained with another version is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .. import fastscore
from ..message import Message

#: Bump on any change that alters the feature ids of a message.
TOKENIZER_VERSION = 6
#: The default hash seed (any 64-bit value; stored in each model).
DEFAULT_SEED = 0x5A17_0A5E_C1A5_51F1
#: The default id space: 2**20 features.
DEFAULT_BITS = 20
#: the feature-space sizes a model may have (2**1 .. 2**31 ids), as the loader and ``antispam train`` check them
MIN_BITS, MAX_BITS = 1, 31
#: Text beyond this many characters is not tokenized (bounds the work per message).
MAX_TEXT_CHARS = 200_000

#: Headers whose presence is a token (``header:<name>``).  Not List-Id and List-Unsubscribe since
#: version 6: which lists a mailbox subscribes to is a fact about the mailbox, and their ham weight
#: let spam relayed by a list pass (see the module docstring).
PRESENCE_HEADERS = (
    "in-reply-to", "references", "precedence", "sender", "errors-to",
    "reply-to", "cc", "organization", "user-agent", "x-mailer", "x-priority", "x-msmail-priority",
    "importance", "mime-version", "content-class", "thread-index", "x-mimeole", "x-originating-ip",
    "x-authentication-warning", "mail-followup-to", "x-accept-language", "message-id", "date", "to",
)
#: Headers whose value's first word is a token (``header:<name>:<word>``).
VALUE_HEADERS = ("x-mailer", "user-agent", "precedence", "x-priority", "x-msmail-priority", "importance",
                 "content-transfer-encoding")

_FIRST_WORD_RE = re.compile(r"[a-z][a-z0-9_.-]{0,30}")
_NAME_WORD_RE = re.compile(r"[^\W\d_]{2,20}")
_IPV4_RE = re.compile(r"^\d{1,3}(?:\.\d{1,3}){3}$")
_ASCII_WORD_RE = re.compile(r"[a-z0-9]{2,20}")
_SHAPE_TABLE = str.maketrans({**{c: "A" for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"},
                               **{c: "a" for c in "abcdefghijklmnopqrstuvwxyz"}, **{c: "9" for c in "0123456789"}})
_SHAPE_REPEATS_RE = re.compile(r"(?<=A)A+|(?<=a)a+|(?<=9)9+")
#: memo of :func:`_cached_shape` (bounded: a flood of distinct values only stops the caching)
_SHAPE_CACHE: dict[str, str] = {}
_SHAPE_CACHE_SIZE = 8192
#: memos of :func:`_collapsed` for shapes and for Dates (bounded like the shape cache)
_COLLAPSED_SHAPES: dict[str, str] = {}
_COLLAPSED_DATES: dict[str, str] = {}
#: lower-cased header name -> what it gives (:func:`_name_tokens`; names repeat across mail; bounded)
_HNAME_CACHE: dict[str, tuple[tuple[str, ...], int]] = {}
_HNAME_CACHE_SIZE = 4096
#: a Date's shape: digits -> 9 and ASCII letters -> a, then each run of either kept once
_DATE_TABLE = str.maketrans({**{c: "a" for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"},
                              **{c: "9" for c in "0123456789"}})
_DATE_REPEATS_RE = re.compile(r"(?<=a)a+|(?<=9)9+")
_TZ_OFFSET_RE = re.compile(r"([+-]\d{4})")

#: Header names never made into ``hname:`` tokens: added by delivery, collection, filters or mailing
#: list software on the receiving side (they describe the mailbox, not the message), plus the ones
#: :data:`PRESENCE_HEADERS` already covers.  Matched as prefixes of the lower-cased name.
#: headers that mailing-list software adds (``list:`` tokens; not read as ``hname:``, they name the list)
_LIST_HEADER_PREFIXES = ("list-", "mailing-list", "x-mailing-list")
UNREAD_HEADER_PREFIXES = (
    "x-spam", "delivery-date", "x-keywords", "x-status", "delivered-to", "return-path", "status", "x-uid",
    "x-mozilla", "x-evolution", "x-loop", "x-mailscanner", "x-virus", "lines", "content-length", "x-beenthere",
    "x-mailman-version", "list-", "x-original", "x-egroups", "mailing-list", "x-razor", "x-pyzor", "x-dcc",
    "x-bogosity", "x-from-line", "x-imap", "x-ui", "x-gmail", "x-rcpt", "envelope-to", "x-envelope", "x-received",
    "x-authentication", "received", "sender", "errors-to", "precedence", "x-mailer-version", "x-accept",
    "x-scanned", "x-virus-scanned", "x-filter",
)


@dataclass(frozen=True, slots=True)
class TokenizerSpec:
    """Everything that decides the ids of a message; stored in and checked against each model."""

    version: int = TOKENIZER_VERSION
    seed: int = DEFAULT_SEED
    bits: int = DEFAULT_BITS
    bigrams: bool = False

    @property
    def n_features(self) -> int:
        return 1 << self.bits


def _bucket(n: int) -> str:
    """Small counts exactly, larger ones on a log2 scale (``0 1 2 3 4-7 8-15 ...``)."""
    if n < 4:
        return str(n)
    return f"{1 << (n.bit_length() - 1)}+"


def _last_labels(host: str, n: int = 2) -> str:
    labels = host.rsplit(".", n)
    return ".".join(labels[-n:])


def meta_tokens(msg: Message) -> list[str]:
    """The namespaced non-text evidence of ``msg`` (see the module docstring)."""
    out: list[str] = []
    add = out.append
    dom = msg.from_domain
    if dom:
        add("from:dom:" + dom)
        add("from:tld:" + dom.rsplit(".", 1)[-1])
    else:
        add("from:nodomain")
    name = msg.from_name.lower()
    if name:
        for w in _NAME_WORD_RE.findall(name)[:6]:
            add("from:name:" + w)
    else:
        add("from:noname")
    rt = msg.reply_to
    if rt and dom and not rt.lower().endswith(dom):
        add("reply-to:other-domain")
    add("to:n:" + _bucket(len(msg.to_addrs)))
    present, listed = _header_names(msg, out)
    # MIME structure
    parts = msg.parts
    add("mime:parts:" + _bucket(len(parts)))
    has_plain = has_html = has_image = False
    for p in parts:
        ct = p.content_type
        add("mime:" + ct)
        if p.charset:
            add("charset:" + p.charset.strip('"').lower())
        if ct == "text/plain":
            has_plain = True
        elif ct == "text/html":
            has_html = True
        elif ct.startswith("image/"):
            has_image = True
        if p.is_attachment and p.filename:
            fn = p.filename.lower()
            dot = fn.rfind(".")
            add("attach:" + (fn[dot + 1:][:10] if dot >= 0 else "noext"))
    if has_html and not has_plain:
        add("mime:html-only")
    if has_image and not (has_plain or has_html):
        add("mime:image-only")
    if not (has_plain or has_html):
        add("mime:no-text")
    if has_html and listed:
        # HTML in list mail, and HTML that starts a list thread: list discussion is plain text and
        # replies, while advertising relayed by a list is neither.  A linear model cannot form
        # these conjunctions from the list headers and the ``mime:text/html`` token alone.
        add("list:html")
        if "in-reply-to" not in present and "references" not in present:
            add("list:new:html")
    # URLs
    urls = msg.urls
    add("url:n:" + _bucket(len(urls)))
    for host in msg.url_hosts[:20]:
        if _IPV4_RE.match(host):
            add("url:ip")
            continue
        add("url:host:" + host)
        add("url:dom:" + _last_labels(host))
    for u in urls:
        if u.text and "." in u.text and u.host and u.host not in u.text.lower() and "http" in u.text.lower():
            add("url:anchor-mismatch")
            break
    # Received chain
    relays = msg.received
    add("rcvd:n:" + _bucket(len(relays)))
    for r in relays[:8]:
        if r.ip and "." in r.ip:
            a, b = r.ip.split(".", 2)[:2]
            add(f"rcvd:ip16:{a}.{b}")
    text = msg.text
    if not text.isascii():
        add("text:8bit")
    add("text:len:" + _bucket(len(text) // 64))
    _message_id(msg, dom, add)
    _software_shapes(msg, present, relays, add)
    _from_local(msg, add)
    _to_local(msg, add)
    return out


def _shape(s: str) -> str:
    """Runs of ASCII upper-case letters, lower-case letters and digits collapsed to ``A``, ``a``, ``9``."""
    return _collapsed(s.translate(_SHAPE_TABLE), _SHAPE_REPEATS_RE, _COLLAPSED_SHAPES)


def _collapsed(t: str, repeats: re.Pattern[str], memo: dict[str, str]) -> str:
    """``repeats.sub("", t)``, memoised by ``t``: a translated value (``Aaa, 99 Aaa 9999...``) has
    few forms across mail even when the values themselves never repeat."""
    v = memo.get(t)
    if v is None:
        v = repeats.sub("", t)
        if len(memo) < _SHAPE_CACHE_SIZE:
            memo[t] = v
    return v


def _cached_shape(s: str) -> str:
    """:func:`_shape` of a value that recurs across mail (mailer names, HELO names), memoised."""
    v = _SHAPE_CACHE.get(s)
    if v is None:
        v = _shape(s)
        if len(_SHAPE_CACHE) < _SHAPE_CACHE_SIZE:
            _SHAPE_CACHE[s] = v
    return v


def _header_names(msg: Message, out: list[str]):  # type: ignore[no-untyped-def]
    """The tokens of which headers the message has, in one pass over their names: ``hname:`` for
    the ones its sender wrote (mail software leaves its own set: ``X-Face``, ``Thread-Index``...),
    ``header:<name>`` for :data:`PRESENCE_HEADERS`, ``header:<name>:<word>`` for the first word of
    :data:`VALUE_HEADERS`' values.

    Returns the lower-cased names present (a set-like view, which later tokens read too) and
    whether a mailing list's header is among them.
    """
    cache = _HNAME_CACHE
    extend = out.extend
    listed = False
    # The Message's own index of lower-cased header names: built once per message and shared with
    # every get()/has(), so reading its keys costs nothing here.
    present = msg.header_index.keys()
    for low in present:
        entry = cache.get(low)
        if entry is None:
            entry = _name_tokens(low)
            if len(cache) < _HNAME_CACHE_SIZE:
                cache[low] = entry
        tokens, flags = entry
        extend(tokens)
        if flags:  # rare: most names give only tokens
            if flags & _VALUE:
                v = msg.get(low)
                if v:
                    m = _FIRST_WORD_RE.search(v.lower())
                    if m:
                        out.append(f"header:{low}:{m.group()}")
            if flags & _LIST:
                listed = True
    return present, listed


#: :func:`_name_tokens` flags: the value's first word is a token; the header is a mailing list's
_VALUE, _LIST = 1, 2


def _name_tokens(low: str) -> tuple[tuple[str, ...], int]:
    """What the header name ``low`` gives :func:`_header_names`: its ``hname:`` and ``header:``
    tokens, and its flags."""
    tokens = () if low.startswith(UNREAD_HEADER_PREFIXES) else ("hname:" + low[:30],)
    if low in PRESENCE_HEADERS:
        tokens += ("header:" + low,)
    return tokens, (_VALUE if low in VALUE_HEADERS else 0) | (_LIST if low.startswith(_LIST_HEADER_PREFIXES) else 0)


def _software_shapes(msg: Message, present: set[str], relays, add) -> None:  # type: ignore[no-untyped-def]
    """How the Date header, the mailer name and the relays' HELO names are *written*.

    Mail software has fixed habits (``Mon, 2 Sep 2002 10:00:00 +0100`` against a bulk tool's own
    date format; ``Microsoft Outlook Express 6.00...`` against a random tag; a HELO that is a bare
    IP or a single word): shapes carry that without memorising names.
    """
    date = msg.get("date") if "date" in present else None
    if date:
        add("date:shape:" + _collapsed(date.strip().translate(_DATE_TABLE), _DATE_REPEATS_RE, _COLLAPSED_DATES)[:30])
        m = _TZ_OFFSET_RE.search(date)
        add("date:tz:" + (m.group(1) if m else "none"))
    else:
        add("date:none")
    mailer = msg.get("x-mailer") if "x-mailer" in present else None
    if not mailer and "user-agent" in present:
        mailer = msg.get("user-agent")
    if mailer:
        add("mailer:" + _cached_shape(mailer.strip())[:40])
    for r in relays[:3]:
        if r.helo:
            add("rcvd:helo:" + _cached_shape(r.helo)[:20])


def _message_id(msg: Message, from_domain: str | None, add) -> None:  # type: ignore[no-untyped-def]
    """The Message-ID's shape (bulk mailers have their own) and whether it is the From domain's."""
    mid = (msg.message_id or "").strip("<>")
    if "@" not in mid:
        add("mid:none")
        return
    left, right = mid.rsplit("@", 1)
    add("mid:shape:" + _shape(left)[:20])
    if from_domain:
        same = _last_labels(right.lower()) == _last_labels(from_domain.lower())
        add("mid:dom:same" if same else "mid:dom:other")


def _from_local(msg: Message, add) -> None:  # type: ignore[no-untyped-def]
    """The From address's local part: its shape, digits in it, its words (throw-away addresses)."""
    addr = msg.from_addr or ""
    if "@" not in addr:
        return
    local = addr.split("@")[0].lower()
    shape = _shape(local)
    add("from:local:" + shape[:12])
    if "9" in shape:
        add("from:local:digits")
    for w in _ASCII_WORD_RE.findall(local)[:3]:
        add("from:localw:" + w)


def _to_local(msg: Message, add) -> None:  # type: ignore[no-untyped-def]
    """The first recipient's local part, by shape: how the address reached the sender.

    A tagged address (``a+a``, ``a-a``) was given to one sender or is a list's; digits and dots are
    common in harvested and generated address lists.  Only the shape: the address itself names
    the mailbox, not the message.
    """
    tos = msg.to_addrs
    if tos and "@" in tos[0]:
        add("to:local:" + _shape(tos[0].lower().rsplit("@", 1)[0])[:12])


def views(msg: Message) -> tuple[str, str, list[str]]:
    """``(subject, text, meta)``: what the kernel tokenizes, case-folded and bounded."""
    text = msg.text
    if len(text) > MAX_TEXT_CHARS:
        text = text[:MAX_TEXT_CHARS]
    return msg.subject.lower(), text.lower(), meta_tokens(msg)


def features(msg: Message, spec: TokenizerSpec, impl=None) -> np.ndarray:
    """Sorted distinct feature ids of ``msg`` (uint32), with the active kernel unless ``impl`` is given."""
    subject, text, meta = views(msg)
    k = impl or fastscore.impl
    return k.features(subject, text, meta, spec.seed, spec.bits, spec.bigrams)


def token_strings(msg: Message, spec: TokenizerSpec) -> list[str]:
    """Every token string of ``msg`` in order (slow; for vocabularies, debugging and tests)."""
    subject, text, meta = views(msg)
    return fastscore.python_impl.tokens(subject, text, meta, spec.bigrams)
