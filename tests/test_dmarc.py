"""DMARC in both modes against a loopback DNS server: discovery, alignment, policies, PSL and PSD edges."""

from __future__ import annotations

import asyncio

import pytest

from antispam import Envelope
from antispam.check import Question
from antispam.auth.dmarc import names_to_ask, parse_record, psl_org_domain, tree_walk_org_domain, walk_names
from antispam.config import Config
from antispam.dns import Resolver
from authkeys import auth_engine, message, rsa_key, sign
from dnsserver import DNSServer

SPF = "v=spf1 ip4:192.0.2.0/24 -all"
GOOD_IP, BAD_IP = "192.0.2.10", "203.0.113.50"


def zone():
    key = rsa_key().record
    return {
        "example.org": [("TXT", SPF)],
        "_dmarc.example.org": [("TXT", "v=DMARC1; p=reject; sp=quarantine; rua=mailto:agg@example.org")],
        "rsa._domainkey.example.org": [("TXT", key)],
        "bounce.example.org": [("TXT", SPF)],
        "strict.example": [("TXT", SPF)],
        "bounce.strict.example": [("TXT", SPF)],
        "_dmarc.strict.example": [("TXT", "v=DMARC1; p=reject; aspf=s; adkim=s")],
        "testing.example": [("TXT", SPF)],
        "_dmarc.testing.example": [("TXT", "v=DMARC1; p=reject; t=y")],
        "pct0.example": [("TXT", SPF)],
        "_dmarc.pct0.example": [("TXT", "v=DMARC1; p=reject; pct=0")],
        "nodmarc.example": [("TXT", SPF)],
        "dead.example": [("TXT", SPF)],
        "_dmarc.dead.example": [("TIMEOUT", None)],
        "two.example": [("TXT", SPF)],
        "_dmarc.two.example": [("TXT", "v=DMARC1; p=reject"), ("TXT", "v=DMARC1; p=none")],
        # PSL edge: a registrable domain under a two-label public suffix
        "_dmarc.example.co.uk": [("TXT", "v=DMARC1; p=quarantine")],
        "mail.example.co.uk": [("TXT", SPF)],
        # a public suffix operator's policy (RFC 9989 psd=y) over a made-up top-level label
        "_dmarc.psdtest": [("TXT", "v=DMARC1; p=quarantine; sp=none; np=reject; psd=y")],
        "real.psdtest": [("A", "192.0.2.80")],
        "mail.real.psdtest": [("TXT", SPF)],
        "ghost-bounce.example": [("TXT", SPF)],
        # psd=n: an organization declaring its own boundary below what the walk would reach
        "_dmarc.unit.corp.example": [("TXT", "v=DMARC1; p=reject; psd=n")],
        "_dmarc.corp.example": [("TXT", "v=DMARC1; p=none")],
        # RFC 9989 4.10.1: a record below the Organizational Domain is not the policy of a
        # sibling's subdomain; org1.psd2 (one below the PSD) has none, so the PSD's applies
        "_dmarc.b.org1.psd2": [("TXT", "v=DMARC1; p=quarantine")],
        "_dmarc.psd2": [("TXT", "v=DMARC1; p=reject; psd=y")],
        # policy tags with invalid values (RFC 7489 6.6.3 step 6, RFC 9989 4.10.1)
        "_dmarc.typo.example": [("TXT", "v=DMARC1; p=reject; sp=quarentine")],
        "_dmarc.typo-rua.example": [("TXT", "v=DMARC1; p=reject; sp=quarentine; rua=mailto:d@typo-rua.example")],
        "_dmarc.np-typo.example": [("TXT", "v=DMARC1; p=reject; np=rejct")],
        "_dmarc.no-p.example": [("TXT", "v=DMARC1; adkim=s")],
        "fwd.example": [("TXT", SPF)],
        "_dmarc.negpct.example": [("TXT", "v=DMARC1; p=reject; pct=-5")],
        # faß.de and σοφός.example as published (UTS 46 non-transitional A-labels), rejecting; fass.de and
        # σοφόσ.example, what IDNA 2003 made of them, other registrants' domains with p=none
        "_dmarc.xn--fa-hia.de": [("TXT", "v=DMARC1; p=reject")],
        "xn--fa-hia.de": [("TXT", SPF)],
        "_dmarc.fass.de": [("TXT", "v=DMARC1; p=none")],
        "fass.de": [("TXT", f"v=spf1 ip4:{BAD_IP} -all")],
        "_dmarc.xn--0xagbn4a.example": [("TXT", "v=DMARC1; p=reject")],
        "_dmarc.xn--0xahbl4a.example": [("TXT", "v=DMARC1; p=none")],
        # what IDNA 2003 made of vict<zero-width joiner>im.example, which UTS 46 refuses
        "_dmarc.victim.example": [("TXT", "v=DMARC1; p=reject")],
    }


@pytest.fixture(scope="module")
def server():
    with DNSServer(zone()) as s:
        yield s


def engine(server, mode="rfc9989", timeout=0.3, **auth):
    cfg = Config().merged({"dns": {"nameservers": [server.host], "port": server.port, "timeout": timeout, "attempts": 1},
                           "auth": {"dmarc_mode": mode, **auth}, "engine": {"authserv_id": "mx.test"}})
    return auth_engine(cfg)


def dmarc(v):
    found = {k: s.options for k, s in v.symbols.items() if k.startswith("DMARC_")}
    assert len(found) == 1, found
    return next(iter(found.items()))


def scan(e, from_addr, ip, mail_from=None, signed_by=None):
    raw = message(from_addr)
    if signed_by:
        raw = sign(raw, signed_by, "rsa", rsa_key())
    return e.scan(raw, Envelope(client_ip=ip, helo="mx.sender.example", mail_from=mail_from or from_addr))


@pytest.mark.parametrize("mode", ["rfc9989", "rfc7489"])
def test_pass_by_aligned_spf_or_dkim(server, mode):
    e = engine(server, mode)
    sym, opts = dmarc(scan(e, "a@example.org", GOOD_IP))
    assert sym == "DMARC_POLICY_ALLOW" and "spf=aligned" in opts and "dkim=unaligned" in opts
    # SPF fails, but the DKIM signature of example.org passes and aligns
    v = scan(e, "a@example.org", BAD_IP, signed_by="example.org")
    sym, opts = dmarc(v)
    assert sym == "DMARC_POLICY_ALLOW" and "dkim=aligned" in opts and "spf=unaligned" in opts
    assert "dmarc=pass (p=reject dis=NONE) header.from=example.org" in v.authentication_results
    # relaxed alignment: the bounce subdomain aligns with the organizational domain
    sym, _ = dmarc(scan(e, "a@example.org", GOOD_IP, mail_from="b@bounce.example.org"))
    assert sym == "DMARC_POLICY_ALLOW"


def test_a_from_after_a_thousand_fields_still_gets_its_policy(server):
    """The parser keeps the first 1,000 header fields; a forged From after 1,001 Received lines was
    dropped with the rest, and DMARC, finding no From, applied no policy (DMARC_NA) to a p=reject
    domain. The author fields are kept past the limit."""
    e = engine(server)
    raw = b"".join(b"Received: from h%d.example by mx.test\r\n" % i for i in range(1001)) + message("ceo@example.org")
    v = e.scan(raw, Envelope(client_ip=BAD_IP, helo="mx.sender.example", mail_from="spoof@attacker.example"))
    sym, opts = dmarc(v)
    assert sym == "DMARC_POLICY_REJECT" and "domain=example.org" in opts


@pytest.mark.parametrize("mode", ["rfc9989", "rfc7489"])
def test_fail_applies_p_and_subdomains_get_sp(server, mode):
    e = engine(server, mode)
    sym, opts = dmarc(scan(e, "a@example.org", BAD_IP))
    assert sym == "DMARC_POLICY_REJECT" and "p=reject" in opts
    v = scan(e, "a@news.example.org", BAD_IP, mail_from="a@example.org")
    sym, opts = dmarc(v)
    assert sym == "DMARC_POLICY_QUARANTINE" and "policy_domain=example.org" in opts
    assert "dmarc=fail" in v.authentication_results


def test_strict_alignment(server):
    e = engine(server)
    sym, _ = dmarc(scan(e, "a@strict.example", GOOD_IP))
    assert sym == "DMARC_POLICY_ALLOW"
    sym, opts = dmarc(scan(e, "a@strict.example", GOOD_IP, mail_from="b@bounce.strict.example"))
    assert sym == "DMARC_POLICY_REJECT" and "spf=unaligned" in opts


def test_test_mode_t_lowers_the_policy_in_rfc9989(server):
    sym, opts = dmarc(scan(engine(server), "a@testing.example", BAD_IP))
    assert sym == "DMARC_POLICY_QUARANTINE" and "t=y: test mode" in opts


def test_pct_only_in_rfc7489(server):
    sym, opts = dmarc(scan(engine(server, "rfc7489"), "a@pct0.example", BAD_IP))
    assert sym == "DMARC_POLICY_QUARANTINE" and "pct=0: not sampled" in opts
    sym, _ = dmarc(scan(engine(server, "rfc9989"), "a@pct0.example", BAD_IP))
    assert sym == "DMARC_POLICY_REJECT"


def test_an_invalid_pct_is_the_default_100(server):
    """RFC 7489 6.3/6.4: pct is 1*3DIGIT from 0 to 100 and a syntax error gives the default; pct=-5 was
    clamped to 0, so every failing message was sampled out and p=reject lowered to quarantine."""
    sym, opts = dmarc(scan(engine(server, "rfc7489"), "a@negpct.example", BAD_IP))
    assert sym == "DMARC_POLICY_REJECT" and not any(o.startswith("pct=") for o in opts)


def test_none_temperror_and_duplicate_records(server):
    e = engine(server)
    assert dmarc(scan(e, "a@nodmarc.example", BAD_IP))[0] == "DMARC_NA"
    v = scan(e, "a@dead.example", BAD_IP)
    assert dmarc(v)[0] == "DMARC_TEMPFAIL" and "dmarc=temperror" in v.authentication_results
    # two records at one name are discarded: no policy
    assert dmarc(scan(e, "a@two.example", BAD_IP))[0] == "DMARC_NA"


@pytest.mark.parametrize("mode", ["rfc9989", "rfc7489"])
def test_psl_edge_two_label_suffix(server, mode):
    e = engine(server, mode)
    # shop.example.co.uk has no record; both modes find example.co.uk's
    sym, opts = dmarc(scan(e, "a@shop.example.co.uk", BAD_IP, mail_from="a@mail.example.co.uk"))
    assert sym == "DMARC_POLICY_QUARANTINE" and "policy_domain=example.co.uk" in opts
    # and mail.example.co.uk aligns with shop.example.co.uk (same organizational domain)
    sym, _ = dmarc(scan(e, "a@shop.example.co.uk", GOOD_IP, mail_from="a@mail.example.co.uk"))
    assert sym == "DMARC_POLICY_ALLOW"


def test_public_suffix_domain_policy_sp_and_np(server):
    e = engine(server, "rfc9989")
    # an existing domain under the PSD inherits sp=none
    sym, opts = dmarc(scan(e, "a@real.psdtest", BAD_IP, mail_from="a@ghost-bounce.example"))
    assert sym == "DMARC_POLICY_SOFTFAIL" and "policy_domain=psdtest" in opts
    # a From domain that does not exist gets np=reject
    sym, opts = dmarc(scan(e, "a@ghost.psdtest", BAD_IP, mail_from="a@ghost-bounce.example"))
    assert sym == "DMARC_POLICY_REJECT" and "np: author domain does not exist" in opts
    # psd=y puts the organizational domain one label below it: mail.real.psdtest aligns with real.psdtest
    sym, _ = dmarc(scan(e, "a@real.psdtest", GOOD_IP, mail_from="a@mail.real.psdtest"))
    assert sym == "DMARC_POLICY_ALLOW"
    # RFC 7489 knows no PSD policies: no record for real.psdtest under the PSL
    assert dmarc(scan(engine(server, "rfc7489"), "a@real.psdtest", BAD_IP, mail_from="a@ghost-bounce.example"))[0] == "DMARC_NA"


def test_policy_comes_from_the_organizational_or_public_suffix_domain_not_the_first_record(server):
    sym, opts = dmarc(scan(engine(server), "a@a.b.org1.psd2", BAD_IP, mail_from="a@ghost-bounce.example"))
    assert sym == "DMARC_POLICY_REJECT" and "policy_domain=psd2" in opts
    # while the sender's own subdomain record would apply to mail from b.org1.psd2 itself
    sym, opts = dmarc(scan(engine(server), "a@b.org1.psd2", BAD_IP, mail_from="a@ghost-bounce.example"))
    assert sym == "DMARC_POLICY_QUARANTINE" and "policy_domain=b.org1.psd2" in opts


@pytest.mark.parametrize("mode", ["rfc9989", "rfc7489"])
def test_an_invalid_policy_tag_applies_p_none_with_a_valid_rua_else_no_policy(server, mode):
    """RFC 7489 6.6.3 step 6 and RFC 9989 4.10.1: a record whose p, sp (or, in RFC 9989, np) is not
    valid is read as p=none when its rua holds a valid URI, else it applies no policy.  A typo in sp
    once left p=reject in force for the domain and its subdomains."""
    e = engine(server, mode)
    assert dmarc(scan(e, "a@typo.example", BAD_IP))[0] == "DMARC_NA"
    assert dmarc(scan(e, "a@news.typo.example", BAD_IP, mail_from="a@typo.example"))[0] == "DMARC_NA"
    sym, opts = dmarc(scan(e, "a@typo-rua.example", BAD_IP))
    assert sym == "DMARC_POLICY_SOFTFAIL" and "p=none" in opts and "sp=quarentine: read as p=none" in opts
    # np is RFC 9989's (RFC 7489 knows no np tag); a record without p is p=none in RFC 9989 only
    np_typo = dmarc(scan(e, "a@np-typo.example", BAD_IP))[0]
    no_p = dmarc(scan(e, "a@no-p.example", BAD_IP))[0]
    if mode == "rfc9989":
        assert (np_typo, no_p) == ("DMARC_NA", "DMARC_POLICY_SOFTFAIL")
    else:
        assert (np_typo, no_p) == ("DMARC_POLICY_REJECT", "DMARC_NA")


@pytest.mark.parametrize("mode", ["rfc9989", "rfc7489"])
def test_a_sharp_s_author_gets_its_own_policy_not_the_ss_domains(server, mode):
    """``faß.de`` is ``xn--fa-hia.de`` (UTS 46 non-transitional, as browsers and registries); IDNA 2003
    asked ``_dmarc.fass.de``, another registrant's, and aligned the spoofer's own SPF pass for
    ``fass.de`` with it: a spoof of a p=reject domain came out DMARC_POLICY_ALLOW."""
    e = engine(server, mode)
    v = scan(e, "ceo@fa\u00df.de", BAD_IP, mail_from="x@fass.de")
    sym, opts = dmarc(v)
    assert sym == "DMARC_POLICY_REJECT" and "domain=xn--fa-hia.de" in opts and "spf=unaligned" in opts, opts
    assert "dmarc=fail (p=reject dis=REJECT) header.from=xn--fa-hia.de" in v.authentication_results
    # the A-label SPF pass aligns; the ss domain's record is never read for the author
    before = server.asked("_dmarc.fass.de")
    sym, opts = dmarc(scan(e, "ceo@FA\u00df.de", GOOD_IP, mail_from="x@xn--fa-hia.de"))
    assert sym == "DMARC_POLICY_ALLOW" and "spf=aligned" in opts
    assert server.asked("_dmarc.fass.de") == before
    # a final sigma is a letter of its own too
    sym, opts = dmarc(scan(e, "ceo@\u03c3\u03bf\u03c6\u03cc\u03c2.example", BAD_IP, mail_from="x@attacker.example"))
    assert sym == "DMARC_POLICY_REJECT" and "policy_domain=xn--0xagbn4a.example" in opts


@pytest.mark.parametrize("mode", ["rfc9989", "rfc7489"])
def test_an_author_domain_uts46_refuses_is_a_permerror_never_another_domains_policy(server, mode):
    """``vict<ZWJ>im.example`` is no domain (a joiner out of context); IDNA 2003 deleted the joiner and
    applied victim.example's policy.  Now a permerror with its own symbol, no ``_dmarc`` name asked for it,
    and, among several From addresses, stricter than another's pass."""
    e = engine(server, mode)
    before = server.asked("_dmarc.victim.example")
    v = scan(e, "ceo@vict\u200dim.example", BAD_IP, mail_from="x@attacker.example")
    sym, opts = dmarc(v)
    assert sym == "DMARC_BAD_FROM_DOMAIN" and any("UTS 46" in o for o in opts), opts
    assert "dmarc=permerror" in v.authentication_results
    assert server.asked("_dmarc.victim.example") == before
    sym, opts = dmarc(scan(e, "a@example.org, ceo@vict\u200dim.example", GOOD_IP, mail_from="a@example.org"))
    assert sym == "DMARC_BAD_FROM_DOMAIN" and "strictest of 2 From domains" in opts, opts


def test_tree_walk_org_domain_over_real_dns(server):
    r = Resolver([server.host], port=server.port, timeout=0.3, attempts=1)

    def org(domain):
        names = [f"_dmarc.{n}" for n in walk_names(domain)]
        answers = dict(zip(names, asyncio.run(r.prefetch([Question(n, "TXT") for n in names]))))
        return tree_walk_org_domain(lambda n: answers[n], domain)

    assert org("a.b.unit.corp.example") == "unit.corp.example"  # psd=n stops the walk
    assert org("x.corp.example") == "corp.example"  # shortest name with a record
    assert org("deep.real.psdtest") == "real.psdtest"  # one label below psd=y
    assert org("lonely.example") == "lonely.example"  # no record anywhere: itself
    assert org("a.b.org1.psd2") == "org1.psd2"  # the walk goes past b.org1.psd2 up to psd=y
    assert org("psd2") == "psd2"  # psd=y on the starting name itself: it is its own


def test_rfc7489_organizational_domain_is_the_registered_domain_of_the_shared_list():
    """One Public Suffix List reading (``domains.registered_domain``) for DMARC and the rest: DMARC kept a
    copy of its own, which took the last two labels of an address for its Organizational Domain and
    asked ``_dmarc.2.1`` for a From of ``a@192.0.2.1``."""
    assert psl_org_domain("mail.example.co.uk") == "example.co.uk"
    assert psl_org_domain("news.FA\u00df.de.") == "xn--fa-hia.de"
    assert psl_org_domain("co.uk") == "co.uk"
    assert names_to_ask("rfc7489", "192.0.2.1", []) == ["_dmarc.192.0.2.1"]


def test_walk_names_cuts_long_names_to_seven_labels():
    names = walk_names("a.b.c.d.e.f.g.h.i.example.com")
    assert names[0] == "a.b.c.d.e.f.g.h.i.example.com"
    assert names[1] == "e.f.g.h.i.example.com" and names[-1] == "com" and len(names) == 8


def test_parse_record():
    r = parse_record("v=DMARC1; p=Reject; sp=none; np=quarantine; adkim=s; t=y; psd=n; pct=50; x=unknown")
    assert (r.p, r.sp, r.np, r.adkim, r.aspf, r.t, r.psd, r.pct) == ("reject", "none", "quarantine", "s", "r", True, "n", 50)
    assert parse_record("v=spf1 -all") is None
    assert parse_record("v=DMARC1; p=bogus").invalid == ("p=bogus",)
    assert parse_record("v=DMARC1; p=reject; sp=x; np=none").invalid == ("sp=x",)
    assert not parse_record("v=DMARC1; rua=mailto:d@example.org").has_p
    assert [parse_record(f"v=DMARC1; p=reject; pct={v}").pct for v in ("0", "050", "-5", "+5", "150", "1e2", "")] == \
        [0, 50, 100, 100, 100, 100, 100]


def test_a_full_scan_asks_every_question_before_the_first_answer_returns():
    """SPF + DKIM + DMARC in one scan: one round of DNS, not one per check (the prefetch design)."""
    delay = 0.3
    with DNSServer(zone(), delay=delay) as slow:
        e = engine(slow, timeout=3.0)
        raw = sign(message("a@example.org"), "example.org", "rsa", rsa_key())
        v = e.scan(raw, Envelope(client_ip=GOOD_IP, mail_from="a@example.org"))
        assert {"R_SPF_ALLOW", "R_DKIM_ALLOW", "DMARC_POLICY_ALLOW"} <= set(v.symbols)
        asked = {q[0] for q in slow.queries}
        assert {"example.org", "rsa._domainkey.example.org", "_dmarc.example.org", "_dmarc.org"} <= asked
        # every query reached the server before the earliest answer could have left it
        assert max(slow.arrivals) - min(slow.arrivals) < delay, slow.queries


def test_a_server_that_drops_every_query_gives_temperrors_never_passes():
    with DNSServer(zone()) as dead:
        dead.drop_all = True
        e = engine(dead, timeout=0.2)
        raw = sign(message("a@example.org"), "example.org", "rsa", rsa_key())
        v = e.scan(raw, Envelope(client_ip=GOOD_IP, mail_from="a@example.org"))
        assert {"R_SPF_TEMPFAIL", "R_DKIM_TEMPFAIL", "DMARC_TEMPFAIL"} <= set(v.symbols)
        assert not any(s.endswith("_ALLOW") for s in v.symbols)
        for method in ("spf", "dkim", "dmarc"):
            assert f"{method}=temperror" in v.authentication_results


def test_aggregate_records_collected_from_verdicts(server):
    from antispam.auth.report import AggregateCollector

    e = engine(server)
    agg = AggregateCollector()
    good = Envelope(client_ip=GOOD_IP, mail_from="a@example.org", rcpt_tos=["x@rcpt.example"])
    bad = Envelope(client_ip=BAD_IP, mail_from="a@example.org", rcpt_tos=["x@rcpt.example"])
    signed = sign(message("a@example.org"), "example.org", "rsa", rsa_key())
    for raw, env in ((signed, good), (signed, good), (message("a@example.org"), bad)):
        assert agg.add(e.scan(raw, env), env)
    assert not agg.add(e.scan(message("a@nodmarc.example"), bad), bad)  # no policy: nothing to report
    recs = sorted(agg.records(), key=lambda r: r["row"]["source_ip"])
    assert [r["row"]["count"] for r in recs] == [2, 1]
    ok, fail = recs
    assert ok["row"]["policy_evaluated"] == {"disposition": "none", "dkim": "pass", "spf": "pass", "reason": []}
    assert ok["auth_results"]["dkim"] == [{"domain": "example.org", "selector": "rsa", "result": "pass"}]
    assert ok["auth_results"]["spf"] == [{"domain": "example.org", "scope": "mfrom", "result": "pass"}]
    assert ok["identifiers"] == {"envelope_to": ["rcpt.example"], "envelope_from": "example.org", "header_from": "example.org"}
    assert fail["row"]["policy_evaluated"]["disposition"] == "reject"
    assert fail["row"]["source_ip"] == BAD_IP and fail["auth_results"]["spf"][0]["result"] == "fail"
    xml = agg.to_xml()
    assert len(xml) == 2 and {x.findtext("row/count") for x in xml} == {"2", "1"}
    assert {x.findtext("row/policy_evaluated/disposition") for x in xml} == {"none", "reject"}


def test_aggregate_record_of_an_srs_sender_names_its_domain(server):
    """A forwarder's SRS address has '=' in its local part; the SPF row once named 'SRS0' as the domain,
    read back from our own Authentication-Results up to the first '='."""
    from antispam.auth.report import aggregate_record

    env = Envelope(client_ip=GOOD_IP, helo="mx.fwd.example", mail_from="SRS0=HHH=TT=example.org=a@fwd.example",
                   rcpt_tos=["x@rcpt.example"])
    v = engine(server).scan(message("a@example.org"), env)
    assert "spf=pass smtp.mailfrom=SRS0=HHH=TT=example.org=a@fwd.example" in v.authentication_results
    rec = aggregate_record(v, env)
    assert rec["auth_results"]["spf"][0] == {"domain": "fwd.example", "scope": "mfrom", "result": "pass"}
    assert rec["identifiers"]["envelope_from"] == "fwd.example"


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=120))
def test_record_parser_and_walk_take_any_text(text):
    rec = parse_record("v=DMARC1; " + text)
    assert rec is not None and rec.p in ("none", "quarantine", "reject") and 0 <= rec.pct <= 100
    names = walk_names(text)
    assert len(names) <= 8 and all(n.endswith(names[-1]) for n in names)
