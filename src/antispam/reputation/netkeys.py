"""Keys for client addresses: the address itself and the network it belongs to.

Greylisting and reputation group IPv4 senders by /24 and IPv6 senders by /64
by default, because large senders retry and send from neighbouring addresses
of one pool, while one /64 is what a single IPv6 customer usually holds.
"""

from __future__ import annotations

import ipaddress

from ..domains import parse_ip


def network_key(ip: str, v4_prefix: int = 24, v6_prefix: int = 64) -> str | None:
    """``192.0.2.77`` -> ``192.0.2.0/24``; ``2001:db8::1`` -> ``2001:db8::/64``; None if not an IP."""
    addr = parse_ip(ip)
    if addr is None:
        return None
    prefix = v4_prefix if addr.version == 4 else v6_prefix
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))


def in_networks(ip: str | None, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    if not ip or not networks:
        return False
    addr = parse_ip(ip)
    if addr is None:
        return False
    return any(addr.version == n.version and addr in n for n in networks)


def parse_networks(values: tuple[str, ...], key: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Parse configured networks, failing with a ConfigError that names the bad entry."""
    from ..errors import ConfigError

    out = []
    for v in values:
        try:
            out.append(ipaddress.ip_network(v, strict=False))
        except ValueError:
            raise ConfigError(f"not an IP network: {v!r}", key=key) from None
    return tuple(out)
