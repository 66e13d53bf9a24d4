"""Local reputation: what this installation has seen from an IP, a network, a domain.

Every scan that ends clearly (spam, or a score at or below zero) adds one
observation, and every ``learn`` adds ``learn_weight``, to the spam or ham
count of each entity the message involves: the client IP, its /24 (or /64),
the envelope sender's registered domain, the domains of DKIM signatures that
verified (only these cannot be forged, so only they earn good reputation
for a domain that signs), and the registered domains of its URLs.  An entity with at least ``min_observations`` is judged by its spam
share.

Time decay without a background job: an observation made at time ``t`` is
stored multiplied by ``2 ** ((t - EPOCH) / half_life)``, and a count read at
time ``now`` is divided by ``2 ** ((now - EPOCH) / half_life)``.  The ratio is
exactly the weight ``2 ** (-(now - t) / half_life)`` each observation should
have, and increments stay single atomic additions in the store.  The scale
grows by a factor of 2**26 a year with the default 14-day half-life, far
inside a float's range for decades; EPOCH is fixed at 2026-01-01.

Forgetting, also without a job: every count is written with the store's TTL of
``forget_after_days`` (140 by default), renewed by each new observation, so an
entity that has not been seen for that long leaves the store (its weight is a
thousandth by then) instead of every client IP ever seen staying there.  A
learned message's ledger entry lives as long as the counts it added would with
no observation after it; unlearning a message learned longer ago finds nothing
to take back (and relearning it counts it again).

Learning is recorded in a ledger entry per message (``h:learned:<digest>``)
whose value is the label and the exact amount that was added, e.g.
``b"s:161234.5"``.  ``unlearn`` subtracts that amount, not one computed at
unlearn time: an amount scaled for *now* is larger than the one added weeks
ago and would leave negative counts.  Only the caller whose compare-and-set
removed the very entry it read subtracts, so two processes unlearning the same
message count it once, and an entry others replaced meanwhile is read again.  Entries written before the amount was recorded hold the
label alone (``b"s"``/``b"h"``); they are still unlearned, with the amount
scaled for the unlearn time as before.

The digest is the sha256 of the message with CRLF line ends made LF
(:func:`antispam.message.ledger_digests`, shared with the classifier's
ledger): the copy a file holds and the copy spamd TELL or the milter hands
over are one message, learned once.  Entries written before line ends were
normalised are keyed by the sha256 of the bytes as learned; they are looked up
under the message's older keys (the bytes as given, the all-CRLF form), count
as learned, and are deleted by ``unlearn`` where they are.  New entries are
only written under the new key.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Iterable

from ..check import Check, Hit, ScanContext, SymbolDef
from ..config import Config
from ..auth.dkim import DkimOutcome
from ..domains import registered_domain, to_ascii
from ..message import Message, domain_of
from ..store import Store, StoreUnavailable
from ..store.base import CLAIM_TRIES, first_entry
from ..verdict import Verdict
from .netkeys import network_key

EPOCH = 1767225600.0  # 2026-01-01T00:00:00Z
MAX_URL_DOMAINS = 10
#: actions under which a message is not taken (deferred or refused): a clean one is not counted
_NOT_ACCEPTED = frozenset({"greylist", "soft reject", "reject"})

# entity kind -> (bad symbol, good symbol or None)
_KINDS = {
    "ip": ("REPUTATION_BAD_IP", "REPUTATION_GOOD_IP"),
    "net": ("REPUTATION_BAD_NET", None),
    "sdom": ("REPUTATION_BAD_SENDER_DOMAIN", "REPUTATION_GOOD_SENDER_DOMAIN"),
    "dkim": ("REPUTATION_BAD_DKIM_DOMAIN", "REPUTATION_GOOD_DKIM_DOMAIN"),
    "udom": ("REPUTATION_BAD_URL_DOMAIN", None),
}


@dataclass(frozen=True, slots=True)
class HistoryEntities:
    """What a scan looked up, so that recording the verdict afterwards counts the same entities."""

    pairs: tuple[tuple[str, str], ...]


def _domain_key(host: str) -> str | None:
    """The registered domain an entity is counted under, in A-labels: ``faß.de`` and
    ``xn--fa-hia.de`` (how a link or a sender may write the same domain) share one history, as every
    other check names them (``domains.to_ascii``); None for what is no domain."""
    try:
        return registered_domain(to_ascii(host))
    except UnicodeError:
        return None


class HistoryCheck(Check):
    name = "history"
    symbols = (
        SymbolDef("REPUTATION_BAD_IP", 3.0, "This client IP sent mostly spam here before", "reputation"),
        SymbolDef("REPUTATION_GOOD_IP", -1.0, "This client IP sent almost only ham here before", "reputation"),
        SymbolDef("REPUTATION_BAD_NET", 1.5, "The client's network sent mostly spam here before", "reputation"),
        SymbolDef("REPUTATION_BAD_SENDER_DOMAIN", 2.0, "The envelope sender's domain sent mostly spam here before", "reputation"),
        SymbolDef("REPUTATION_GOOD_SENDER_DOMAIN", -1.0, "The envelope sender's domain sent almost only ham here before", "reputation"),
        SymbolDef("REPUTATION_BAD_URL_DOMAIN", 2.5, "A linked domain appeared mostly in spam here before", "reputation"),
        SymbolDef("REPUTATION_BAD_DKIM_DOMAIN", 2.5, "Mail DKIM-signed by this domain was mostly spam here before", "reputation"),
        SymbolDef("REPUTATION_GOOD_DKIM_DOMAIN", -2.0, "Mail DKIM-signed by this domain was almost only ham here before", "reputation"),
    )
    #: DKIM runs first when enabled, so its outcome is on the context
    requires = ("dkim",)

    def __init__(self, config: Config, store: Store, clock=time.time):  # type: ignore[no-untyped-def]
        self.cfg = config.history
        self.store = store
        self.half_life = self.cfg.half_life_days * 86400.0
        #: seconds an entity's counts (and a learned message's ledger entry) live after its last write
        self.ttl = self.cfg.forget_after_days * 86400.0 or None
        self._clock = clock

    def _scale(self, now: float) -> float:
        return math.pow(2.0, (now - EPOCH) / self.half_life)

    def entities(self, msg: Message, ctx: ScanContext | None = None) -> list[tuple[str, str]]:
        """``(kind, value)`` pairs this message involves (DKIM domains only when a scan verified them)."""
        env = msg.envelope
        out: list[tuple[str, str]] = []
        if env.client_ip:
            out.append(("ip", env.client_ip))
            net = network_key(env.client_ip)
            if net:
                out.append(("net", net))
        sdom = _domain_key(domain_of(env.mail_from) or "") if env.mail_from else None
        if sdom:
            out.append(("sdom", sdom))
        dkim = ctx.get(DkimOutcome) if ctx is not None else None
        if dkim is not None:
            for d in dict.fromkeys(d.lower() for d in dkim.passing_domains()):
                out.append(("dkim", d))
        seen: set[str] = set()
        for host in msg.url_hosts:
            d = _domain_key(host)
            if d and d not in seen:
                seen.add(d)
                out.append(("udom", d))
                if len(seen) >= MAX_URL_DOMAINS:
                    break
        return out

    def run(self, msg: Message, ctx: ScanContext) -> Iterable[Hit]:
        ents = self.entities(msg, ctx)
        ctx.publish(HistoryEntities(tuple(ents)))
        if not ents:
            return ()
        keys = [f"h:{k}:{v}:{lab}" for k, v in ents for lab in ("s", "h")]
        try:
            counts = self.store.get_counts(keys)
        except StoreUnavailable as exc:
            return (Hit("STORE_UNAVAILABLE", 1.0, (f"history: {exc}"[:200],)),)
        scale = self._scale(self._clock())
        c = self.cfg
        hits: dict[str, Hit] = {}
        for i, (kind, value) in enumerate(ents):
            spam, ham = counts[2 * i] / scale, counts[2 * i + 1] / scale
            n = spam + ham
            if n < c.min_observations:
                continue
            share = spam / n
            bad, good = _KINDS[kind]
            symbol = bad if share >= c.bad_ratio else (good if good and share <= c.good_ratio else None)
            if symbol:
                opt = f"{value}: spam {spam:.1f} ham {ham:.1f}"
                prev = hits.get(symbol)
                hits[symbol] = Hit(symbol, 1.0, (prev.options if prev else ()) + (opt,))
        return tuple(hits.values())

    def _add(self, msg: Message, spam: bool, weight: float, ctx: ScanContext | None = None) -> None:
        """Count ``weight`` observations made now."""
        self._incr(msg, spam, weight * self._scale(self._clock()), ctx)

    def _incr(self, msg: Message, spam: bool, amount: float, ctx: ScanContext | None = None) -> None:
        """Add an already scaled ``amount`` to the spam or ham count of every entity of ``msg``."""
        lab = "s" if spam else "h"
        seen = ctx.get(HistoryEntities) if ctx is not None else None
        ents = seen.pairs if seen is not None else self.entities(msg, ctx)
        self.store.incr_many({f"h:{k}:{v}:{lab}": amount for k, v in ents}, ttl=self.ttl)

    def record(self, msg: Message, ctx: ScanContext, verdict: Verdict) -> None:
        """After a scan: count a clear outcome (spam by score, or a score at or below zero).

        A clean message that is deferred or refused all the same (greylisting, a rate limit) is
        not counted: it comes back with each retry, and every attempt would credit its sender
        again."""
        if verdict.is_spam:
            self._add(msg, True, 1.0, ctx)
        elif verdict.score <= 0 and verdict.action not in _NOT_ACCEPTED:
            self._add(msg, False, 1.0, ctx)

    def learn(self, msg: Message, spam: bool, source: str = "api") -> bool:
        """A user's judgement: counts ``learn_weight`` observations; the same message counts once.

        The same message: with CRLF or LF line ends alike (see the module).  The
        ledger entry records the scaled amount added, so that :meth:`unlearn`
        can take back exactly that however much later it runs.
        """
        key, *older = _ledger_keys(msg.ledger_digests)
        for k in older:  # an entry from before line ends were normalised: learned already
            if self.store.get(k) is not None:
                return False
        amount = self.cfg.learn_weight * self._scale(self._clock())
        if not self.store.add(key, _ledger_value(spam, amount), ttl=self.ttl):
            return False
        self._incr(msg, spam, amount)
        return True

    def unlearn(self, msg: Message) -> bool:
        """Take back an earlier :meth:`learn` of the same message; False if it was not learned.

        Only the caller whose ``compare_and_set`` removed the very entry it read
        subtracts, and it subtracts that entry's amount: two processes unlearning
        the same message at once must not both subtract, and an entry replaced
        meanwhile (unlearned and learned again by others, perhaps with the other
        label) is read again rather than deleted for the amount of the old one.
        The entry is the first found under the message's keys, the current one
        first (see the module).
        """
        keys = _ledger_keys(msg.ledger_digests)
        for _ in range(CLAIM_TRIES):
            key, value = first_entry(self.store, keys)
            if value is None:
                return False
            if self.store.compare_and_set(key, value, None):
                spam, amount = _parse_ledger(value)
                if amount is None:  # a label-only entry from before amounts were recorded
                    amount = self.cfg.learn_weight * self._scale(self._clock())
                self._incr(msg, spam, -amount)
                return True
        return False


def _ledger_keys(digests: tuple[str, ...]) -> tuple[str, ...]:
    """``h:learned:<digest>`` of a message, then the keys older ledgers may hold it under (see the module),
    from its :attr:`Message.ledger_digests <antispam.message.Message.ledger_digests>`."""
    return tuple("h:learned:" + d for d in digests)


def _ledger_value(spam: bool, amount: float) -> bytes:
    """``b"s:<amount>"``: the label and the exact scaled amount learn added (``repr`` round-trips)."""
    return f"{'s' if spam else 'h'}:{amount!r}".encode("ascii")


def _parse_ledger(value: bytes) -> tuple[bool, float | None]:
    """``(spam, amount)`` of a ledger value; amount None for old label-only values or junk."""
    label, _, rest = bytes(value).partition(b":")
    amount: float | None = None
    if rest:
        try:
            amount = float(rest)
        except ValueError:
            amount = None
        if amount is not None and not (math.isfinite(amount) and amount >= 0):
            amount = None
    return label == b"s", amount


def history_check(config: Config, store: Store) -> Check | None:
    return HistoryCheck(config, store) if config.history.enabled else None
