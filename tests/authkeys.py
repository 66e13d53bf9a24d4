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


def _relaxed_sign(fields: list[bytes], sig_name: str, parts: list[tuple[str, str | None]], key: Key) -> bytes:
    """``sig_name: <parts>`` with b= signed over ``fields`` (whole fields, relaxed) and itself, b= empty."""
    unsigned = "; ".join(f"{k}={v or ''}" for k, v in parts)
    data = b"".join(_canon_header(f, True) for f in fields)
    data += _canon_header(f"{sig_name}: {unsigned}\r\n".encode(), True)[:-2]
    digest = hashes.SHA1() if dict(parts).get("a", "").lower() == "rsa-sha1" else hashes.SHA256()
    if key.algorithm == b"ed25519-sha256":
        signature = ed25519.Ed25519PrivateKey.from_private_bytes(base64.b64decode(key.private)).sign(
            hashlib.sha256(data).digest())
    else:
        signature = serialization.load_pem_private_key(key.private, None).sign(data, padding.PKCS1v15(), digest)
    signed = [(k, base64.b64encode(signature).decode() if k == "b" and v is None else v) for k, v in parts]
    return f"{sig_name}: {'; '.join(f'{k}={v}' for k, v in signed)}\r\n".encode()


def _fields(head: bytes) -> list[bytes]:
    """The header block's fields, each with its folds and final CRLF (joined once: a field folded
    100,000 times must not make building a test message quadratic)."""
    out: list[list[bytes]] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and out:
            out[-1].append(line)
        else:
            out.append([line])
    return [b"\r\n".join(f) + b"\r\n" for f in out if f != [b""]]


def arc_seal(msg: bytes, key: Key, instance: int | None = None, cv: str | None = None, domain: str = "list.example",
             selector: str = "arc", h: str = "from:to:subject:date:message-id",
             ams: dict[str, str | None] | None = None, seal: dict[str, str | None] | None = None,
             aar: str | None = None, sealed: list[bytes] | None = None) -> bytes:
    """``msg`` with one ARC set (RFC 8617) prepended, written by us, not dkimpy: dkimpy refuses to
    write the sets a validator must refuse (a gap, cv=none at i=2, h= in a seal...).

    ``instance`` and ``cv`` default to the next set and none/pass; ``ams``/``seal`` replace or add
    tags (a value of None drops the tag, except b= and bh=, which are then computed); ``aar`` is the
    AAR field's value; ``sealed`` replaces the ARC fields the seal covers (default: every set's, in
    instance order, AAR, AMS, AS)."""
    head, _, body = msg.partition(b"\r\n\r\n")
    fields = _fields(head)
    sets: dict[int, dict[str, bytes]] = {}
    for f in fields:
        name, _, value = f.partition(b":")
        kind = name.strip().lower().decode()
        m = re.search(rb"(?:^|;)\s*i\s*=\s*(\d+)", value)
        if kind.startswith("arc-") and m:
            sets.setdefault(int(m.group(1)), {})[kind] = f
    n = instance if instance is not None else max(sets, default=0) + 1
    cv = cv if cv is not None else ("none" if n == 1 else "pass")
    aar_field = f"ARC-Authentication-Results: {aar if aar is not None else f'i={n}; {domain}; spf=pass smtp.mailfrom={domain}'}\r\n".encode()

    def tags(default: list[tuple[str, str | None]], extra: dict[str, str | None] | None) -> list[tuple[str, str | None]]:
        out = dict(default)
        for k, v in (extra or {}).items():
            out[k] = v
        return [(k, v) for k, v in out.items() if v is not None or k in ("b", "bh")]

    ams_parts = tags([("i", str(n)), ("a", "rsa-sha256"), ("c", "relaxed/relaxed"), ("d", domain), ("s", selector),
                      ("t", "1764000000"), ("h", h), ("bh", None), ("b", None)], ams)
    ams_parts = [(k, body_hash(body) if k == "bh" and v is None else v) for k, v in ams_parts]
    where: dict[bytes, list[bytes]] = {}
    for f in fields:
        where.setdefault(f.partition(b":")[0].strip().lower(), []).append(f)
    chosen = []
    for name in [x.strip().lower().encode() for x in dict(ams_parts).get("h", "").split(":")]:
        if where.get(name):
            chosen.append(where[name].pop())
    ams_field = _relaxed_sign(chosen, "ARC-Message-Signature", ams_parts, key)
    if sealed is None:
        sealed = [sets[i][k] for i in sorted(sets) if i < n
                  for k in ("arc-authentication-results", "arc-message-signature", "arc-seal") if k in sets[i]]
    as_parts = tags([("i", str(n)), ("a", "rsa-sha256"), ("cv", cv), ("d", domain), ("s", selector),
                     ("t", "1764000000"), ("b", None)], seal)
    as_field = _relaxed_sign(sealed + [aar_field, ams_field], "ARC-Seal", as_parts, key)
    return as_field + ams_field + aar_field + msg
