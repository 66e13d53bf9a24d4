"""Greylisting: answer the first attempt of an unknown sender with a temporary failure.

Per triplet (client network, envelope sender, recipient) -- or, in content
mode, per (client network, body digest) -- the store holds one value:

* absent: never seen.  Remember ``pending since now`` and defer.
* ``P<t>``: seen first at ``t``.  A retry before ``t + delay`` is deferred
  again; one after it promotes the triplet to ``A`` and passes.
* ``A``: passed before; passes, and its lifetime is renewed.

The sender is compared by what stays the same from one delivery attempt to the
next (:func:`sender_key`): signing and rewriting schemes put the day or a
per-message number into the envelope sender (BATV ``prvs=`` tags, SRS
timestamps, VERP numbers), and compared as written, a retry made the next day
or a list's next message would start greylisting again.

The first write uses the store's atomic ``add``, so two scanners seeing the
same first attempt at once agree on one timestamp.  Keys are SHA-1 digests, so
the store never holds addresses in clear.  Messages scanned without a client
IP (files, corpora) are not greylisted: there is nobody to defer.
"""

from __future__ import annotations

import hashlib
import re
import time
from typing import Iterable

from ..check import Check, Hit, ScanContext, SymbolDef
from ..config import GREYLIST_MODES, Config
from ..errors import ConfigError
from ..message import Message, domain_of
from ..store import Store, StoreUnavailable
from .netkeys import in_networks, network_key, parse_networks


#: a BATV tag (``prvs=<key><day><hash>=``; Microsoft's ``msprvs1=``) before the local part: its day
#: and hash change every day
_BATV_RE = re.compile(r"(?:ms)?prvs\d?=[^=@]*=(.+)", re.IGNORECASE | re.DOTALL)
#: an SRS address (``SRS0=hash=time=domain=local``, or ``SRS1=hash=forwarder==hash=time=domain=local``):
#: the original sender's domain and local part, without the hash and timestamp that change daily
_SRS_RE = re.compile(r"srs[01][=+-](?:[^=]*=[^=]*==)?[^=]*=[^=]*=([^=]*)=(.*)", re.IGNORECASE | re.DOTALL)
_DIGITS_RE = re.compile(r"[0-9]+")


def sender_key(address: str) -> str:
    """The envelope sender as greylisting compares it: lower case, without a BATV tag, an SRS
    address as the sender it stands for (forwarder and original), the local part's ``+extension``
    dropped and each run of digits one ``#`` (VERP and bounce addresses number every message:
    ``bounce-1234@`` and ``bounce-1299@`` are one sender), as postgrey compares senders."""
    local, at, domain = address.lower().rpartition("@")
    if not at:
        return address.lower()
    m = _BATV_RE.fullmatch(local)
    if m:
        local = m.group(1)
    m = _SRS_RE.fullmatch(local)
    if m:
        local = f"srs={m.group(1)}={m.group(2)}"
    local = local.split("+", 1)[0] or local
    return f"{_DIGITS_RE.sub('#', local)}@{domain}"


class GreylistCheck(Check):
    name = "greylist"
    symbols = (
        SymbolDef("GREYLIST_DEFER", 0.0, "First delivery attempt from this sender: deferred, retry later", "greylist"),
        SymbolDef("GREYLIST_PASS", 0.0, "The sender retried after the greylisting delay", "greylist"),
    )

    def __init__(self, config: Config, store: Store, clock=time.time):  # type: ignore[no-untyped-def]
        g = config.greylist
        if g.mode not in GREYLIST_MODES:
            raise ConfigError("must be \"triplet\" or \"content\"", key="greylist.mode")
        self.cfg = g
        self.store = store
        self.fail_closed = config.store.on_failure == "closed"
        self.allow_networks = parse_networks(g.allow_networks, "greylist.allow_networks")
        self.allow_domains = tuple(d.lower().lstrip(".") for d in g.allow_domains)
        self._clock = clock

    def _keys(self, msg: Message, net: str) -> list[str]:
        env = msg.envelope
        if self.cfg.mode == "content":
            body = hashlib.sha1(msg.body_bytes).hexdigest()
            parts = [f"{net}|{body}"]
        else:
            sender = sender_key(env.mail_from or "")
            parts = [f"{net}|{sender}|{r.lower()}" for r in (env.rcpt_tos or ("",))]
        return ["grey:" + hashlib.sha1(p.encode("utf-8", "replace")).hexdigest() for p in parts]

    def _allowed(self, msg: Message) -> bool:
        env = msg.envelope
        if in_networks(env.client_ip, self.allow_networks):
            return True
        dom = domain_of(env.mail_from)
        return bool(dom and any(dom == d or dom.endswith("." + d) for d in self.allow_domains))

    def run(self, msg: Message, ctx: ScanContext) -> Iterable[Hit]:
        env = msg.envelope
        if not env.client_ip or self._allowed(msg):
            return ()
        net = network_key(env.client_ip, self.cfg.ipv4_prefix, self.cfg.ipv6_prefix) or env.client_ip
        now = self._clock()
        try:
            waits = [self._one(key, now) for key in self._keys(msg, net)]
        except StoreUnavailable as exc:
            return (Hit("STORE_UNAVAILABLE", 1.0, (f"greylist: {exc}"[:200],),
                        action="soft reject" if self.fail_closed else None),)
        wait = max(waits)
        if wait > 0:
            return (Hit("GREYLIST_DEFER", 1.0, (net, f"retry in {int(wait + 0.999)}s"), action="soft reject"),)
        if any(w == 0 for w in waits):
            return (Hit("GREYLIST_PASS", 1.0, (net,)),)
        return ()

    def _one(self, key: str, now: float) -> float:
        """Seconds this triplet must still wait; 0 when it passes now; -1 when it passed before."""
        cfg, store = self.cfg, self.store
        if store.add(key, b"P%.3f" % now, ttl=cfg.pending_ttl):
            return cfg.delay
        value = store.get(key)
        if value is None:  # expired between add and get: treat as new
            store.set(key, b"P%.3f" % now, ttl=cfg.pending_ttl)
            return cfg.delay
        if value == b"A":
            store.set(key, b"A", ttl=cfg.pass_ttl)
            return -1.0
        first = float(value[1:])
        remaining = first + cfg.delay - now
        if remaining > 0:
            return remaining
        store.set(key, b"A", ttl=cfg.pass_ttl)
        return 0.0


def greylist_check(config: Config, store: Store) -> Check | None:
    return GreylistCheck(config, store) if config.greylist.enabled else None
