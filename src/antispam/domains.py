"""Registered (organizational) domains, from the Public Suffix List.

``publicsuffixlist`` ships the list inside the package and is re-released as
the list changes, so nothing is downloaded at run time and updating is a
``pip install -U``.  Used wherever a host must be reduced to what its owner
registered: URI blocklists, reputation history, DMARC's RFC 7489 mode.  Also
the A-label form of an internationalised name as browsers resolve it
(:func:`to_ascii`).
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache

import idna
from publicsuffixlist import PublicSuffixList

_PSL = PublicSuffixList()


Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@lru_cache(maxsize=8192)
def parse_ip(text: str) -> Address | None:
    """An address from text (brackets allowed, IPv4-mapped IPv6 unwrapped); None if not an IP.

    Cached: the same client, relay and URL addresses are looked at by several
    checks and lists in one scan, and ``ipaddress`` parsing is not cheap.
    """
    try:
        addr = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        return addr.ipv4_mapped
    return addr


def is_ip(host: str) -> bool:
    return parse_ip(host) is not None


@lru_cache(maxsize=65536)
def registered_domain(host: str) -> str | None:
    """``www.shop.example.co.uk`` -> ``example.co.uk``; None for IPs, bare suffixes and junk."""
    host = host.strip().rstrip(".").lower()
    if not host or is_ip(host) or "." not in host:
        return None
    try:
        return _PSL.privatesuffix(host)
    except (ValueError, TypeError):
        return None


@lru_cache(maxsize=4096)
def known_tld(label: str) -> bool:
    """Whether ``label`` is a top-level domain of the Public Suffix List (``com``, ``uk``,
    ``xn--p1ai``; not ``local`` nor ``zz``): the list's wildcard rule, which takes any last
    label for a suffix, left out."""
    try:
        return _PSL.is_public(label.lower(), accept_unknown=False)
    except (ValueError, TypeError):
        return False


#: What one label of a name may hold once in ASCII: letters, digits and hyphens (RFC 1123), and the
#: underscore of names such as ``_dmarc`` and ``_domainkey``; 63 octets at most (RFC 1035).
_ASCII_LABEL_RE = re.compile(r"[a-z0-9_-]{1,63}", re.ASCII)

#: The joiners UTS 46 non-transitional processing keeps (IDNA 2003 deleted them, which turned
#: ``a\u200db`` into ``ab``, another name) where RFC 5892's CONTEXTJ rules allow them.
_JOINERS = ("\u200c", "\u200d")


def to_ascii(domain: str) -> str:
    """The A-label form of ``domain`` that a browser resolves (UTS 46, non-transitional).

    The one conversion of a Unicode domain to ASCII, for every DNS question and every domain
    compared or written (DNS lists, SPF, DMARC, Authentication-Results, the resolver).  Python's
    ``idna`` codec is IDNA 2003: it turns ``faß.de`` into ``fass.de`` and ``σοφός`` into
    ``σοφόσ``, another registrant's domain, while browsers, registries, libidn2 and ICU
    (SpamAssassin, rspamd) use ``xn--fa-hia.de``.  The mapping is the ``idna`` package's UTS 46
    table (current Unicode: case folding, full-width forms, the ideographic full stop as a dot);
    the checks are the ones browsers make (WHATWG URL: joiners in context, bidi rules, no initial
    combining mark; hyphens not checked) and a DNS host name's (letters, digits, hyphens and
    ``_``, at most 63 octets, no empty label but a final one).  A name already in ASCII is
    returned as it is (A-labels as received).  Raises ``UnicodeError`` (``idna.IDNAError``) for a
    name that is no domain UTS 46 can encode; callers turn that into a result, never a lookup.
    """
    if domain.isascii():
        return domain
    mapped = idna.uts46_remap(domain, std3_rules=False, transitional=False)
    labels = mapped.split(".")
    rooted = len(labels) > 1 and labels[-1] == ""
    if rooted:
        labels.pop()
    return ".".join(_label_to_ascii(label) for label in labels) + ("." if rooted else "")


def _label_to_ascii(label: str) -> str:
    """One label, already mapped: checked as UTS 46 section 4.1 asks, then Punycode."""
    if not label.isascii():
        if label.startswith("xn--"):
            raise idna.IDNAError(f"label {label!r} has the A-label prefix but is not ASCII")
        idna.check_initial_combiner(label)
        for pos, char in enumerate(label):
            if char in _JOINERS and not idna.valid_contextj(label, pos):
                raise idna.IDNAError(f"joiner U+{ord(char):04X} out of context in {label!r}")
        idna.check_bidi(label)
        label = "xn--" + label.encode("punycode").decode("ascii")
    if not _ASCII_LABEL_RE.fullmatch(label):
        raise idna.IDNAError(f"{label!r} is no host name label")
    return label
