"""Registered (organizational) domains, from the Public Suffix List.

``publicsuffixlist`` ships the list inside the package and is re-released as
the list changes, so nothing is downloaded at run time and updating is a
``pip install -U``.  Used wherever a host must be reduced to what its owner
registered: URI blocklists, reputation history, DMARC's RFC 7489 mode.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from publicsuffixlist import PublicSuffixList

_PSL = PublicSuffixList()


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


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
