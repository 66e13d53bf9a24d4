"""SPF (RFC 7208) with pyspf, its DNS routed through our resolver and cache.

How pyspf is driven, and why.  pyspf is synchronous and asks DNS through the
module-level function ``spf.DNSLookup``.  Two ways to feed it from async code:

1. run ``check_host`` in a worker thread (``asyncio.to_thread``) with a
   blocking lookup (``Resolver.resolve_sync``); or
2. *replay*: run pyspf on the event loop against the cache only; a lookup that
   is not cached raises :class:`_Miss`, which aborts the evaluation; we then
   resolve the missing questions asynchronously and evaluate again from the
   start, until an evaluation completes without a miss.

We use (2), by measurement (``benchmarks/auth.py``, a record with three nested
includes, loopback server, this project's shared 2-core machine, four runs):
with the answers cached, replay takes 0.08 ms per check_host (p50) against
0.12-0.21 ms for the thread hand-off; uncached, both take 2.7-4 ms, the DNS
round trips, with no consistent winner.  SPF
evaluation is a deterministic function of the DNS answers, so replaying it is
exact, and a replay's tens of microseconds of CPU are small beside a round
trip.  It needs no thread pool (whose size would cap concurrent scans), and
when the engine has prefetched the sender's record, the usual record with only
ip4/ip6 mechanisms completes in the first round with no await at all.  Misses are also collected when pyspf swallows the exception
(its ``exp=`` fetch uses a bare ``except``), so no question is lost.

Where pyspf departs from RFC 7208, :class:`_Query` follows the RFC instead (each case was found by
running Perl Mail::SPF, libspf2 and pyspf on the same loopback zones): the sender is split at its
last "@", macros are expanded by our own parser (:meth:`_Query.expand`), modifiers are read
case-insensitively with repeated unknown ones ignored, DNS errors under "ptr" and %{p} skip names,
and a malformed domain is "none" before any query (:func:`malformed`).

Limits (RFC 7208 section 4.6.4): by default 10 DNS-querying terms and 2 void
lookups, as the RFC says.  ``spf_strict_limits = false`` selects the looser
compatibility limits (:data:`COMPAT_LIMITS`), for sites that would rather
accept records that exceed the RFC's count, as several deployed filters do.
The limit that fired is reported in the options (``limit=...``).
"""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import re
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import spf as pyspf

from ..check import Check, Hit, Question, ScanContext, SymbolDef
from ..dns import Answer, make_name, name_text
from ..domains import to_ascii
from . import network_enabled
from .authres import resinfo

if TYPE_CHECKING:  # pragma: no cover
    from ..config import Config
    from ..dns import Resolver
    from ..message import Message

#: (DNS-querying terms, void lookups): RFC 7208 4.6.4
STRICT_LIMITS = (10, 2)
#: looser limits for compatibility mode
COMPAT_LIMITS = (30, 10)
#: evaluations of one check_host before giving up (each round resolves at least one new question;
#: with MX and PTR targets fetched together, 10 terms of the strict limits need far fewer)
MAX_ROUNDS = 256

RESULTS = ("pass", "fail", "softfail", "neutral", "none", "permerror", "temperror")
#: result -> the end of its symbol's name, for both identities
_SYMBOL_SUFFIX = {"pass": "ALLOW", "fail": "FAIL", "softfail": "SOFTFAIL", "neutral": "NEUTRAL", "none": "NA",
                  "permerror": "PERMFAIL", "temperror": "TEMPFAIL"}
SYMBOL_OF = {r: "R_SPF_" + s for r, s in _SYMBOL_SUFFIX.items()}
#: the separate check of the HELO identity (when MAIL FROM is not null)
HELO_SYMBOL_OF = {r: "SPF_HELO_" + s for r, s in _SYMBOL_SUFFIX.items()}

Lookup = Callable[[str, str], Answer]

#: RFC 7208 7.1: "%{" macro-letter transformers *delimiter "}", letters of either case ("R" too)
_MACRO = re.compile(r"%\{([slodiphcrtv])([0-9]*)(r?)([.\-+,/_=]*)\}", re.IGNORECASE)
#: the other macro-expands: "%%", "%_", "%-"
_ESCAPES = {"%%": "%", "%_": " ", "%-": "%20"}
#: longest domain name, in the dotted form a query is made from (RFC 7208 7.3)
MAX_NAME = 253


@dataclass(frozen=True, slots=True)
class SpfOutcome:
    """The SPF result of one message, published for DMARC.

    ``domain`` is the domain whose policy was evaluated: the MAIL FROM domain,
    or the HELO name when MAIL FROM was null (RFC 7208 2.4).
    """

    result: str
    identity: str  # "mailfrom" or "helo"
    sender: str
    domain: str
    mechanism: str = ""
    reason: str = ""
    limit: str = ""


@dataclass(frozen=True, slots=True)
class SpfHeloOutcome:
    """The separate SPF result of the HELO identity (RFC 7208 2.3), when MAIL FROM was not null.

    Not what DMARC reads (that is :class:`SpfOutcome`, the MAIL FROM identity):
    published for checks and reports that want to know whether the sending host
    itself is authorized by the name it gave.
    """

    outcome: SpfOutcome


def helo_to_check(helo: str | None) -> str:
    """The HELO name when it can be checked on its own: a domain name with a dot, not an address literal."""
    h = (helo or "").strip().rstrip(".")
    if not h or "." not in h or h.startswith("["):
        return ""
    try:
        ipaddress.ip_address(h)
        return ""
    except ValueError:
        return h.lower()


#: RFC 7208 4.6.1 toplabel: letters, digits and inner hyphens, not all digits
_TOPLABEL = re.compile(r"(?:[a-z0-9]*[a-z][a-z0-9]*|[a-z0-9]+-[a-z0-9-]*[a-z0-9])", re.IGNORECASE)


def malformed(domain: str) -> str:
    """Why ``domain`` cannot have an SPF policy (RFC 7208 4.3), or "" when it can.

    check_host() returns "none" for such a domain at once: a single label (``localhost``), an address
    (``192.0.2.1``, ``[192.0.2.1]``), an empty label, a label over 63 octets or a name over 253
    characters.  Saying which keeps the ``none`` readable, and no query is sent for a name that
    cannot have a record.  A domain still in Unicode is one UTS 46 could not encode (``_identity``
    turns every other into A-labels).
    """
    if not domain.isascii():
        return "not a domain name (UTS 46 cannot encode it)"
    if "." not in domain:
        return "not a multi-label domain name"
    if "" in domain.split("."):
        return "malformed domain name (empty label)"
    try:
        labels = make_name(domain).labels[:-1]
    except Exception as exc:  # dns.name's LabelTooLong, NameTooLong
        return f"malformed domain name ({type(exc).__name__})"
    if not _TOPLABEL.fullmatch(labels[-1].decode("ascii", "replace")):
        return "malformed domain name (top label)"
    return ""


class _Miss(BaseException):
    """A question not in the cache yet.  BaseException so pyspf's ``except Exception`` cannot eat it."""


# pyspf calls the module-level DNSLookup; we install a dispatcher that uses the
# lookup of the evaluation running in this context, and pyspf's own otherwise,
# so other users of pyspf in the same process are unaffected.
_CURRENT: contextvars.ContextVar[Lookup | None] = contextvars.ContextVar("antispam_spf_lookup", default=None)
_ORIGINAL_LOOKUP = pyspf.DNSLookup


def _dispatch(name: str, qtype: str, strict: object = True, timeout: float = 20):
    lookup = _CURRENT.get()
    if lookup is None:
        return _ORIGINAL_LOOKUP(name, qtype, strict, timeout)
    return _to_pyspf(lookup(name, qtype), name, qtype)


pyspf.DNSLookup = _dispatch


def _to_pyspf(answer: Answer, name: str, qtype: str) -> list[tuple[tuple[str, str], object]]:
    """Our Answer in pyspf's shape: ``[((owner, type), value)]`` with CNAME steps first."""
    if answer.temporary:
        raise pyspf.TempError(f"DNS {answer.status} for {name} {qtype}")
    out: list[tuple[tuple[str, str], object]] = [((o, "CNAME"), t) for o, t in answer.cnames]
    owner = answer.cnames[-1][1] if answer.cnames else name.rstrip(".")
    for r in answer.records:
        if qtype in ("A", "AAAA"):
            value: object = r.address
        elif qtype == "MX":
            value = (r.preference, r.exchange.to_text(True))
        elif qtype == "PTR":
            value = r.target.to_text(True)
        elif qtype in ("TXT", "SPF"):
            value = tuple(r.strings)
        else:
            value = r.to_text()
        out.append(((owner, qtype), value))
    return out


class _Query(pyspf.query):
    """pyspf's query with the processing limits per instance instead of module globals."""

    def __init__(self, *args, limits: tuple[int, int] = STRICT_LIMITS, **kw):
        super().__init__(*args, **kw)
        # pyspf splits the sender at its first "@"; the domain follows the last one (see _identity),
        # and %{l} is everything before it.
        local, _, domain = self.s.rpartition("@")
        self.l, self.o, self.d = local or "postmaster", domain, domain
        self.max_lookups, self.max_void = limits
        self.limit_fired = ""
        #: > 0 while the address lookups of an "mx" or "ptr" term's hosts are being made
        self._host_lookups = 0

    def check0(self, spf, recursion):
        """pyspf's evaluation of one record, given the record with its modifiers read as RFC 7208 6 says."""
        return super().check0(self._rfc_modifiers(spf) if spf else spf, recursion)

    def _rfc_modifiers(self, record: str) -> str:
        """``record`` with modifier names case-folded for pyspf and repeats of unknown modifiers left out.

        Modifier names are case-insensitive (RFC 7208 12, RFC 5234 2.3), but pyspf took
        ``REDIRECT=`` for an unknown modifier and ignored it, and let ``exp=`` and ``EXP=`` stand
        together.  Unknown modifiers "MUST be ignored no matter where, or how often, in a record
        they appear" (6), but pyspf made a repeated one a permerror.  A dropped repeat's value is
        still expanded, so a syntax error in it stays a permerror.
        """
        seen: set[str] = set()
        terms = []
        for term in record.split(" "):
            m = pyspf.RE_MODIFIER.match(term)
            if m:
                name = m.group(1).lower()
                if name in ("exp", "redirect"):
                    term = name + term[m.end(1):]
                elif name in seen:
                    self.expand(term[m.end():])
                    continue
                seen.add(name)
            terms.append(term)
        return " ".join(terms)

    def expand(self, s: str, stripdot: bool = True) -> str:
        """RFC 7208 7 macro expansion of a domain-spec (``stripdot``) or of an explanation.

        Ours rather than pyspf's, which read ``%{d0}`` as "all parts" where a DIGIT "MUST be
        nonzero", skipped what followed the transformers (``%{d2x}``, ``%{l;}``) where the ABNF has
        a syntax error, ignored an upper-case ``R``, rejoined a split with the delimiter instead of
        "." and, for a name over 253 characters, removed one label where 7.3 removes as many as it
        takes.  Each syntax error is a :class:`pyspf.PermError` (in an explanation, pyspf then
        ignores the exp=, as 6.2 says).
        """
        out: list[str] = []
        pos = 0
        while (at := s.find("%", pos)) >= 0:
            out.append(s[pos:at])
            escape = _ESCAPES.get(s[at:at + 2])
            if escape is not None:
                out.append(escape)
                pos = at + 2
                continue
            m = _MACRO.match(s, at)
            if m is None:
                raise pyspf.PermError(f"invalid macro at {s[at:at + 16]!r}")
            letter, digits, reverse, delimiters = m.groups()
            name = letter.lower()
            if digits and int(digits) == 0:
                raise pyspf.PermError(f"macro transformer digit must be nonzero: {m.group()}")
            if name in "crt" and stripdot:
                raise pyspf.PermError(f"c,r,t macros allowed in exp= text only: {m.group()}")
            value = self.getp() if name == "p" else str(getattr(self, name) or "")
            if digits or reverse or delimiters:
                parts = re.split("[" + re.escape(delimiters or ".") + "]", value)
                if reverse:
                    parts.reverse()
                if digits:
                    parts = parts[-int(digits):]
                value = ".".join(parts)
            if letter != name:  # upper-case letter: URL-escaped (7.3), RFC 3986 unreserved kept
                value = urllib.parse.quote(value, safe="~")
            out.append(value)
            pos = m.end()
        out.append(s[pos:])
        result = "".join(out)
        if stripdot:
            result = result.removesuffix(".")
            while len(result) > MAX_NAME and "." in result:
                result = result.partition(".")[2]
        return result

    def check_lookups(self) -> None:
        self.lookups += 1
        if self.lookups > self.max_lookups:
            self.limit_fired = f"dns-lookups>{self.max_lookups}"
            raise pyspf.PermError(f"more than {self.max_lookups} DNS-querying terms")

    # RFC 7208 4.6.4 limits void *terms*: an "mx" term whose MX query answered is not void because
    # one of its hosts has no address of the client's family (an IPv6 client and IPv4-only MX hosts,
    # the common case), nor a "ptr" term because a name it returned does not resolve back.  pyspf
    # counts each such host lookup, which turns legitimate mail into a permerror; the term's own
    # query (MX, PTR) still counts.
    def dns_mx(self, domainname):
        self._host_lookups += 1
        try:
            return super().dns_mx(domainname)
        finally:
            self._host_lookups -= 1

    def validated_ptrs(self) -> list[str]:
        """The client's validated names, for the "ptr" mechanism and the %{p} macro.

        RFC 7208 5.5: a DNS error on the PTR lookup makes the mechanism not match, and one on a
        name's address lookup skips that name; 7.3 makes %{p} "unknown" when no name validates.
        pyspf turned either error into a temperror for the whole check.  At most the first 10 names
        are looked up (4.6.4).
        """
        self._host_lookups += 1
        try:
            try:
                names = self.dns_ptr(self.i)
            except pyspf.TempError:
                return []
            validated = []
            for name in names[:pyspf.MAX_PTR]:
                try:
                    if self.cidrmatch(self.dns_a(name, self.A), self.cidrmax):
                        validated.append(name)
                except pyspf.TempError:
                    continue
            return validated
        finally:
            self._host_lookups -= 1

    def dns(self, name, qtype, cnames=None, ignore_void=False):
        result = super().dns(name, qtype, cnames=cnames, ignore_void=True)
        if self._host_lookups and qtype in ("A", "AAAA"):
            ignore_void = True
        if not result and not ignore_void and cnames is None:
            self.void_lookups += 1
            if self.void_lookups > self.max_void:
                self.limit_fired = f"void-lookups>{self.max_void}"
                raise pyspf.PermError(f"more than {self.max_void} void lookups")
        return result


def _identity(sender: str | None, helo: str | None) -> tuple[str, str, str]:
    """(identity, sender address, domain) per RFC 7208 2.4: MAIL FROM, or postmaster@HELO when null.

    The domain is what follows the *last* "@": a quoted local part may hold one ("a@b"@example.org,
    RFC 5321 4.1.2).  One final dot is the root label, not part of the name (RFC 7208 4.3 calls only
    a zero-length label *not at the end* malformed), so ``example.org.`` is checked as ``example.org``.
    A domain written in Unicode (an SMTPUTF8 sender) is evaluated as its A-labels (RFC 8616
    section 3), those of :func:`antispam.domains.to_ascii`: ``faß.de`` is ``xn--fa-hia.de``,
    which the resolver once asked as IDNA 2003's ``fass.de``, another domain; the domain DMARC
    aligns with is the one SPF checked.  A domain UTS 46 cannot encode stays as it was, not
    ASCII, for :func:`evaluate` to refuse."""
    s = (sender or "").strip().strip("<>").strip()
    if s:
        local, at, domain = s.rpartition("@")
        domain = domain.strip().removesuffix(".")
        local, identity = (local if at else "postmaster"), "mailfrom"
    else:
        local, domain, identity = "postmaster", (helo or "").strip().removesuffix("."), "helo"
        if not domain:
            return identity, "", ""
    try:
        domain = to_ascii(domain)
    except UnicodeError:
        pass
    return identity, f"{local}@{domain}", domain.lower()


def evaluate(ip: str, sender: str | None, helo: str | None, lookup: Lookup,
             limits: tuple[int, int] = STRICT_LIMITS) -> SpfOutcome:
    """check_host() with ``lookup`` answering every DNS question (raises :class:`_Miss` through)."""
    identity, address, domain = _identity(sender, helo)
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return SpfOutcome("none", identity, address, domain, reason=f"not an IP address: {ip!r}")
    if getattr(addr, "scope_id", None):
        # An IPv6 zone (fe80::1%eth0, a link-local client) names an interface of this host; SPF is about
        # the address, and pyspf raised on the zone (a CHECK_ERROR and no SPF result).
        ip = ip.partition("%")[0]
    if not domain:
        return SpfOutcome("none", identity, address, domain, reason="no identity to check")
    if why := malformed(domain):
        return SpfOutcome("none", identity, address, domain, reason=why)
    q = _Query(ip, address, (helo or "").strip().removesuffix("."), limits=limits, strict=True)
    token = _CURRENT.set(lookup)
    try:
        result, _code, explanation = q.check()
    except _Miss:
        raise
    except Exception as exc:  # pyspf on input it did not foresee: a broken evaluation, not a pass
        return SpfOutcome("permerror", identity, address, domain, reason=f"evaluation failed: {type(exc).__name__}: {exc}"[:160])
    finally:
        _CURRENT.reset(token)
    mech = q.mechanism or ""
    if result in ("permerror", "temperror"):
        explanation = getattr(q, "prob", "") or explanation
    elif result == "none":
        explanation = explanation or "no SPF record"
    return SpfOutcome(result, identity, address, domain, mech, explanation, q.limit_fired)


async def check_host(resolver: "Resolver", ip: str, sender: str | None, helo: str | None, *,
                     limits: tuple[int, int] = STRICT_LIMITS, deadline: float | None = None) -> SpfOutcome:
    """Evaluate SPF through ``resolver`` by replay (see the module docstring)."""
    answers: dict[tuple[str, str], Answer] = {}
    for _ in range(MAX_ROUNDS):
        misses: list[tuple[str, str]] = []

        def lookup(name: str, rdtype: str) -> Answer:
            key = (name.rstrip(".").lower(), rdtype)
            got = answers.get(key) or resolver.cached(*key)
            if got is None:
                misses.append(key)
                raise _Miss(key)
            answers[key] = got
            return got

        try:
            outcome = evaluate(ip, sender, helo, lookup, limits)
        except _Miss:
            outcome = None
        if not misses and outcome is not None:
            return outcome
        keys = list(dict.fromkeys(misses))
        got = await asyncio.gather(*(resolver.resolve(n, t, deadline) for n, t in keys))
        answers.update(zip(keys, got))
        # pyspf asks for the addresses of MX exchanges and PTR names one by one, each a new
        # round; ask them all now, in one round, since it will need them next
        family = "AAAA" if ":" in ip else "A"
        follow = [(_follow_name(r), family) for a in got if a.status == "ok" and a.rdtype in ("MX", "PTR")
                  for r in a.records[:10]]
        follow = [k for k in dict.fromkeys(follow) if k[0] and k not in answers]
        if follow:
            got = await asyncio.gather(*(resolver.resolve(n, t, deadline) for n, t in follow))
            answers.update(zip(follow, got))
    identity, address, domain = _identity(sender, helo)
    return SpfOutcome("temperror", identity, address, domain, reason="too many evaluation rounds")


def _follow_name(rdata: object) -> str:
    target = getattr(rdata, "exchange", None) or getattr(rdata, "target", None)
    return name_text(target).lower() if target is not None else ""  # "" for the null MX (RFC 7505)


def check_host_sync(resolver: "Resolver", ip: str, sender: str | None, helo: str | None, *,
                    limits: tuple[int, int] = STRICT_LIMITS, timeout: float | None = None) -> SpfOutcome:
    """Blocking evaluation through ``Resolver.resolve_sync`` (for threads and scripts)."""
    return evaluate(ip, sender, helo, lambda n, t: resolver.resolve_sync(n, t, timeout), limits)


class SpfCheck(Check):
    """SPF of MAIL FROM (or HELO when MAIL FROM is null) for the connecting IP; and, as RFC 7208
    section 2.3 recommends, of the HELO name on its own when MAIL FROM is not null."""

    name = "spf"
    network = True
    symbols = (
        SymbolDef("R_SPF_ALLOW", -0.2, "SPF: the sending IP is authorized (pass)", "spf"),
        SymbolDef("R_SPF_FAIL", 1.0, "SPF: the sending IP is not authorized (fail)", "spf"),
        SymbolDef("R_SPF_SOFTFAIL", 0.3, "SPF: the domain discourages this IP (softfail)", "spf"),
        SymbolDef("R_SPF_NEUTRAL", 0.0, "SPF: the domain makes no assertion (neutral)", "spf"),
        SymbolDef("R_SPF_NA", 0.0, "SPF: no policy or nothing to check (none)", "spf"),
        SymbolDef("R_SPF_PERMFAIL", 0.0, "SPF: the policy is broken (permerror)", "spf"),
        SymbolDef("R_SPF_TEMPFAIL", 0.0, "SPF: DNS failed, no result (temperror)", "spf"),
        SymbolDef("SPF_HELO_ALLOW", 0.0, "SPF of the HELO name: the sending IP is authorized (pass)", "spf"),
        SymbolDef("SPF_HELO_FAIL", 0.5, "SPF of the HELO name: the sending IP is not authorized (fail)", "spf"),
        SymbolDef("SPF_HELO_SOFTFAIL", 0.2, "SPF of the HELO name: the name discourages this IP (softfail)", "spf"),
        SymbolDef("SPF_HELO_NEUTRAL", 0.0, "SPF of the HELO name: no assertion (neutral)", "spf"),
        SymbolDef("SPF_HELO_NA", 0.0, "SPF of the HELO name: no policy (none)", "spf"),
        SymbolDef("SPF_HELO_PERMFAIL", 0.0, "SPF of the HELO name: the policy is broken (permerror)", "spf"),
        SymbolDef("SPF_HELO_TEMPFAIL", 0.0, "SPF of the HELO name: DNS failed, no result (temperror)", "spf"),
    )

    def __init__(self, strict_limits: bool = True, check_helo: bool = True):
        self.limits = STRICT_LIMITS if strict_limits else COMPAT_LIMITS
        self.check_helo = check_helo

    def _helo_alone(self, env) -> str:  # type: ignore[no-untyped-def]
        """The HELO name to check on its own: only when MAIL FROM is not null (else it is the main identity)."""
        if not self.check_helo or not (env.mail_from or "").strip().strip("<>").strip():
            return ""
        return helo_to_check(env.helo)

    def questions(self, msg: "Message", ctx: ScanContext) -> list[Question]:
        env = ctx.envelope
        if not env.client_ip:
            return []
        _, _, domain = _identity(env.mail_from, env.helo)
        out = [Question(domain, "TXT")] if domain and not malformed(domain) else []
        helo = self._helo_alone(env)
        if helo and helo != domain:
            out.append(Question(helo, "TXT"))
        return out

    async def arun(self, msg: "Message", ctx: ScanContext) -> list[Hit]:
        env = ctx.envelope
        helo = self._helo_alone(env)
        helo_outcome: SpfOutcome | None = None
        if not env.client_ip or ctx.resolver is None:
            identity, address, domain = _identity(env.mail_from, env.helo)
            outcome = SpfOutcome("none", identity, address, domain,
                                 reason="no client IP" if not env.client_ip else "no resolver")
        elif helo:
            # Both identities at once: their DNS round trips overlap.
            outcome, helo_outcome = await asyncio.gather(
                check_host(ctx.resolver, env.client_ip, env.mail_from, env.helo, limits=self.limits, deadline=ctx.deadline),
                check_host(ctx.resolver, env.client_ip, None, helo, limits=self.limits, deadline=ctx.deadline))
        else:
            outcome = await check_host(ctx.resolver, env.client_ip, env.mail_from, env.helo,
                                       limits=self.limits, deadline=ctx.deadline)
        ctx.publish(outcome)
        hits = [self._report(ctx, outcome, SYMBOL_OF)]
        if helo_outcome is not None:
            ctx.publish(SpfHeloOutcome(helo_outcome))
            hits.append(self._report(ctx, helo_outcome, HELO_SYMBOL_OF))
        return hits

    @staticmethod
    def _report(ctx: ScanContext, outcome: SpfOutcome, symbols: dict[str, str]) -> Hit:
        """The Authentication-Results entry and the symbol of one identity's result."""
        prop = "smtp.mailfrom" if outcome.identity == "mailfrom" else "smtp.helo"
        value = outcome.sender if outcome.identity == "mailfrom" else outcome.domain
        ctx.add_auth_result(resinfo("spf", outcome.result, [(prop, value)] if value else [],
                                    comment=outcome.reason[:100] if outcome.result in ("permerror", "temperror") else None))
        options = [f"{outcome.identity}={outcome.domain}"] if outcome.domain else []
        if outcome.mechanism:
            options.append(f"mechanism={outcome.mechanism}")
        if outcome.limit:
            options.append(f"limit={outcome.limit}")
        if outcome.result in ("permerror", "temperror", "none") and outcome.reason:
            options.append(outcome.reason[:120])
        return Hit(symbols[outcome.result], 1.0, tuple(options))


def factory(config: "Config", store: object = None) -> SpfCheck | None:
    if not network_enabled(config, "spf"):
        return None
    return SpfCheck(config.auth.spf_strict_limits, config.auth.spf_check_helo)
