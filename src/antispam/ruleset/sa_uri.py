"""SpamAssassin's uri list: what the uri rules of its own files read.

This project's uri rules read :attr:`Message.urls <antispam.message.Message.urls>`, the links a
reader can follow to a web page.  SpamAssassin lists e-mail links as well, and its rules are
written for that: ``__UNSUB_LINK`` looks for "unsubscribe" in any link, and a list's footer
("send an email to foo-unsubscribe@lists.example") gives it one.  So the rules read from its
files (:data:`.compiler.SA_URI`) get our links, the other forms SpamAssassin lists of each
(decoded, without a user name or a default port, an IP address in decimal, a redirector's
target: :func:`_web_variants`), then the ``mailto:`` links it finds, described here from its
documented behaviour:

* every ``mailto:`` link of the HTML, as written;
* every address in the text (the subject and the readable text), found as Thunderbird finds
  links in plain text: a run of address characters holding an ``@``, cut at a closing
  parenthesis that nothing opened and at trailing punctuation, with a dot after the ``@`` and a
  known top-level domain at the end (``mailto:`` written in the text, the same); an address
  inside a web link is part of that link, not an e-mail link;
* each of these also without its ``?subject=...`` query, as SpamAssassin adds the bare address.
"""

from __future__ import annotations

import re
from typing import Iterable

from ..domains import known_tld
from ..message import Message, Url, url_host
from .evals import per_message

#: what ends a web link, and what ends an address too (these and any non-ASCII character)
_LINK_END = "><\"`}\\]{\\[|\\s\\x1b\\xa0"
_MAIL_END = _LINK_END + ",('\\x80-\\U0010ffff"

#: a web link (matched to be passed over: an address in it is part of it) or an address,
#: starting at a word boundary or after a character that starts a link
_TEXT_LINK = re.compile(
    rf"(?:\b|(?<=[><\"'`,{{\[(|\s\x1b\xa0]))"
    rf"(?:(?:(?:https?|ftp)://|(?:www\d{{0,2}}|ftp)\.)[^{_LINK_END}]{{1,2048}}(?=[{_LINK_END}]|\Z)"
    rf"|(mailto:[^{_MAIL_END}]{{1,2048}}|[^{_MAIL_END}@]{{1,251}}@[^{_MAIL_END}]{{1,251}})(?=[{_MAIL_END}]|\Z))",
    re.I | re.A,
)
#: a closing parenthesis with no opening one before it ends a link (Thunderbird's rule)
_UNOPENED_CLOSE = re.compile(r"[^(]*\)")
_TRAILING_PUNCTUATION = "-~!@#^&*()_+=:;'?,."
#: a link with a scheme other than mailto: (what is left of ``http:foo@x`` is a web link)
_WEB_SCHEME = re.compile(r"(?:https?|ftp):|(?:www\d{0,2}|ftp)\.|[cm]id:", re.I | re.A)
#: what mail clients take for a typo before an address: ``mail:``, ``e-mail:``, ``skype:``
_MISREAD_PREFIX = re.compile(r"^(?:skype|e?-?mail)?:+", re.I | re.A)
#: a slash before an "@": a path, so the text is a web link with a user name in it
_PATH_BEFORE_AT = re.compile(r"/.+@", re.S)
#: a percent escape of a printable character other than the space, decoded as mail clients do
_PRINTABLE_ESCAPE = re.compile(r"%(?!20|7[fF])([2-7][0-9a-fA-F])")
_HTTP_SLASHES = re.compile(r"^(https?:)/{0,2}", re.I)
_SCHEME = re.compile(r"[-_a-z0-9]+:", re.I | re.A)
_BARE_HOST_QUERY = re.compile(r"^(https?://[^/?#]+)([?#])", re.I)
_CHAR_REFERENCE = re.compile(r"&#(?:x0*([0-9a-f]+)|0*(\d+));", re.I | re.A)
_HTTP_PORT = re.compile(r"^:80\b")
_HTTPS_PORT = re.compile(r"^:443\b")
_USER_NAME = re.compile(r"^[^@]+@")
#: scheme, user name, host, the rest (from the port on), the port
_WEB_PARTS = re.compile(r"^(https?://)([^@/?#]*@)?([^/?#:]+)((?::(\d*))?.*)$", re.I | re.S)
_REDIRECT = re.compile(r"(https?:/{0,2}[^&#]+)", re.I)
_NOT_ALNUM = "".join(chr(c) for c in range(128) if not chr(c).isalnum())
_DOTTED_NUMBERS = re.compile(r"^(?:(?:0x[0-9a-f]+|\d+)\.){3}(?:0x[0-9a-f]+|\d+)$", re.I | re.A)
_ONE_NUMBER = re.compile(r"^(?:0x[0-9a-f]+|\d+)$", re.I | re.A)
_OCTAL_OCTET = re.compile(r"^0+([1-3][0-7]{0,2}|[4-7][0-7]?)$", re.A)
_ONE_WORD_HOST = re.compile(r"^(?:www\.)?([^.]+)$", re.I)
#: a link of the common shape, a scheme, a host of letters, digits and dots ending in a label that
#: starts with a letter, and a path without escapes, backslashes, character references or "@"
_PLAIN_LINK = re.compile(r"^https?://(?:[a-z0-9-]+\.)+(?:[a-z][a-z0-9-]*[a-z0-9]|[a-z])(?:/(?:[^%\\@&]|&(?!#))*)?$",
                         re.I | re.A | re.S)


@per_message
def sa_uri_links(msg: Message) -> tuple[Url, ...]:
    """Our links, then the other forms SpamAssassin lists of them (:func:`_web_variants`), then
    the ``mailto:`` links it lists (each once): line k of the buffer of SpamAssassin's uri rules
    is link k."""
    seen = {u.url for u in msg.urls}
    extra: list[Url] = []
    for u in msg.urls:
        if _PLAIN_LINK.match(u.url) and _plain_host(u.url):
            continue  # nothing to add: no escape, port, user name, redirector, odd or one-word host
        for variant in _web_variants(u.url):
            if variant not in seen:
                seen.add(variant)
                extra.append(Url(url=variant, host=url_host(variant), source=u.source))
    for url, source in _mail_links(msg):
        for variant in _with_bare_address(url):
            if variant not in seen:
                seen.add(variant)
                extra.append(Url(url=variant, host=_mail_host(variant), source=source))
    return (*msg.urls, *extra) if extra else msg.urls


def _web_variants(url: str, depth: int = 0) -> list[str]:
    """The forms SpamAssassin adds to its list for a web link, besides the link as written: with
    escapes of printable characters and character references decoded, backslashes read as
    slashes, ``http:`` given its ``//`` and a bare host its ``/``; and from that, the link with a
    default port dropped, without a user name before an IP address or junk after the host, with
    an IP address's octets in decimal (``0x42.0102...``, ``1113343453``), a one-word host as
    ``www.WORD.com`` (as Firefox guesses), and a link written in its query (a redirector's
    target, with its own forms)."""
    n = _HTTP_SLASHES.sub(r"\1//", url.replace("\\", "/"), count=1)
    n = _unescaped(n)
    if not _SCHEME.match(n):
        n = ("ftp://" if n[:4].lower() == "ftp." else "http://") + n
    n = _BARE_HOST_QUERY.sub(r"\1/\2", n, count=1)
    n = _CHAR_REFERENCE.sub(_printable_reference, n)
    out = [n] if n != url else []
    m = _WEB_PARTS.match(n)
    if m is None:
        return out
    proto, auth, host, rest, port = m.group(1), m.group(2) or "", m.group(3), m.group(4), m.group(5)
    if port is not None:
        default = (_HTTP_PORT if proto.lower() == "http://" else _HTTPS_PORT).sub("", rest, count=1)
        if default != rest:
            out.append(proto + host + default)
    redirect = _REDIRECT.search(rest)
    if redirect is not None and "." in redirect.group(1) and depth < 2:
        out += [redirect.group(1), *_web_variants(redirect.group(1), depth + 1)]
    unnamed = _USER_NAME.sub("", host, count=1)  # what is before an "@" in the host is a user name
    if unnamed != host:
        host = unnamed
        out.append(proto + host + rest)
    trimmed = host.rstrip(_NOT_ALNUM)
    if trimmed != host:
        host = trimmed
        out.append(proto + host + rest)
    ip = _decimal_ip(host)
    if ip is not None:
        out.append(proto + ip + rest)
    elif proto.lower() == "http://" and not auth and port in (None, "80") and host.lower() != "localhost":
        one_word = _ONE_WORD_HOST.match(host.lower())
        if one_word is not None:
            out.append(f"{proto}www.{one_word.group(1)}.com{rest}")
    return out


def _unescaped(link: str) -> str:
    """``link`` with its percent escapes of printable characters (:data:`_PRINTABLE_ESCAPE`) decoded."""
    return _PRINTABLE_ESCAPE.sub(lambda e: chr(int(e.group(1), 16)), link) if "%" in link else link


def _plain_host(link: str) -> bool:
    """Whether a link :data:`_PLAIN_LINK` matches has a host of two words at least besides a
    leading ``www.`` and no link in its path or query (most links: nothing to add for them)."""
    host = link[link.index("//") + 2:].partition("/")[0].lower()
    return (host.count(".") > 1 or not host.startswith("www.")) and "http" not in link[8:].lower()


def _decimal_ip(host: str) -> str | None:
    """An IP address written with hexadecimal or octal octets (``0x42.0102.0.1``), or as one
    number (``1113343453``, ``0x425e0001``), in dotted decimal; None for any other host."""
    if _DOTTED_NUMBERS.match(host):
        return ".".join(str(_octet(o)) for o in host.split("."))
    if _ONE_NUMBER.match(host):
        value = int(host[-8:], 16) if host[:2].lower() == "0x" else int(host)
        return ".".join(str((value >> s) & 255) for s in (24, 16, 8, 0))
    return None


def _octet(text: str) -> int | str:
    """One octet as a browser reads it: ``0x..`` hexadecimal, a leading 0 octal (up to 377)."""
    if text[:2].lower() == "0x":
        return int(text[2:], 16)
    octal = _OCTAL_OCTET.match(text)
    if octal is not None:
        return int(octal.group(1), 8)
    return text.lstrip("0")  # "0" too becomes "", as SpamAssassin writes it


def _printable_reference(m: re.Match[str]) -> str:
    """A numeric character reference of a printable ASCII character, decoded; others kept."""
    code = int(m.group(1), 16) if m.group(1) is not None else int(m.group(2))
    return chr(code) if 0x21 <= code <= 0x7E else "." if code in (0x3002, 0xFF0E, 0xFF61) else m.group(0)


def _mail_links(msg: Message) -> Iterable[tuple[str, str]]:
    """The ``mailto:`` links of the HTML, then those of the text, with where each was found."""
    for href, _ in msg.html_links:
        if href[:7].lower() == "mailto:":
            yield href, "html"
    text = msg.subject + "\n" + msg.text
    for m in _text_link_matches(text):
        link = m.group(1) and _text_mail_link(m.group(1))
        if link:
            yield link, "text"


def _text_link_matches(text: str) -> Iterable[re.Match[str]]:
    """:data:`_TEXT_LINK`'s matches on the lines of ``text`` that hold an "@", which are all the
    lines where an address can be found (no match spans a line break, and a search from a line's
    start reads the break before it): searching every line cost ~200 us a message."""
    at = text.find("@")
    while at >= 0:
        start = text.rfind("\n", 0, at) + 1
        end = text.find("\n", at)
        if end < 0:
            end = len(text)
        yield from _TEXT_LINK.finditer(text, start, end)
        at = text.find("@", end)


def _text_mail_link(found: str) -> str | None:
    """The ``mailto:`` link a run of the text found by :data:`_TEXT_LINK` stands for, or None when
    a mail client would not make it one."""
    cut = _UNOPENED_CLOSE.match(found)
    if cut is not None:
        found = found[:cut.end() - 1]
    found = found.rstrip(_TRAILING_PUNCTUATION)
    if "@" not in found or _WEB_SCHEME.match(found):
        return None
    if found[:7].lower() != "mailto:":
        if _PATH_BEFORE_AT.search(found) or "." not in found[found.index("@") + 2:] or "&nbsp;" in found:
            return None  # a path before an "@" makes it a web link; no dot after it, no address
        found = "mailto:" + _MISREAD_PREFIX.sub("", found, count=1)
    found = _unescaped(found)
    return found if _valid_mail_domain(_mail_host(found)) else None


def _mail_host(link: str) -> str:
    """The domain of a ``mailto:`` link: after its first ``@``, up to a query, lower-cased."""
    host = re.split(r"[?&>]", link.partition("@")[2], maxsplit=1)[0]
    while host.endswith("%20"):
        host = host[:-3]
    return host.lower()


def _valid_mail_domain(host: str) -> bool:
    """A domain with a dot, no blank, and a last label that is a known top-level domain."""
    label = host.rpartition(".")[2]
    return "." in host and bool(label) and not any(c.isspace() for c in host) and known_tld(label)


def _with_bare_address(link: str) -> tuple[str, ...]:
    """The link, and the link without its query when it has one (``mailto:a@b.example``)."""
    m = re.match(r"[^@]+@[^?]+(?=\?)", link)
    return (link, m.group(0)) if m else (link,)
