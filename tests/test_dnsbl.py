"""DNS lists against a real DNS server on loopback: every list style, refused codes, health, relays, deadlines."""

from __future__ import annotations

import hashlib

import pytest

from antispam import Config, Engine, Envelope
from antispam.errors import ConfigError

from .dnsserver import DNSServer

ADDR_SHA1 = hashlib.sha1(b"x@phish.example").hexdigest()

ZONE = {
    # IP list with codes
    "2.0.0.127.bl.test": [("A", "127.0.0.2")],
    "4.3.2.1.bl.test": [("A", "127.0.0.2"), ("A", "127.0.0.4")],   # client 1.2.3.4
    "8.7.6.5.bl.test": [("A", "127.0.0.3")],                        # relay 5.6.7.8
    "9.9.9.9.bl.test": [("A", "10.0.0.1")],                         # 9.9.9.9: answer outside 127/8
    # a list that refuses us
    "2.0.0.127.refusing.test": [("A", "127.255.255.254")],
    "4.3.2.1.refusing.test": [("A", "127.255.255.254")],
    # a wildcard zone (lists its must-not-list test point)
    "2.0.0.127.wild.test": [("A", "127.0.0.2")],
    "1.0.0.127.wild.test": [("A", "127.0.0.2")],
    "4.3.2.1.wild.test": [("A", "127.0.0.2")],
    # allow list
    "2.0.0.127.wl.test": [("A", "127.0.10.1")],
    "1.1.1.11.wl.test": [("A", "127.0.15.3")],                     # client 11.1.1.1
    # URI bitmask list
    "test.uri.test": [("A", "127.0.0.2")],
    "badlinks.example.uri.test": [("A", "127.0.0.6")],
    "4.4.4.44.uri.test": [("A", "127.0.0.2")],                      # IP-literal URL http://44.4.4.4/
    # domain list (RHSBL)
    "test.rhs.test": [("A", "127.0.0.2")],
    "spamsender.example.rhs.test": [("A", "127.0.0.2")],
    # hashed identifiers
    "test.hash.test": [("A", "127.0.0.2")],
    f"{ADDR_SHA1}.hash.test": [("A", "127.0.0.2")],
    # a list whose lookups hang (test points answer, listings time out)
    "2.0.0.127.slow.test": [("A", "127.0.0.2")],
    "4.3.2.1.slow.test": [("TIMEOUT", None)],
}

LISTS = {
    "bl": {"zone": "bl.test", "inputs": ["client_ip", "relays"],
           "codes": {"127.0.0.2": "TEST_BL", "127.0.0.4": "TEST_BL_EXPLOITED", "127.0.0.3": "TEST_BL_POLICY"},
           "client_only": ["TEST_BL_POLICY"]},
    "refusing": {"zone": "refusing.test", "default_symbol": "TEST_REFUSING", "refused": ["127.255.255.254"]},
    "wild": {"zone": "wild.test", "default_symbol": "TEST_WILD"},
    "wl": {"zone": "wl.test", "allow": True, "default_symbol": "TEST_WL"},
    "uri": {"zone": "uri.test", "kind": "uri", "inputs": ["urls"], "bitmask": {2: "TEST_URI_BLACK", 4: "TEST_URI_GREY"}},
    "rhs": {"zone": "rhs.test", "kind": "domain", "inputs": ["mail_from", "helo"], "default_symbol": "TEST_RHS"},
    "hash": {"zone": "hash.test", "kind": "hash", "inputs": ["from"], "default_symbol": "TEST_HASH"},
    "slow": {"zone": "slow.test", "default_symbol": "TEST_SLOW"},
}


@pytest.fixture(scope="module")
def dns():
    with DNSServer(ZONE) as s:
        yield s


def engine(dns, lists=LISTS, **dnsbl):
    cfg = Config.load(overrides={
        "dns": {"nameservers": ["127.0.0.1"], "port": dns.port, "timeout": 0.3, "attempts": 1},
        "dnsbl": {"lists": lists, **dnsbl},
        "engine": {"scan_deadline": 2.0},
        "scores": {"TEST_WL": -3.0},
    })
    return Engine(cfg, checks=[c for c in Engine(cfg).checks if c.name == "dnsbl"])


MSG = (b"Received: from relay.example (relay.example [5.6.7.8]) by mx.ours.example; Mon, 2 Nov 2026 10:00:00 +0000\n"
       b"Received: from lan (lan [192.168.1.20]) by relay.example; Mon, 2 Nov 2026 09:59:00 +0000\n"
       b"From: Someone <x@phish.example>\nSubject: hi\n\n"
       b"visit http://www.badlinks.example/a and http://44.4.4.4/x and http://fine.example/\n")


def test_ip_codes_relays_and_client_only(dns):
    e = engine(dns, lists={"bl": LISTS["bl"]})
    v = e.scan(MSG, Envelope(client_ip="1.2.3.4", helo="h.example"))
    assert v.symbols["TEST_BL"].options == ("1.2.3.4 127.0.0.2",)
    assert v.symbols["TEST_BL_EXPLOITED"].options == ("1.2.3.4 127.0.0.4",)
    # The relay 5.6.7.8 is listed with the policy code, which counts only for the client.
    assert not v.has("TEST_BL_POLICY")
    v = e.scan(MSG, Envelope(client_ip="5.6.7.8"))
    assert v.has("TEST_BL_POLICY")


def test_relay_listing_counts_for_non_policy_codes(dns):
    lists = {"bl": {**LISTS["bl"], "client_only": []}}
    v = engine(dns, lists=lists).scan(MSG, Envelope(client_ip="11.1.1.1"))
    assert v.symbols["TEST_BL_POLICY"].options == ("5.6.7.8 (relays) 127.0.0.3",)


def test_trusted_client_is_not_asked(dns):
    e = engine(dns, lists={"bl": LISTS["bl"]}, trusted_networks=["1.2.3.0/24"])
    v = e.scan(b"Subject: x\n\nbody\n", Envelope(client_ip="1.2.3.4"))
    assert not v.has("TEST_BL")


GATEWAY_MSG = (b"Received: from gw.ours.example (gw.ours.example [10.0.0.5]) by scan.ours.example; Mon, 2 Nov 2026 10:00:01 +0000\n"
               b"Received: from dsl.example (dsl.example [5.6.7.8]) by gw.ours.example; Mon, 2 Nov 2026 10:00:00 +0000\n"
               b"Received: from forged.example (forged.example [11.1.1.1]) by dsl.example; Mon, 2 Nov 2026 09:59:00 +0000\n"
               b"Subject: hi\n\nbody\n")


def test_behind_a_trusted_gateway_the_last_external_hop_is_the_client(dns):
    """Client 10.0.0.5 is our own gateway: 5.6.7.8, the hop it received from, stands for the client, so a
    client-only code counts and a client-only allow list is asked (SpamAssassin's -lastexternal and
    -firsttrusted); the forged hop below it is only ever a relay, never the allow list's client."""
    lists = {"bl": LISTS["bl"], "wl": {**LISTS["wl"], "inputs": ["client_ip"]}}
    v = engine(dns, lists=lists, trusted_networks=["10.0.0.0/8"]).scan(GATEWAY_MSG, Envelope(client_ip="10.0.0.5"))
    assert v.symbols["TEST_BL_POLICY"].options == ("5.6.7.8 127.0.0.3",)
    assert not v.has("TEST_WL")
    # A hop without an IP breaks the trusted chain: nothing below it is taken for the client.
    local = b"Received: by gw.ours.example (Postfix, from userid 0); Mon, 2 Nov 2026 10:00:01 +0000\n" + GATEWAY_MSG
    v = engine(dns, lists=lists, trusted_networks=["10.0.0.0/8"]).scan(local, Envelope(client_ip="10.0.0.5"))
    assert not v.has("TEST_BL_POLICY")
    # The allow list is asked about the last external hop, and only about it.
    wl_first = GATEWAY_MSG.replace(b"[5.6.7.8]", b"[11.1.1.1]", 1)
    v = engine(dns, lists=lists, trusted_networks=["10.0.0.0/8"]).scan(wl_first, Envelope(client_ip="10.0.0.5"))
    assert v.symbols["TEST_WL"].options == ("11.1.1.1 127.0.15.3",)


def test_trusted_network_written_ipv4_mapped_matches_an_ipv4_client(dns):
    """A trusted network written IPv4-mapped (``::ffff:1.2.3.0/120``, as a dual-stack socket shows an
    IPv4 peer) covers the IPv4 client 1.2.3.4, as the servers' allow-list does; one that does not
    cover it still lets it be asked."""
    for trusted, asked in ((["::ffff:1.2.3.0/120"], False), (["::ffff:10.0.0.0/104"], True)):
        e = engine(dns, lists={"bl": LISTS["bl"]}, trusted_networks=trusted)
        for client in ("1.2.3.4", "::ffff:1.2.3.4"):
            v = e.scan(b"Subject: x\n\nbody\n", Envelope(client_ip=client))
            assert v.has("TEST_BL") is asked, (trusted, client)


def test_answers_outside_loopback_range_are_ignored(dns):
    v = engine(dns, lists={"bl": LISTS["bl"]}).scan(b"\n\n", Envelope(client_ip="9.9.9.9"))
    assert not any(s.startswith("TEST_BL") for s in v.symbols)


def test_refused_and_wildcard_lists_are_disabled(dns):
    e = engine(dns, lists={"refusing": LISTS["refusing"], "wild": LISTS["wild"]})
    v = e.scan(b"\n\n", Envelope(client_ip="1.2.3.4"))
    assert not v.has("TEST_REFUSING") and not v.has("TEST_WILD")
    reasons = " ".join(v.symbols["DNSBL_LIST_DISABLED"].options)
    assert "refusing: test query answered with a refused" in reasons and "wild: lists its must-not-list" in reasons
    check = e.checks[0]
    assert check.stats["refusing"].healthy is False and check.stats["wild"].healthy is False


def test_allow_list_scores_negative(dns):
    v = engine(dns, lists={"wl": LISTS["wl"]}).scan(b"\n\n", Envelope(client_ip="11.1.1.1"))
    assert v.symbols["TEST_WL"].score == -3.0 and v.symbols["TEST_WL"].options == ("11.1.1.1 127.0.15.3",)


def test_uri_bitmask_domains_and_ip_literals(dns):
    v = engine(dns, lists={"uri": LISTS["uri"]}).scan(MSG, Envelope())
    assert v.symbols["TEST_URI_BLACK"].options == ("badlinks.example (urls) 127.0.0.6", "44.4.4.4 (urls) 127.0.0.2")
    assert v.symbols["TEST_URI_GREY"].options == ("badlinks.example (urls) 127.0.0.6",)


@pytest.mark.parametrize("host", ["738460676", "0x2c040404", "0x2c.4.4.4", "054.4.4.4", "44.4.1028"])
def test_numeric_url_hosts_are_asked_as_the_address_a_browser_opens(dns, host):
    """Each of these hosts opens 44.4.4.4 in a browser (SpamAssassin canonicalises them the same way)."""
    before = len(dns.queries)
    v = engine(dns, lists={"uri": LISTS["uri"]}).scan(f"Subject: x\n\nsee http://{host}/x\n".encode(), Envelope())
    assert v.symbols["TEST_URI_BLACK"].options == ("44.4.4.4 (urls) 127.0.0.2",)
    assert [q for q, _, _ in dns.queries[before:] if q.endswith(".uri.test") and not q.startswith(("test.", "invalid."))] \
        == ["4.4.4.44.uri.test"]


def test_numeric_url_hosts_that_are_not_public_addresses_are_not_asked(dns):
    """http://2130706434/ is 127.0.0.2, the test point; 0x7f.0.0.2 was asked as the domain "0.2"."""
    before = len(dns.queries)
    body = b"Subject: x\n\nsee http://2130706434/ http://0x7f.0.0.2/ http://08.1.1.1/ http://1.2.3.4.5/\n"
    v = engine(dns, lists={"uri": LISTS["uri"]}).scan(body, Envelope())
    assert not v.has("TEST_URI_BLACK")
    assert [q for q, _, _ in dns.queries[before:] if not q.startswith(("test.", "invalid."))] == []


IDN_MSG = ("From: a@x.example\nSubject: x\nMIME-Version: 1.0\nContent-Type: text/html; charset=utf-8\n\n"
           '<a href="http://www.fa\u00df.de/x">one</a> <a href="http://stra\u00dfe.de/">two</a>\n').encode()


def test_idn_url_domains_are_asked_as_a_browser_encodes_them(dns):
    """A link to faß.de opens xn--fa-hia.de (UTS 46 non-transitional, as browsers, registries and SpamAssassin
    with libidn2 encode it); IDNA 2003 asked about fass.de, another domain."""
    dns.add("xn--fa-hia.de.uri.test", "A", "127.0.0.2")
    dns.add("fass.de.uri.test", "A", "127.0.0.4")
    before = len(dns.queries)
    v = engine(dns, lists={"uri": LISTS["uri"]}).scan(IDN_MSG, Envelope())
    assert v.symbols["TEST_URI_BLACK"].options == ("faß.de (urls) 127.0.0.2",)
    assert not v.has("TEST_URI_GREY")
    asked = {q for q, _, _ in dns.queries[before:] if not q.startswith(("test.", "invalid."))}
    assert asked == {"xn--fa-hia.de.uri.test", "xn--strae-oqa.de.uri.test"}


def test_visible_link_is_asked_before_a_padding_of_empty_links(dns):
    """Twenty-five invisible empty links ahead of the one link with text used to fill the per-list quota of
    domains, so the link the reader sees was never asked (SpamAssassin asks anchored links first)."""
    padding = "".join(f'<a href="http://pad{i}.example/"></a>' for i in range(25))
    body = (f"Subject: x\nContent-Type: text/html\n\n{padding}"
            '<a href="http://www.badlinks.example/">Claim your prize</a>\n').encode()
    v = engine(dns, lists={"uri": LISTS["uri"]}).scan(body, Envelope())
    assert v.symbols["TEST_URI_BLACK"].options == ("badlinks.example (urls) 127.0.0.6",)


def test_domain_and_hash_lists(dns):
    e = engine(dns, lists={"rhs": LISTS["rhs"], "hash": LISTS["hash"]})
    v = e.scan(MSG, Envelope(mail_from="bounce@mail.spamsender.example", helo="clean.example"))
    assert v.symbols["TEST_RHS"].options == ("spamsender.example (mail_from) 127.0.0.2",)
    assert v.symbols["TEST_HASH"].options == ("x@phish.example (from) 127.0.0.2",)


def test_timeouts_are_tempfail_not_pass(dns):
    v = engine(dns, lists={"slow": LISTS["slow"], "bl": LISTS["bl"]}).scan(b"\n\n", Envelope(client_ip="1.2.3.4"))
    assert v.has("TEST_BL")                          # the other list still answered
    assert "slow: 1.2.3.4 (timeout)" in v.symbols["DNSBL_TEMPFAIL"].options
    assert v.timings["total"] < 2.0


def test_all_questions_prefetched_once(dns):
    e = engine(dns)
    before = len(dns.queries)
    e.scan(MSG, Envelope(client_ip="1.2.3.4", mail_from="a@spamsender.example", helo="h.example"))
    asked = [q for q in dns.queries[before:] if not q[0].rstrip(".").startswith(("2.0.0.127", "1.0.0.127", "test.", "invalid."))]
    names = [q[0] for q in asked]
    assert len(names) == len(set(names)), "a question was sent twice in one scan"


def test_known_lists_enable_by_name_and_unknown_is_error(dns):
    cfg = Config.load(overrides={"dns": {"nameservers": ["127.0.0.1"], "port": dns.port}, "dnsbl": {"enable": ["spamhaus_zen", "surbl"]}})
    check = [c for c in Engine(cfg).checks if c.name == "dnsbl"][0]
    assert [s.zone for s in check.lists] == ["zen.spamhaus.org", "multi.surbl.org"]
    assert "RBL_SPAMHAUS_SBL" in {s.name for s in check.symbols}
    with pytest.raises(ConfigError, match="dnsbl.enable"):
        Engine(Config.load(overrides={"dns": {"nameservers": ["127.0.0.1"]}, "dnsbl": {"enable": ["nosuchlist"]}}))
    with pytest.raises(ConfigError, match="dnsbl.lists.bad.kind"):
        Engine(Config.load(overrides={"dns": {"nameservers": ["127.0.0.1"]}, "dnsbl": {"lists": {"bad": {"zone": "x.test", "kind": "weird"}}}}))


def test_surbl_blocked_answer_disables_the_list(dns):
    """SURBL answers 127.0.0.1 (bit 1) to a blocked resolver, for every name: a refusal, not "not listed"
    (SpamAssassin's SURBL_BLOCKED dns_block_rule, rspamd's SURBL_BLOCKED), so the list is disabled."""
    dns.add("test.surbl.org.multi.surbl.org", "A", "127.0.0.254")
    dns.add("blocked-run.example.multi.surbl.org", "A", "127.0.0.1")
    e = engine(dns, lists={}, enable=["surbl"])
    v = e.scan(b"Subject: x\n\nsee http://www.blocked-run.example/\n", Envelope())
    assert "surbl: answered a refused/blocked code for blocked-run.example" in v.symbols["DNSBL_LIST_DISABLED"].options
    assert e.checks[0].stats["surbl"].healthy is False


def test_known_url_lists_are_checked_at_their_published_test_points(dns):
    """Spamhaus DBL, SURBL and URIBL publish their own test entries (``dbltest.com``, ``test.surbl.org``,
    ``test.uribl.com``): asked ``test.<zone>`` instead, a list that does not list that name was disabled
    for good the first time it was checked, and every URL passed it unasked."""
    for name, addr in (("dbltest.com.dbl.spamhaus.org", "127.0.1.2"), ("test.surbl.org.multi.surbl.org", "127.0.0.254"),
                       ("test.uribl.com.multi.uribl.com", "127.0.0.14"), ("dbl-spam.example.dbl.spamhaus.org", "127.0.1.2"),
                       ("surbl-phish.example.multi.surbl.org", "127.0.0.8"), ("uribl-black.example.multi.uribl.com", "127.0.0.2")):
        dns.add(name, "A", addr)
    e = engine(dns, lists={}, enable=["spamhaus_dbl_uri", "surbl", "uribl"])
    v = e.scan(b"Subject: x\n\nsee http://dbl-spam.example/ http://surbl-phish.example/ http://uribl-black.example/\n", Envelope())
    assert not v.has("DNSBL_LIST_DISABLED"), v.symbols["DNSBL_LIST_DISABLED"].options
    assert v.symbols["URI_DBL_SPAM"].options == ("dbl-spam.example (urls) 127.0.1.2",)
    assert v.has("SURBL_PHISH") and v.has("URIBL_BLACK")
    assert all(e.checks[0].stats[n].healthy for n in ("spamhaus_dbl_uri", "surbl", "uribl"))


def test_a_list_s_own_test_point_and_none(dns):
    """``test_point`` names what the health check must find listed (an address for an ip list); "" turns
    the check off for that list alone, which is then never asked a test question."""
    dns.add("10.0.0.127.own.test", "A", "127.0.0.2")
    dns.add("4.3.2.1.own.test", "A", "127.0.0.2")
    dns.add("canary.example.ownrhs.test", "A", "127.0.0.2")
    dns.add("spamsender.example.ownrhs.test", "A", "127.0.0.2")
    dns.add("4.3.2.1.nocheck.test", "A", "127.0.0.2")
    lists = {"own": {"zone": "own.test", "default_symbol": "TEST_OWN", "test_point": "127.0.0.10"},
             "ownrhs": {"zone": "ownrhs.test", "kind": "domain", "inputs": ["mail_from"], "default_symbol": "TEST_OWNRHS",
                        "test_point": "Canary.Example."},
             "nocheck": {"zone": "nocheck.test", "default_symbol": "TEST_NOCHECK", "test_point": ""}}
    before = len(dns.queries)
    v = engine(dns, lists=lists).scan(b"Subject: x\n\nbody\n", Envelope(client_ip="1.2.3.4", mail_from="a@spamsender.example"))
    assert not v.has("DNSBL_LIST_DISABLED"), v.symbols["DNSBL_LIST_DISABLED"].options
    assert v.has("TEST_OWN") and v.has("TEST_OWNRHS") and v.has("TEST_NOCHECK")
    asked = {q[0].rstrip(".") for q in dns.queries[before:]}
    assert {"10.0.0.127.own.test", "canary.example.ownrhs.test"} <= asked
    assert not any(q.endswith("nocheck.test") and q != "4.3.2.1.nocheck.test" for q in asked)
    # Without its own test point, the RFC 5782 one (127.0.0.2), which this zone does not list: disabled.
    v = engine(dns, lists={"own": {k: w for k, w in lists["own"].items() if k != "test_point"}}).scan(
        b"Subject: x\n\nbody\n", Envelope(client_ip="1.2.3.4"))
    assert not v.has("TEST_OWN") and "own: does not list its test point 2.0.0.127.own.test" in v.symbols["DNSBL_LIST_DISABLED"].options[0]


@pytest.mark.parametrize("table, message", [
    ({"zone": "x.test", "test_point": "canary.example"}, "is not an IP address"),
    ({"zone": "x.test", "kind": "uri", "test_point": "a..b"}, "is not a domain name"),
    ({"zone": "x.test", "kind": "uri", "test_point": 7}, "must be a string"),
])
def test_bad_test_points_name_the_key(table, message):
    with pytest.raises(ConfigError, match=f"dnsbl.lists.bad.test_point.*{message}|{message}.*dnsbl.lists.bad.test_point"):
        Engine(Config.load(overrides={"dns": {"nameservers": ["127.0.0.1"]}, "dnsbl": {"lists": {"bad": table}}}))


def test_no_nameserver_means_no_lookups():
    cfg = Config.load(overrides={"dnsbl": {"enable": ["spamhaus_zen"]}})
    e = Engine(cfg)
    assert e.network_checks == [] and e.resolver is None


def test_list_counters_exported_to_prometheus(dns):
    pytest.importorskip("prometheus_client")
    from antispam.servers.metrics import Metrics

    e = engine(dns, lists={"bl": LISTS["bl"], "slow": LISTS["slow"]})
    metrics = Metrics()
    metrics.watch_engine(e)
    e.scan(MSG, Envelope(client_ip="1.2.3.4"))
    text = metrics.render().decode()
    assert 'antispam_dnsbl_listed_total{list="bl"} 2.0' in text  # the client and the relay are both listed
    assert 'antispam_dnsbl_healthy{list="bl"} 1.0' in text
    queries = {ln.split("{")[1].split("}")[0]: float(ln.rsplit(" ", 1)[1])
               for ln in text.splitlines() if ln.startswith("antispam_dnsbl_queries_total")}
    assert queries['list="bl"'] >= 2  # client and relay
    assert 'antispam_dnsbl_errors_total{list="slow"} 1.0' in text  # its listing lookup timed out
