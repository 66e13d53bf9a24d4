"""DKIM: messages signed here with dkimpy (RSA, Ed25519), keys served by a loopback DNS server."""

from __future__ import annotations

import pytest

from antispam import Envelope
from antispam.config import Config
from authkeys import auth_engine, ed25519_key, message, rsa_key, sign
from dnsserver import DNSServer


@pytest.fixture(scope="module")
def server():
    zone = {
        "rsa._domainkey.example.org": [("TXT", rsa_key(2048).record)],
        "ed._domainkey.example.org": [("TXT", ed25519_key().record)],
        "small._domainkey.example.org": [("TXT", rsa_key(1024).record)],
        "revoked._domainkey.example.org": [("TXT", "v=DKIM1; k=rsa; p=")],
        "slow._domainkey.example.org": [("TIMEOUT", None)],
        "bad._domainkey.example.org": [("SERVFAIL", None)],
    }
    with DNSServer(zone) as s:
        yield s


def engine(server, **auth):
    cfg = Config().merged({"dns": {"nameservers": [server.host], "port": server.port, "timeout": 0.3, "attempts": 1},
                           "auth": {"spf": False, "dmarc": False, **auth}, "engine": {"authserv_id": "mx.test"}})
    return auth_engine(cfg)


def dkim_symbols(v):
    return {k: s.options for k, s in v.symbols.items() if k.startswith("R_DKIM")}


ENV = Envelope(client_ip="192.0.2.1", mail_from="alice@example.org")


def test_rsa_sha256_pass(server):
    v = engine(server).scan(sign(message(), "example.org", "rsa", rsa_key()), ENV)
    assert dkim_symbols(v) == {"R_DKIM_ALLOW": ("example.org:rsa",)}
    assert "dkim=pass header.d=example.org header.s=rsa header.i=@example.org header.a=rsa-sha256 header.b=" \
        in v.authentication_results


def test_ed25519_pass(server):
    v = engine(server).scan(sign(message(), "example.org", "ed", ed25519_key()), ENV)
    assert dkim_symbols(v) == {"R_DKIM_ALLOW": ("example.org:ed",)}
    assert "header.a=ed25519-sha256" in v.authentication_results


def test_every_signature_is_verified(server):
    raw = sign(sign(message(), "example.org", "rsa", rsa_key()), "example.org", "ed", ed25519_key())
    v = engine(server).scan(raw, ENV)
    assert dkim_symbols(v) == {"R_DKIM_ALLOW": ("example.org:ed", "example.org:rsa")}
    assert v.authentication_results.count("dkim=pass") == 2


def test_altered_body_or_header_fails(server):
    e = engine(server)
    raw = sign(message(), "example.org", "rsa", rsa_key())
    v = e.scan(raw.replace(b"See you at ten.", b"See you at two."), ENV)
    assert list(dkim_symbols(v)) == ["R_DKIM_REJECT"]
    assert "dkim=fail" in v.authentication_results
    raw = sign(message(), "example.org", "ed", ed25519_key())
    v = e.scan(raw.replace(b"Subject: Quarterly figures", b"Subject: Quarterly figurez"), ENV)
    assert list(dkim_symbols(v)) == ["R_DKIM_REJECT"]


def test_one_good_one_bad_signature_reports_both(server):
    good = sign(message(), "example.org", "rsa", rsa_key())
    raw = sign(good, "example.org", "revoked", rsa_key())
    v = engine(server).scan(raw, ENV)
    assert set(dkim_symbols(v)) == {"R_DKIM_ALLOW", "R_DKIM_PERMFAIL"}


def test_key_problems_are_permerrors(server):
    e = engine(server)
    for selector in ("missing", "revoked"):
        v = e.scan(sign(message(), "example.org", selector, rsa_key()), ENV)
        assert list(dkim_symbols(v)) == ["R_DKIM_PERMFAIL"], selector
        assert "dkim=permerror" in v.authentication_results
    # RFC 8301's floor is 1024 bits; a site demanding 2048 rejects the 1024-bit key
    raw = sign(message(), "example.org", "small", rsa_key(1024))
    assert list(dkim_symbols(e.scan(raw, ENV))) == ["R_DKIM_ALLOW"]
    v = engine(server, dkim_min_rsa_bits=2048).scan(raw, ENV)
    assert list(dkim_symbols(v)) == ["R_DKIM_PERMFAIL"]
    assert "too small" in v.symbols["R_DKIM_PERMFAIL"].options[0]


def test_sha1_is_rejected_per_rfc8301_unless_configured(server):
    raw = sign(message(), "example.org", "rsa", rsa_key(), algorithm=b"rsa-sha1")
    v = engine(server).scan(raw, ENV)
    assert list(dkim_symbols(v)) == ["R_DKIM_PERMFAIL"]
    assert "RFC 8301" in v.symbols["R_DKIM_PERMFAIL"].options[0]
    assert list(dkim_symbols(engine(server, dkim_reject_sha1=False).scan(raw, ENV))) == ["R_DKIM_ALLOW"]


def test_key_lookup_failure_is_tempfail(server):
    e = engine(server)
    for selector in ("slow", "bad"):
        v = e.scan(sign(message(), "example.org", selector, rsa_key()), ENV)
        assert list(dkim_symbols(v)) == ["R_DKIM_TEMPFAIL"], selector
        assert "dkim=temperror" in v.authentication_results


def test_unsigned_and_malformed(server):
    e = engine(server)
    v = e.scan(message(), ENV)
    assert dkim_symbols(v) == {"R_DKIM_NA": ()}
    assert "dkim=none" in v.authentication_results
    v = e.scan(b"DKIM-Signature: v=1; this is not a signature\r\n" + message(), ENV)
    assert list(dkim_symbols(v)) == ["R_DKIM_PERMFAIL"]
    assert "dkim=neutral" in v.authentication_results


def test_blocking_dnsfunc_for_direct_dkimpy_use(server):
    import dkim

    from antispam.auth.dkim import dnsfunc_for
    from antispam.dns import Resolver

    r = Resolver([server.host], port=server.port, timeout=0.3, attempts=1)
    raw = sign(message(), "example.org", "ed", ed25519_key())
    assert dkim.verify(raw, dnsfunc=dnsfunc_for(r))
    assert r.cached("ed._domainkey.example.org", "TXT").status == "ok"
    assert not dkim.verify(raw.replace(b"ten", b"two"), dnsfunc=dnsfunc_for(r))
    assert not dkim.verify(sign(message(), "example.org", "missing", rsa_key()), dnsfunc=dnsfunc_for(r))
