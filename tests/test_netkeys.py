"""Configured networks are read one way for the reputation checks and the servers' allow-list."""

from __future__ import annotations

import ipaddress

import pytest

from antispam.errors import ConfigError
from antispam.reputation.netkeys import in_networks, parse_networks
from antispam.servers.common import AllowList

NETWORKS = ("::ffff:192.0.2.0/120", "198.51.100.7/24", "2001:db8::/32", "::ffff:0:0/95")


def test_ipv4_mapped_networks_are_read_as_ipv4():
    assert parse_networks(("::ffff:192.0.2.0/120", "::ffff:10.0.0.0/104", "::ffff:0:0/96"), "k") == (
        ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("0.0.0.0/0"))
    # shorter than /96 it is not a mapped network any more: left as IPv6
    assert parse_networks(("::ffff:0:0/95",), "k") == (ipaddress.ip_network("::fffe:0:0/95"),)


@pytest.mark.parametrize("ip", ["192.0.2.9", "::ffff:192.0.2.9", "198.51.100.1", "::ffff:198.51.100.1",
                                "2001:db8::1", "192.0.3.1", "::1", "junk", ""])
def test_allow_list_and_reputation_networks_agree(ip):
    allow = AllowList(NETWORKS)
    assert allow.networks == parse_networks(NETWORKS, "k")
    assert allow.allows(ip) is in_networks(ip, allow.networks)


def test_each_keeps_its_own_config_error():
    with pytest.raises(ConfigError, match=r"not a network: 'x' \(.*\)") as exc:
        AllowList(["x"])
    assert exc.value.key == "allow"
    with pytest.raises(ConfigError, match="not an IP network: 'x'") as exc:
        parse_networks(("x",), "dnsbl.trusted_networks")
    assert exc.value.key == "dnsbl.trusted_networks"
