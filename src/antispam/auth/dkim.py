"""DKIM verification (RFC 6376, RFC 8301, RFC 8463) with dkimpy, keys fetched through our resolver.

Every signature is verified, not only the first: DMARC needs to know whether
*any* passing signature aligns with the From domain.  The keys of all
signatures are fetched concurrently (and usually were prefetched with the rest
of the scan's questions), then dkimpy verifies each one with a ``dnsfunc``
that only reads the answers already fetched, so verification never blocks the
event loop on DNS.

Result per signature (RFC 8601 section 2.7.1):

* ``pass``; ``fail`` (the signature or body hash does not verify);
* ``policy`` (the signature verifies but a From field above the signed one is not covered:
  the one a reader sees, RFC 6376 8.15);
* ``neutral`` (the signature is malformed: a required tag missing, a value of the wrong syntax);
* ``permerror`` (a well-formed signature RFC 6376 6.1.1 says to ignore: unknown version,
  algorithm or query method, i= outside d=, From not signed, expired; no key, revoked or
  malformed key, a key record whose k=, h=, s= or t=s refuses the signature (RFC 6376 6.1.2),
  an RSA key over ``MAX_RSA_BITS`` or under ``dkim_min_rsa_bits``, or rsa-sha1 when
  ``dkim_reject_sha1``: RFC 8301 says verifiers must not consider SHA-1 signatures valid and
  must reject RSA keys under 1024 bits);
* ``temperror`` (the key lookup timed out or got SERVFAIL).

The signature's tags and the key record are checked here (:func:`_check_signature`,
:func:`_check_key`), then dkimpy's ``verify_sig`` does the canonicalisation and cryptography:
dkimpy's own checks call every refused signature ``fail`` and skip some the RFC requires.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import dkim as dkimpy
from dkim.canonicalization import CanonicalizationPolicy, InvalidCanonicalizationPolicyError
from dkim.util import DuplicateTag, InvalidTagValueList, parse_tag_value

from ..check import Check, Hit, Question, ScanContext, SymbolDef
from ..dns import Answer
from . import network_enabled
from .authres import resinfo

if TYPE_CHECKING:  # pragma: no cover
    from ..config import Config
    from ..dns import Resolver
    from ..message import Message

#: lower-case header name, as dkimpy reports it
_SIG = b"dkim-signature"
#: signatures verified per message; more is a cost an attacker chooses, not a sender need
MAX_SIGNATURES = 16
#: header fields one signature may select.  Signers select a few dozen; dkimpy's selection scans the
#: header block once per selected field, so a long h= over a message of many fields (a 350 KB
#: message: 7 s per signature) makes the cost quadratic.
MAX_SIGNED_FIELDS = 500
#: tags every signature must carry (RFC 6376 3.5)
_REQUIRED = (b"v", b"a", b"b", b"bh", b"d", b"h", b"s")
#: tags every ARC-Message-Signature must carry (RFC 8617 4.1.2: DKIM's, i= the instance, no v=)
_AMS_REQUIRED = (b"i", b"a", b"b", b"bh", b"d", b"h", b"s")
#: a= values we verify, lower-cased: RFC 6376's ABNF strings match in any case, dkimpy's table in lower case only
_ALGORITHMS = (b"rsa-sha256", b"rsa-sha1", b"ed25519-sha256")
_BASE64 = re.compile(rb"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
#: RSA keys above this many bits are refused.  RFC 8301 3.1 asks verifiers to handle 1024 to 4096
#: bits; dkimpy's RSA is pure Python, and a 16384-bit key with a 16384-bit exponent (which DNS
#: over TCP carries) costs it some ten seconds per signature.
MAX_RSA_BITS = 8192
#: RSA public exponents longer than this are refused (everyone uses 65537, 17 bits); the
#: verification's cost grows with the exponent's length
_MAX_RSA_EXPONENT_BITS = 64
#: seconds a signer's clock may run ahead (t=) or a signature outlive its x=, before we refuse it
_CLOCK_SKEW = 36000


@dataclass(frozen=True, slots=True)
class DkimSignatureResult:
    result: str  # pass fail policy neutral permerror temperror
    domain: str
    selector: str
    algorithm: str = ""
    reason: str = ""
    b: str = ""  # first characters of b=, to tell signatures apart (RFC 6008)
    identity: str = ""  # i= (AUID), when present
    testing: bool = False  # the key record says t=y (RFC 6376 3.6.1): reported, not scored


@dataclass(frozen=True, slots=True)
class DkimOutcome:
    """Every DKIM signature's result, in header order (empty: the message is unsigned)."""

    signatures: tuple[DkimSignatureResult, ...] = ()

    def passing_domains(self) -> list[str]:
        return [s.domain for s in self.signatures if s.result == "pass"]


def _tags(value: bytes | str) -> dict[bytes, bytes] | None:
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogateescape")
    try:
        return parse_tag_value(value)
    except (InvalidTagValueList, ValueError):
        return None


def _tag_list_problem(value: bytes) -> str:
    """Why ``value`` is no tag list (RFC 6376 3.2), for a reason a reader can act on."""
    try:
        parse_tag_value(value)
    except DuplicateTag as exc:  # "the entire tag-list is invalid"
        return f"signature repeats {_text(exc.args[0]) if exc.args else 'a tag'}="
    except (InvalidTagValueList, ValueError):
        pass
    return "signature is not a tag=value list"


def _first_tags(value: bytes) -> dict[bytes, bytes]:
    """Each tag's first value, read leniently from a malformed list: only to name the signature in
    the report (its d= and s=), never to verify it."""
    tags: dict[bytes, bytes] = {}
    for spec in value.split(b";"):
        name, eq, tag_value = spec.partition(b"=")
        if eq:
            tags.setdefault(name.strip(), tag_value.strip())
    return tags


class _Refused(Exception):
    """RFC 6376 says to ignore this signature; ``result`` is what RFC 8601 calls that.

    ``neutral`` when the signature is malformed (RFC 8601 2.7.1: "contained syntax errors"),
    ``permerror`` when it is well formed but cannot be verified (unsupported algorithm or query
    method, i= outside d=, From not signed, expired).  Neither is ``fail``, which says the
    signature was checked and did not verify: the difference reaches R_DKIM_REJECT's score.
    """

    def __init__(self, result: str, reason: str):
        super().__init__(reason)
        self.result = result
        self.reason = reason


def _text(value: bytes, limit: int = 40) -> str:
    return value.decode("ascii", "replace")[:limit]


def _is_base64(value: bytes) -> bool:
    """RFC 6376 base64string: the alphabet, padding only at the end, folding whitespace anywhere."""
    packed = re.sub(rb"\s+", b"", value)
    return bool(packed) and _BASE64.fullmatch(packed) is not None


def _check_signature(tags: dict[bytes, bytes], now: float, arc: bool = False) -> tuple[dict[bytes, bytes], list[bytes]]:
    """The tags dkimpy verifies with and the h= names, once the signature passes RFC 6376 6.1.1.

    dkimpy's own check (``validate_signature_fields``) raises ValidationError, which we could only
    call ``fail``, for what are syntax errors or unverifiable signatures; it also refuses what the
    RFC accepts (``a=RSA-SHA256``, ``c=Relaxed/Simple``, ``q=dns/txt:other``) and lets through what
    it forbids (h= without From).  So we check here and hand dkimpy's ``verify_sig`` the tags it can use.

    ``arc``: the tags of an ARC-Message-Signature, a DKIM-Signature with three differences (RFC 8617
    4.1.2): no v= (ignored if present), i= is the instance (checked by the caller) instead of the
    AUID, and nothing obliges it to sign From.
    """
    missing = [t.decode() + "=" for t in (_AMS_REQUIRED if arc else _REQUIRED) if t not in tags]
    if missing:
        raise _Refused("neutral", "signature lacks " + ", ".join(missing))
    if not arc and tags[b"v"] != b"1":
        raise _Refused("permerror", f"signature version v={_text(tags[b'v'])} is not 1")
    algorithm = tags[b"a"].lower()
    if algorithm not in _ALGORITHMS:
        raise _Refused("permerror", f"unsupported algorithm a={_text(tags[b'a'])}")
    for t in (b"b", b"bh"):
        if not _is_base64(tags[t]):
            raise _Refused("neutral", f"{t.decode()}= is not base64")
    names = [n.strip().lower() for n in tags[b"h"].split(b":")]
    if not arc and b"from" not in names:  # RFC 6376 6.1.1: PERMFAIL (From field not signed)
        raise _Refused("permerror", "From is not signed (h= lacks From)")
    domain = tags[b"d"].lower().rstrip(b".")
    if b"i" in tags and not arc:
        _, at, i_domain = tags[b"i"].rpartition(b"@")
        if not at:
            raise _Refused("neutral", "i= is not an address")
        i_domain = i_domain.lower().rstrip(b".")
        if i_domain != domain and not i_domain.endswith(b"." + domain):
            raise _Refused("permerror", f"i= domain {_text(i_domain)} is not d= or under it")
    if b"l" in tags and not re.fullmatch(rb"\d{1,76}", tags[b"l"]):
        raise _Refused("neutral", "l= is not a decimal number of at most 76 digits")
    if b"q" in tags and b"dns/txt" not in [m.strip().lower() for m in tags[b"q"].split(b":")]:
        # RFC 6376 3.5: unknown query methods in the list are ignored; none known is a PERMFAIL
        raise _Refused("permerror", f"no supported key query method in q={_text(tags[b'q'])}")
    signed = expires = None
    for t in (b"t", b"x"):
        if t in tags and not re.fullmatch(rb"\d{1,12}", tags[t]):
            raise _Refused("neutral", f"{t.decode()}= is not a timestamp")
    if b"t" in tags:
        signed = int(tags[b"t"])
        if signed > now + _CLOCK_SKEW:
            raise _Refused("permerror", "signature timestamp t= is in the future")
    if b"x" in tags:
        expires = int(tags[b"x"])
        if signed is not None and expires <= signed:
            raise _Refused("permerror", "signature expiry x= is not after its timestamp t=")
        if expires < now - _CLOCK_SKEW:
            raise _Refused("permerror", "signature expired (x=)")
    canonicalization = tags.get(b"c", b"simple/simple").lower()
    try:
        CanonicalizationPolicy.from_c_value(canonicalization)
    except InvalidCanonicalizationPolicyError:
        raise _Refused("neutral", f"invalid c={_text(tags[b'c'])}") from None
    return {**tags, b"a": algorithm, b"c": canonicalization}, names


class _BodyHashes:
    """Canonical bodies and body hashes, each computed once per message.

    dkimpy canonicalises and hashes the whole body again for every signature: 16 signatures over a
    10 MB body took 12 seconds.  We compare ``bh=`` here and hand dkimpy the signature without it,
    which makes dkimpy skip the body.
    """

    def __init__(self, body: bytes):
        self._body = body
        self._canonical: dict[bytes, bytes] = {}
        self._digests: dict[tuple[bytes, bytes, bytes | None], bytes] = {}

    def canonical(self, sig: dict[bytes, bytes]) -> bytes:
        """The body as ``c=`` (checked by :func:`_check_signature`) canonicalises it."""
        policy = CanonicalizationPolicy.from_c_value(sig.get(b"c", b"simple/simple"))
        name = policy.body_algorithm.name
        if name not in self._canonical:
            self._canonical[name] = policy.canonicalize_body(self._body)
        return self._canonical[name]

    def check_length(self, sig: dict[bytes, bytes]) -> None:
        """RFC 6376 3.5: l= "MUST NOT be larger than" the canonicalized body; a signer claiming more is refused."""
        if b"l" in sig and int(sig[b"l"]) > len(self.canonical(sig)):
            raise _Refused("permerror", "l= is longer than the body")

    def matches(self, sig: dict[bytes, bytes]) -> bool:
        """Whether ``bh=`` is the hash of the canonical body (its first ``l=`` octets)."""
        hash_name = sig[b"a"].partition(b"-")[2]
        key = (sig.get(b"c", b""), hash_name, sig.get(b"l"))
        if key not in self._digests:
            canonical = self.canonical(sig)
            if b"l" in sig:
                canonical = canonical[:int(sig[b"l"])]
            self._digests[key] = hashlib.new(hash_name.decode("ascii"), canonical).digest()
        return self._digests[key] == base64.b64decode(re.sub(rb"\s+", b"", sig[b"bh"]))


def _key_record(texts: list[bytes], name: str) -> bytes:
    """The one key record among the TXT records at ``name``.

    RFC 6376 3.6.2.2 leaves several records undefined, and DNS servers hand them out in rotating
    order, so taking the first (as dkimpy's callers, Mail::DKIM and OpenDKIM do) made the result
    change from one delivery to the next.  Records that are no key (no ``p=`` tag: a site
    verification token, an SPF record put there by mistake) are passed over; two different keys
    are a permerror whatever their order.
    """
    distinct = list(dict.fromkeys(texts))
    keys = [t for t in distinct if b"p" in (_tags(t) or {})]
    if len(keys) > 1:
        raise _Refused("permerror", f"{len(keys)} different key records at {name}")
    return keys[0] if keys else distinct[0]


def _check_key(record: bytes, sig: dict[bytes, bytes], name: str) -> tuple[bytes, bool]:
    """The key record reduced to the ``k=`` and ``p=`` dkimpy reads, once it passes RFC 6376 3.6.1 and
    6.1.2, and whether its ``t=`` flags say the domain is testing DKIM (``y``).

    dkimpy ignores the key's ``h=`` (hash algorithms the key may be used with) and ``t=s`` (no
    subdomain in i=), both of which RFC 6376 makes PERMFAIL; it reads ``s=`` as one value, so
    ``s=email:other`` lost the key while ``s=tlsrpt`` became a ``fail``; a key of the wrong type
    for ``a=`` was tried anyway (a fail or an opaque error).  Mail::DKIM and OpenDKIM refuse all of
    these.  Handing dkimpy only ``k=`` and ``p=`` keeps it from reinterpreting what we checked.
    """
    try:
        key = parse_tag_value(record)
    except DuplicateTag as exc:  # RFC 6376 3.2: a repeated tag invalidates the whole list
        raise _Refused("permerror", f"key record repeats {_text(exc.args[0] if exc.args else b'a tag')}=") from None
    except (InvalidTagValueList, ValueError):
        raise _Refused("permerror", "key record is not a tag=value list") from None
    if key.get(b"v", b"DKIM1") != b"DKIM1":
        raise _Refused("permerror", f"key record version v={_text(key[b'v'])} is not DKIM1")
    if b"p" not in key:
        raise _Refused("permerror", "key record lacks p=")
    public = re.sub(rb"\s+", b"", key[b"p"])
    if not public:
        raise _Refused("permerror", "key revoked (empty p=)")
    key_type = key.get(b"k", b"rsa").lower()
    if key_type not in (b"rsa", b"ed25519"):
        raise _Refused("permerror", f"unsupported key type k={_text(key_type)}")
    sig_type, _, sig_hash = sig[b"a"].partition(b"-")
    if key_type != sig_type:  # RFC 6376 6.1.2 step 6: PERMFAIL (inappropriate key algorithm)
        raise _Refused("permerror", f"key type k={key_type.decode()} does not fit a={sig[b'a'].decode()}")
    if b"h" in key and sig_hash not in [h.strip().lower() for h in key[b"h"].split(b":")]:
        raise _Refused("permerror", f"key does not allow {sig_hash.decode()} (h={_text(key[b'h'])})")
    if b"s" in key and not {b"*", b"email"} & {t.strip().lower() for t in key[b"s"].split(b":")}:
        raise _Refused("permerror", f"key is not for email (s={_text(key[b's'])})")
    flags = [f.strip().lower() for f in key.get(b"t", b"").split(b":")]
    if b"s" in flags and b"i" in sig:
        i_domain = sig[b"i"].rpartition(b"@")[2].lower().rstrip(b".")
        if i_domain != sig[b"d"].lower().rstrip(b"."):
            raise _Refused("permerror", "key forbids an i= in a subdomain of d= (t=s)")
    if not _is_base64(public):
        raise _Refused("permerror", "key p= is not base64")
    reduced = b"k=" + key_type + b"; p=" + public
    try:
        parsed, bits, _, _ = dkimpy.evaluate_pk(name.encode("ascii", "replace"), reduced)
    except Exception:  # KeyFormatError, or what dkimpy's ASN.1 parser lets escape on garbage
        raise _Refused("permerror", f"key p= is not a valid {key_type.decode()} public key") from None
    if key_type == b"rsa" and (bits > MAX_RSA_BITS or parsed["publicExponent"].bit_length() > _MAX_RSA_EXPONENT_BITS):
        raise _Refused("permerror", f"RSA key too large ({bits} bits, exponent of "
                                    f"{parsed['publicExponent'].bit_length()} bits)")
    return reduced, b"y" in flags


_FIELD_NAME = re.compile(rb"([\x21-\x39\x3b-\x7e]+[ \t]*):")


def _parse_message(raw: bytes) -> tuple[list[tuple[bytes, bytes]], bytes, str | None]:
    """Header fields as ``(name, value)`` in dkimpy's form, the body, and what made the header block
    malformed (None when nothing did).

    Our own parser rather than dkimpy's: that one refused a field name followed by white space
    (``Subject : x``, RFC 5322 obs-optional, which RFC 6376 3.4.2 canonicalises) and so every
    signature of such a message, without even naming them.  The name keeps its trailing white
    space, as "simple" canonicalisation hashes it.  A body without a final CRLF gets one: "simple"
    adds it anyway (RFC 6376 3.4.3), and "relaxed" then drops the last line's trailing white space
    as it does every other line's (dkimpy kept it: Mail::DKIM and OpenDKIM verified such messages,
    dkimpy failed them).
    """
    if not raw.endswith(b"\n"):
        raw += b"\r\n"
    lines = re.split(b"\r?\n", raw)
    # each field's lines are joined once at the end: appending to a bytes value per folded line
    # (as dkimpy does) is quadratic, a minute for one field folded a million times
    fields: list[tuple[bytes, list[bytes]]] = []
    malformed = None
    i = 0
    for i, line in enumerate(lines):
        if not line:
            i += 1
            break
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1][1].append(line)
        elif (m := _FIELD_NAME.match(line)) is not None:
            fields.append((m.group(1), [line[m.end():]]))
        elif not line.startswith(b"From "):  # an mbox separator is no field, and no error
            malformed = malformed or f"malformed header line: {_text(line)}"
    else:
        i = len(lines)
    headers = [(name, b"\r\n".join(parts) + b"\r\n") for name, parts in fields]
    return headers, b"\r\n".join(lines[i:]), malformed


def _select(headers: list[tuple[bytes, bytes]], names: list[bytes]) -> tuple[list[tuple[bytes, bytes]], bool]:
    """The fields ``h=`` signs, in its order, each name taking its next instance from the bottom (RFC
    6376 5.4.2), in one pass where dkimpy scans the block again for every name; and whether a From
    field is left that the signature does not cover.

    Such a From, added above a signed one, is what a verifier sees first (RFC 6376 8.15).  dkimpy
    hashed it in anyway, which turned a signature that verifies into a plain ``fail``; we hash
    what the RFC says and let the caller report the From it leaves out."""
    where: dict[bytes, list[int]] = {}
    for n, (name, _) in enumerate(headers):
        where.setdefault(name.rstrip(b" \t").lower(), []).append(n)
    chosen = []
    for name in names:
        if where.get(name):
            chosen.append(headers[where[name].pop()])
    return chosen, bool(where.get(b"from"))


def _key_name(tags: dict[bytes, bytes]) -> str | None:
    """``<s>._domainkey.<d>``, or None when the signature names no key it could have.

    A selector and a domain are dot-separated names (RFC 6376 3.1, 3.5): whitespace inside
    either (``s=a\r\n b``, folded) is a syntax error, not a name to ask for.  It must be
    refused the same way whichever copy of the value is read (the unfolded one when asking
    DNS, dkimpy's raw one when verifying), or the key looks "not fetched" (a temperror).
    """
    d, s = tags.get(b"d", b"").strip(), tags.get(b"s", b"").strip()
    if not d or not s or any(c in b" \t\r\n" for c in s + d):
        return None
    try:
        return f"{s.decode('ascii')}._domainkey.{d.decode('ascii')}".rstrip(".").lower()
    except UnicodeDecodeError:
        return None


def verify_all(raw: bytes, answers: dict[str, Answer], min_rsa_bits: int = 1024,
               reject_sha1: bool = True) -> DkimOutcome:
    """Verify every signature of ``raw`` with key answers already fetched (``{key name: Answer}``)."""
    headers, body, malformed = _parse_message(raw)
    signer = dkimpy.DKIM(minkey=min_rsa_bits)
    bodies = _BodyHashes(body)
    sig_headers = [(n, v) for n, v in headers if n.rstrip(b" \t").lower() == _SIG]
    now = time.time()
    results = []
    if len(sig_headers) > MAX_SIGNATURES:
        results.append(DkimSignatureResult("neutral", "", "", reason=f"{len(sig_headers) - MAX_SIGNATURES} signatures past the first {MAX_SIGNATURES} not checked"))
    for sig_header in sig_headers[:MAX_SIGNATURES]:
        value = sig_header[1]
        tags = _tags(value)
        problem = None
        if tags is None:
            problem, tags = _tag_list_problem(value), _first_tags(value)
        domain = tags.get(b"d", b"").decode("ascii", "replace").strip().lower()
        selector = tags.get(b"s", b"").decode("ascii", "replace").strip()
        algorithm = tags.get(b"a", b"").decode("ascii", "replace").strip().lower()
        bval = re.sub(r"\s+", "", tags.get(b"b", b"").decode("ascii", "replace"))[:12]
        identity = tags.get(b"i", b"").decode("ascii", "replace").strip()

        testing = False

        def out(result: str, reason: str = "") -> DkimSignatureResult:
            return DkimSignatureResult(result, domain, selector, algorithm, reason, bval, identity, testing)

        if problem or malformed:
            results.append(out("neutral", problem or malformed or ""))
            continue
        name = _key_name(tags)
        try:
            sig, include = _check_signature(tags, now)
            if name is None:
                raise _Refused("neutral", "d= or s= is not a domain name")
            bodies.check_length(sig)
            signed, unsigned_from = _select(headers, include)
            if len(signed) > MAX_SIGNED_FIELDS:
                raise _Refused("permerror", f"h= selects {len(signed)} header fields, over {MAX_SIGNED_FIELDS}")
        except _Refused as exc:
            results.append(out(exc.result, exc.reason))
            continue
        if reject_sha1 and algorithm == "rsa-sha1":
            results.append(out("permerror", "rsa-sha1 is not accepted (RFC 8301)"))
            continue
        answer = answers.get(name)
        if answer is None or answer.temporary:
            results.append(out("temperror", f"key lookup {answer.status if answer else 'not done'}: {name}"))
            continue
        texts = answer.texts()
        if not texts:
            results.append(out("permerror", f"no key at {name}"))
            continue

        try:  # dkimpy would report a bad key as a mere non-verification; RFC 8601 calls it permerror
            record, testing = _check_key(_key_record(texts, name), sig, name)
        except _Refused as exc:
            results.append(out(exc.result, exc.reason))
            continue

        if not bodies.matches(sig):
            results.append(out("fail", "body hash mismatch (the body was altered)"))
            continue
        if sig[b"a"] == b"ed25519-sha256" and len(base64.b64decode(re.sub(rb"\s+", b"", sig[b"b"]))) != 64:
            # a signature that cannot verify, as a short RSA one fails (OpenDKIM: fail); PyNaCl
            # raised ValueError for it, which read as an opaque permerror
            results.append(out("fail", "signature does not verify (an Ed25519 signature is 64 octets)"))
            continue

        try:
            ok = dkimpy_verify(signer, sig, signed, sig_header, record)
            if ok and unsigned_from:  # RFC 8601 policy: valid, but not acceptable to us
                results.append(out("policy", "a From field the signature does not cover"))
            else:
                results.append(out("pass") if ok else out("fail", "signature does not verify"))
        except dkimpy.ValidationError as exc:
            results.append(out("fail", str(exc)[:120]))
        except dkimpy.KeyFormatError as exc:  # missing/revoked/short key
            results.append(out("permerror", str(exc)[:120]))
        except (dkimpy.MessageFormatError, dkimpy.ParameterError) as exc:
            results.append(out("neutral", str(exc)[:120]))
        except dkimpy.DKIMException as exc:
            results.append(out("permerror", str(exc)[:120]))
        except Exception as exc:  # a key that is not a key, ed25519 without pynacl...
            results.append(out("permerror", f"{type(exc).__name__}: {exc}"[:120]))
    return DkimOutcome(tuple(results))


def dkimpy_verify(signer: "dkimpy.DomainSigner", sig: dict[bytes, bytes], fields: list[tuple[bytes, bytes]],
                  sig_field: bytes, record: bytes) -> bool:
    """dkimpy's check of the signature over ``fields`` (the ``h=`` selection, top-down) with the key
    ``record`` already fetched and checked; the body hash is ours, checked before (``bh=`` left out).
    Raises what dkimpy raises, for the caller to class (DKIM and ARC name the results differently).

    dkimpy selects from ``signer.headers`` again, scanning from the bottom for each name: given the
    chosen fields bottom-up, each name finds its field without a long scan.  It looks names up after
    canonicalising, which under "relaxed" strips a name's trailing space.
    """
    def dnsfunc(qname: bytes | str, timeout: float = 5, _txt: bytes = record) -> bytes:
        return _txt

    signer.headers = fields[::-1]
    relaxed = sig.get(b"c", b"simple").partition(b"/")[0] == b"relaxed"
    include = [n.lower().rstrip(b" \t") if relaxed else n.lower() for n, _ in fields]
    return signer.verify_sig({k: v for k, v in sig.items() if k != b"bh"}, include, sig_field, dnsfunc)


async def fetch_keys(resolver: "Resolver", names: list[str], deadline: float | None = None) -> dict[str, Answer]:
    """The key records of ``names``, asked concurrently."""
    unique = list(dict.fromkeys(names))
    got = await asyncio.gather(*(resolver.resolve(n, "TXT", deadline) for n in unique))
    return dict(zip(unique, got))


def dnsfunc_for(resolver: "Resolver", timeout: float | None = None):
    """A dkimpy ``dnsfunc`` served by ``Resolver.resolve_sync`` (and so by the shared cache).

    For code that calls ``dkim.verify``/``dkim.arc_verify`` itself, outside an
    event loop or in a worker thread.  dkimpy cannot tell "no key" from "lookup
    failed" (both are None); :class:`DkimCheck` does not use this path for that
    reason, but fetches the keys itself.
    """

    def dnsfunc(name: bytes | str, timeout_: float = 5, **_: object) -> bytes | None:
        qname = name.decode("ascii", "replace") if isinstance(name, bytes) else name
        texts = resolver.resolve_sync(qname, "TXT", timeout if timeout is not None else timeout_).texts()
        return texts[0] if texts else None

    return dnsfunc


def _key_names(values: list[str]) -> list[str]:
    names = []
    for v in values[:MAX_SIGNATURES]:
        tags = _tags(v)
        name = _key_name(tags) if tags else None
        if name:
            names.append(name)
    return names


class DkimCheck(Check):
    """Verifies every DKIM-Signature; publishes :class:`DkimOutcome` for DMARC."""

    name = "dkim"
    network = True
    symbols = (
        SymbolDef("R_DKIM_ALLOW", -0.2, "DKIM: a signature verified (pass)", "dkim"),
        SymbolDef("R_DKIM_REJECT", 1.0, "DKIM: a signature did not verify (fail), or verified but left a "
                  "From field unsigned (policy)", "dkim"),
        SymbolDef("R_DKIM_TEMPFAIL", 0.0, "DKIM: the key could not be fetched (temperror)", "dkim"),
        SymbolDef("R_DKIM_PERMFAIL", 0.0, "DKIM: a signature could not be checked: no key, bad key, rejected algorithm (permerror/neutral)", "dkim"),
        SymbolDef("R_DKIM_NA", 0.0, "DKIM: the message is not signed", "dkim"),
        SymbolDef("R_DKIM_TESTING", 0.0, "DKIM: the signer's key is in testing mode (t=y); the result is "
                  "reported, not scored (RFC 6376 3.6.1)", "dkim"),
    )

    _SYMBOL = {"pass": "R_DKIM_ALLOW", "fail": "R_DKIM_REJECT", "policy": "R_DKIM_REJECT", "temperror": "R_DKIM_TEMPFAIL",
               "permerror": "R_DKIM_PERMFAIL", "neutral": "R_DKIM_PERMFAIL"}

    def __init__(self, min_rsa_bits: int = 1024, reject_sha1: bool = True):
        self.min_rsa_bits = min_rsa_bits
        self.reject_sha1 = reject_sha1

    def questions(self, msg: "Message", ctx: ScanContext) -> list[Question]:
        return [Question(n, "TXT") for n in _key_names(msg.get_raw("DKIM-Signature"))]

    async def arun(self, msg: "Message", ctx: ScanContext) -> list[Hit]:
        values = msg.get_raw("DKIM-Signature")
        if not values:
            ctx.publish(DkimOutcome())
            ctx.add_auth_result(resinfo("dkim", "none"))
            return [Hit("R_DKIM_NA")]
        answers: dict[str, Answer] = {}
        if ctx.resolver is not None:
            answers = await fetch_keys(ctx.resolver, _key_names(values), ctx.deadline)
        outcome = verify_all(msg.raw, answers, self.min_rsa_bits, self.reject_sha1)
        ctx.publish(outcome)
        by_symbol: dict[str, list[str]] = {}
        for s in outcome.signatures:
            props = [("header.d", s.domain), ("header.s", s.selector)]
            if s.identity:
                props.append(("header.i", s.identity))
            if s.algorithm:
                props.append(("header.a", s.algorithm))
            if s.b:
                props.append(("header.b", s.b[:8]))
            reason = s.reason if s.reason and s.result != "pass" else ""
            if s.testing:
                reason = "key in testing mode" + (f": {reason}" if reason else "")
            ctx.add_auth_result(resinfo("dkim", s.result, [(k, v) for k, v in props if v], comment=reason[:80] or None))
            if s.testing:  # "MUST NOT treat messages from Signers in testing mode differently from unsigned email"
                by_symbol.setdefault("R_DKIM_TESTING", []).append(f"{s.domain}:{s.selector} ({s.result})")
                continue
            opt = f"{s.domain}:{s.selector}" + (f" ({reason})" if reason else "")
            by_symbol.setdefault(self._SYMBOL[s.result], []).append(opt)
        return [Hit(sym, 1.0, tuple(opts)) for sym, opts in by_symbol.items()]


def factory(config: "Config", store: object = None) -> DkimCheck | None:
    if not network_enabled(config, "dkim"):
        return None
    return DkimCheck(config.auth.dkim_min_rsa_bits, config.auth.dkim_reject_sha1)
