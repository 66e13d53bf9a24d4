"""DNS list semantics without the network: query names, answer interpretation, configuration."""

from __future__ import annotations

import pytest

from antispam.domains import to_ascii
from antispam.errors import ConfigError
from antispam.reputation.lists import (KNOWN_LISTS, ListSpec, ends_in_number, health_points, lookup_ip, numeric_ipv4, parse_lists,
                                      query_name, reverse_ip)


def spec(**kw):
    base = dict(name="t", zone="bl.test", kind="ip", inputs=("client_ip",))
    base.update(kw)
    return ListSpec(**base)


def test_reverse_ip_v4_v6_and_mapped():
    assert reverse_ip("192.0.2.1") == "1.2.0.192"
    assert reverse_ip("2001:db8::1") == "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2"
    assert reverse_ip("::ffff:192.0.2.9") == "9.2.0.192"
    assert reverse_ip("not-an-ip") is None
    # A zone index never makes formatting raise (ipaddress' ``exploded`` does for scoped addresses).
    assert reverse_ip("fe80::1%eth0") == "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.e.f"


@pytest.mark.parametrize("ip", [
    "127.0.0.2", "::1", "::ffff:127.0.0.2", "10.1.2.3", "172.16.0.1", "192.168.1.5", "100.64.0.1", "169.254.1.1",
    "192.0.2.1", "0.0.0.0", "224.1.1.1", "255.255.255.255", "fe80::1", "fc00::1", "2001:db8::1", "ff0e::1",
    "fe80::1%eth0", "fe80::1%25x", "2a00:1450::1%eth0",
])
def test_non_public_and_scoped_addresses_are_never_asked(ip):
    """RFC 5782 lists describe the public Internet; 127.0.0.2 is their test point (section 5)."""
    assert lookup_ip(ip) is None
    assert query_name(spec(), ip) is None
    assert query_name(spec(kind="uri", inputs=("urls",)), ip) is None


def test_public_addresses_are_asked():
    assert lookup_ip("not-an-ip") is None and lookup_ip("") is None and lookup_ip(None) is None
    assert str(lookup_ip("::ffff:44.4.4.4")) == "44.4.4.4"
    assert query_name(spec(), "2a00:1450::1") == \
        "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.5.4.1.0.0.a.2.bl.test."


def test_query_names_per_kind():
    assert query_name(spec(), "44.4.4.4") == "4.4.4.44.bl.test."
    assert query_name(spec(kind="domain"), "Mail.Example.COM.") == "mail.example.com.bl.test."
    assert query_name(spec(kind="domain"), "bücher.example") == "xn--bcher-kva.example.bl.test."
    assert query_name(spec(kind="domain"), "a..b") is None
    assert query_name(spec(kind="uri"), "44.4.4.4") == "4.4.4.44.bl.test."
    assert query_name(spec(kind="uri", ip_queries=False), "44.4.4.4") is None     # domain-only URI list
    assert query_name(spec(kind="uri", ip_queries=False), "shop.example") == "shop.example.bl.test."
    assert query_name(spec(kind="hash", hash="md5"), " X@Example.com ") == \
        __import__("hashlib").md5(b"x@example.com").hexdigest() + ".bl.test."


def test_interpret_codes_default_and_refused():
    s = spec(codes={"127.0.0.2": "A", "127.0.0.4": "B"}, default_symbol="ANY", refused=frozenset({"127.255.255.254"}))
    assert s.interpret(["127.0.0.2", "127.0.0.9"]) == ([("A", "127.0.0.2"), ("ANY", "127.0.0.9")], False)
    assert s.interpret(["127.255.255.254"]) == ([], True)
    assert s.interpret(["10.1.1.1"]) == ([], False)          # outside 127/8: never a listing


def test_interpret_bitmask():
    s = spec(kind="uri", bitmask={2: "BLACK", 4: "GREY", 8: "RED"})
    assert s.interpret(["127.0.0.10"]) == ([("BLACK", "127.0.0.10"), ("RED", "127.0.0.10")], False)


def test_test_points():
    assert health_points(spec()) == ("2.0.0.127.bl.test.", "1.0.0.127.bl.test.")
    assert health_points(spec(kind="uri")) == ("test.bl.test.", "invalid.bl.test.")
    assert health_points(spec(test_point="127.0.0.10")) == ("10.0.0.127.bl.test.", "1.0.0.127.bl.test.")
    assert health_points(spec(kind="uri", test_point="dbltest.com")) == ("dbltest.com.bl.test.", "invalid.bl.test.")
    assert health_points(spec(test_point="")) is None
    known = {name: health_points(s)[0] for name, s in ((s.name, s) for s in parse_lists(KNOWN_LISTS, {}, tuple(KNOWN_LISTS)))}
    assert known["spamhaus_dbl"] == "dbltest.com.dbl.spamhaus.org." and known["surbl"] == "test.surbl.org.multi.surbl.org."
    assert known["uribl"] == "test.uribl.com.multi.uribl.com." and known["spamhaus_zen"] == "2.0.0.127.zen.spamhaus.org."


def test_known_lists_parse_and_have_descriptions():
    specs = parse_lists(KNOWN_LISTS, {}, tuple(KNOWN_LISTS))
    assert len(specs) == len(KNOWN_LISTS)
    assert all(s.description and s.symbols() for s in specs)
    zen = next(s for s in specs if s.name == "spamhaus_zen")
    assert zen.interpret(["127.255.255.254"])[1] is True and "RBL_SPAMHAUS_PBL" in zen.client_only
    # The DBL lists domains only and answers IP questions with 127.0.1.255 (a refused code).
    dbl_uri = next(s for s in specs if s.name == "spamhaus_dbl_uri")
    assert dbl_uri.ip_queries is False and query_name(dbl_uri, "44.4.4.4") is None
    assert next(s for s in specs if s.name == "surbl").ip_queries is True


@pytest.mark.parametrize("table,key", [
    ({"kind": "ip"}, "dnsbl.lists.x.zone"),
    ({"zone": "a.test", "inputs": ["urls"]}, "dnsbl.lists.x.inputs"),
    ({"zone": "a.test", "codes": {"10.0.0.1": "X"}}, "dnsbl.lists.x.codes"),
    ({"zone": "a.test", "bitmask": {"two": "X"}}, "dnsbl.lists.x.bitmask"),
    ({"zone": "a.test", "colour": "red"}, "dnsbl.lists.x"),
    ({"zone": "a.test", "kind": "hash", "inputs": ["from"], "hash": "crc32"}, "dnsbl.lists.x.hash"),
    ({"zone": "a.test", "kind": "uri", "inputs": ["urls"], "ip_queries": "no"}, "dnsbl.lists.x.ip_queries"),
    ({"zone": "a.test", "kind": "ip", "ip_queries": False}, "dnsbl.lists.x.ip_queries"),
])
def test_bad_list_tables_name_the_key(table, key):
    with pytest.raises(ConfigError) as ei:
        parse_lists(KNOWN_LISTS, {"x": table}, ())
    assert ei.value.key == key


def test_custom_list_without_codes_gets_a_default_symbol():
    (s,) = parse_lists({}, {"mine": {"zone": "Mine.Test."}}, ())
    assert s.zone == "mine.test" and s.default_symbol == "RBL_MINE"


@pytest.mark.parametrize("host, ip", [
    ("738460676", "44.4.4.4"), ("0x2c040404", "44.4.4.4"), ("0X2C.4.4.4", "44.4.4.4"), ("054.4.4.4", "44.4.4.4"),
    ("44.4.1028", "44.4.4.4"), ("44.263172", "44.4.4.4"), ("44.4.4.4.", "44.4.4.4"), ("0x", "0.0.0.0"),
    ("08.1.1.1", None), ("256.1.1.1", None), ("4294967296", None), ("1.2.3.4.5", None), ("example.0x1f", None),
])
def test_numeric_hosts_read_as_a_browser_does(host, ip):
    assert ends_in_number(host) and numeric_ipv4(host) == ip


@pytest.mark.parametrize("host", ["example.com", "0x2c.example", "1.2.3.com", "xn--p1ai"])
def test_hosts_ending_in_a_name_are_domains(host):
    assert not ends_in_number(host) and numeric_ipv4(host) is None


@pytest.mark.parametrize("domain, ace", [
    ("faß.de", "xn--fa-hia.de"), ("straße-münchen.de", "xn--strae-mnchen-o9a32b.de"), ("σοφος.gr", "xn--0xaajbq.gr"),
    ("σοφοσ.gr", "xn--0xaakcn.gr"), ("bücher.de", "xn--bcher-kva.de"), ("xn--fa-hia.de", "xn--fa-hia.de"),
])
def test_idn_domains_are_asked_in_the_form_browsers_resolve(domain, ace):
    """UTS 46 non-transitional (IDNA 2008), not IDNA 2003, which folds ß to ss and ς to σ."""
    assert query_name(spec(kind="domain", inputs=("mail_from",)), domain) == f"{ace}.bl.test."


@pytest.mark.parametrize("domain, ace", [
    ("\u65e5\u672c\u8a9e\u3002jp", "xn--wgv71a119e.jp"),  # the ideographic full stop separates labels
    ("\uff46\uff41\u00df\uff0ede", "xn--fa-hia.de"),  # full-width letters and full stop
    ("stra\u00dfe.de.", "xn--strae-oqa.de."),  # a rooted name keeps its final dot
    ("B\u00dcCHER.Example", "xn--bcher-kva.example"),  # case folded, ASCII labels too
    ("\u0915\u094d\u200d\u0937.in", "xn--11b2ezcw70k.in"),  # a joiner after a virama is kept (CONTEXTJ)
    ("\u2603.net", "xn--n3h.net"),  # a symbol UTS 46 allows, as browsers resolve it
    ("\u05d0\u05d1.il", "xn--4dbc.il"),
])
def test_to_ascii_maps_as_uts46_non_transitional(domain, ace):
    """The UTS 46 mapping and separators: IDNA 2003 took the full stop for a letter, refused a
    rooted name and deleted the joiner (another name)."""
    assert to_ascii(domain) == ace


@pytest.mark.parametrize("domain", [
    "vict\u200dim.example",  # a joiner out of context: IDNA 2003 deleted it, giving victim.example
    "a\u00a0b.example",  # a no-break space: IDNA 2003 made it a space, no host name
    "\u0301a.example",  # a label may not begin with a combining mark
    "\u05d0a.il",  # a right-to-left label with a left-to-right letter (RFC 5893)
    "\u00fc" * 60 + ".example",  # over 63 octets as an A-label
    "a..\u00fc.example",  # an empty label
    "xn--\u00fc.example",  # the A-label prefix on a label that is not ASCII
    "\ufffd.example",  # a code point UTS 46 disallows
])
def test_to_ascii_refuses_what_uts46_refuses(domain):
    """A clear UnicodeError, which every caller turns into a result (a list skips the item, DMARC
    gives a permerror, SPF none), never a name made by dropping or folding what UTS 46 refuses."""
    with pytest.raises(UnicodeError):
        to_ascii(domain)
    assert query_name(spec(kind="domain", inputs=("mail_from",)), domain) is None
