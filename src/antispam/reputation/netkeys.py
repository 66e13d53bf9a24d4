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


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def in_networks(ip: str | None, networks: tuple[Network, ...]) -> bool:
    """Whether ``ip`` (IPv4-mapped IPv6 compared as IPv4) is in one of ``networks`` (from :func:`parse_network`)."""
    if not ip or not networks:
        return False
    addr = parse_ip(ip)
    if addr is None:
        return False
    return any(addr.version == n.version and addr in n for n in networks)


def parse_network(text: str) -> Network:
    """A configured network, host bits allowed; an IPv4-mapped one as the IPv4 network it maps.

    Addresses are compared unwrapped (:func:`~antispam.domains.parse_ip`): an IPv4
    client seen by a socket bound to ``::`` is ``::ffff:192.0.2.7``, and is logged
    so.  A network written that way (``::ffff:192.0.2.0/120``) is therefore unwrapped
    too (``192.0.2.0/24``), else it could never match anyone.  ValueError if
    ``text`` is not a network.
    """
    net = ipaddress.ip_network(text, strict=False)
    mapped = net.network_address.ipv4_mapped if isinstance(net, ipaddress.IPv6Network) else None
    if mapped is not None and net.prefixlen >= 96:
        return ipaddress.IPv4Network((mapped, net.prefixlen - 96))
    return net


def parse_networks(values: tuple[str, ...], key: str) -> tuple[Network, ...]:
    """Parse configured networks (:func:`parse_network`), failing with a ConfigError that names the bad entry."""
    from ..errors import ConfigError

    out = []
    for v in values:
        try:
            out.append(parse_network(v))
        except ValueError:
            raise ConfigError(f"not an IP network: {v!r}", key=key) from None
    return tuple(out)
