"""Signing keys and helpers for the DKIM, DMARC and ARC tests (generated per run, never stored)."""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache

import dkim
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa


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


def _canon_header(field: bytes, relaxed: bool) -> bytes:
    if not relaxed:
        return field
    name, _, value = field.partition(b":")
    value = re.sub(rb"[ \t]+", b" ", value.replace(b"\r\n", b"")).strip()
    return name.strip().lower() + b":" + value + b"\r\n"


def _canon_body(body: bytes, relaxed: bool) -> bytes:
    if relaxed:
        body = b"\r\n".join(re.sub(rb"[ \t]+", b" ", line).rstrip(b" ") for line in body.split(b"\r\n"))
    body = re.sub(rb"(?:\r\n)*$", b"", body)
    return body + b"\r\n" if body or not relaxed else b""


def body_hash(body: bytes, relaxed: bool = True) -> str:
    """The sha256 ``bh=`` of ``body``: to sign a large body many times, hashing it once."""
    return base64.b64encode(hashlib.sha256(_canon_body(body, relaxed)).digest()).decode()


def sign_tags(msg: bytes, key: Key, tags: list[tuple[str, str]], length: int | None = None) -> bytes:
    """``msg`` with a DKIM-Signature carrying exactly ``tags`` (in order), signed with ``key``.

    A signer of our own (RFC 6376 3.4, 3.7), not dkimpy's: dkimpy refuses to write the
    signatures a verifier must refuse (h= without From, i= outside d=, unknown q=...).
    ``bh`` and ``b`` are computed unless ``tags`` gives them (a ``bh`` from ``body_hash``); c= (default simple/simple) and
    h= are read from ``tags``; ``length`` truncates the hashed body (the l= tag is the caller's).
    """
    t = dict(tags)
    head_canon, _, body_canon = t.get("c", "simple/simple").lower().partition("/")
    head, _, body = msg.partition(b"\r\n\r\n")
    digest = hashlib.sha1 if t["a"].lower() == "rsa-sha1" else hashlib.sha256
    if t.get("bh") is None:
        t["bh"] = base64.b64encode(digest(_canon_body(body, body_canon == "relaxed")[:length]).digest()).decode()
    parts = [(k, t["bh"] if k == "bh" else v) for k, v in tags]
    if "b" not in t:
        parts.append(("b", None))
    unsigned = "; ".join(f"{k}={v or ''}" for k, v in parts)
    parts_of: list[list[bytes]] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and parts_of:
            parts_of[-1].append(line)
        else:
            parts_of.append([line])
    fields = [b"\r\n".join(p) for p in parts_of]
    where: dict[bytes, list[bytes]] = {}
    for f in fields:
        where.setdefault(f.partition(b":")[0].strip().lower(), []).append(f)
    data = b""
    for name in [n.strip().lower().encode() for n in t["h"].split(":")]:
        if where.get(name):  # instances are taken from the bottom up
            data += _canon_header(where[name].pop() + b"\r\n", head_canon == "relaxed")
    data += _canon_header(b"DKIM-Signature: " + unsigned.encode() + b"\r\n", head_canon == "relaxed")[:-2]
    if key.algorithm == b"ed25519-sha256":
        signature = ed25519.Ed25519PrivateKey.from_private_bytes(base64.b64decode(key.private)).sign(
            hashlib.sha256(data).digest())
    else:
        private = serialization.load_pem_private_key(key.private, None)
        signature = private.sign(data, padding.PKCS1v15(), hashes.SHA1() if digest is hashlib.sha1 else hashes.SHA256())
    if t.get("b") is None:
        parts = [(k, base64.b64encode(signature).decode() if k == "b" else v) for k, v in parts]
    return b"DKIM-Signature: " + "; ".join(f"{k}={v}" for k, v in parts).encode() + b"\r\n" + msg
