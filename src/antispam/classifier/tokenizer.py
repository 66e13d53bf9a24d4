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
  ``rcvd:n:<bucket>`` ``rcvd:ip16:<a.b>`` ``text:8bit`` ``text:len:<bucket>``.

* The compiled kernel (:func:`antispam.fastscore.impl.features`) then splits the
  subject and text into words, adds the namespaced and bigram tokens, hashes
  everything and returns the sorted distinct ids.  Its rules for words, the
  hash and the id space are documented in ``antispam/_fastscore_py.py``.

Headers are chosen to generalise beyond one corpus: headers that mail
*collection* adds (``Delivery-Date``, ``X-Keywords``, ``X-Status``,
``Delivered-To``, ``Return-Path``, any ``X-Spam-*``) are never read, because in a
corpus they say which mailbox a message came from rather than what it is.

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
TOKENIZER_VERSION = 1
#: The default hash seed (any 64-bit value; stored in each model).
DEFAULT_SEED = 0x5A17_0A5E_C1A5_51F1
#: The default id space: 2**20 features.
DEFAULT_BITS = 20
#: Text beyond this many characters is not tokenized (bounds the work per message).
MAX_TEXT_CHARS = 200_000

#: Headers whose presence is a token (``header:<name>``).
PRESENCE_HEADERS = (
    "in-reply-to", "references", "list-id", "list-unsubscribe", "precedence", "sender", "errors-to",
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
    for h in PRESENCE_HEADERS:
        if msg.has(h):
            add("header:" + h)
    for h in VALUE_HEADERS:
        v = msg.get(h)
        if v:
            m = _FIRST_WORD_RE.search(v.lower())
            if m:
                add(f"header:{h}:{m.group()}")
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
    return out


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
