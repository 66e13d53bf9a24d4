"""Rate limits: one token bucket per client IP, envelope sender, recipient and authenticated user.

A bucket holds at most ``burst`` tokens and refills at ``rate`` per minute;
each message takes one token from every bucket it belongs to.  The store runs
refill-and-take atomically, so N scanners share one limit exactly.
"""

from __future__ import annotations

from typing import Iterable

from ..check import Check, Hit, ScanContext, SymbolDef
from ..config import ACTIONS, Config
from ..errors import ConfigError
from ..message import Message
from ..store import Store, StoreUnavailable
from .netkeys import in_networks, parse_networks


class RateLimitCheck(Check):
    name = "ratelimit"
    symbols = (
        SymbolDef("RATELIMIT_IP", 0.0, "The client IP sends faster than its configured rate", "ratelimit"),
        SymbolDef("RATELIMIT_SENDER", 0.0, "The envelope sender sends faster than its configured rate", "ratelimit"),
        SymbolDef("RATELIMIT_RCPT", 0.0, "A recipient receives faster than its configured rate", "ratelimit"),
        SymbolDef("RATELIMIT_USER", 0.0, "The authenticated user sends faster than its configured rate", "ratelimit"),
    )

    def __init__(self, config: Config, store: Store):
        c = config.ratelimit
        if c.action and (c.action not in ACTIONS or c.action == "no action"):
            raise ConfigError(f"must be one of {', '.join(ACTIONS[1:])} or \"\"", key="ratelimit.action")
        self.cfg = c
        self.store = store
        self.fail_closed = config.store.on_failure == "closed"
        self.allow_networks = parse_networks(c.allow_networks, "ratelimit.allow_networks")

    def _buckets(self, msg: Message) -> list[tuple[str, str, float, float]]:
        c, env = self.cfg, msg.envelope
        out = []
        if c.ip_rate > 0 and env.client_ip:
            out.append(("RATELIMIT_IP", f"rl:ip:{env.client_ip}", c.ip_rate, c.ip_burst))
        if c.sender_rate > 0 and env.mail_from:
            out.append(("RATELIMIT_SENDER", f"rl:from:{env.mail_from.lower()}", c.sender_rate, c.sender_burst))
        if c.rcpt_rate > 0:
            out.extend(("RATELIMIT_RCPT", f"rl:rcpt:{r.lower()}", c.rcpt_rate, c.rcpt_burst) for r in env.rcpt_tos)
        if c.user_rate > 0 and env.user:
            out.append(("RATELIMIT_USER", f"rl:user:{env.user}", c.user_rate, c.user_burst))
        return out

    def run(self, msg: Message, ctx: ScanContext) -> Iterable[Hit]:
        if in_networks(msg.envelope.client_ip, self.allow_networks):
            return ()
        action = self.cfg.action or None
        hits: dict[str, Hit] = {}
        try:
            for symbol, key, per_minute, burst in self._buckets(msg):
                if not self.store.take(key, per_minute / 60.0, burst).allowed:
                    prev = hits.get(symbol)
                    opts = (prev.options if prev else ()) + (key.split(":", 2)[2],)
                    hits[symbol] = Hit(symbol, 1.0, opts, action=action)
        except StoreUnavailable as exc:
            return (Hit("STORE_UNAVAILABLE", 1.0, (f"ratelimit: {exc}"[:200],),
                        action="soft reject" if self.fail_closed else None),)
        return tuple(hits.values())


def ratelimit_check(config: Config, store: Store) -> Check | None:
    return RateLimitCheck(config, store) if config.ratelimit.enabled else None
