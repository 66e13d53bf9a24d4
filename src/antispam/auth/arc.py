"""ARC (RFC 8617): verify the chain of custody with dkimpy, keys through our resolver.

The chain's validation (``cv``) and the sealing domains are published as an
:class:`ArcOutcome`.  ARC by itself proves only that each sealer saw the
message as it says; it matters when the operator trusts a sealer (a mailing
list, a forwarding service): then the DMARC check may let a DMARC failure of
mail that sealer forwarded through, and says so in its options.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import dkim as dkimpy

from ..check import Check, Hit, Question, ScanContext, SymbolDef
from ..dns import Answer
from . import network_enabled
from .authres import resinfo
from .dkim import _key_name, _tags, fetch_keys

if TYPE_CHECKING:  # pragma: no cover
    from ..config import Config
    from ..message import Message


#: instance values run from 1 to 50 (RFC 8617 section 4.2.1)
MAX_SETS = 50


@dataclass(frozen=True, slots=True)
class ArcOutcome:
    """``cv``: pass, fail, none or temperror; ``sealers``: d= of each ARC-Seal, newest instance first."""

    cv: str
    instances: int = 0
    sealers: tuple[str, ...] = ()
    reason: str = ""


def _instance(tags: dict[bytes, bytes]) -> int:
    try:
        return int(tags.get(b"i", b"0").strip())
    except ValueError:
        return 0


def _seals(msg: "Message") -> list[tuple[int, str]]:
    out = []
    for v in msg.get_raw("ARC-Seal"):
        tags = _tags(v) or {}
        out.append((_instance(tags), tags.get(b"d", b"").decode("ascii", "replace").strip().lower()))
    return sorted(out, reverse=True)


def _key_names(msg: "Message") -> list[str]:
    names = []
    for header in ("ARC-Seal", "ARC-Message-Signature"):
        for v in msg.get_raw(header):
            tags = _tags(v)
            name = _key_name(tags) if tags else None
            if name:
                names.append(name)
    return names


def _structural_failure(arc: dkimpy.ARC) -> str | None:
    """Why the chain fails whatever its keys say, or None: what RFC 8617 section 5.2 settles
    before any signature is checked, so that a key lookup that timed out does not turn it into a
    temperror.

    - An ARC-Seal or ARC-Message-Signature not in the set its ``i=`` tag names (section 4.2.1).
      dkimpy files each ARC header under the first ``i=<digits>`` its regex finds in the value,
      which may sit inside another tag (``e=i=2; i=0; ...``), while :func:`_seals` ranks the
      sealers by the ``i=`` tag itself.  Where the two disagree, the newest sealer we would trust
      is not the set dkimpy validated as newest: an attacker's set could pass as the trusted
      list's.
    - The newest ARC-Seal records ``cv=fail`` (step 2): a sealer already found the chain broken.
    """
    try:
        newest, grouped = arc.sorted_arc_headers()
    except Exception:  # a mangled header block: dkimpy's verification reports it
        return None
    for instance, (name, value) in grouped:
        if name.lower() == b"arc-authentication-results":
            continue
        tags = _tags(value) or {}
        if _instance(tags) != instance:
            return f"{name.decode('ascii', 'replace')} i= tag does not name its set {instance}"
        if instance == newest and name.lower() == b"arc-seal" and tags.get(b"cv", b"").strip().lower() == b"fail":
            return f"ARC-Seal[{instance}] reported cv=fail"
    return None


def _needed_unfetched(results: list[dict], temp: set[str]) -> str | None:
    """A key that a signature dkimpy found invalid needed and that could not be fetched (a lookup
    that failed for now), or None: only then is a failed chain a temperror."""
    for r in results:
        for kind in ("ams", "as"):
            if r.get(f"{kind}-valid", True) is False:
                name = f"{r[f'{kind}-selector'].decode('ascii', 'replace')}._domainkey." \
                       f"{r[f'{kind}-domain'].decode('ascii', 'replace')}".strip().lower()
                if name in temp:
                    return name
    return None


def verify_chain(raw: bytes, seals: list[tuple[int, str]], answers: dict[str, Answer],
                 min_rsa_bits: int = 1024) -> ArcOutcome:
    """Verify the ARC chain of ``raw`` with the key answers already fetched."""
    if not seals:
        return ArcOutcome("none")
    instances = seals[0][0]
    sealers = tuple(d for _, d in seals)
    if max(instances, len(seals)) > MAX_SETS:
        # dkimpy enforces the limit only when it seals; a chain past it is invalid (RFC 8617 4.2.1)
        return ArcOutcome("fail", instances, sealers, f"more than {MAX_SETS} ARC sets")
    try:  # one parse of the message for the structure and for dkimpy's verification
        arc = dkimpy.ARC(raw, minkey=min_rsa_bits)
    except Exception as exc:  # dkimpy on a mangled message
        return ArcOutcome("fail", instances, sealers, f"{type(exc).__name__}: {exc}"[:120])
    structural = _structural_failure(arc)
    if structural:
        return ArcOutcome("fail", instances, sealers, structural)
    temp = {n for n, a in answers.items() if a.temporary}

    def dnsfunc(name: bytes | str, timeout: float = 5) -> bytes | None:
        key = (name.decode("ascii", "replace") if isinstance(name, bytes) else name).rstrip(".").lower()
        a = answers.get(key)
        texts = a.texts() if a is not None else []
        return texts[0] if texts else None

    try:
        cv, results, reason = arc.verify(dnsfunc=dnsfunc)
    except dkimpy.DKIMException as exc:  # as dkimpy.arc_verify reports it
        cv, results, reason = dkimpy.CV_Fail, [], str(exc)
    except Exception as exc:  # dkimpy on a mangled message
        return ArcOutcome("fail", instances, sealers, f"{type(exc).__name__}: {exc}"[:120])
    text = cv.decode() if isinstance(cv, bytes) else "fail"  # None: a seal recorded cv=fail, chain ended
    # A signature that did not validate may be the missing key's doing (step 5's "temperror"); a
    # structural failure dkimpy raised (an incomplete or duplicated set) is a failure whatever the keys.
    unfetched = _needed_unfetched(results, temp) if temp and "did not validate" in str(reason) else None
    if unfetched:
        return ArcOutcome("temperror", instances, sealers, f"key lookup failed: {unfetched}")
    return ArcOutcome(text, instances, sealers, str(reason)[:120])


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
        seals = _seals(msg)
        answers: dict[str, Answer] = {}
        if seals and ctx.resolver is not None:
            answers = await fetch_keys(ctx.resolver, _key_names(msg), ctx.deadline)
        outcome = verify_chain(msg.raw, seals, answers, self.min_rsa_bits)
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
