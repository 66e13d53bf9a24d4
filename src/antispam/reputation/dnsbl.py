"""DNS blocklists and allow lists (RFC 5782): IP, domain (RHSBL), URI and hashed-identifier lists.

Flow in a scan: :meth:`DnsblCheck.questions` names every A query of every
enabled, healthy list for this message; the engine prefetches them all at
once with the other network checks; :meth:`DnsblCheck.arun` then reads the
answers (from the resolver's cache, so normally without waiting) and turns
them into symbols through each list's :class:`~antispam.reputation.lists.ListSpec`.

Which address is the client (``client_ip``): the MTA's client IP when it is
outside ``trusted_networks``; when it is one of our own relays, the "last
external" hop instead: the newest Received hop whose IP is not trusted, found
by walking down a chain of trusted hops (each header written by a relay we
trust, so the address cannot be forged; SpamAssassin's ``-lastexternal`` and
``-firsttrusted``).  A hop without an IP ends the walk with no client.  Which
Received relays are asked about: with ``relays``, the IPs of the Received
headers *below* the last trusted hop.  Walking the chain from the newest
header, hops whose IP is in ``trusted_networks`` (our own relays) are
skipped; everything after the first untrusted hop was written by hosts we do
not control, so only public addresses are kept, at most ``max_relays``.

Which addresses are never asked, whatever their input (client IP, relay,
IP-literal URL): those :func:`~antispam.reputation.lists.lookup_ip` refuses,
i.e. non-global ones (loopback, RFC 1918, CGNAT, link-local, special-purpose,
multicast) and IPv6 addresses with a zone.  RFC 5782 lists describe the public
Internet; 127.0.0.2 is their test point (section 5) and would "list" anything
that links to it.  Lists with ``ip_queries`` off (Spamhaus DBL) are never asked
about IP-literal URLs.  One item that cannot be turned into a question is
skipped; it never costs the other questions of the scan.

List health (RFC 5782 section 5): before first use, and every
``health_interval`` seconds, each list is asked its test points; a list that
does not list 127.0.0.2 (or ``test``), lists 127.0.0.1 (or ``invalid``), or
answers with a "refused" code is disabled with a warning and the
``DNSBL_LIST_DISABLED`` symbol, until a later health check passes.  A list
whose answer during a scan is a refused code is disabled the same way.
Per-list counters (queries, listings, errors, seconds) are kept in
:attr:`DnsblCheck.stats` for the servers' metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Iterable

from ..check import Check, Hit, Question, ScanContext, SymbolDef
from ..config import Config
from ..domains import is_ip, registered_domain
from ..message import Message, domain_of
from ..store import Store
from .lists import (DEFAULT_SCORES, KNOWN_LISTS, ListSpec, ends_in_number, health_points, lookup_ip, numeric_ipv4,
                    parse_lists, query_name)
from .netkeys import in_networks, parse_networks

log = logging.getLogger("antispam.dnsbl")

MAX_URL_DOMAINS = 20


def url_hosts_by_priority(msg: Message) -> list[str]:
    """Distinct URL hosts, those of links with anchor text (what the reader is asked to click) first,
    then the rest in order of appearance.

    Only ``MAX_URL_DOMAINS`` domains are asked per list, so order decides which: taken in order of
    appearance, twenty invisible empty links to harmless domains ahead of the one visible link kept
    that link from ever being asked.  SpamAssassin's URIDNSBL fills its quota the same way, links
    with anchor text first and empty anchors last.
    """
    anchored = [u.host for u in msg.urls if u.host and u.text and u.text.strip()]
    return list(dict.fromkeys(anchored + list(msg.url_hosts)))


@dataclass(frozen=True, slots=True)
class DnsblPlan:
    """The questions of one scan, computed once in ``questions()`` and read again in ``arun()``."""

    queries: tuple[tuple[ListSpec, str, str, str], ...]  # (list, input, item, query name)


@dataclass
class ListStats:
    """Counters of one list since start-up (not per scan)."""

    queries: int = 0
    listed: int = 0
    errors: int = 0
    seconds: float = 0.0
    healthy: bool = True
    reason: str = ""
    checked_at: float = field(default=-1e18)


class DnsblCheck(Check):
    name = "dnsbl"
    network = True

    def __init__(self, config: Config, specs: list[ListSpec]):
        c = config.dnsbl
        self.cfg = c
        self.lists = specs
        self.trusted = parse_networks(c.trusted_networks, "dnsbl.trusted_networks")
        self.stats = {s.name: ListStats() for s in specs}
        #: one lock per event loop (see :meth:`_ensure_health`)
        self._health_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()
        syms: dict[str, SymbolDef] = {}
        for s in specs:
            for sym in s.symbols():
                default = DEFAULT_SCORES.get(sym, -1.0 if s.allow else 2.0)
                desc = s.description or f"Listed in {s.zone}"
                syms.setdefault(sym, SymbolDef(sym, default, f"{desc} ({s.zone})", "dnswl" if s.allow else "dnsbl"))
        syms["DNSBL_TEMPFAIL"] = SymbolDef("DNSBL_TEMPFAIL", 0.0, "A DNS list did not answer in time (not a pass)", "dnsbl")
        syms["DNSBL_LIST_DISABLED"] = SymbolDef("DNSBL_LIST_DISABLED", 0.0,
                                                "A DNS list failed its health check or refused us; it is not used", "dnsbl")
        self.symbols = tuple(syms.values())  # type: ignore[misc]

    # ------------------------------------------------------------------ inputs

    def relay_ips(self, msg: Message) -> list[str]:
        """Public IPs of untrusted Received hops, newest first (see module docstring)."""
        out: list[str] = []
        for relay in msg.received:
            ip = relay.ip
            if not ip:
                continue
            if in_networks(ip, self.trusted):
                continue
            if lookup_ip(ip) is None:
                continue
            if ip not in out:
                out.append(ip)
            if len(out) >= self.cfg.max_relays:
                break
        return out

    def client_address(self, msg: Message) -> str | None:
        """The address the message entered our networks from, if a public list may be asked about it.

        When the MTA's client is one of our own relays (in ``trusted_networks``: a gateway in front
        of the scanning MTA), asking about the client tells nothing; the sender is the newest
        Received hop below the chain of trusted hops, and only trusted relays wrote that chain, so
        this address is as reliable as the client's.  Without it, client-only codes (Spamhaus PBL)
        and client-only lists (DNSWL) never applied behind a gateway, where SpamAssassin's
        ``-lastexternal`` / ``-firsttrusted`` rules look at exactly this hop.  A hop without an IP
        (a local pickup, an unparsed header) breaks the chain: what is below it may be forged.
        """
        ip = msg.envelope.client_ip
        if not ip:
            return None
        if in_networks(ip, self.trusted):
            ip = self._first_untrusted_hop(msg)
        return ip if ip and lookup_ip(ip) else None

    def _first_untrusted_hop(self, msg: Message) -> str | None:
        """The IP of the newest Received hop outside ``trusted_networks``, reached through trusted hops only."""
        for relay in msg.received:
            if not relay.ip:
                return None
            if not in_networks(relay.ip, self.trusted):
                return relay.ip
        return None

    def items(self, spec: ListSpec, msg: Message, relays: list[str] | None = None,
              client: str | None = None, hosts: list[str] | None = None) -> list[tuple[str, str]]:
        """``(input name, item)`` pairs to ask ``spec`` about (``client``: :meth:`client_address`;
        ``hosts``: :func:`url_hosts_by_priority`; each worked out here when not given, as
        :meth:`plan` gives them once for every list)."""
        env = msg.envelope
        if client is None:
            client = self.client_address(msg)
        out: list[tuple[str, str]] = []
        for inp in spec.inputs:
            if inp == "client_ip":
                if client:
                    out.append((inp, client))
            elif inp == "relays":
                out.extend((inp, ip) for ip in (self.relay_ips(msg) if relays is None else relays)
                           if ip not in (env.client_ip, client))
            elif inp == "urls":
                seen: set[str] = set()
                for host in url_hosts_by_priority(msg) if hosts is None else hosts:
                    if is_ip(host) or ends_in_number(host):
                        # A numeric host (http://738460676/) is the address a browser opens.
                        # Dropped before the MAX_URL_DOMAINS cap, so links to private or loopback
                        # literals cannot crowd the real domains out of the lookups.
                        ip = host if is_ip(host) else numeric_ipv4(host)
                        item = ip if ip and spec.ip_queries and lookup_ip(ip) else None
                    else:
                        item = registered_domain(host)
                    if item and item not in seen:
                        seen.add(item)
                        out.append((inp, item))
                        if len(seen) >= MAX_URL_DOMAINS:
                            break
            elif spec.kind == "hash":
                addr = {"from": msg.from_addr, "mail_from": env.mail_from, "reply_to": msg.reply_to}.get(inp)
                if addr:
                    out.append((inp, addr))
            else:
                dom = {"mail_from": domain_of(env.mail_from), "from": msg.from_domain, "helo": env.helo,
                       "rdns": env.hostname, "reply_to": domain_of(msg.reply_to)}.get(inp)
                if dom and not is_ip(dom):
                    reg = registered_domain(dom)
                    if reg:
                        out.append((inp, reg))
        # The same item from two inputs is asked once (under the first input that named it).
        seen_items: set[str] = set()
        uniq = []
        for inp, item in out:
            if item not in seen_items:
                seen_items.add(item)
                uniq.append((inp, item))
        return uniq

    def plan(self, msg: Message) -> DnsblPlan:
        """Every question of this message to every healthy list."""
        out = []
        relays = self.relay_ips(msg) if any("relays" in s.inputs for s in self.lists) else []
        client = self.client_address(msg)
        hosts = url_hosts_by_priority(msg) if any("urls" in s.inputs for s in self.lists) else []
        for spec in self.lists:
            if not self.stats[spec.name].healthy:
                continue
            for inp, item in self.items(spec, msg, relays, client, hosts):
                try:
                    q = query_name(spec, item)
                except ValueError as exc:
                    # Hostile input (a URL host, a Received IP) must cost its own question only,
                    # never the whole check: an exception here would switch off every list.
                    log.debug("DNS list %s: cannot ask about %r: %s", spec.name, item, exc)
                    continue
                if q:
                    out.append((spec, inp, item, q))
        return DnsblPlan(tuple(out))

    # ------------------------------------------------------------------ scan

    def questions(self, msg: Message, ctx: ScanContext) -> Iterable[Question]:
        plan = self.plan(msg)
        ctx.publish(plan)
        return [Question(q, "A") for _, _, _, q in plan.queries]

    async def arun(self, msg: Message, ctx: ScanContext) -> Iterable[Hit]:
        resolver = ctx.resolver
        if resolver is None:
            return ()
        await self._ensure_health(resolver, ctx)
        hits: dict[str, Hit] = {}
        plan = ctx.get(DnsblPlan)
        # The plan predates this scan's health check: drop lists it just disabled.
        queries = [q for q in (plan or self.plan(msg)).queries if self.stats[q[0].name].healthy]
        deadline = ctx.deadline
        t0 = time.monotonic()
        # Prefetched answers are in the cache: read them without creating a task per question.
        answers = [resolver.cached(q, "A") for _, _, _, q in queries]
        missing = [i for i, a in enumerate(answers) if a is None]
        if missing:
            fetched = await asyncio.gather(*(resolver.resolve(queries[i][3], "A", deadline) for i in missing))
            for i, a in zip(missing, fetched):
                answers[i] = a
        elapsed = time.monotonic() - t0
        tempfail: list[str] = []
        for (spec, inp, item, _), ans in zip(queries, answers):
            st = self.stats[spec.name]
            st.queries += 1
            st.seconds += elapsed / max(1, len(queries))
            if ans.temporary:
                st.errors += 1
                tempfail.append(f"{spec.name}: {item} ({ans.status})")
                continue
            if ans.status != "ok":
                continue
            found, refused = spec.interpret(ans.values())
            if refused:
                self._disable(spec, f"answered a refused/blocked code for {item}")
                continue
            for sym, code in found:
                if inp != "client_ip" and sym in spec.client_only:
                    continue
                st.listed += 1
                opt = f"{item} ({inp}) {code}" if inp != "client_ip" else f"{item} {code}"
                prev = hits.get(sym)
                hits[sym] = Hit(sym, 1.0, (prev.options if prev else ()) + (opt,))
        out = list(hits.values())
        if tempfail:
            out.append(Hit("DNSBL_TEMPFAIL", 1.0, tuple(tempfail[:10])))
        disabled = [f"{s.name}: {self.stats[s.name].reason}" for s in self.lists if not self.stats[s.name].healthy]
        if disabled:
            out.append(Hit("DNSBL_LIST_DISABLED", 1.0, tuple(disabled)))
        return out

    # ------------------------------------------------------------------ health

    def _disable(self, spec: ListSpec, reason: str) -> None:
        st = self.stats[spec.name]
        if st.healthy:
            log.warning("DNS list %s (%s) disabled: %s", spec.name, spec.zone, reason)
        st.healthy, st.reason = False, reason

    async def _ensure_health(self, resolver: Any, ctx: ScanContext) -> None:
        """Run the due health checks; concurrent scans wait for one run instead of repeating it.

        Concurrent scans of one event loop, that is: an ``asyncio.Lock`` serves the loop it was first
        waited on in, and ``Engine.scan`` from several threads runs one loop per thread, where one
        lock for all made every scan that had to wait in another loop a ``CHECK_ERROR``.  Each loop
        has its lock; the scans of two threads may each run the check once.
        """
        if self.cfg.health_interval <= 0:
            return
        now = time.monotonic()
        due = [s for s in self.lists if now - self.stats[s.name].checked_at >= self.cfg.health_interval]
        if not due:
            return
        loop = asyncio.get_running_loop()
        lock = self._health_locks.get(loop)
        if lock is None:
            lock = self._health_locks[loop] = asyncio.Lock()
        async with lock:
            due = [s for s in due if time.monotonic() - self.stats[s.name].checked_at >= self.cfg.health_interval]
            if due:
                await asyncio.gather(*(self.check_health(s, resolver, ctx.deadline) for s in due))

    async def check_health(self, spec: ListSpec, resolver: Any, deadline: float | None = None) -> bool:
        """Ask the list's RFC 5782 test points; enable or disable it accordingly.  A list configured
        with no test point (``test_point = ""``) is never disabled by this check."""
        points = health_points(spec)
        st = self.stats[spec.name]
        if points is None:
            st.checked_at = time.monotonic()
            return st.healthy
        listed_q, unlisted_q = points
        pos, neg = await asyncio.gather(resolver.resolve(listed_q, "A", deadline), resolver.resolve(unlisted_q, "A", deadline))
        st.checked_at = time.monotonic()
        if pos.temporary or neg.temporary:
            # Unknown: keep the current state, retry at the next interval.
            st.errors += 1
            return st.healthy
        pos_vals = pos.values() if pos.status == "ok" else []
        neg_vals = neg.values() if neg.status == "ok" else []
        refused = any(a in spec.refused for a in pos_vals + neg_vals)
        # For health, any loopback-range answer is a listing: a bitmask list's test point may set
        # flags this configuration does not map to symbols.
        pos_listed = any(a.startswith("127.") for a in pos_vals)
        neg_listed = any(a.startswith("127.") for a in neg_vals)
        if refused:
            self._disable(spec, "test query answered with a refused/blocked code")
        elif neg_listed:
            self._disable(spec, f"lists its must-not-list test point {unlisted_q.rstrip('.')} (wildcard or hijacked zone)")
        elif not pos_listed:
            self._disable(spec, f"does not list its test point {listed_q.rstrip('.')}")
        else:
            if not st.healthy:
                log.warning("DNS list %s (%s) passed its health check again: enabled", spec.name, spec.zone)
            st.healthy, st.reason = True, ""
        return st.healthy


def dnsbl_check(config: Config, store: Store) -> Check | None:
    """Enabled when the configuration names lists and a nameserver is configured."""
    c = config.dnsbl
    if not (c.enable or c.lists):
        return None
    specs = parse_lists(KNOWN_LISTS, c.lists, c.enable)
    if not specs or not config.dns.nameservers:
        if specs:
            log.warning("DNS lists are configured but [dns] nameservers is empty: blocklists are off")
        return None
    return DnsblCheck(config, specs)
