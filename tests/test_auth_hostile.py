"""Authentication against a sender who shapes the message to slip past it.

Each case is a way a spoofed From of a ``p=reject`` domain could once come out as a pass (or as
"no DMARC"), or legitimate mail as a failure; each asserts what the RFC cited gives.  The DNS
answers come from a real server on loopback (tests/dnsserver.py).
"""

from __future__ import annotations

import dkim
import pytest

from antispam import Envelope
from antispam.auth.arc import MAX_SETS, verify_chain
from antispam.auth.authres import quote_value, resinfo
from antispam.config import Config
from authkeys import arc_seal, auth_engine, message, rsa_key, sign
from dnsserver import DNSServer

SPF = "v=spf1 ip4:192.0.2.0/24 -all"
GOOD_IP, BAD_IP = "192.0.2.10", "203.0.113.50"
IDN = "xn--bcher-kva.example"  # bücher.example
LIST_IP = "198.51.100.25"
HDRS = [b"from", b"to", b"subject", b"date", b"message-id"]


@pytest.fixture(scope="module")
def server():
    zone = {
        "victim.example": [("TXT", SPF), ("A", "192.0.2.1")],
        "_dmarc.victim.example": [("TXT", "v=DMARC1; p=reject")],
        "rsa._domainkey.victim.example": [("TXT", rsa_key().record)],
        "attacker.test": [("TXT", "v=spf1 ip4:203.0.113.0/24 -all"), ("A", "203.0.113.1")],
        "_dmarc.attacker.test": [("TXT", "v=DMARC1; p=none")],
        "rsa._domainkey.attacker.test": [("TXT", rsa_key().record)],
        "evil._domainkey.attacker.test": [("TXT", rsa_key(2048).record)],
        # a signer whose own _dmarc server never answers
        "slow.test": [("TXT", "v=spf1 ip4:203.0.113.0/24 -all")],
        "_dmarc.slow.test": [("TIMEOUT", None)],
        "rsa._domainkey.slow.test": [("TXT", rsa_key().record)],
        # RFC 7489: two records at the Author Domain, a policy at its Organizational Domain
        "_dmarc.two.victim.example": [("TXT", "v=DMARC1; p=none"), ("TXT", "v=DMARC1; p=quarantine")],
        # an internationalised domain, published in its A-label form
        IDN: [("TXT", SPF)],
        f"_dmarc.{IDN}": [("TXT", "v=DMARC1; p=reject")],
        f"rsa._domainkey.{IDN}": [("TXT", rsa_key().record)],
        # an IPv6 client of a domain whose MX hosts have IPv4 addresses only
        "v6.example": [("TXT", "v=spf1 mx ip6:2001:db8::/32 -all"), ("MX", (10, "mx1.v6.example")),
                       ("MX", (20, "mx2.v6.example")), ("MX", (30, "mx3.v6.example"))],
        "mx1.v6.example": [("A", "192.0.2.1")], "mx2.v6.example": [("A", "192.0.2.2")],
        "mx3.v6.example": [("A", "192.0.2.3")],
        # a list trusted to seal, whose sets an untrusted hop then reuses
        "example.org": [("TXT", SPF)],
        "_dmarc.example.org": [("TXT", "v=DMARC1; p=reject")],
        "rsa._domainkey.example.org": [("TXT", rsa_key().record)],
        "list.example": [("TXT", f"v=spf1 ip4:{LIST_IP} -all")],
        "arc._domainkey.list.example": [("TXT", rsa_key(1024).record)],
    }
    with DNSServer(zone) as s:
        yield s


def engine(server, mode: str = "rfc9989", **auth):
    cfg = Config().merged({"dns": {"nameservers": [server.host], "port": server.port, "timeout": 0.3, "attempts": 1},
                           "auth": {"dmarc_mode": mode, **auth}, "engine": {"authserv_id": "mx.test"}})
    return auth_engine(cfg)


def dmarc(v) -> dict[str, tuple[str, ...]]:
    return {k: s.options for k, s in v.symbols.items() if k.startswith("DMARC")}


def mail(from_field: str, extra: bytes = b"") -> bytes:
    return extra + (f"From: {from_field}\r\nTo: bob@example.net\r\nSubject: hi\r\n"
                    "Date: Tue, 24 Nov 2026 10:00:00 +0000\r\nMessage-ID: <t1@x>\r\n\r\nbody\r\n").encode()


SPOOF = Envelope(client_ip="203.0.113.9", helo="h.attacker.test", mail_from="x@attacker.test")
MODES = ["rfc9989", "rfc7489"]


# --------------------------------------------------------------------------- the From field


@pytest.mark.parametrize("mode", MODES)
def test_an_encoded_display_name_cannot_stand_in_for_the_author(server, mode: str) -> None:
    """RFC 2047 section 5: an encoded-word is never an address; the author here is ceo@victim.example."""
    v = engine(server, mode).scan(mail("=?utf-8?q?=3Cx=40attacker=2Etest=3E?= <ceo@victim.example>"), SPOOF)
    assert "DMARC_POLICY_REJECT" in dmarc(v)


@pytest.mark.parametrize("mode", MODES)
def test_a_second_from_field_is_checked_too(server, mode: str) -> None:
    """RFC 5322 allows one From; with two, the strictest outcome of their domains applies (RFC 7489 6.6.1)."""
    v = engine(server, mode).scan(mail("CEO <ceo@victim.example>", extra=b"From: x@attacker.test\r\n"), SPOOF)
    assert "DMARC_POLICY_REJECT" in dmarc(v)
    assert any("strictest of 2 From domains" in o for o in dmarc(v)["DMARC_POLICY_REJECT"])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("from_field", ["a@victim.example, b@victim.example", "a@attacker.test, ceo@victim.example"])
def test_several_from_addresses_are_checked(server, mode: str, from_field: str) -> None:
    v = engine(server, mode).scan(mail(from_field), SPOOF)
    assert "DMARC_POLICY_REJECT" in dmarc(v)


@pytest.mark.parametrize("mode", MODES)
def test_an_internationalised_author_aligns_with_its_a_label(server, mode: str) -> None:
    """RFC 8616 section 4: the U-label From domain and the A-label SPF/DKIM domain are the same domain."""
    raw = ("From: Anna <anna@b\u00fccher.example>\r\nTo: bob@example.net\r\nSubject: hi\r\n"
           "Date: Tue, 24 Nov 2026 10:00:00 +0000\r\nMessage-ID: <i@x>\r\n\r\nhello\r\n").encode("utf-8")
    e = engine(server, mode)
    assert "DMARC_POLICY_ALLOW" in dmarc(e.scan(raw, Envelope(client_ip=GOOD_IP, helo="mx.x.example", mail_from=f"anna@{IDN}")))
    signed = sign(raw, IDN, "rsa", rsa_key())
    assert "DMARC_POLICY_ALLOW" in dmarc(e.scan(signed, Envelope(client_ip=BAD_IP, helo="mx.x.example", mail_from="x@other.example")))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("sender,shown", [("anna@b\u00fccher.example", f"anna@{IDN}"),
                                          ("\u00e4nna@b\u00fccher.example", IDN)])
def test_an_smtputf8_sender_is_written_in_ascii_in_authentication_results(server, mode: str, sender: str,
                                                                           shown: str) -> None:
    """An SMTPUTF8 sender came out as ``smtp.mailfrom=anna@b?cher.example`` (a header of ours carries ASCII
    only): its domain is written as the A-label SPF checked, and a local part that is not ASCII is left out."""
    raw = ("From: Anna <anna@b\u00fccher.example>\r\nTo: bob@example.net\r\nSubject: hi\r\n"
           "Date: Tue, 24 Nov 2026 10:00:00 +0000\r\nMessage-ID: <i@x>\r\n\r\nhello\r\n").encode("utf-8")
    v = engine(server, mode).scan(raw, Envelope(client_ip=GOOD_IP, helo="mx.x.example", mail_from=sender))
    ar = dict(v.headers())["Authentication-Results"]
    assert f"spf=pass smtp.mailfrom={shown}" in ar and f"header.from={IDN}" in ar and "?" not in ar, ar


# --------------------------------------------------------------------------- what a failure depends on


@pytest.mark.parametrize("mode", MODES)
def test_a_silent_dns_server_of_an_unrelated_signer_changes_nothing(server, mode: str) -> None:
    """slow.test cannot align with victim.example, so its unanswered _dmarc must not make the reject a temperror."""
    signed = sign(mail("CEO <ceo@victim.example>"), "slow.test", "rsa", rsa_key())
    v = engine(server, mode).scan(signed, Envelope(client_ip=BAD_IP, helo="h.x.example", mail_from="ceo@victim.example"))
    assert "DMARC_POLICY_REJECT" in dmarc(v)
    v = engine(server, mode).scan(mail("ceo@victim.example"),
                                  Envelope(client_ip="203.0.113.9", helo="h.slow.test", mail_from="x@slow.test"))
    assert "DMARC_POLICY_REJECT" in dmarc(v)


def test_rfc7489_several_records_end_the_discovery(server) -> None:
    """RFC 7489 6.6.3 step 4: two records at the Author Domain mean no DMARC, not the parent's policy."""
    v = engine(server, "rfc7489").scan(mail("a@two.victim.example"),
                                       Envelope(client_ip=BAD_IP, helo="h.x.example", mail_from="a@two.victim.example"))
    assert "DMARC_NA" in dmarc(v)


def test_a_folded_selector_is_a_syntax_error_not_a_dns_failure(server) -> None:
    """RFC 6376 3.1: a selector has no whitespace; such a signature is neutral (RFC 8601 2.7.1), and
    with no DNS failure the Author Domain's reject stands."""
    raw = ("DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=victim.example; s=rs\r\n a;"
           " h=from:to:subject; bh=AAAA; b=AAAA\r\n").encode() + mail("CEO <ceo@victim.example>")
    v = engine(server).scan(raw, Envelope(client_ip=BAD_IP, helo="mx.attacker.test", mail_from="x@attacker.test"))
    assert "dkim=temperror" not in v.authentication_results
    assert "DMARC_POLICY_REJECT" in dmarc(v)
    assert all(line.startswith(("mx.test;", "\t")) for line in v.authentication_results.split("\n"))


def test_mx_hosts_without_an_address_of_the_clients_family_are_not_void_terms(server) -> None:
    """RFC 7208 4.6.4 limits void terms; the mx term's MX query answered, and the client matches ip6:."""
    v = engine(server).scan(message("a@v6.example"), Envelope(client_ip="2001:db8::25", helo="mx.v6.example",
                                                              mail_from="a@v6.example"))
    assert "R_SPF_ALLOW" in v.symbols


# --------------------------------------------------------------------------- ARC


def _list_sealed() -> bytes:
    original = sign(message(), "example.org", "rsa", rsa_key())
    relayed = original.replace(b"Subject: Quarterly figures", b"Subject: [team] Quarterly figures")
    relayed = b"Authentication-Results: list.example; dkim=pass header.d=example.org\r\n" + relayed
    return b"".join(dkim.arc_sign(relayed, b"arc", b"list.example", rsa_key(1024).private, b"list.example",
                                  include_headers=HDRS)) + relayed


def test_a_trusted_seal_vouches_for_nothing_an_untrusted_hop_did_after_it(server) -> None:
    """RFC 8617 5.2: only the newest AMS must validate, so an older trusted set says nothing of the
    message as it reached us; the untrusted newest sealer's rewrite gets the author's reject."""
    head, _, _ = _list_sealed().partition(b"\r\n\r\n")
    head = head.replace(b"From: Alice <alice@example.org>", b"From: CEO <ceo@victim.example>")
    forged = b"Authentication-Results: attacker.test; arc=pass\r\n" + head + b"\r\n\r\nWire 50k today.\r\n"
    final = b"".join(dkim.arc_sign(forged, b"evil", b"attacker.test", rsa_key(2048).private, b"attacker.test",
                                   include_headers=HDRS)) + forged
    e = engine(server, arc=True, trusted_arc_sealers=["list.example"])
    v = e.scan(final, Envelope(client_ip="203.0.113.66", helo="mx.attacker.test", mail_from="x@attacker.test"))
    assert "ARC_ALLOW" in v.symbols  # the chain itself validates
    assert "DMARC_POLICY_REJECT" in dmarc(v)
    # the list's own forwarding, sealed last by the list, is still let through
    v = e.scan(_list_sealed(), Envelope(client_ip=LIST_IP, helo="lists.list.example", mail_from="bounce@list.example"))
    assert any(o.startswith("override=arc:list.example") for o in dmarc(v)["DMARC_POLICY_ALLOW"])


def test_a_seal_whose_instance_tag_disagrees_with_dkimpys_reading_fails(server, monkeypatch) -> None:
    """dkimpy files an ARC header under the first ``i=<digits>`` in its value: an attacker's seal
    ``e=i=2; i=0; cv=pass; ...`` is set 2 (the newest) to dkimpy, which validates it, while the
    i= tag ranked the trusted list's set 1 newest, and its trust lifted the victim's reject.
    RFC 8617 4.2.1: the instance tag names the set, so the chain fails."""
    head, _, _ = _list_sealed().partition(b"\r\n\r\n")
    head = head.replace(b"From: Alice <alice@example.org>", b"From: CEO <ceo@victim.example>")
    forged = b"Authentication-Results: attacker.test; arc=pass\r\n" + head + b"\r\n\r\nWire 50k today.\r\n"
    gen_header = dkim.ARC.gen_header

    def decoy_instance(self, fields, include_headers, canon_policy, header_name, *args):  # type: ignore[no-untyped-def]
        if header_name == b"ARC-Seal":
            fields = [(b"e", b"i=2"), (b"i", b"0")] + [f for f in fields if f[0] != b"i"]
        return gen_header(self, fields, include_headers, canon_policy, header_name, *args)

    with monkeypatch.context() as m:  # only to build the attacker's seal
        m.setattr(dkim.ARC, "gen_header", decoy_instance)
        final = b"".join(dkim.arc_sign(forged, b"evil", b"attacker.test", rsa_key(2048).private, b"attacker.test",
                                       include_headers=HDRS)) + forged
    assert b"ARC-Seal: e=i=2; i=0; cv=pass;" in final
    v = engine(server, arc=True, trusted_arc_sealers=["list.example"]).scan(
        final, Envelope(client_ip="203.0.113.66", helo="mx.attacker.test", mail_from="x@attacker.test"))
    assert "ARC_REJECT" in v.symbols
    assert "DMARC_POLICY_REJECT" in dmarc(v)


def test_more_than_fifty_arc_sets_fail() -> None:
    """RFC 8617 4.2.1: instances run 1..50 (dkimpy checks the limit only when sealing)."""
    raw = b"From: a@example.org\r\nSubject: x\r\n\r\nhi\r\n"
    for _ in range(MAX_SETS + 1):
        raw = arc_seal(raw, rsa_key(1024))
    outcome = verify_chain(raw, {})
    assert (outcome.cv, outcome.reason) == ("fail", "more than 50 ARC sets")


# --------------------------------------------------------------------------- Authentication-Results syntax


@pytest.mark.parametrize("value, bare", [
    ("example.org", True), ("a@example.org", True), ("@example.org", True), ("a/b@example.org", True),
    ("rsa-sha256", True), ("F/alGCLN", False), ("abc=", False), ("a@", False), ("a b", False), ("x:y", False),
])
def test_property_values_are_bare_only_when_rfc8601_allows(value: str, bare: bool) -> None:
    """RFC 8601 2.2: a pvalue is a MIME token (no "/" or "="), an address, or a quoted-string."""
    assert (quote_value(value) == value) is bare


def test_a_comment_never_carries_a_line_break() -> None:
    assert resinfo("dkim", "neutral", comment="bad s=rs\r\n a") == "dkim=neutral (bad s=rs a)"


def test_a_folded_value_is_written_unfolded() -> None:
    assert quote_value("rs\r\n a") == '"rs a"'
