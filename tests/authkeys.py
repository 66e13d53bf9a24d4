"""Signing keys and helpers for the DKIM, DMARC and ARC tests (generated per run, never stored)."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from functools import lru_cache

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa


@dataclass(frozen=True)
class Key:
    private: bytes  # what dkim.sign wants: PEM for RSA, base64 raw seed for Ed25519
    record: str  # the DNS TXT record publishing the public key
    algorithm: bytes


def rsa_key(bits: int = 2048) -> Key:
    return _rsa_key(bits)  # one key per size: rsa_key() and rsa_key(2048) must be the same key


@lru_cache(maxsize=None)
def _rsa_key(bits: int) -> Key:
    k = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                          serialization.NoEncryption())
    der = k.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return Key(pem, "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode(), b"rsa-sha256")


@lru_cache(maxsize=None)
def ed25519_key() -> Key:
    k = ed25519.Ed25519PrivateKey.generate()
    seed = k.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    pub = k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return Key(base64.b64encode(seed), "v=DKIM1; k=ed25519; p=" + base64.b64encode(pub).decode(), b"ed25519-sha256")


def sign(msg: bytes, domain: str, selector: str, key: Key, algorithm: bytes | None = None,
         headers: tuple[bytes, ...] = (b"from", b"to", b"subject", b"date")) -> bytes:
    """``msg`` with a DKIM-Signature prepended."""
    sig = dkim.sign(msg, selector.encode(), domain.encode(), key.private,
                    signature_algorithm=algorithm or key.algorithm, include_headers=list(headers))
    return sig + msg


def message(from_addr: str = "alice@example.org", subject: str = "Quarterly figures", body: str = "See you at ten.\r\n") -> bytes:
    return (f"From: Alice <{from_addr}>\r\nTo: bob@example.net\r\nSubject: {subject}\r\n"
            f"Date: Tue, 24 Nov 2026 10:00:00 +0000\r\nMessage-ID: <t1@example.org>\r\n\r\n{body}").encode()


AUTH_FACTORIES = ("antispam.auth.spf:factory", "antispam.auth.dkim:factory", "antispam.auth.arc:factory",
                  "antispam.auth.dmarc:factory", "antispam.auth.authres:authres_check")


def auth_engine(config):
    """An engine with only the authentication checks the configuration enables.

    The same factories the default engine calls, minus rules and classifier,
    whose loading would dominate these tests' time.
    """
    from antispam import Engine
    from antispam.engine import _load_factory

    checks = [c for c in (_load_factory(f)(config, None) for f in AUTH_FACTORIES) if c is not None]
    return Engine(config, checks)
