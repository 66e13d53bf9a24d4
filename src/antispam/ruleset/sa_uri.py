"""SpamAssassin's uri list: what the uri rules of its own files read.

This project's uri rules read :attr:`Message.urls <antispam.message.Message.urls>`, the links a
reader can follow to a web page.  SpamAssassin lists e-mail links as well, and its rules are
written for that: ``__UNSUB_LINK`` looks for "unsubscribe" in any link, and a list's footer
("send an email to foo-unsubscribe@lists.example") gives it one.  So the rules read from its
files (:data:`.compiler.SA_URI`) get our links followed by the ``mailto:`` links SpamAssassin
finds, described here from its documented behaviour:

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
from ..message import Message, Url
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


@per_message
def sa_uri_links(msg: Message) -> tuple[Url, ...]:
    """Our links, then the ``mailto:`` links SpamAssassin lists (each once): line k of the
    buffer of SpamAssassin's uri rules is link k."""
    seen = {u.url for u in msg.urls}
    extra: list[Url] = []
    for url, source in _mail_links(msg):
        for variant in _with_bare_address(url):
            if variant not in seen:
                seen.add(variant)
                extra.append(Url(url=variant, host=_mail_host(variant), source=source))
    return (*msg.urls, *extra) if extra else msg.urls


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
    if "%" in found:
        found = _PRINTABLE_ESCAPE.sub(lambda e: chr(int(e.group(1), 16)), found)
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
