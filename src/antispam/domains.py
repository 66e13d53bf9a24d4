"""Registered (organizational) domains, from the Public Suffix List.

``publicsuffixlist`` ships the list inside the package and is re-released as
the list changes, so nothing is downloaded at run time and updating is a
``pip install -U``.  Used wherever a host must be reduced to what its owner
registered: URI blocklists, reputation history, DMARC's RFC 7489 mode.  Also
the A-label form of an internationalised name as browsers resolve it
(:func:`to_ascii`).
"""

from __future__ import annotations

import encodings.idna
import ipaddress
import re
from functools import lru_cache

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


#: The letters IDNA 2003 folds away (``ß`` -> ``ss``, ``ς`` -> ``σ``) but IDNA 2008 and UTS 46
#: non-transitional processing, what browsers and registries use, keep as letters of their own.
_DEVIATIONS_RE = re.compile("([\u00df\u03c2])")


def to_ascii(domain: str) -> str:
    """The A-label form of ``domain`` that a browser resolves (UTS 46, non-transitional).

    Python's ``idna`` codec is IDNA 2003: it turns ``faß.de`` into ``fass.de``, another
    registrant's domain, while a browser opens ``xn--fa-hia.de``; a list must be asked about the
    latter (SpamAssassin asks libidn2 for non-transitional processing).  Labels without ``ß`` or
    final ``ς`` are the same under both and go through the codec.  Raises ``UnicodeError`` for a
    name that cannot be encoded.
    """
    if domain.isascii():
        return domain
    return ".".join(_label_to_ascii(label) for label in domain.split("."))


def _label_to_ascii(label: str) -> str:
    """One label: the codec's nameprep around the deviation letters, which are kept, then Punycode."""
    if not _DEVIATIONS_RE.search(label):
        return encodings.idna.ToASCII(label).decode("ascii")
    mapped = "".join(part if _DEVIATIONS_RE.fullmatch(part) else encodings.idna.nameprep(part)
                     for part in _DEVIATIONS_RE.split(label))
    encoded = "xn--" + mapped.encode("punycode").decode("ascii")
    if len(encoded) > 63:
        raise UnicodeError("label too long")
    return encoded
