"""DMARC: RFC 9989 (DMARCbis, the default) and RFC 7489, selectable by ``[auth] dmarc_mode``.

What both modes share: the Author Domain is the domain of the From header;
DMARC passes when SPF passed for a domain aligned with it, or any DKIM
signature passed for an aligned ``d=``.  Strict alignment is equality;
relaxed alignment is equality of Organizational Domains.  The modes differ in
how the policy record and the Organizational Domain are found:

* **rfc7489**: the record at ``_dmarc.<Author Domain>``, else at
  ``_dmarc.<Organizational Domain>``, the Organizational Domain being the
  registrable domain under the Public Suffix List (``publicsuffixlist``, which
  ships the list: nothing is downloaded at run time).  ``pct`` samples which
  failing messages get the policy.
* **rfc9989**: the *DNS Tree Walk* (section 4.10): ask ``_dmarc.<d>`` for a
  name, then (after cutting to the last 7 labels when longer) for each parent
  down to the top-level label, stopping at a record with ``psd=n`` or
  ``psd=y``.  The Organizational Domain of a name (4.10.2): a record with
  ``psd=n`` marks it; a record with ``psd=y`` (a public suffix operator) above
  the name puts it one label below; otherwise it is the shortest name with a
  record; with no record at all it is the name itself.  The policy record
  (4.10.1) is the Author Domain's own, else its Organizational Domain's, else
  its Public Suffix Domain's.  ``np`` is the policy for Author Domains that do
  not exist, ``t=y`` (test mode) lowers the policy one step, and ``pct`` is
  gone.

Why rfc9989 is the default: it is the current standard and obsoletes RFC
7489; it needs no copy of the Public Suffix List, which goes stale inside
any installed package, because domain owners state their own boundaries in
DNS (``psd=``); and for names where the PSL and the owners agree both give the
same Organizational Domain.

Why the walk costs no extra round trips: the names a walk may ask are fixed
by the labels of the domain, so all of them (for the Author Domain, the SPF
domain and every DKIM ``d=``) are asked at once, and the walk then reads the
answers in order.  Most are cached across scans (``_dmarc.<tld>`` once per
TTL for all mail).

A DNS failure on a record the outcome depends on gives ``temperror``, never
``pass`` nor ``none``; so does a failed SPF or DKIM lookup when nothing else
aligned, since the missing result might have been the aligned pass.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable

from ..check import Check, Hit, Question, ScanContext, SymbolDef
from ..config import DMARC_MODES
from ..dns import Answer
from ..domains import registered_domain, to_ascii
from ..errors import ConfigError
from ..message import domain_of, split_addresses
from . import network_enabled
from .arc import ArcOutcome
from .authres import resinfo
from .dkim import DkimOutcome, _tags
from .spf import SpfOutcome

if TYPE_CHECKING:  # pragma: no cover
    from ..config import Config
    from ..dns import Resolver
    from ..message import Message

MODES = DMARC_MODES
POLICIES = ("none", "quarantine", "reject")
#: RFC 9989 tree walk: a longer name is cut to this many labels after the first query
MAX_WALK_LABELS = 7


class _Temp(Exception):
    """An answer the outcome depends on is a DNS failure."""


@dataclass(frozen=True, slots=True)
class DmarcRecord:
    p: str = "none"
    sp: str | None = None
    np: str | None = None
    adkim: str = "r"
    aspf: str = "r"
    pct: int = 100
    t: bool = False
    psd: str = "u"
    rua: tuple[str, ...] = ()
    #: the policy tags (p, sp, np) published with a value that is no policy, as ``tag=value``
    invalid: tuple[str, ...] = ()
    #: whether the record has a ``p`` tag at all (RFC 7489 requires one, RFC 9989 reads none as p=none)
    has_p: bool = True


def parse_record(text: bytes | str) -> DmarcRecord | None:
    """A ``v=DMARC1`` record, or None when the text is not one.

    Unknown tags are ignored, and so are invalid values of the other tags (their defaults
    apply).  An invalid ``p``, ``sp`` or ``np`` is kept in ``invalid`` rather than read as a
    default: it decides whether the record applies at all (:func:`usable_policy`).
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    parts = [p.strip() for p in text.split(";")]
    if not parts or parts[0].replace(" ", "").lower() != "v=dmarc1":
        return None
    tags: dict[str, str] = {}
    for part in parts[1:]:
        k, sep, v = part.partition("=")
        if sep:
            tags.setdefault(k.strip().lower(), v.strip())

    def pol(v: str | None) -> str | None:
        v = (v or "").lower()
        return v if v in POLICIES else None

    align = lambda v: "s" if (v or "").lower() == "s" else "r"  # noqa: E731
    psd = (tags.get("psd") or "u").lower()
    return DmarcRecord(
        p=pol(tags.get("p")) or "none", sp=pol(tags.get("sp")), np=pol(tags.get("np")),
        adkim=align(tags.get("adkim")), aspf=align(tags.get("aspf")), pct=_percent(tags.get("pct")),
        t=(tags.get("t") or "n").lower() == "y", psd=psd if psd in ("y", "n") else "u",
        rua=tuple(u.strip() for u in tags.get("rua", "").split(",") if u.strip()),
        invalid=tuple(f"{k}={tags[k]}" for k in ("p", "sp", "np") if k in tags and pol(tags[k]) is None),
        has_p="p" in tags,
    )


def _percent(value: str | None) -> int:
    """RFC 7489 ``pct``: 1 to 3 digits from 0 to 100 (sections 6.3, 6.4), else the default 100.

    Section 6.3: syntax errors are discarded in favor of default values.  Clamping ``pct=-5``
    to 0 instead sampled every failing message out, lowering a ``p=reject`` to quarantine.
    """
    v = (value or "").strip()
    return int(v) if v.isascii() and v.isdigit() and len(v) <= 3 and int(v) <= 100 else 100


#: RFC 3986 URI as far as DMARC needs: a scheme, a colon, then printable ASCII (commas separate URIs)
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:[!-+\--~]+$")


def _valid_uri(uri: str) -> bool:
    """A syntactically valid reporting URI (RFC 7489 6.4 ``dmarc-uri``: a URI, then an optional ``!size``)."""
    return bool(_URI.match(uri.partition("!")[0]))


def policy_errors(rec: DmarcRecord, mode: str) -> list[str]:
    """What keeps the record's policy from applying as published: its invalid ``p`` or ``sp``
    (``np`` only in RFC 9989, RFC 7489 has no such tag), and in RFC 7489 a missing ``p``
    (RFC 9989 reads a record with no ``p`` as ``p=none``)."""
    bad = [t for t in rec.invalid if mode == "rfc9989" or not t.startswith("np=")]
    if mode == "rfc7489" and not rec.has_p:
        bad.append("no p")
    return bad


def usable_policy(rec: DmarcRecord, mode: str) -> DmarcRecord | None:
    """The record as its policy is applied, or None when it applies none.

    RFC 7489 section 6.6.3 step 6 and RFC 9989's policy discovery (section 4.10.1): a record
    without a valid ``p``, or with an ``sp`` (or, in RFC 9989, ``np``) that is not valid, is read
    as ``p=none`` when its ``rua`` holds a valid URI, else no DMARC processing applies.  A typo
    (``sp=quarentine``) must not leave ``p=reject`` in force where every other receiver applies
    none.
    """
    bad = policy_errors(rec, mode)
    if not bad:
        return rec
    if any(_valid_uri(u) for u in rec.rua):
        return replace(rec, p="none", sp=None, np=None, invalid=tuple(bad))
    return None


@dataclass(frozen=True, slots=True)
class DmarcOutcome:
    """DMARC result of one message (also what an aggregate-report row needs)."""

    result: str  # pass fail none temperror permerror
    from_domain: str = ""
    policy_domain: str = ""
    org_domain: str = ""
    policy: str = ""  # the policy that applied: none quarantine reject
    disposition: str = "none"
    spf_aligned: bool = False
    dkim_aligned: bool = False
    record: DmarcRecord | None = None
    mode: str = "rfc9989"
    reason: str = ""
    override: str = ""  # e.g. "arc:forwarder.example" when a trusted sealer lifted the policy
    notes: tuple[str, ...] = field(default=())


# --------------------------------------------------------------------------- names


def _ascii_domain(domain: str) -> str | None:
    """The domain as DMARC compares and asks it: lower case, no final dot, internationalised
    labels as the A-labels :func:`antispam.domains.to_ascii` gives (UTS 46 non-transitional).

    A From domain written in Unicode (RFC 6532) and the ``xn--`` form SPF and DKIM identify the
    same domain, so they must align (RFC 8616 section 4) and ask the same ``_dmarc`` names.
    IDNA 2003 (Python's codec) asked ``_dmarc.fass.de`` for ``faß.de``: another registrant's
    policy applied to a spoof of ``xn--fa-hia.de``.  None for a name that is no domain UTS 46
    can encode (a joiner out of context, a disallowed code point, a label over 63 octets):
    no name to ask, and nothing aligns with it."""
    try:
        return to_ascii(domain).lower().rstrip(".")
    except UnicodeError:
        return None


def _labels(domain: str) -> list[str]:
    """The labels of :func:`_ascii_domain` (none for a name it cannot encode)."""
    return [l for l in (_ascii_domain(domain) or "").split(".") if l]


def walk_names(domain: str) -> list[str]:
    """The names an RFC 9989 tree walk may query for ``domain``, in order."""
    labels = _labels(domain)
    if not labels:
        return []
    out = [".".join(labels)]
    for k in range(min(len(labels) - 1, MAX_WALK_LABELS), 0, -1):
        out.append(".".join(labels[-k:]))
    return out


def psl_org_domain(domain: str) -> str:
    """RFC 7489 Organizational Domain: the registrable domain under the PSL (the name itself if none)."""
    d = ".".join(_labels(domain))
    return registered_domain(d) or d


# --------------------------------------------------------------------------- evaluation

Lookup = Callable[[str], Answer]


def _records(lookup: Lookup, domain: str) -> list[DmarcRecord]:
    """Every valid record at ``_dmarc.<domain>``."""
    a = lookup(f"_dmarc.{domain}")
    if a.temporary:
        raise _Temp(f"_dmarc.{domain}: {a.status}")
    return [r for r in (parse_record(t) for t in a.texts()) if r is not None]


def _record(lookup: Lookup, domain: str) -> DmarcRecord | None:
    """The single valid record at ``_dmarc.<domain>``; several valid ones count as none (RFC 9989 4.10)."""
    recs = _records(lookup, domain)
    return recs[0] if len(recs) == 1 else None


def tree_walk(lookup: Lookup, domain: str) -> list[tuple[str, DmarcRecord]]:
    """RFC 9989 section 4.10: the valid records met walking up from ``domain``, longest name first.

    The walk stops at a record carrying ``psd=n`` or ``psd=y``; answers past
    that point are never read, so their failures cannot matter.
    """
    found = []
    for name in walk_names(domain):
        rec = _record(lookup, name)
        if rec is None:
            continue
        found.append((name, rec))
        if rec.psd in ("n", "y"):
            break
    return found


def org_from_walk(domain: str, found: list[tuple[str, DmarcRecord]]) -> str:
    """RFC 9989 section 4.10.2: pick the Organizational Domain from a walk's records.

    Longest name first: ``psd=n`` marks it; ``psd=y`` on any name but the
    starting one puts it one label below; otherwise the name with the fewest
    labels that has a record; with no record at all, the starting name.
    """
    start = ".".join(_labels(domain))
    for name, rec in found:
        if rec.psd == "n":
            return name
        if rec.psd == "y" and name != start:
            labels = _labels(start)
            return ".".join(labels[-(len(_labels(name)) + 1):])
    return found[-1][0] if found else start


def tree_walk_org_domain(lookup: Lookup, domain: str) -> str:
    """RFC 9989 Organizational Domain of ``domain``."""
    return org_from_walk(domain, tree_walk(lookup, domain))


class _Evaluator:
    """One message's DMARC evaluation over answers already fetched."""

    def __init__(self, mode: str, lookup: Lookup):
        self.mode = mode
        self.lookup = lookup
        self._org: dict[str, str] = {}

    def org(self, domain: str) -> str:
        d = ".".join(_labels(domain))
        if d not in self._org:
            self._org[d] = tree_walk_org_domain(self.lookup, d) if self.mode == "rfc9989" else psl_org_domain(d)
        return self._org[d]

    def aligned(self, a: str, b: str, mode: str) -> bool:
        """Whether ``a`` (an SPF or DKIM domain) aligns with ``b`` (the Author Domain).

        An Organizational Domain is always one of its name's parent domains (or the name), so
        ``a`` can share ``b``'s only when it ends with it: any other ``a`` is unaligned without a
        look at its own records, whose failure (a DNS server that never answers, chosen by
        whoever signed) must not turn the Author Domain's policy into a temperror.
        """
        a, b = ".".join(_labels(a)), ".".join(_labels(b))
        if not a or not b:
            return False
        if a == b:
            return True
        if mode != "r":
            return False
        org = self.org(b)
        return (a == org or a.endswith("." + org)) and self.org(a) == org

    def discover(self, from_domain: str) -> tuple[str, DmarcRecord] | None:
        """(policy domain, record) or None."""
        if self.mode == "rfc9989":
            # RFC 9989 4.10.1: the Author Domain's own record; else its Organizational
            # Domain's; else its Public Suffix Domain's (a psd=y record met on the walk)
            rec = _record(self.lookup, from_domain)
            if rec is not None:
                return from_domain, rec
            found = tree_walk(self.lookup, from_domain)
            org = org_from_walk(from_domain, found)
            self._org[from_domain] = org
            for name, r in found:
                if name == org:
                    return name, r
            return next(((n, r) for n, r in found if r.psd == "y"), None)
        recs = _records(self.lookup, from_domain)
        if len(recs) > 1:
            return None  # RFC 7489 6.6.3 step 4: several records end the discovery
        if recs:
            return from_domain, recs[0]
        org = psl_org_domain(from_domain)
        if org != from_domain:
            rec = _record(self.lookup, org)
            if rec is not None:
                return org, rec
        return None


def names_to_ask(mode: str, from_domain: str, other_domains: list[str]) -> list[str]:
    """Every ``_dmarc`` name the evaluation may read, to be asked at once."""
    out: list[str] = []
    for d in [from_domain, *other_domains]:
        if not _labels(d):  # no domain, or one UTS 46 cannot encode: nothing to ask
            continue
        if mode == "rfc9989":
            out.extend(walk_names(d))
        else:
            out.append(".".join(_labels(d)))
            out.append(psl_org_domain(d))
    return [f"_dmarc.{n}" for n in dict.fromkeys(out)]


def author_domains(msg: "Message") -> list[str]:
    """Every distinct domain of the From addresses, over every From field, in order."""
    out: dict[str, None] = {}
    for value in msg.get_raw("From"):
        for _, addr in split_addresses(value):
            d = domain_of(addr)
            if d:
                out[d] = None
    return list(out)


def _strictness(o: DmarcOutcome) -> int:
    """How strict an outcome is, for choosing among several Author Domains: a failure whose
    policy applies, then a From domain that is no domain name (a permerror), then a failure under
    ``p=none``, above a temperror (the failure is known), above a pass, above no policy."""
    if o.result == "fail":
        return {"reject": 6, "quarantine": 5}.get(o.disposition, 3)
    return {"permerror": 4, "temperror": 2, "pass": 1}.get(o.result, 0)


def _sampled(pct: int, raw: bytes) -> bool:
    """RFC 7489 pct: is this message in the sampled share?  A hash of the message, so rescans agree."""
    if pct >= 100:
        return True
    if pct <= 0:
        return False
    # first 8 bytes of SHA-256 as a uniform number in [0, 2^64): below pct% of the range = sampled
    return int.from_bytes(hashlib.sha256(raw).digest()[:8], "big") < pct * (1 << 64) // 100


def _lower(policy: str) -> str:
    return {"reject": "quarantine", "quarantine": "none"}.get(policy, "none")


async def evaluate(resolver: "Resolver", from_domain: str, spf: SpfOutcome | None, dkim: DkimOutcome | None, *,
                   mode: str = "rfc9989", raw: bytes = b"", deadline: float | None = None) -> DmarcOutcome:
    """DMARC of one message through ``resolver`` (all ``_dmarc`` names asked at once).

    An Author Domain that is no domain UTS 46 can encode (``_ascii_domain`` gives None) is a
    ``permerror``: no ``_dmarc`` name is asked for it, since any name made from it (IDNA 2003
    deleting a joiner, say) would be another domain's."""
    if _ascii_domain(from_domain) is None:
        return DmarcOutcome("permerror", from_domain, mode=mode,
                            reason="From domain is not a domain name (UTS 46 cannot encode it)")
    from_domain = ".".join(_labels(from_domain))
    spf_domain = spf.domain if spf is not None else ""
    dkim_domains = [s.domain for s in dkim.signatures] if dkim is not None else []
    names = names_to_ask(mode, from_domain, [spf_domain, *dkim_domains])
    got = await asyncio.gather(*(resolver.resolve(n, "TXT", deadline) for n in names))
    answers = dict(zip(names, got))

    def lookup(name: str) -> Answer:
        a = answers.get(name)
        return a if a is not None else Answer(name, "TXT", "timeout", detail="not asked")

    ev = _Evaluator(mode, lookup)
    try:
        found = ev.discover(from_domain)
        if found is None:
            return DmarcOutcome("none", from_domain, mode=mode, reason="no DMARC record")
        policy_domain, published = found
        rec = usable_policy(published, mode)
        if rec is None:
            return DmarcOutcome("none", from_domain, mode=mode,
                                reason=f"{policy_domain}: {', '.join(policy_errors(published, mode))} and no valid rua")
        spf_ok = bool(spf and spf.result == "pass" and ev.aligned(spf.domain, from_domain, rec.aspf))
        sigs = dkim.signatures if dkim else ()
        dkim_ok = any(ev.aligned(s.domain, from_domain, rec.adkim) for s in sigs if s.result == "pass")
        # a failed lookup matters only where its pass would have aligned
        temp = []
        if spf is not None and spf.result == "temperror" and ev.aligned(spf.domain, from_domain, rec.aspf):
            temp.append("spf")
        if any(s.result == "temperror" and ev.aligned(s.domain, from_domain, rec.adkim) for s in sigs):
            temp.append("dkim")
        org = ev.org(from_domain)
    except _Temp as exc:
        return DmarcOutcome("temperror", from_domain, mode=mode, reason=str(exc))
    base = dict(from_domain=from_domain, policy_domain=policy_domain, org_domain=org, record=rec, mode=mode,
                spf_aligned=spf_ok, dkim_aligned=dkim_ok)
    # a record read as p=none for an invalid policy tag says so (RFC 7489 6.6.3 step 6)
    read = [f"{', '.join(rec.invalid)}: read as p=none"] if rec.invalid else []
    if spf_ok or dkim_ok:
        return DmarcOutcome("pass", policy=rec.p, disposition="none", notes=tuple(read), **base)
    if temp:
        return DmarcOutcome("temperror", reason=f"{'/'.join(temp)} temperror, no aligned pass", **base)
    # Which policy: p at the Author Domain's own record; else np for a non-existent Author
    # Domain (RFC 9989), else sp, else p.
    policy, notes = rec.p, read
    if policy_domain != from_domain:
        policy = rec.sp or rec.p
        if mode == "rfc9989" and rec.np is not None and await _nonexistent(resolver, from_domain, deadline):
            policy, notes = rec.np, notes + ["np: author domain does not exist"]
    disposition = policy
    if mode == "rfc9989" and rec.t:
        disposition, notes = _lower(policy), notes + ["t=y: test mode"]
    elif mode == "rfc7489" and not _sampled(rec.pct, raw):
        disposition, notes = _lower(policy), notes + [f"pct={rec.pct}: not sampled"]
    return DmarcOutcome("fail", policy=policy, disposition=disposition, notes=tuple(notes), **base)


async def _nonexistent(resolver: "Resolver", domain: str, deadline: float | None) -> bool:
    """RFC 9989: a domain with no A, AAAA or MX records (NXDOMAIN or NODATA for each) does not exist."""
    got = await asyncio.gather(*(resolver.resolve(domain, t, deadline) for t in ("A", "AAAA", "MX")))
    if any(a.temporary for a in got):
        return False  # unknown: keep the ordinary policy
    return all(a.status in ("nxdomain", "nodata") for a in got)


# --------------------------------------------------------------------------- the check


def _sealer(domain: str) -> str:
    """A ``trusted_arc_sealers`` entry as the seals' ``d=`` is compared: A-labels (a sealer written in
    Unicode never matched the ASCII ``d=``), lower case, no final dot."""
    try:
        return to_ascii(domain.strip().rstrip(".")).lower()
    except UnicodeError:
        raise ConfigError(f"{domain!r} is not a domain name (UTS 46 cannot encode it)",
                          key="auth.trusted_arc_sealers") from None


class DmarcCheck(Check):
    """DMARC from the SPF and DKIM outcomes of the same scan (and ARC, when trusted sealers are set)."""

    name = "dmarc"
    network = True
    requires = ("spf", "dkim", "arc")
    symbols = (
        SymbolDef("DMARC_POLICY_ALLOW", -0.5, "DMARC: aligned SPF or DKIM pass", "dmarc"),
        SymbolDef("DMARC_POLICY_REJECT", 3.0, "DMARC: fails, the domain asks to reject", "dmarc"),
        SymbolDef("DMARC_POLICY_QUARANTINE", 1.5, "DMARC: fails, the domain asks to quarantine", "dmarc"),
        SymbolDef("DMARC_POLICY_SOFTFAIL", 0.1, "DMARC: fails, the domain asks for no action (p=none or test mode)", "dmarc"),
        SymbolDef("DMARC_NA", 0.0, "DMARC: no policy for the From domain", "dmarc"),
        SymbolDef("DMARC_TEMPFAIL", 0.0, "DMARC: a DNS failure left the result unknown", "dmarc"),
        SymbolDef("DMARC_BAD_FROM_DOMAIN", 1.5, "DMARC: the From domain is no domain name (UTS 46 cannot encode it)",
                  "dmarc"),
    )

    def __init__(self, mode: str = "rfc9989", trusted_arc_sealers: tuple[str, ...] = ()):
        if mode not in MODES:
            raise ValueError(f"dmarc_mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.trusted_arc_sealers = frozenset(_sealer(s) for s in trusted_arc_sealers)

    def questions(self, msg: "Message", ctx: ScanContext) -> list[Question]:
        authors = author_domains(msg)
        if not authors:
            return []
        env = ctx.envelope
        mail_from = (env.mail_from or "").strip().strip("<>")
        # the SPF identity's domain: MAIL FROM's, or HELO when MAIL FROM is null
        others = [mail_from.rpartition("@")[2] if mail_from else (env.helo or "")]
        for v in msg.get_raw("DKIM-Signature"):
            dom = (_tags(v) or {}).get(b"d")
            if dom:
                others.append(dom.decode("ascii", "replace").strip())
        names = dict.fromkeys(n for d in authors for n in names_to_ask(self.mode, d, others))
        return [Question(n, "TXT") for n in names]

    async def arun(self, msg: "Message", ctx: ScanContext) -> list[Hit]:
        authors = author_domains(msg)
        if not authors or ctx.resolver is None:
            from_domain = authors[0] if authors else ""
            ctx.publish(DmarcOutcome("none", from_domain, mode=self.mode, reason="no From domain"))
            ctx.add_auth_result(resinfo("dmarc", "none"))
            return [Hit("DMARC_NA", 1.0, ("no From domain",))]
        # Several Author Domains (RFC 5322 allows one From field, spoofers add a second, or list
        # several addresses): each is checked and the strictest outcome applies (RFC 7489
        # 6.6.1), so no added address can hide the one a reader sees.
        outcomes = [await evaluate(ctx.resolver, d, ctx.get(SpfOutcome), ctx.get(DkimOutcome),
                                   mode=self.mode, raw=msg.raw, deadline=ctx.deadline) for d in authors]
        outcome = max(outcomes, key=_strictness)
        if len(authors) > 1:
            outcome = replace(outcome, notes=(*outcome.notes, f"strictest of {len(authors)} From domains"))
        arc = ctx.get(ArcOutcome)
        if outcome.result == "fail" and outcome.disposition != "none" and arc is not None and arc.cv == "pass":
            # Only the newest ARC set's sealer vouches for the message as it reached us: an older
            # set stays valid whatever a later hop changed, since only the newest AMS must
            # validate (RFC 8617 section 5.2).  Trusting any sealer of the chain would let an
            # untrusted hop rewrite a message a trusted list once sealed.
            newest = arc.sealers[0] if arc.sealers else ""
            if newest in self.trusted_arc_sealers:
                outcome = replace(outcome, disposition="none", override=f"arc:{newest}")
        ctx.publish(outcome)
        comment = None
        if outcome.record is not None:
            comment = f"p={outcome.policy or outcome.record.p} dis={outcome.disposition.upper()}"
        elif outcome.reason and outcome.result != "none":
            comment = outcome.reason[:80]
        ctx.add_auth_result(resinfo("dmarc", outcome.result, [("header.from", outcome.from_domain)], comment=comment))
        return [self._hit(outcome)]

    @staticmethod
    def _hit(o: DmarcOutcome) -> Hit:
        opts = [f"domain={o.from_domain}"]
        if o.record is not None:
            opts += [f"policy_domain={o.policy_domain}", f"p={o.policy}", f"dis={o.disposition}",
                     f"spf={'aligned' if o.spf_aligned else 'unaligned'}",
                     f"dkim={'aligned' if o.dkim_aligned else 'unaligned'}", f"mode={o.mode}"]
        opts += list(o.notes)
        if o.override:
            opts.append(f"override={o.override}")
        if o.reason:
            opts.append(o.reason[:100])
        if o.result == "pass" or o.override:
            return Hit("DMARC_POLICY_ALLOW", 1.0, tuple(opts))
        if o.result == "fail":
            sym = {"reject": "DMARC_POLICY_REJECT", "quarantine": "DMARC_POLICY_QUARANTINE"}.get(
                o.disposition, "DMARC_POLICY_SOFTFAIL")
            return Hit(sym, 1.0, tuple(opts))
        if o.result == "temperror":
            return Hit("DMARC_TEMPFAIL", 1.0, tuple(opts))
        if o.result == "permerror":
            # No registrant can hold such a name, so no policy can be found for it; a reader may
            # still see a real domain in it (a joiner is invisible), which IDNA 2003 once made
            # the domain asked, a policy applied by accident.  Not "no policy": the author is false.
            return Hit("DMARC_BAD_FROM_DOMAIN", 1.0, tuple(opts))
        return Hit("DMARC_NA", 1.0, tuple(opts))


def factory(config: "Config", store: object = None) -> DmarcCheck | None:
    if not network_enabled(config, "dmarc"):
        return None
    return DmarcCheck(config.auth.dmarc_mode, config.auth.trusted_arc_sealers)
