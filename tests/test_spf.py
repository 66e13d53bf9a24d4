"""SPF as a scan sees it: engine, loopback DNS server, symbols, options, Authentication-Results."""

from __future__ import annotations

import pytest

from antispam import Engine, Envelope
from antispam.config import Config
from authkeys import auth_engine
from dnsserver import DNSServer

MSG = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: hi\r\n\r\nhello\r\n"

ZONE = {
    "example.org": [("TXT", "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 -all"), ("A", "192.0.2.10")],
    "soft.example": [("TXT", "v=spf1 a:mx.soft.example ~all")],
    "mx.soft.example": [("A", "198.51.100.7")],
    "helo.example": [("TXT", "v=spf1 a -all"), ("A", "203.0.113.9")],
    "dead.example": [("TIMEOUT", None)],
    "mx.example": [("TXT", "v=spf1 mx -all"), *[("MX", (i, f"mx{i}.mx.example")) for i in range(6)]],
    **{f"mx{i}.mx.example": [("A", f"198.51.100.{50 + i}")] for i in range(6)},
    "xn--exmple-cua.org": [("TXT", "v=spf1 ip4:192.0.2.77 -all")],  # exämple.org as published: an A-label
    # faß.example as published, and fass.example, another registrant's domain (IDNA 2003's faß.example)
    "xn--fa-hia.example": [("TXT", "v=spf1 ip4:192.0.2.0/24 -all")],
    "fass.example": [("TXT", "v=spf1 ip4:203.0.113.0/24 -all")],
    "broken.example": [("TXT", "v=spf1 ip4:192.0.2.1 -all"), ("TXT", "v=spf1 -all")],
    # eleven DNS-querying terms: one over RFC 7208's limit of ten
    "many.example": [("TXT", "v=spf1 " + " ".join(f"a:h{i}.many.example" for i in range(11)) + " ip4:192.0.2.99 -all")],
    **{f"h{i}.many.example": [("A", f"198.51.100.{i + 1}")] for i in range(11)},
    # three void lookups: one over the limit of two
    "void.example": [("TXT", "v=spf1 a:v1.void.example a:v2.void.example a:v3.void.example ip4:192.0.2.5 -all")],
    # ptr and %{p} when DNS fails: 192.0.2.7's PTR lookup times out; of 192.0.2.8's two names, one's
    # address lookup times out and the other validates
    "ptr.example": [("TXT", "v=spf1 ptr ip4:192.0.2.7 -all")],
    "pmacro.example": [("TXT", "v=spf1 exists:%{p}.pmacro.example -all")],
    "unknown.pmacro.example": [("A", "127.0.0.2")],
    "7.2.0.192.in-addr.arpa": [("TIMEOUT", None)],
    "8.2.0.192.in-addr.arpa": [("PTR", "dead.example"), ("PTR", "ok.ptr.example")],
    "ok.ptr.example": [("A", "192.0.2.8")],
    # modifiers: a repeated unknown one, an upper-case redirect, exp= twice in two cases
    "mods.example": [("TXT", "v=spf1 foo=a ip4:192.0.2.1 foo=b -all")],
    "badmods.example": [("TXT", "v=spf1 foo=a ip4:192.0.2.1 foo=%{z} -all")],
    "redirect.example": [("TXT", "v=spf1 REDIRECT=example.org")],
    "exps.example": [("TXT", "v=spf1 -all exp=e.exps.example EXP=e.exps.example")],
    "e.exps.example": [("TXT", "no")],
    # macros (RFC 7208 7): each name the expansion must reach exists, each record ends in -all
    "d0.example": [("TXT", "v=spf1 exists:%{d0}.z.example -all")],
    "d0.example.z.example": [("A", "127.0.0.2")],
    "junk.example": [("TXT", "v=spf1 exists:%{d2x}.z.example -all")],
    "junk.example.z.example": [("A", "127.0.0.2")],
    "delim.example": [("TXT", "v=spf1 exists:%{l;}.z.example -all")],
    "a;b.z.example": [("A", "127.0.0.2")],
    "join.example": [("TXT", "v=spf1 exists:%{h-}.z.example -all")],
    "mx.1.join.example.z.example": [("A", "127.0.0.2")],
    "rev.example": [("TXT", "v=spf1 exists:%{d2R}.z.example -all")],
    "example.rev.z.example": [("A", "127.0.0.2")],
    "long.example": [("TXT", "v=spf1 exists:%{l}.%{l}.%{l}.%{l}.%{l}.long.example -all")],
    ".".join(["l" * 60] * 3) + ".long.example": [("A", "127.0.0.2")],
    "exp6.example": [("TXT", "v=spf1 -all exp=e.exp6.example")],
    "e.exp6.example": [("TXT", "%{i} %{C}")],
}


@pytest.fixture(scope="module")
def server():
    with DNSServer(ZONE) as s:
        yield s


def engine(server, **auth):
    cfg = Config().merged({"dns": {"nameservers": [server.host], "port": server.port, "timeout": 0.3, "attempts": 1},
                           "auth": {"dkim": False, "dmarc": False, **auth},
                           "engine": {"authserv_id": "mx.test"}})
    return auth_engine(cfg)


def spf_symbols(v):
    return {k: s for k, s in v.symbols.items() if k.startswith("R_SPF")}


def test_no_nameservers_no_network_checks():
    names = {c.name for c in Engine(Config().merged({"auth": {"arc": True}})).checks}
    assert not names & {"spf", "dkim", "dmarc", "arc"}


def test_pass_with_the_matching_mechanism(server):
    v = engine(server).scan(MSG, Envelope(client_ip="192.0.2.33", helo="mx.example.org", mail_from="a@example.org"))
    syms = spf_symbols(v)
    assert list(syms) == ["R_SPF_ALLOW"]
    assert "mechanism=ip4:192.0.2.0/24" in syms["R_SPF_ALLOW"].options
    assert v.authentication_results.startswith("mx.test; spf=pass smtp.mailfrom=a@example.org")


def test_ipv6_client(server):
    v = engine(server).scan(MSG, Envelope(client_ip="2001:db8::5", mail_from="a@example.org"))
    assert list(spf_symbols(v)) == ["R_SPF_ALLOW"]


def test_fail_and_softfail(server):
    e = engine(server)
    v = e.scan(MSG, Envelope(client_ip="203.0.113.1", mail_from="a@example.org"))
    assert list(spf_symbols(v)) == ["R_SPF_FAIL"] and "mechanism=-all" in v.symbols["R_SPF_FAIL"].options
    assert "spf=fail" in v.authentication_results
    v = e.scan(MSG, Envelope(client_ip="203.0.113.1", mail_from="x@soft.example"))
    assert list(spf_symbols(v)) == ["R_SPF_SOFTFAIL"]
    v = e.scan(MSG, Envelope(client_ip="198.51.100.7", mail_from="x@soft.example"))
    assert list(spf_symbols(v)) == ["R_SPF_ALLOW"]


def test_helo_identity_when_mail_from_is_null(server):
    v = engine(server).scan(MSG, Envelope(client_ip="203.0.113.9", helo="helo.example", mail_from=""))
    assert list(spf_symbols(v)) == ["R_SPF_ALLOW"]
    assert "helo=helo.example" in v.symbols["R_SPF_ALLOW"].options
    assert "spf=pass smtp.helo=helo.example" in v.authentication_results


def test_none_and_permerror(server):
    e = engine(server)
    v = e.scan(MSG, Envelope(client_ip="192.0.2.1", mail_from="a@nowhere.example"))
    assert list(spf_symbols(v)) == ["R_SPF_NA"]
    v = e.scan(MSG, Envelope(client_ip="192.0.2.1", mail_from="a@broken.example"))
    assert list(spf_symbols(v)) == ["R_SPF_PERMFAIL"]
    v = e.scan(MSG, Envelope(mail_from="a@example.org"))
    assert list(spf_symbols(v)) == ["R_SPF_NA"] and "no client IP" in v.symbols["R_SPF_NA"].options


def test_dns_timeout_is_temperror_never_pass(server):
    v = engine(server).scan(MSG, Envelope(client_ip="192.0.2.1", mail_from="a@dead.example"))
    assert list(spf_symbols(v)) == ["R_SPF_TEMPFAIL"]
    assert "spf=temperror" in v.authentication_results


def test_strict_limits_report_which_fired_and_compat_mode_is_looser(server):
    v = engine(server).scan(MSG, Envelope(client_ip="192.0.2.99", mail_from="a@many.example"))
    assert list(spf_symbols(v)) == ["R_SPF_PERMFAIL"]
    assert "limit=dns-lookups>10" in v.symbols["R_SPF_PERMFAIL"].options
    v = engine(server, spf_strict_limits=False).scan(MSG, Envelope(client_ip="192.0.2.99", mail_from="a@many.example"))
    assert list(spf_symbols(v)) == ["R_SPF_ALLOW"]

    v = engine(server).scan(MSG, Envelope(client_ip="192.0.2.5", mail_from="a@void.example"))
    assert "limit=void-lookups>2" in v.symbols["R_SPF_PERMFAIL"].options
    v = engine(server, spf_strict_limits=False).scan(MSG, Envelope(client_ip="192.0.2.5", mail_from="a@void.example"))
    assert list(spf_symbols(v)) == ["R_SPF_ALLOW"]


def test_second_scan_is_served_from_the_cache(server):
    e = engine(server)
    env = Envelope(client_ip="198.51.100.7", mail_from="x@soft.example")
    e.scan(MSG, env)
    before = len(server.queries)
    v = e.scan(MSG, env)
    assert list(spf_symbols(v)) == ["R_SPF_ALLOW"]
    assert len(server.queries) == before


def test_sync_path_gives_the_same_result(server):
    from antispam.auth.spf import check_host_sync
    from antispam.dns import Resolver

    r = Resolver([server.host], port=server.port, timeout=0.3, attempts=1)
    assert check_host_sync(r, "198.51.100.7", "x@soft.example", None).result == "pass"
    assert check_host_sync(r, "203.0.113.1", "x@soft.example", None).result == "softfail"


def test_internationalized_domain_is_asked_as_its_a_label(server):
    v = engine(server).scan(MSG, Envelope(client_ip="192.0.2.77", mail_from="user@exämple.org"))
    assert list(spf_symbols(v)) == ["R_SPF_ALLOW"]
    assert server.asked("xn--exmple-cua.org", "TXT") >= 1


def test_a_sharp_s_domain_is_checked_as_its_own_a_label_not_ss(server):
    """RFC 8616 section 3: the A-label of MAIL FROM's domain, UTS 46 non-transitional.  IDNA 2003 asked
    fass.example, whose owner's record let the spoofer's IP pass for faß.example."""
    v = engine(server).scan(MSG, Envelope(client_ip="203.0.113.5", mail_from="user@fa\u00df.example"))
    assert list(spf_symbols(v)) == ["R_SPF_FAIL"]
    assert "mailfrom=xn--fa-hia.example" in v.symbols["R_SPF_FAIL"].options
    assert "spf=fail smtp.mailfrom=user@xn--fa-hia.example" in v.authentication_results
    assert server.asked("fass.example") == 0


def test_a_domain_uts46_refuses_gives_none_and_asks_nothing(server):
    """RFC 7208 4.3: a malformed domain is "none".  IDNA 2003 deleted the joiner and checked example.org."""
    asked = len(server.queries)
    v = engine(server).scan(MSG, Envelope(client_ip="192.0.2.33", mail_from="user@exam\u200dple.org"))
    (sym,) = spf_symbols(v).items()
    assert sym[0] == "R_SPF_NA" and any("UTS 46" in o for o in sym[1].options)
    assert len(server.queries) == asked


def test_mx_exchanges_are_resolved_together():
    """The six exchanges' addresses are asked in one round, not one round each."""
    delay = 0.25
    with DNSServer(ZONE, delay=delay) as slow:
        e = auth_engine(Config().merged({"dns": {"nameservers": [slow.host], "port": slow.port, "timeout": 3.0, "attempts": 1},
                                    "auth": {"dkim": False, "dmarc": False}}))
        v = e.scan(MSG, Envelope(client_ip="198.51.100.55", mail_from="a@mx.example"))
        assert list(spf_symbols(v)) == ["R_SPF_ALLOW"]
        times = [t for (n, _, _), t in zip(slow.queries, slow.arrivals) if n.endswith(".mx.example") and n != "mx.example"]
        assert len(times) == 6 and max(times) - min(times) < delay


def helo_symbols(v):
    return {k: s for k, s in v.symbols.items() if k.startswith("SPF_HELO")}


def test_helo_identity_checked_on_its_own(server):
    """RFC 7208 2.3: the HELO name is checked separately; MAIL FROM stays the identity DMARC reads."""
    e = engine(server)
    v = e.scan(MSG, Envelope(client_ip="203.0.113.9", helo="helo.example", mail_from="a@example.org"))
    assert list(spf_symbols(v)) == ["R_SPF_FAIL"]  # the IP is not example.org's
    assert list(helo_symbols(v)) == ["SPF_HELO_ALLOW"]  # but helo.example's "a" is this IP
    assert "helo=helo.example" in v.symbols["SPF_HELO_ALLOW"].options
    assert "spf=fail smtp.mailfrom=a@example.org" in v.authentication_results
    assert "spf=pass smtp.helo=helo.example" in v.authentication_results
    v = e.scan(MSG, Envelope(client_ip="192.0.2.33", helo="helo.example", mail_from="a@example.org"))
    assert list(spf_symbols(v)) == ["R_SPF_ALLOW"] and list(helo_symbols(v)) == ["SPF_HELO_FAIL"]


def test_helo_check_skipped_when_it_cannot_or_need_not_run(server):
    e = engine(server)
    for helo in ("[203.0.113.9]", "203.0.113.9", "localhost", ""):
        v = e.scan(MSG, Envelope(client_ip="203.0.113.9", helo=helo, mail_from="a@example.org"))
        assert not helo_symbols(v), helo
    # null MAIL FROM: HELO is already the main identity, not checked twice
    v = e.scan(MSG, Envelope(client_ip="203.0.113.9", helo="helo.example", mail_from=""))
    assert list(spf_symbols(v)) == ["R_SPF_ALLOW"] and not helo_symbols(v)
    assert v.authentication_results.count("spf=") == 1
    # switched off
    v = engine(server, spf_check_helo=False).scan(MSG, Envelope(client_ip="203.0.113.9", helo="helo.example",
                                                                mail_from="a@example.org"))
    assert not helo_symbols(v) and v.authentication_results.count("spf=") == 1


def test_helo_to_check():
    from antispam.auth.spf import helo_to_check

    assert helo_to_check("MX.Example.") == "mx.example"
    assert [helo_to_check(h) for h in ("localhost", "192.0.2.1", "[192.0.2.1]", "[IPv6:2001:db8::1]", "", None)] == [""] * 6


def test_sender_domain_follows_the_last_at_and_a_final_dot_is_the_root(server):
    """Mail::SPF and libspf2 pass all three; pyspf split at the first "@" and rejected the final dot
    (RFC 7208 4.3 calls only a zero-length label *not* at the end malformed), so each was "none"."""
    e = engine(server)
    for env in (Envelope(client_ip="192.0.2.33", mail_from='"a@b"@example.org'),
                Envelope(client_ip="192.0.2.33", mail_from="a@example.org."),
                Envelope(client_ip="203.0.113.9", helo="helo.example.", mail_from="")):
        v = e.scan(MSG, env)
        assert list(spf_symbols(v)) == ["R_SPF_ALLOW"], env
    assert "smtp.mailfrom=a@example.org" in e.scan(MSG, Envelope(client_ip="192.0.2.33", mail_from="a@example.org.")).authentication_results


def test_ptr_dns_errors_skip_names_and_do_not_stop_the_check(server):
    """RFC 7208 5.5: a DNS error on the PTR lookup makes "ptr" not match; one on a name's address
    lookup skips that name; 7.3: %{p} is then "unknown".  pyspf made each a temperror.  Perl Mail::SPF
    passes the skipped-name case; it and libspf2 give %{p} "unknown" when the PTR lookup fails."""
    e = engine(server)
    v = e.scan(MSG, Envelope(client_ip="192.0.2.8", mail_from="a@ptr.example"))
    assert list(spf_symbols(v)) == ["R_SPF_ALLOW"] and "mechanism=ptr" in v.symbols["R_SPF_ALLOW"].options
    v = e.scan(MSG, Envelope(client_ip="192.0.2.7", mail_from="a@ptr.example"))
    assert list(spf_symbols(v)) == ["R_SPF_ALLOW"] and "mechanism=ip4:192.0.2.7" in v.symbols["R_SPF_ALLOW"].options
    v = e.scan(MSG, Envelope(client_ip="192.0.2.7", mail_from="a@pmacro.example"))
    assert list(spf_symbols(v)) == ["R_SPF_ALLOW"]
    assert server.asked("unknown.pmacro.example", "A") >= 1


def test_modifier_names_are_case_insensitive_and_unknown_repeats_are_ignored(server):
    """RFC 7208 6: unknown modifiers are ignored "no matter where, or how often"; names are
    case-insensitive, and exp= may appear once.  pyspf gave a permerror for foo=a ... foo=b,
    ignored REDIRECT= (neutral) and accepted exp= with EXP=; Mail::SPF and libspf2 pass the first,
    Mail::SPF makes the last a permerror."""
    e = engine(server)
    v = e.scan(MSG, Envelope(client_ip="192.0.2.1", mail_from="a@mods.example"))
    assert list(spf_symbols(v)) == ["R_SPF_ALLOW"]
    v = e.scan(MSG, Envelope(client_ip="192.0.2.1", mail_from="a@badmods.example"))
    assert list(spf_symbols(v)) == ["R_SPF_PERMFAIL"]  # a repeat is ignored, a syntax error is not
    v = e.scan(MSG, Envelope(client_ip="192.0.2.33", mail_from="a@redirect.example"))
    assert list(spf_symbols(v)) == ["R_SPF_ALLOW"]
    v = e.scan(MSG, Envelope(client_ip="203.0.113.1", mail_from="a@redirect.example"))
    assert list(spf_symbols(v)) == ["R_SPF_FAIL"]
    v = e.scan(MSG, Envelope(client_ip="192.0.2.1", mail_from="a@exps.example"))
    assert list(spf_symbols(v)) == ["R_SPF_PERMFAIL"]


def test_macro_syntax_transformers_and_truncation(server):
    """RFC 7208 7.  pyspf took %{d0} for "all parts" (a DIGIT "MUST be nonzero"), ignored what
    followed the transformers (%{d2x}, %{l;}), ignored an upper-case R, rejoined %{h-}'s parts with
    "-" instead of ".", and cut a name over 253 characters by one label instead of as many as it
    takes.  Perl Mail::SPF gives the permerrors and the pass of the 253 cut; libspf2 the %{h-} pass."""
    e = engine(server)

    def result(sender: str, helo: str = "mx.example.net", ip: str = "192.0.2.1") -> list[str]:
        return list(spf_symbols(e.scan(MSG, Envelope(client_ip=ip, helo=helo, mail_from=sender))))

    assert result("a@d0.example") == ["R_SPF_PERMFAIL"]
    assert result("a@junk.example") == ["R_SPF_PERMFAIL"]
    assert result("a;b@delim.example") == ["R_SPF_PERMFAIL"]
    assert result("a@join.example", helo="mx-1.join.example") == ["R_SPF_ALLOW"]
    assert result("a@rev.example") == ["R_SPF_ALLOW"]
    assert result("l" * 60 + "@long.example") == ["R_SPF_ALLOW"]

    from antispam.auth.spf import check_host_sync
    from antispam.dns import Resolver

    r = Resolver([server.host], port=server.port, timeout=0.3, attempts=1)
    got = check_host_sync(r, "2001:db8::cb01", "a@exp6.example", None)
    assert (got.result, got.reason) == ("fail", "2.0.0.1.0.D.B.8.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.C.B.0.1 2001%3Adb8%3A%3Acb01")


def test_explanation_macros():
    """Upper-case letters URL-escaped, and an explanation is never cut like a domain name.  %{i} of
    an IPv6 client keeps pyspf's upper-case nibbles: the openspf suite's v-macro-ip6 explanation
    expects them (Mail::SPF and libspf2 write lower case; DNS names are case-blind either way)."""
    from antispam.auth.spf import _Query

    q = _Query("2001:db8::cb01", "a+b/c@example.org", "mx.example.net")
    assert q.expand("%{ir}.%{v}._spf.%{d2}") == "1.0.B.C.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.B.D.0.1.0.0.2.ip6._spf.example.org"
    assert q.expand("s=%{S} c=%{C} %% %_ %-", stripdot=False) == "s=a%2Bb%2Fc%40example.org c=2001%3Adb8%3A%3Acb01 %   %20"
    sentences = "One sentence. " * 30
    assert q.expand(sentences, stripdot=False) == sentences
    for bad in ("%{d0}", "%{d2x}", "%{l;}", "%{z}", "%x", "100%", "%{c}"):
        with pytest.raises(Exception, match="macro"):
            q.expand(bad)


def test_malformed_sender_domain_is_none_at_once_and_says_why(server):
    """RFC 7208 4.3: a domain that is malformed or not multi-label gives "none" immediately.  It did,
    with an empty reason, after asking the resolver for "localhost" or "192.0.2.1" TXT."""
    e = engine(server)
    long_label = "a" * 64 + ".example"
    cases = {"a@localhost": "not a multi-label domain name", "a@192.0.2.1": "malformed domain name (top label)",
             f"a@{long_label}": "malformed domain name (LabelTooLong)", "a@b..example": "malformed domain name (empty label)",
             "a@nowhere.example": "no SPF record"}
    for sender, why in cases.items():
        v = e.scan(MSG, Envelope(client_ip="192.0.2.1", mail_from=sender))
        assert list(spf_symbols(v)) == ["R_SPF_NA"] and why in v.symbols["R_SPF_NA"].options, sender
    assert not any(server.asked(n) for n in ("localhost", "192.0.2.1", long_label, "b..example"))
