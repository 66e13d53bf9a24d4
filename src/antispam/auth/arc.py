"""ARC (RFC 8617): verify the chain of custody, keys through our resolver.

The chain's validation (``cv``) and the sealing domains are published as an
:class:`ArcOutcome`.  ARC by itself proves only that each sealer saw the
message as it says; it matters when the operator trusts a sealer (a mailing
list, a forwarding service): then the DMARC check may let a DMARC failure of
mail that sealer forwarded through, and says so in its options.

The steps of RFC 8617 section 5.2 are taken here, in its order, with the DKIM
verifier's parser and checks (:mod:`.dkim`): the header block is parsed once,
the sets are collected by the ``i=`` tag, their structure, ``cv`` values and
tags are settled before any key is needed, every key record is checked as a
DKIM key is, the newest ARC-Message-Signature's body is hashed once and the
older ones not at all (step 5 makes them optional), and dkimpy's
``verify_sig`` does only the canonicalisation of the fields chosen here and the
cryptography.  dkimpy's own ``ARC.verify`` did these steps otherwise: it
parsed the header block quadratically (a field folded 300,000 times: 4.7 s),
hashed the body for every set, used key records unchecked (a key of
``h=sha1`` passed, a huge RSA key cost seconds per seal), let ``i=0`` sets pass
as "no ARC", found an AMS by a substring (``ARC-Message-Signature:i=1`` with no
space was an IndexError, a fail) and checked the ``cv`` values only after the
keys (a lookup that timed out hid a ``cv=none`` at ``i=2`` as a temperror).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import dkim as dkimpy
from dkim.canonicalization import Relaxed

from ..check import Check, Hit, Question, ScanContext, SymbolDef
from ..dns import Answer
from . import network_enabled
from .authres import resinfo
from .dkim import (MAX_SIGNED_FIELDS, _BodyHashes, _check_key, _check_signature, _first_tags, _is_base64,
                   _key_name, _key_record, _parse_message, _Refused, _select, _tag_list_problem, _tags, _text,
                   dkimpy_verify, fetch_keys)

if TYPE_CHECKING:  # pragma: no cover
    from ..config import Config
    from ..message import Message


#: instance values run from 1 to 50 (RFC 8617 section 4.2.1)
MAX_SETS = 50
_AAR, _AMS, _AS = b"arc-authentication-results", b"arc-message-signature", b"arc-seal"
_KINDS = {_AAR: "ARC-Authentication-Results", _AMS: "ARC-Message-Signature", _AS: "ARC-Seal"}
#: tags every ARC-Seal must carry (RFC 8617 4.1.3)
_AS_REQUIRED = (b"i", b"a", b"b", b"cv", b"d", b"s")
#: the AAR's instance: "i=" instance ";" before the authres payload (RFC 8617 4.1.1)
_AAR_INSTANCE = re.compile(rb"[ \t\r\n]*i[ \t\r\n]*=[ \t\r\n]*([0-9]+)[ \t\r\n]*;")
#: the one algorithm ARC defines (RFC 8617 4.1.2, 4.1.3: "rsa-sha256"); dkimpy and Mail::DKIM refuse others
_ALGORITHM = b"rsa-sha256"


@dataclass(frozen=True, slots=True)
class ArcOutcome:
    """``cv``: pass, fail, none or temperror; ``sealers``: d= of each ARC-Seal, newest instance first."""

    cv: str
    instances: int = 0
    sealers: tuple[str, ...] = ()
    reason: str = ""


class _Broken(Exception):
    """The chain fails (RFC 8617 5.2); the message says why."""


def _arc_fields(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes, bytes]]:
    """``(kind, name, value)`` of every ARC header field, kind lower-cased without trailing space."""
    out = []
    for name, value in headers:
        kind = name.rstrip(b" \t").lower()
        if kind in _KINDS:
            out.append((kind, name, value))
    return out


def _instance_of(kind: bytes, value: bytes) -> tuple[int, dict[bytes, bytes] | None]:
    """The set a field belongs to, and its tags (None for an AAR); raises :class:`_Broken`."""
    label = _KINDS[kind]
    if kind == _AAR:
        m = _AAR_INSTANCE.match(value)
        if m is None:
            raise _Broken(f"{label} does not begin with i=<instance> and a semicolon")
        text, tags = m.group(1), None
    else:
        tags = _tags(value)
        if tags is None:
            raise _Broken(f"{label}: {_tag_list_problem(value).replace('signature ', '')}")
        if b"i" not in tags:
            raise _Broken(f"{label} lacks i=")
        text = tags[b"i"]
    if not re.fullmatch(rb"[0-9]{1,2}", text) or not 1 <= int(text) <= MAX_SETS:
        raise _Broken(f"{label} i={_text(text, 12)} is not an instance from 1 to {MAX_SETS}")
    return int(text), tags


def _check_seal(tags: dict[bytes, bytes], instance: int) -> None:
    """An ARC-Seal's tags (RFC 8617 4.1.3), before its key is needed."""
    missing = [t.decode() + "=" for t in _AS_REQUIRED if t not in tags]
    if missing:
        raise _Broken(f"ARC-Seal[{instance}] lacks " + ", ".join(missing))
    if b"h" in tags:  # "h= ... MUST NOT be included"; a seal covers the ARC sets, nothing else
        raise _Broken(f"ARC-Seal[{instance}] carries h=, which a seal must not")
    if tags[b"a"].lower() != _ALGORITHM:
        raise _Broken(f"ARC-Seal[{instance}] algorithm a={_text(tags[b'a'])} is not rsa-sha256")
    if not _is_base64(tags[b"b"]):
        raise _Broken(f"ARC-Seal[{instance}] b= is not base64")
    if _key_name(tags) is None:
        raise _Broken(f"ARC-Seal[{instance}] d= or s= is not a domain name")


def _collect(headers: list[tuple[bytes, bytes]], now: float) -> tuple[dict[int, dict[bytes, tuple[bytes, bytes, dict]]], tuple[str, ...]]:
    """Steps 1 to 3 of RFC 8617 5.2 and every tag check: the sets by instance, each kind's field
    ``(name, value, tags)``, and the sealers newest first.  Raises :class:`_Broken` for a chain
    that fails whatever its keys say."""
    fields = _arc_fields(headers)
    if len(fields) > 3 * MAX_SETS:
        raise _Broken(f"more than {MAX_SETS} ARC sets")
    sets: dict[int, dict[bytes, list[tuple[bytes, bytes, dict]]]] = {}
    for kind, name, value in fields:
        instance, tags = _instance_of(kind, value)
        sets.setdefault(instance, {}).setdefault(kind, []).append((name, value, tags or {}))
    newest = max(sets)
    for _, _, tags in sets[newest].get(_AS, []):  # step 2
        if tags.get(b"cv", b"").strip().lower() == b"fail":
            raise _Broken(f"ARC-Seal[{newest}] reported cv=fail")
    chain: dict[int, dict[bytes, tuple[bytes, bytes, dict]]] = {}
    for instance in range(1, newest + 1):  # step 3
        if instance not in sets:
            raise _Broken(f"ARC set {instance} is missing (sets run 1 to {newest})")
        for kind, label in _KINDS.items():
            got = sets[instance].get(kind, [])
            if len(got) != 1:
                raise _Broken(f"ARC set {instance} has {len(got) or 'no'} {label} field" + ("s" if got else ""))
        chain[instance] = {kind: got[0] for kind, got in sets[instance].items()}
        seal = chain[instance][_AS][2]
        cv = seal.get(b"cv", b"").strip().lower()
        wanted = b"none" if instance == 1 else b"pass"
        if b"cv" in seal and cv != wanted:
            raise _Broken(f"ARC-Seal[{instance}] has cv={_text(cv, 12)}, not {wanted.decode()}")
        _check_seal(seal, instance)
        ams = chain[instance][_AMS][2]
        try:
            _, names = _check_signature(ams, now, arc=True)
        except _Refused as exc:
            raise _Broken(f"ARC-Message-Signature[{instance}]: {exc.reason}") from None
        if ams[b"a"].lower() != _ALGORITHM:
            raise _Broken(f"ARC-Message-Signature[{instance}] algorithm a={_text(ams[b'a'])} is not rsa-sha256")
        if _AS in names:  # RFC 8617 4.1.2: the AMS must not sign ARC-Seal fields
            raise _Broken(f"ARC-Message-Signature[{instance}] signs ARC-Seal")
        if _key_name(ams) is None:
            raise _Broken(f"ARC-Message-Signature[{instance}] d= or s= is not a domain name")
    sealers = tuple(chain[i][_AS][2][b"d"].decode("ascii", "replace").strip().lower() for i in range(newest, 0, -1))
    return chain, sealers


def _lenient_sealers(headers: list[tuple[bytes, bytes]]) -> tuple[int, tuple[str, ...]]:
    """The highest ``i=`` and the seals' d=, newest first, read leniently from a chain that failed:
    only to report who sealed it."""
    seals = []
    for kind, _, value in _arc_fields(headers)[:3 * MAX_SETS]:
        if kind == _AS:
            tags = _tags(value) or _first_tags(value)
            i = tags.get(b"i", b"").strip()
            seals.append((int(i) if i.isdigit() and len(i) < 4 else 0,
                          tags.get(b"d", b"").decode("ascii", "replace").strip().lower()))
    seals.sort(reverse=True)
    return (seals[0][0] if seals else 0), tuple(d for _, d in seals)


class _Unfetched(Exception):
    """A key the chain needs could not be fetched for now (step 5's temperror)."""


def _verify(signer: dkimpy.DKIM, label: str, sig: dict[bytes, bytes], fields: list[tuple[bytes, bytes]],
            sig_field: tuple[bytes, bytes], answers: dict[str, Answer]) -> None:
    """Check ``sig`` (tags already checked) over ``fields`` in order, then over ``sig_field`` with b=
    emptied, with its key from ``answers``; raises :class:`_Broken` or :class:`_Unfetched`."""
    name = _key_name(sig)
    assert name is not None  # _collect refused the sets without one
    answer = answers.get(name)
    if answer is None or answer.temporary:
        raise _Unfetched(f"{label}: key lookup {answer.status if answer else 'not done'}: {name}")
    texts = answer.texts()
    if not texts:
        raise _Broken(f"{label}: no key at {name}")
    try:  # the key record checked as a DKIM key's is: h=, s=, k=, revoked, absurd RSA sizes
        record, _ = _check_key(_key_record(texts, name), {b"a": sig[b"a"], b"d": sig[b"d"]}, name)
    except _Refused as exc:
        raise _Broken(f"{label}: {exc.reason}") from None

    try:
        ok = dkimpy_verify(signer, sig, fields, sig_field, record)
    except dkimpy.DKIMException as exc:  # a key too short for the configured minimum, ...
        raise _Broken(f"{label}: {exc}"[:120]) from None
    except Exception as exc:  # a key dkimpy cannot use after all
        raise _Broken(f"{label}: {type(exc).__name__}: {exc}"[:120]) from None
    if not ok:
        raise _Broken(f"{label} did not validate")


def verify_chain(raw: bytes, answers: dict[str, Answer], min_rsa_bits: int = 1024) -> ArcOutcome:
    """Verify the ARC chain of ``raw`` with the key answers already fetched (RFC 8617 5.2)."""
    headers, body, malformed = _parse_message(raw)
    if not _arc_fields(headers):
        return ArcOutcome("none")
    try:
        if malformed:
            raise _Broken(malformed)
        chain, sealers = _collect(headers, time.time())
    except _Broken as exc:
        instances, sealers = _lenient_sealers(headers)
        return ArcOutcome("fail", instances, sealers, str(exc))
    newest = len(chain)
    signer = dkimpy.DKIM(minkey=min_rsa_bits)
    unfetched = []
    try:
        # step 4: the newest AMS, its body hashed once; older ones need not be validated (step 5)
        name, value, tags = chain[newest][_AMS]
        try:
            sig, names = _check_signature(tags, time.time(), arc=True)
            bodies = _BodyHashes(body)
            bodies.check_length(sig)
            signed, _ = _select(headers, names)
            if len(signed) > MAX_SIGNED_FIELDS:
                raise _Refused("permerror", f"h= selects {len(signed)} header fields, over {MAX_SIGNED_FIELDS}")
        except _Refused as exc:
            raise _Broken(f"ARC-Message-Signature[{newest}]: {exc.reason}") from None
        if not bodies.matches(sig):
            raise _Broken(f"ARC-Message-Signature[{newest}]: body hash mismatch (the body was altered)")
        try:
            _verify(signer, f"ARC-Message-Signature[{newest}]", sig, signed, (name, value), answers)
        except _Unfetched as exc:
            unfetched.append(str(exc))
        # step 6: every seal, newest first, over the sets up to its own in instance order.  A set's
        # fields are covered by every later seal: they are canonicalised ("relaxed", RFC 8617 5.1.1)
        # once here and hashed as they are ("simple"); dkimpy would canonicalise them again for each
        # seal (50 seals over a 600 KB ARC-Authentication-Results: 2.7 s).
        canonical = {i: Relaxed.canonicalize_headers([chain[i][kind][:2] for kind in (_AAR, _AMS, _AS)]) for i in chain}
        for instance in range(newest, 0, -1):
            covered = [field for i in range(1, instance + 1) for field in canonical[i]]
            seal = {**chain[instance][_AS][2], b"c": b"simple/simple", b"a": _ALGORITHM}
            try:
                _verify(signer, f"ARC-Seal[{instance}]", seal, covered[:-1], covered[-1], answers)
            except _Unfetched as exc:
                unfetched.append(str(exc))
    except _Broken as exc:  # a failure a key we have shows is a failure whatever the missing keys say
        return ArcOutcome("fail", newest, sealers, str(exc))
    if unfetched:
        return ArcOutcome("temperror", newest, sealers, unfetched[0])
    return ArcOutcome("pass", newest, sealers, "")


def _key_names(msg: "Message") -> list[str]:
    """The keys verification may need: every seal's and the newest ARC-Message-Signature's.

    Older AMSs are never validated (RFC 8617 5.2 step 5), so their keys are not asked: a name that
    never answers there made every scan of the message wait for the DNS timeout.  Nothing is asked
    past 50 sets' worth of fields (the chain fails anyway, and each could name another key)."""
    seals, sigs = msg.get_raw("ARC-Seal"), msg.get_raw("ARC-Message-Signature")
    if len(seals) + len(sigs) > 2 * MAX_SETS:
        return []
    parsed = [(kind, tags, int(i) if (i := tags.get(b"i", b"").strip()).isdigit() and len(i) <= 2 else 0)
              for kind, values in ((_AS, seals), (_AMS, sigs)) for tags in map(_tags, values) if tags]
    newest = max((instance for _, _, instance in parsed), default=0)
    names = []
    for kind, tags, instance in parsed:
        if kind == _AMS and instance != newest:
            continue
        name = _key_name(tags)
        if name:
            names.append(name)
    return list(dict.fromkeys(names))


class ArcCheck(Check):
    """Optional ARC chain verification; publishes :class:`ArcOutcome` for DMARC."""

    name = "arc"
    network = True
    symbols = (
        SymbolDef("ARC_ALLOW", 0.0, "ARC: the chain of custody validates", "arc"),
        SymbolDef("ARC_REJECT", 0.0, "ARC: the chain of custody is broken", "arc"),
        SymbolDef("ARC_NA", 0.0, "ARC: the message carries no ARC set", "arc"),
        SymbolDef("ARC_TEMPFAIL", 0.0, "ARC: a sealing key could not be fetched", "arc"),
    )
    _SYMBOL = {"pass": "ARC_ALLOW", "fail": "ARC_REJECT", "none": "ARC_NA", "temperror": "ARC_TEMPFAIL"}

    def __init__(self, min_rsa_bits: int = 1024):
        self.min_rsa_bits = min_rsa_bits

    def questions(self, msg: "Message", ctx: ScanContext) -> list[Question]:
        return [Question(n, "TXT") for n in _key_names(msg)]

    async def arun(self, msg: "Message", ctx: ScanContext) -> list[Hit]:
        names = _key_names(msg)
        answers: dict[str, Answer] = {}
        if names and ctx.resolver is not None:
            answers = await fetch_keys(ctx.resolver, names, ctx.deadline)
        outcome = verify_chain(msg.raw, answers, self.min_rsa_bits)
        ctx.publish(outcome)
        result = outcome.cv if outcome.cv in ("pass", "fail", "none") else "fail"
        comment = outcome.reason if outcome.cv not in ("pass", "none") else None
        ctx.add_auth_result(resinfo("arc", result, comment=re.sub(r"\s+", " ", comment)[:80] if comment else None))
        options = [f"i={outcome.instances}"] + [f"sealer={d}" for d in outcome.sealers[:3]] if outcome.instances else []
        return [Hit(self._SYMBOL[outcome.cv], 1.0, tuple(options))]


def factory(config: "Config", store: object = None) -> ArcCheck | None:
    if not network_enabled(config, "arc"):
        return None
    return ArcCheck(config.auth.dkim_min_rsa_bits)
