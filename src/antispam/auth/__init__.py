"""Sender authentication: SPF, DKIM, DMARC, ARC and Authentication-Results.

Every check here is a network check that asks its DNS questions through the
one resolver (:mod:`antispam.dns`).  None is enabled unless ``[dns]
nameservers`` is configured, so the default ``Engine()`` makes no lookups.
Failure to get an answer is reported as ``temperror`` with a ``*_TEMPFAIL``
symbol, never as a pass or as "no record".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from ..config import Config


def network_enabled(config: "Config", flag: str) -> bool:
    """True when a resolver is configured and ``[auth] <flag>`` is on."""
    dns = getattr(config, "dns", None)
    auth = getattr(config, "auth", None)
    return bool(dns is not None and dns.nameservers and auth is not None and getattr(auth, flag))
