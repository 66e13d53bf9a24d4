"""ARC: a mailing list breaks the author's DKIM signature, seals the message; trusted sealers lift DMARC."""

from __future__ import annotations

import dkim
import pytest

from antispam import Envelope
from antispam.config import Config
from authkeys import auth_engine, message, rsa_key, sign
from dnsserver import DNSServer

LIST_IP = "198.51.100.25"


@pytest.fixture(scope="module")
def server():
    zone = {
        "example.org": [("TXT", "v=spf1 ip4:192.0.2.0/24 -all")],
        "_dmarc.example.org": [("TXT", "v=DMARC1; p=reject")],
        "rsa._domainkey.example.org": [("TXT", rsa_key().record)],
        "list.example": [("TXT", f"v=spf1 ip4:{LIST_IP} -all")],
        "arc._domainkey.list.example": [("TXT", rsa_key(1024).record)],
        "slowarc._domainkey.list.example": [("TIMEOUT", None)],
    }
    with DNSServer(zone) as s:
        yield s


def forwarded(selector: str = "arc") -> bytes:
    """The author's signed message as a list re-sends it: subject tagged (DKIM breaks), then sealed."""
    original = sign(message(), "example.org", "rsa", rsa_key())
    relayed = original.replace(b"Subject: Quarterly figures", b"Subject: [team] Quarterly figures")
    relayed = b"Authentication-Results: list.example; dkim=pass header.d=example.org; spf=pass smtp.mailfrom=example.org\r\n" + relayed
    seal = dkim.arc_sign(relayed, selector.encode(), b"list.example", rsa_key(1024).private, b"list.example",
                         include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    assert seal, "dkimpy produced no ARC set"
    return b"".join(seal) + relayed


def engine(server, **auth):
    cfg = Config().merged({"dns": {"nameservers": [server.host], "port": server.port, "timeout": 0.3, "attempts": 1},
                           "auth": {"arc": True, **auth}, "engine": {"authserv_id": "mx.test"}})
    return auth_engine(cfg)


ENV = Envelope(client_ip=LIST_IP, helo="mail.list.example", mail_from="bounces@list.example")


def syms(v, prefix):
    return {k: s.options for k, s in v.symbols.items() if k.startswith(prefix)}


def test_sealed_chain_validates(server):
    v = engine(server).scan(forwarded(), ENV)
    assert syms(v, "ARC_") == {"ARC_ALLOW": ("i=1", "sealer=list.example")}
    assert "arc=pass" in v.authentication_results
    assert list(syms(v, "R_DKIM")) == ["R_DKIM_REJECT"]  # the author's signature did break


def test_altered_after_sealing_fails(server):
    raw = forwarded().replace(b"See you at ten.", b"See you at noon.")
    v = engine(server).scan(raw, ENV)
    assert list(syms(v, "ARC_")) == ["ARC_REJECT"]


def test_unsealed_and_key_timeout(server):
    e = engine(server)
    assert list(syms(e.scan(message(), ENV), "ARC_")) == ["ARC_NA"]
    assert list(syms(e.scan(forwarded("slowarc"), ENV), "ARC_")) == ["ARC_TEMPFAIL"]


def test_a_recorded_failure_is_not_hidden_by_a_key_timeout(server):
    """RFC 8617 section 5.2: a newest seal recording cv=fail ends the chain as fail before any key
    is needed, so a key lookup that timed out makes no temperror of it; a timeout still does when
    a signature that needed the key did not validate (the chain sealed by the slow key alone)."""
    relayed = b"Authentication-Results: list.example; arc=fail (broken upstream)\r\n" + forwarded()
    seal = dkim.arc_sign(relayed, b"slowarc", b"list.example", rsa_key(1024).private, b"list.example",
                         include_headers=[b"from", b"to", b"subject"])
    assert seal[0].startswith(b"ARC-Seal: i=2; cv=fail;")
    v = engine(server).scan(b"".join(seal) + relayed, ENV)
    assert syms(v, "ARC_") == {"ARC_REJECT": ("i=2", "sealer=list.example", "sealer=list.example")}
    assert "arc=fail (ARC-Seal[2] reported cv=fail)" in v.authentication_results
    assert list(syms(engine(server).scan(forwarded("slowarc"), ENV), "ARC_")) == ["ARC_TEMPFAIL"]


def test_trusted_sealer_lifts_dmarc_failure(server):
    raw = forwarded()
    v = engine(server).scan(raw, ENV)
    assert list(syms(v, "DMARC_")) == ["DMARC_POLICY_REJECT"]
    v = engine(server, trusted_arc_sealers=["list.example"]).scan(raw, ENV)
    assert list(syms(v, "DMARC_")) == ["DMARC_POLICY_ALLOW"]
    assert "override=arc:list.example" in v.symbols["DMARC_POLICY_ALLOW"].options
    # the DMARC result itself stays fail; only the disposition changed
    assert "dmarc=fail (p=reject dis=NONE)" in v.authentication_results
    # an untrusted or broken chain lifts nothing
    broken = raw.replace(b"See you at ten.", b"See you at noon.")
    v = engine(server, trusted_arc_sealers=["list.example"]).scan(broken, ENV)
    assert list(syms(v, "DMARC_")) == ["DMARC_POLICY_REJECT"]


def test_aggregate_record_names_the_trusted_forwarder(server):
    from antispam.auth.report import aggregate_record

    v = engine(server, trusted_arc_sealers=["list.example"]).scan(forwarded(), ENV)
    rec = aggregate_record(v, ENV)
    assert rec["row"]["policy_evaluated"]["disposition"] == "none"
    assert rec["row"]["policy_evaluated"]["reason"] == [{"type": "trusted_forwarder", "comment": "arc list.example"}]
    assert rec["row"]["policy_evaluated"]["dkim"] == "fail"
