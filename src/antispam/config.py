"""Configuration: one TOML file, layered over embedded defaults, strictly validated.

Layers, later wins: the embedded defaults (the dataclass defaults below) <
a site file (``Engine.from_config(path)``) < explicit overrides (a dict, e.g.
from command-line flags).  Unknown keys and values of the wrong type are
errors that name the dotted key and the file, because a typo in a spam
filter's configuration silently disabling a check is the worst outcome.
So are numbers out of range (every float must be finite; ``_RULES`` below
gives each setting's bounds or allowed values, e.g. timeouts > 0, ratios
0..1, ``store.on_failure`` "open" or "closed") and a file that cannot be
read.  ``engine.disabled_checks`` is checked by the engine, which knows its
checks (custom ones included).

Every section is a frozen dataclass, so the whole configuration of a running
engine is one immutable value that can be printed, compared and shipped to
worker processes.  Each subsystem owns its section here, in one place, so an
operator can read every knob in one file.

Free-form sections: ``[scores]`` (symbol -> score), ``[actions]`` (action ->
threshold or false), ``[groups.NAME]`` (``max_score``, ``min_score``) and
``[descriptions]``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError
from .message import Limits

#: the largest configuration file read (bytes); a real one is a few kilobytes
MAX_CONFIG_BYTES = 16 << 20

ACTIONS = ("no action", "greylist", "add header", "rewrite subject", "soft reject", "reject")


@dataclass(frozen=True)
class EngineConfig:
    """Scan-wide settings."""

    #: seconds a scan may spend on network checks before they are cut off (TEMPFAIL symbols)
    scan_deadline: float = 10.0
    #: checks to leave out, by name (``antispam checks`` lists them); an unknown name is an error
    disabled_checks: tuple[str, ...] = ()
    #: the authserv-id written in Authentication-Results (RFC 8601); empty means the host name
    authserv_id: str = ""
    #: prefix put before the subject by the ``rewrite subject`` action
    subject_prefix: str = "***SPAM*** "


@dataclass(frozen=True)
class StoreConfig:
    """Where shared state lives (learning, reputation, greylisting, rate limits).

    ``memory://`` (the default: nothing is written anywhere until you choose),
    ``sqlite:///var/lib/antispam/state.db`` (one file, several processes), or
    ``redis://127.0.0.1:6379/0`` (many processes and machines).
    """

    url: str = "memory://"
    #: when the store is down: "open" (its checks are skipped, the scan goes on) or "closed" (greylisting and
    #: rate limits then force ``soft reject``, a tempfail; the other checks are skipped either way)
    on_failure: str = "open"
    #: seconds to wait for a Redis store's answer; after a timeout it is left alone (fails fast) for a few seconds
    timeout: float = 0.5


# --- servers (spamd, milter, SMTP filter, rspamd HTTP): [servers.NAME] tables ---------------

@dataclass(frozen=True)
class ServerConfig:
    """What every server shares.  Loopback and a loopback allow-list by default: a spam filter
    that anyone on the network can feed (or TELL) is an abuse vector, so opening it is explicit."""

    host: str = "127.0.0.1"
    port: int = 0
    #: a Unix-domain socket to listen on instead of ``host:port`` (an absolute path; "" = TCP): a
    #: milter at Postfix's ``unix:/path``, spamd at ``spamc -U`` or Exim's ``spamd_address = /path``.
    #: Who may connect is the file's ``socket_mode`` and ``socket_group``, not ``allow``
    socket: str = ""
    #: permissions of the socket file (TOML octal: 0o660); connecting needs write permission
    socket_mode: int = 0o660
    #: group of the socket file ("" = this process's), e.g. "postfix" for Postfix's smtpd
    socket_group: str = ""
    #: client networks allowed to connect (CIDR); others are refused at accept time
    allow: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    #: largest message accepted, bytes; larger ones are refused with the protocol's error
    max_size: int = 32 * 1024 * 1024
    #: connections served at once; more are refused (the MTA retries or applies its default)
    max_connections: int = 64
    #: seconds a connection may sit idle or take to send one request before it is dropped
    timeout: float = 60.0
    #: seconds a graceful shutdown waits for in-flight messages before cutting them off
    shutdown_timeout: float = 30.0
    #: when a scan fails: true lets the message through unfiltered, false answers "try later"
    fail_open: bool = True
    #: scan worker processes; 0 scans in the server process (see docs/servers.md)
    workers: int = 0
    #: server processes sharing the listening socket, each with its own event loop and Engine
    #: (prefork, as spamd's children); 0 or 1: this process alone.  Not together with workers.
    processes: int = 1
    #: Prometheus /metrics on this port (0 = off), bound to metrics_host
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"


#: the default of ``request_timeout`` (spamd and rspamd-http): seconds a whole request (headers and
#: body) may take to arrive; see docs/servers.md ("Timeouts") for why this number
REQUEST_TIMEOUT = 120.0


@dataclass(frozen=True)
class SpamdConfig(ServerConfig):
    port: int = 783
    #: accept TELL (learn / forget); spamd calls this --allow-tell
    allow_tell: bool = True
    #: seconds the whole request (headers and body) may take to arrive, from the connection's
    #: start; ``timeout`` bounds each read only, so a client trickling bytes was held for ever
    request_timeout: float = REQUEST_TIMEOUT


@dataclass(frozen=True)
class MilterConfig(ServerConfig):
    port: int = 11332
    #: the MTA holds one connection per SMTP session, and sends nothing on it for whatever the
    #: session does that a milter is not told of (NOOP, RSET without a transaction, VRFY, AUTH,
    #: STARTTLS; Postfix's own checks and policy lookups): several of Postfix's smtpd_timeout (300s),
    #: each command being within it.  A connection closed meanwhile is found broken at the next
    #: message, which Postfix then passes by milter_default_action (accept: unscanned).  So the wait
    #: is libmilter's (MI_TIMEOUT, 7210s): only a peer gone for good is waited for that long.
    timeout: float = 7210.0
    #: Postfix holds one connection per SMTP session, from connect to QUIT, each smtpd process its
    #: own (default_process_limit: 100); one past this limit is closed unanswered, and Postfix
    #: passes that whole session by milter_default_action (accept: unscanned).  libmilter sets no
    #: limit; this one is five times Postfix's default, well under the usual 1024 open files.
    max_connections: int = 500
    #: SMTP reply for ``reject`` verdicts (code, enhanced status code, text)
    reject_reply: str = "550 5.7.1 Message rejected as spam"
    #: SMTP reply for ``soft reject`` and ``greylist`` verdicts, and for failed scans when fail_open is false
    tempfail_reply: str = "451 4.7.1 Please try again later"
    #: hold ``reject`` verdicts in the MTA's quarantine (Postfix: hold queue) instead of rejecting
    quarantine: bool = False
    quarantine_reason: str = "antispam: spam"

    def __post_init__(self) -> None:
        # Postfix's milter client (milter8.c) takes a reply it cannot parse for a broken milter and
        # applies milter_default_action, by default accept: a typo here would deliver the spam.
        _check_reply(self.reject_reply, "servers.milter.reject_reply", "45")
        _check_reply(self.tempfail_reply, "servers.milter.tempfail_reply", "4")


#: One line of an SMTP reply as a milter may send it (SMFIR_REPLYCODE): milter8.c wants 4xx or 5xx,
#: then ' ' or '-', and an enhanced status code (RFC 3463), if any, of the same class; we require
#: one.  The text is printable ASCII (RFC 5321 textstring): NUL would end the milter packet's string.
_REPLY_LINE = re.compile(r"([45])\d\d([ -])\1\.\d{1,3}\.\d{1,3}(?: [\t\x20-\x7e]*)?", re.ASCII)


def reply_lines(text: str) -> list[str]:
    """The lines of a configured SMTP reply: one a line (LF or CRLF), a last line end ignored."""
    return text.rstrip("\r\n").replace("\r\n", "\n").split("\n")


#: the longest reply line, without its CRLF: RFC 5321 section 4.5.3.1.5 (512 octets with it)
MAX_REPLY_LINE = 510
#: the most lines of a reply a milter may set (libmilter's smfi_setmlreply)
MAX_REPLY_LINES = 32


def _check_reply(text: str, key: str, classes: str, multiline: bool = True) -> None:
    """Raise ConfigError unless ``text`` is an SMTP reply of a class in ``classes`` as Postfix takes it
    (from a milter, the strictest): every line ``ddd X.Y.Z text`` with the same code, ``-`` after it
    on all lines but the last
    (RFC 5321 section 4.2.1); one line only unless ``multiline``.  Lines are bounded as RFC 5321
    bounds them and as libmilter does: Postfix passes a longer one on to the client, which may cut
    or refuse it, so a typo'd reply is caught when the configuration loads, not at the first spam."""
    lines = reply_lines(text)
    if not multiline and len(lines) > 1:
        raise ConfigError(f"{text!r}: the SMTP filter's replies are one line", key=key)
    if len(lines) > MAX_REPLY_LINES:
        raise ConfigError(f"a reply of {len(lines)} lines: at most {MAX_REPLY_LINES} (libmilter's limit)", key=key)
    for line in lines:
        if len(line) > MAX_REPLY_LINE:  # the line's characters are ASCII (checked below)
            raise ConfigError(f"a reply line of {len(line)} characters: at most {MAX_REPLY_LINE} "
                              "(RFC 5321 section 4.5.3.1.5: 512 octets with its CRLF)", key=key)
    for i, line in enumerate(lines):
        m = _REPLY_LINE.fullmatch(line)
        if m is None or m.group(1) not in classes or line[:3] != lines[0][:3] or (m.group(2) == " ") != (i == len(lines) - 1):
            example = "451 4.7.1 Please try again later" if classes == "4" else "550 5.7.1 Message rejected as spam"
            raise ConfigError(f"{line!r} is not an SMTP reply line an MTA takes: write code, enhanced status "
                              f"of the same class, text (e.g. {example!r}); on several lines, the same code on each "
                              "and '-' after it on all but the last", key=key)


@dataclass(frozen=True)
class SmtpConfig(ServerConfig):
    port: int = 10025
    #: "after-queue" (Postfix content_filter: scan, add headers, re-inject) or
    #: "before-queue" (smtpd_proxy_filter: the same, but spam is rejected at end of DATA)
    mode: str = "after-queue"
    #: where scanned mail goes, host:port (Postfix's re-injection smtpd)
    next_hop: str = "127.0.0.1:10026"
    #: seconds to wait for the next hop before answering the sender 4xx
    next_hop_timeout: float = 60.0
    #: seconds to wait for the next hop's reply to the message itself: RFC 5321's 10 minutes
    #: (Postfix's smtp_data_done_timeout, its wait for our reply) less one for the scan.  The
    #: next hop may have queued the message when the wait is given up, and the sender, told 4xx,
    #: sends it again
    next_hop_data_timeout: float = 540.0
    reject_reply: str = "550 5.7.1 Message rejected as spam"
    tempfail_reply: str = "451 4.7.1 Please try again later"
    #: the name this filter gives itself in its SMTP greeting
    hostname: str = "localhost"

    def __post_init__(self) -> None:
        # a reply the sending MTA cannot parse is a protocol error there, not the refusal meant
        _check_reply(self.reject_reply, "servers.smtp.reject_reply", "5", multiline=False)
        _check_reply(self.tempfail_reply, "servers.smtp.tempfail_reply", "4", multiline=False)


@dataclass(frozen=True)
class RspamdHttpConfig(ServerConfig):
    port: int = 11333
    #: seconds each request's headers and body may take to arrive, from its request line
    request_timeout: float = REQUEST_TIMEOUT


@dataclass(frozen=True)
class ServersConfig:
    """``[servers.spamd]``, ``[servers.milter]``, ``[servers.smtp]``, ``[servers.rspamd_http]``."""

    #: the event loop of ``antispam serve``: ``auto`` (uvloop when installed, else asyncio's own),
    #: ``uvloop`` (an error without it) or ``asyncio``
    event_loop: str = "auto"
    spamd: SpamdConfig = field(default_factory=SpamdConfig)
    milter: MilterConfig = field(default_factory=MilterConfig)
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    rspamd_http: RspamdHttpConfig = field(default_factory=RspamdHttpConfig)


@dataclass(frozen=True)
class GreylistConfig:
    """Greylisting (X.1240 7.11): defer the first delivery attempt of an unknown triplet.

    Legitimate MTAs retry after a temporary failure; much bulk spamware does
    not.  ``mode = "triplet"`` keys on (client network, sender, recipient);
    ``"content"`` on (client network, a digest of the body), for senders that
    vary the envelope on every attempt.
    """

    enabled: bool = False
    mode: str = "triplet"
    #: seconds a new triplet must wait before a retry is accepted
    delay: float = 300.0
    #: how long a first attempt is remembered while waiting for its retry
    pending_ttl: float = 86400.0
    #: how long a triplet that passed stays known (no new delay)
    pass_ttl: float = 36 * 86400.0
    allow_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    allow_domains: tuple[str, ...] = ()
    ipv4_prefix: int = 24
    ipv6_prefix: int = 64


@dataclass(frozen=True)
class RateLimitConfig:
    """Token buckets per client IP, envelope sender, recipient and authenticated user.

    A rate of 0 disables that key type.  Rates are messages per minute;
    ``burst`` is how many may come at once.  When a bucket is empty the
    ``RATELIMIT_*`` symbol fires and the verdict's action is at least ``action``
    (an empty string: the symbol only).
    """

    enabled: bool = False
    ip_rate: float = 0.0
    ip_burst: float = 0.0
    sender_rate: float = 0.0
    sender_burst: float = 0.0
    rcpt_rate: float = 0.0
    rcpt_burst: float = 0.0
    user_rate: float = 0.0
    user_burst: float = 0.0
    action: str = "soft reject"
    #: networks never limited
    allow_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")

    def __post_init__(self) -> None:
        # A bucket that holds less than one message refuses every message: a rate without a burst
        # is a mistake, caught at load (naming the file) rather than at the first scan.
        for kind in ("ip", "sender", "rcpt", "user"):
            if getattr(self, f"{kind}_rate") > 0 and getattr(self, f"{kind}_burst") < 1:
                raise ConfigError("must be at least 1 when the rate is set", key=f"ratelimit.{kind}_burst")


@dataclass(frozen=True)
class HistoryConfig:
    """Local reputation: decayed counts of past verdicts per IP, network, sender domain, URL domain.

    Off by default because it writes to the store after every scan.
    """

    enabled: bool = False
    #: the weight of an observation halves every ``half_life_days``
    half_life_days: float = 14.0
    #: decayed observations needed before an entity is judged
    min_observations: float = 5.0
    #: spam share at or above which an entity is bad, and at or below which it is good
    bad_ratio: float = 0.9
    good_ratio: float = 0.05
    #: a learned (user-confirmed) message counts this many observations
    learn_weight: float = 3.0
    #: an entity not observed for this many days is dropped from the store, with the ledger entries
    #: of messages learned that long ago (0: kept for ever); by then ten 14-day half-lives have cut
    #: its weight to a thousandth, and without it every client IP ever seen stays in the store
    forget_after_days: float = 140.0


@dataclass(frozen=True)
class DnsblConfig:
    """DNS block and allow lists (RFC 5782).  Needs ``[dns] nameservers``.

    ``enable`` names well-known lists that ship disabled (``antispam.reputation.lists.KNOWN_LISTS``);
    ``[dnsbl.lists.NAME]`` tables define others (zone, kind, inputs, codes or bitmask, refused, allow).
    """

    enable: tuple[str, ...] = ()
    lists: Mapping[str, Any] = field(default_factory=dict)
    #: our own relays: Received hops from these are skipped when looking for the sender
    trusted_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    #: how many untrusted Received relays (besides the client) lists with ``relays`` are asked about
    max_relays: int = 3
    #: seconds between RFC 5782 test-point checks of each list (0: never check)
    health_interval: float = 600.0


@dataclass(frozen=True)
class DnsConfig:
    """The one resolver (``antispam.dns``).  No nameservers (the default) means no network checks at all."""

    #: IP addresses (IPv4 or IPv6) of recursive resolvers; empty disables every network check
    nameservers: tuple[str, ...] = ()
    port: int = 53
    #: seconds for one attempt at one server
    timeout: float = 2.0
    #: passes over the server list before a question counts as timed out
    attempts: int = 2
    #: answers kept (LRU); 0 disables caching
    cache_size: int = 10000
    #: questions in flight at once per event loop
    max_concurrency: int = 64
    #: seconds to cache NXDOMAIN/NODATA when the server sent no SOA (RFC 2308)
    negative_ttl: float = 300.0
    #: seconds to remember a timeout or SERVFAIL, so one scan does not re-ask a dead server
    failure_ttl: float = 5.0
    min_ttl: float = 0.0
    max_ttl: float = 86400.0


@dataclass(frozen=True)
class AuthConfig:
    """Sender authentication: SPF, DKIM, DMARC, ARC, Authentication-Results (``antispam.auth``)."""

    spf: bool = True
    dkim: bool = True
    dmarc: bool = True
    arc: bool = False
    #: RFC 7208 4.6.4 limits (10 DNS mechanisms, 2 void lookups); false = the looser compatibility limits
    spf_strict_limits: bool = True
    #: also check the HELO identity when MAIL FROM is not null (RFC 7208 2.3 recommends it; one TXT query more)
    spf_check_helo: bool = True
    #: "rfc9989" (DMARCbis DNS tree walk, default) or "rfc7489" (Public Suffix List)
    dmarc_mode: str = "rfc9989"
    #: RSA keys shorter than this fail (RFC 8301 section 3.2 says 1024)
    dkim_min_rsa_bits: int = 1024
    #: treat rsa-sha1 signatures as permerror (RFC 8301 section 3.1)
    dkim_reject_sha1: bool = True
    #: ARC sealer domains (d= of ARC-Seal) whose passing chain may override a DMARC failure
    trusted_arc_sealers: tuple[str, ...] = ()
    #: authserv-ids whose earlier Authentication-Results we read; headers claiming our own id are stripped
    trusted_authserv_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class ClassifierConfig:
    """The token classifier (``antispam.classifier``)."""

    enabled: bool = True
    #: model directory; empty means the embedded default model (``models/default``)
    model: str = ""
    #: clue tokens listed in the symbol's options
    clues: int = 5
    #: weight of online learning (``engine.learn``) against the shipped model; 0 disables it
    learn_rate: float = 0.3


@dataclass(frozen=True)
class RulesConfig:
    """The rule engine (``rules/*.cf``, SpamAssassin syntax); see docs/rules.md."""

    enabled: bool = True
    #: rule directories or files; empty means the embedded default ruleset
    dirs: tuple[str, ...] = ()
    #: more directories or files read after ``dirs`` (local additions and overrides)
    extra_dirs: tuple[str, ...] = ()
    #: SpamAssassin rules directories (e.g. /usr/share/spamassassin); unusable rules are left out and logged
    sa_dirs: tuple[str, ...] = ()
    #: where SpamAssassin's ``*.pre`` files (loadplugin lines) are, for ``ifplugin`` in ``sa_dirs``
    sa_pre_dir: str = "/etc/spamassassin"
    #: "auto" (Hyperscan when installed), "hyperscan" or "python"
    engine: str = "auto"
    #: leave out bad rules (reported in the log) instead of failing to load
    skip_bad: bool = False
    #: directory for compiled Hyperscan databases (keyed by the rules' digest); "auto" is
    #: $XDG_CACHE_HOME/antispam (~/.cache/antispam), so only the first start compiles; empty: no cache
    cache_dir: str = "auto"
    #: bytes of a header's value that header rules read, at most (0: all).  Some of SpamAssassin's
    #: rules take the square of a value's length (a back-reference after a repeat): 80 KB of To took
    #: half a second a scan, and a header of 1 MB (what Exim lets through) would take over a minute;
    #: 32 KiB, about 0.1 s at worst, is twice the longest header of the SpamAssassin corpus (14 KB)
    max_header_bytes: int = 32768


@dataclass(frozen=True)
class Config:
    """The whole configuration of an engine."""

    engine: EngineConfig = field(default_factory=EngineConfig)
    #: bounds on one message (:class:`~antispam.message.Limits`, the same object the parser reads)
    limits: Limits = field(default_factory=Limits)
    rules: RulesConfig = field(default_factory=RulesConfig)
    servers: ServersConfig = field(default_factory=ServersConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    greylist: GreylistConfig = field(default_factory=GreylistConfig)
    ratelimit: RateLimitConfig = field(default_factory=RateLimitConfig)
    history: HistoryConfig = field(default_factory=HistoryConfig)
    dnsbl: DnsblConfig = field(default_factory=DnsblConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    #: symbol -> score, overriding the defaults the checks declare
    scores: Mapping[str, float] = field(default_factory=dict)
    #: symbol -> description override
    descriptions: Mapping[str, str] = field(default_factory=dict)
    #: action -> threshold (None disables the action)
    actions: Mapping[str, float | None] = field(
        default_factory=lambda: {"greylist": None, "add header": 5.0, "rewrite subject": None,
                                 "soft reject": None, "reject": 15.0}
    )
    #: group -> {"max_score": x, "min_score": y}
    groups: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    #: named policy variants: profile -> {"actions": ..., "scores": ..., "groups": ...}
    profiles: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: recipient address, ``@domain`` or user name -> profile name
    recipients: Mapping[str, str] = field(default_factory=dict)
    #: where the configuration came from, for error messages and ``antispam config``
    sources: tuple[str, ...] = ("<defaults>",)
    #: dotted key -> the source that last set it, so a check validated later (at engine
    #: construction, e.g. ``engine.disabled_checks``) can still name the file
    origins: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    # ------------------------------------------------------------------ loading

    @classmethod
    def default(cls) -> "Config":
        """The embedded defaults: the dataclass defaults with ``antispam/default.toml`` laid over them.

        ``default.toml`` holds what is data rather than code, such as the
        scores fitted on the TRAIN corpus by ``antispam fit``.
        """
        global _DEFAULT
        if _DEFAULT is None:
            cfg = cls()
            if _DEFAULT_TOML.exists():
                with open(_DEFAULT_TOML, "rb") as fh:
                    cfg = cfg.merged(tomllib.load(fh), source="<embedded default.toml>")
                cfg = dataclasses.replace(cfg, sources=("<defaults>",))
            _DEFAULT = cfg
        return _DEFAULT

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, overrides: Mapping[str, Any] | None = None) -> "Config":
        """Embedded defaults < TOML file at ``path`` < ``overrides`` (same nested shape as the file)."""
        cfg = cls.default()
        if path is not None:
            p = Path(path)
            try:
                with open(p, "rb") as fh:
                    # At most MAX_CONFIG_BYTES (+1 to see it was longer): ``-c /dev/zero`` or a
                    # runaway generated file read until memory ran out (MemoryError, a traceback).
                    # A pipe (``-c <(...)``) is still read, as a file.
                    # Read a piece at a time (read_at_most): fh.read(n) reserves n bytes first.
                    from .corpus import read_at_most

                    text = read_at_most(fh, MAX_CONFIG_BYTES + 1)
                if len(text) > MAX_CONFIG_BYTES:
                    raise ConfigError(f"larger than {MAX_CONFIG_BYTES // (1 << 20)} MiB: not a configuration file",
                                      source=str(p))
                data = tomllib.loads(text.decode("utf-8"))
            except FileNotFoundError:
                raise ConfigError("configuration file not found", source=str(p)) from None
            except IsADirectoryError:
                raise ConfigError("is a directory, not a configuration file", source=str(p)) from None
            except OSError as exc:  # no read permission, I/O error: the operator's to fix, not a traceback
                raise ConfigError(f"cannot read the configuration file: {exc.strerror or exc}", source=str(p)) from None
            except UnicodeDecodeError as exc:  # TOML is UTF-8 (tomllib decodes before parsing)
                raise ConfigError(f"not UTF-8 text (byte {exc.start}): TOML files are UTF-8", source=str(p)) from None
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"invalid TOML: {exc}", source=str(p)) from None
            except RecursionError:  # tomllib nests by recursion: a = [[[[... was a traceback
                raise ConfigError("invalid TOML: arrays or tables nested too deeply", source=str(p)) from None
            cfg = cfg.merged(data, source=str(p))
        if overrides:
            cfg = cfg.merged(overrides, source="<overrides>")
        return cfg

    def merged(self, data: Mapping[str, Any], source: str = "<overrides>") -> "Config":
        """A new Config with ``data`` (nested mapping, as in a TOML file) laid over this one."""
        changes: dict[str, Any] = {}
        for key, value in data.items():
            if key == "scores":
                changes["scores"] = {**self.scores, **_float_map(value, "scores", source)}
            elif key == "descriptions":
                changes["descriptions"] = {**self.descriptions, **_str_map(value, "descriptions", source)}
            elif key == "actions":
                changes["actions"] = {**self.actions, **_actions(value, source)}
            elif key == "groups":
                changes["groups"] = {**self.groups, **_groups(value, source)}
            elif key == "profiles":
                changes["profiles"] = {**self.profiles, **_profiles(value, source)}
            elif key == "recipients":
                changes["recipients"] = {**self.recipients, **{k.lower(): v for k, v in _str_map(value, "recipients", source).items()}}
            elif key in _SECTIONS:
                current = getattr(self, key)
                changes[key] = _merge_section(current, value, key, source)
            else:
                sections = sorted([*_SECTIONS, "scores", "descriptions", "actions", "groups", "profiles", "recipients"])
                head, dot, rest = key.partition(".")
                if dot and head in sections:  # {"rules.engine": ...} from the Python API
                    raise ConfigError(f"unknown section: a dotted name; tables nest as in the file: "
                                      f"{{{head!r}: {{{rest!r}: ...}}}}", key=key, source=source)
                raise ConfigError(f"unknown section (known: {', '.join(sections)})", key=key, source=source)
        sources = self.sources + ((source,) if source not in self.sources else ())
        origins = {**self.origins, **dict.fromkeys(_leaf_keys(data), source)}
        merged = dataclasses.replace(self, sources=sources, origins=origins, **changes)
        for who, profile in merged.recipients.items():
            if profile not in merged.profiles:
                raise ConfigError(f"names profile {profile!r}, which is not defined in [profiles]",
                                  key=f"recipients.{who}", source=source)
        return merged

    def for_profile(self, name: str) -> "Config":
        """This configuration with profile ``name``'s actions, scores and groups laid over it."""
        return self.merged(self.profiles[name], source=f"<profile {name}>")

    def profile_for(self, recipient: str | None) -> str | None:
        """The profile of a recipient address (exact, then ``@domain``) or user name; None for the default."""
        if not recipient or not self.recipients:
            return None
        r = recipient.strip().strip("<>").lower()
        if r in self.recipients:
            return self.recipients[r]
        at = r.rfind("@")
        return self.recipients.get(r[at:]) if at >= 0 else None

    def source_of(self, key: str) -> str | None:
        """The file (or ``<overrides>``) that set dotted ``key`` last; None for a built-in default."""
        return self.origins.get(key)

    def score_for(self, symbol: str, default: float) -> float:
        return self.scores.get(symbol, default)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dicts, TOML-shaped, for ``antispam config`` and for logging."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name in ("sources", "origins"):
                continue
            v = getattr(self, f.name)
            out[f.name] = dataclasses.asdict(v) if dataclasses.is_dataclass(v) else {k: (dict(x) if isinstance(x, Mapping) else x) for k, x in v.items()}
        return out


_DEFAULT_TOML = Path(__file__).resolve().parent / "default.toml"
_DEFAULT: Config | None = None

# Every field of Config whose type is a dataclass is a section: adding a
# section is adding one field above, nothing else.
_SECTIONS: frozenset[str] = frozenset(
    name for name, hint in typing.get_type_hints(Config).items() if dataclasses.is_dataclass(hint)
)


def _merge_section(current: Any, value: Any, key: str, source: str) -> Any:
    if not isinstance(value, Mapping):
        raise ConfigError("must be a table", key=key, source=source)
    hints = typing.get_type_hints(type(current))
    names = {f.name for f in dataclasses.fields(current)}
    changes = {}
    for k, v in value.items():
        if k not in names:
            raise ConfigError(f"unknown key (known: {', '.join(sorted(names))})", key=f"{key}.{k}", source=source)
        sub = getattr(current, k)
        if dataclasses.is_dataclass(sub):
            changes[k] = _merge_section(sub, v, f"{key}.{k}", source)
        else:
            changes[k] = _coerce(v, hints[k], f"{key}.{k}", source)
            _check_value(changes[k], f"{key}.{k}", source)
    try:
        return dataclasses.replace(current, **changes)
    except ConfigError as exc:  # a section's own check of its keys together (__post_init__): name the file
        if exc.source is None:
            raise ConfigError(exc.detail, key=exc.key, source=source) from None
        raise


def _leaf_keys(data: Mapping[str, Any], prefix: str = "") -> typing.Iterator[str]:
    """Dotted keys of the tables and values in ``data``, for :attr:`Config.origins`."""
    for k, v in data.items():
        key = f"{prefix}{k}"
        yield key
        if isinstance(v, Mapping):
            yield from _leaf_keys(v, key + ".")


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    """Check ``value`` against a type hint; convert lists to tuples and ints to floats."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key, source)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"expected {_hint_name(hint)}, got {value!r}", key=key, source=source)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"expected a list, got {value!r}", key=key, source=source)
        return tuple(_coerce(v, args[0], key, source) for v in value)
    if origin in (dict, Mapping, typing.Mapping) or hint in (dict,):
        if not isinstance(value, Mapping):
            raise ConfigError(f"expected a table, got {value!r}", key=key, source=source)
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"expected true or false, got {value!r}", key=key, source=source)
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"expected an integer, got {value!r}", key=key, source=source)
        if value < 0:
            raise ConfigError(f"must not be negative, got {value!r}", key=key, source=source)
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"expected a number, got {value!r}", key=key, source=source)
        # inf and nan are never meant: an infinite score prints as invalid JSON, inf and -inf
        # together make a NaN score, an infinite timeout never times out.
        if not math.isfinite(value):
            raise ConfigError(f"expected a finite number, got {value!r}", key=key, source=source)
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"expected a string, got {value!r}", key=key, source=source)
        return value
    return value


# --- value rules: the range or the allowed values of each setting, by dotted key ---------------
#
# One table, so an operator (and a reviewer) reads every knob's range in one place, and the same
# check runs for site files and overrides alike.  ``servers.*.KEY`` covers every server section.
# A setting without a rule takes any value of its type (floats finite; integers, not negative);
# tests/test_config_errors.py requires a rule for every float.


@dataclass(frozen=True)
class _Range:
    """``lo <= value <= hi``; ``lo_open``: ``lo < value``, where ``lo`` itself makes no sense
    (a timeout of 0 times out at once, a half-life of 0 divides by zero)."""

    lo: float = 0.0
    hi: float = math.inf
    lo_open: bool = False

    def __call__(self, value: Any, key: str, source: str) -> None:
        if value < self.lo or value > self.hi or (self.lo_open and value == self.lo):
            raise ConfigError(f"must be {self.describe()}, got {value!r}", key=key, source=source)

    def describe(self) -> str:
        lo = f"{self.lo:g}"
        if self.hi == math.inf:
            return f"{'greater than' if self.lo_open else 'at least'} {lo}"
        return f"{'over' if self.lo_open else 'from'} {lo} to {self.hi:g}"


@dataclass(frozen=True)
class _OneOf:
    """An enumerated string: anything else (a typo) would silently read as the default branch."""

    choices: tuple[str, ...]

    def __call__(self, value: Any, key: str, source: str) -> None:
        if value not in self.choices:
            raise ConfigError(f"must be one of {', '.join(repr(c) for c in self.choices)}, got {value!r}",
                              key=key, source=source)


def _ip_addresses(value: Any, key: str, source: str) -> None:
    """The resolver sends to addresses; a host name would need a resolver to find the resolver."""
    for entry in value:
        try:
            ipaddress.ip_address(entry)
        except ValueError:
            raise ConfigError(f"{entry!r} is not an IP address (IPv4 or IPv6): name resolvers by address",
                              key=key, source=source) from None


#: the longest socket path the kernel takes (``sun_path`` is 108 bytes with its NUL on Linux, 104 on
#: the BSDs and macOS): a longer one fails at bind with a bare "AF_UNIX path too long"
MAX_SOCKET_PATH = 103


def _socket_path(value: Any, key: str, source: str) -> None:
    """A Unix-domain socket's path: absolute (a relative one would depend on the directory a service
    manager starts us in), no NUL, short enough for the kernel."""
    if value == "":
        return
    if "\0" in value or not value.startswith("/"):
        raise ConfigError(f"must be an absolute path, got {value!r}", key=key, source=source)
    if len(value.encode("utf-8", "surrogateescape")) > MAX_SOCKET_PATH:
        raise ConfigError(f"is longer than the {MAX_SOCKET_PATH} bytes a socket path may have: {value!r}",
                          key=key, source=source)


def _socket_mode(value: Any, key: str, source: str) -> None:
    """File permissions, written in TOML as an octal integer: 660 (decimal) is a likely slip for 0o660."""
    if not 0 <= value <= 0o777:
        raise ConfigError(f"must be file permissions written in octal, such as 0o660, got {value!r}",
                          key=key, source=source)


def _store_url(value: Any, key: str, source: str) -> None:
    """The URL :func:`antispam.store.open_store` would open, checked at load so the error names the file."""
    from .store.base import parse_store_url

    try:
        parse_store_url(value)
    except ValueError as exc:
        raise ConfigError(str(exc), key=key, source=source) from None


def _paths(value: Any, key: str, source: str) -> None:
    """A file or directory name, or a list of them: no NUL, which no file name holds and which the
    file functions refuse with a bare ValueError (``cache_dir = "\\u0000"`` was a traceback)."""
    for entry in (value if isinstance(value, (list, tuple)) else (value,)):
        if isinstance(entry, str) and "\0" in entry:
            raise ConfigError(f"{entry!r} is no file name: it has a NUL character", key=key, source=source)


# The allowed values of the enumerated settings: defined here, where loading checks them, and
# imported by the code that reads them, so the two cannot drift apart.
#: ``[rules] engine`` (``antispam.ruleset.matcher.make_matcher``)
RULES_ENGINES = ("auto", "hyperscan", "python")
#: ``[servers] event_loop`` (``antispam.servers.common.event_loop_factory``)
EVENT_LOOPS = ("auto", "asyncio", "uvloop")
#: ``[auth] dmarc_mode`` (``antispam.auth.dmarc``)
DMARC_MODES = ("rfc9989", "rfc7489")
#: ``[greylist] mode`` (``antispam.reputation.greylist``)
GREYLIST_MODES = ("triplet", "content")
#: ``[servers.smtp] mode`` (``antispam.servers.smtp``)
SMTP_MODES = ("after-queue", "before-queue")

_POSITIVE = _Range(lo_open=True)  # seconds to wait, half-lives: 0 makes no sense
_NOT_NEGATIVE = _Range()  # delays, TTLs, rates, weights: 0 means none / off
_RATIO = _Range(0.0, 1.0)
_PORT = _Range(0, 65535)  # 0: servers take a free port, metrics are off

_RULES: dict[str, typing.Callable[[Any, str, str], None]] = {
    "engine.scan_deadline": _POSITIVE,
    "store.url": _store_url,
    "store.on_failure": _OneOf(("open", "closed")),
    "store.timeout": _POSITIVE,
    "servers.event_loop": _OneOf(EVENT_LOOPS),
    "servers.*.port": _PORT,
    "servers.*.socket": _socket_path,
    "servers.*.socket_mode": _socket_mode,
    "servers.*.metrics_port": _PORT,
    "servers.*.max_size": _Range(1),  # 0 would refuse every message
    "servers.*.max_connections": _Range(1),
    "servers.*.timeout": _POSITIVE,
    "servers.*.shutdown_timeout": _NOT_NEGATIVE,  # 0: cut in-flight messages off at once
    "servers.spamd.request_timeout": _POSITIVE,
    "servers.rspamd_http.request_timeout": _POSITIVE,
    "servers.smtp.mode": _OneOf(SMTP_MODES),
    "servers.smtp.next_hop_timeout": _POSITIVE,
    "servers.smtp.next_hop_data_timeout": _POSITIVE,
    "greylist.mode": _OneOf(GREYLIST_MODES),
    "greylist.delay": _NOT_NEGATIVE,
    "greylist.pending_ttl": _POSITIVE,  # 0 forgets every first attempt: deferred for ever
    "greylist.pass_ttl": _POSITIVE,
    "greylist.ipv4_prefix": _Range(0, 32),
    "greylist.ipv6_prefix": _Range(0, 128),
    **{f"ratelimit.{kind}_{what}": _NOT_NEGATIVE for kind in ("ip", "sender", "rcpt", "user") for what in ("rate", "burst")},
    "ratelimit.action": _OneOf(("", *ACTIONS[1:])),
    "history.half_life_days": _POSITIVE,
    "history.min_observations": _NOT_NEGATIVE,
    "history.bad_ratio": _RATIO,
    "history.good_ratio": _RATIO,
    "history.learn_weight": _NOT_NEGATIVE,
    "history.forget_after_days": _NOT_NEGATIVE,  # 0: never
    "dnsbl.health_interval": _NOT_NEGATIVE,  # 0: never check
    "dns.nameservers": _ip_addresses,
    "dns.port": _Range(1, 65535),
    "dns.timeout": _POSITIVE,
    "dns.attempts": _Range(1),
    "dns.max_concurrency": _Range(1),
    "dns.negative_ttl": _NOT_NEGATIVE,
    "dns.failure_ttl": _NOT_NEGATIVE,
    "dns.min_ttl": _NOT_NEGATIVE,
    "dns.max_ttl": _NOT_NEGATIVE,
    "auth.dmarc_mode": _OneOf(DMARC_MODES),
    "classifier.learn_rate": _NOT_NEGATIVE,  # 0: online learning off
    "classifier.clues": _Range(0, 64),  # the kernels' MAX_CLUES: more would fail every scan's classifier
    "rules.engine": _OneOf(RULES_ENGINES),
    "rules.max_header_bytes": _NOT_NEGATIVE,
    **{f"rules.{k}": _paths for k in ("dirs", "extra_dirs", "sa_dirs", "sa_pre_dir", "cache_dir")},
    "classifier.model": _paths,
    "dnsbl.lists": lambda value, key, source: _table(value, key, source, "a table of [dnsbl.lists.NAME] tables"),
}


def _table(value: Any, key: str, source: str, what: str) -> None:
    """A table: ``[dnsbl] lists = 5`` passed the load and crashed building the engine (AttributeError)."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"must be {what}, got {value!r}", key=key, source=source)


def _rule_for(key: str) -> typing.Callable[[Any, str, str], None] | None:
    """The rule of dotted ``key``: its own, else its ``servers.*`` one."""
    rule = _RULES.get(key)
    parts = key.split(".")
    if rule is None and len(parts) == 3 and parts[0] == "servers":
        rule = _RULES.get(f"servers.*.{parts[2]}")
    return rule


def _check_value(value: Any, key: str, source: str) -> None:
    """Apply ``key``'s rule, if it has one, to an already type-checked value."""
    rule = _rule_for(key)
    if rule is not None and value is not None:
        rule(value, key, source)


def _hint_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _float_map(value: Any, key: str, source: str) -> dict[str, float]:
    if not isinstance(value, Mapping):
        raise ConfigError("must be a table of NAME = number", key=key, source=source)
    return {k: _coerce(v, float, f"{key}.{k}", source) for k, v in value.items()}


def _str_map(value: Any, key: str, source: str) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise ConfigError("must be a table of NAME = \"text\"", key=key, source=source)
    return {k: _coerce(v, str, f"{key}.{k}", source) for k, v in value.items()}


def _actions(value: Any, source: str, prefix: str = "actions") -> dict[str, float | None]:
    """``prefix`` is where the table sits (``profiles.NAME.actions`` in a profile), for error messages."""
    if not isinstance(value, Mapping):
        raise ConfigError("must be a table of action = threshold", key=prefix, source=source)
    out: dict[str, float | None] = {}
    for k, v in value.items():
        name = k.replace("_", " ")
        if name not in ACTIONS or name == "no action":
            raise ConfigError(f"unknown action (known: {', '.join(ACTIONS[1:])})", key=f"{prefix}.{k}", source=source)
        if v is False:
            out[name] = None
        else:
            out[name] = _coerce(v, float, f"{prefix}.{k}", source)
    return out


def _profiles(value: Any, source: str) -> dict[str, dict[str, Any]]:
    """Profiles change policy only (actions, scores, groups): checks run once per message."""
    if not isinstance(value, Mapping):
        raise ConfigError("must be a table of profiles", key="profiles", source=source)
    out = {}
    for name, table in value.items():
        if not isinstance(table, Mapping):
            raise ConfigError("must be a table", key=f"profiles.{name}", source=source)
        for k in table:
            if k not in ("actions", "scores", "groups"):
                raise ConfigError("unknown key (known: actions, scores, groups)", key=f"profiles.{name}.{k}", source=source)
        # Validate now, so a bad profile fails at load time and names its key.
        _actions(table.get("actions", {}), source, f"profiles.{name}.actions")
        _float_map(table.get("scores", {}), f"profiles.{name}.scores", source)
        _groups(table.get("groups", {}), source, f"profiles.{name}.groups")
        out[name] = dict(table)
    return out


def _groups(value: Any, source: str, prefix: str = "groups") -> dict[str, dict[str, float]]:
    """``prefix`` is where the table sits (``profiles.NAME.groups`` in a profile), for error messages."""
    if not isinstance(value, Mapping):
        raise ConfigError("must be a table of groups", key=prefix, source=source)
    out = {}
    for g, spec in value.items():
        if not isinstance(spec, Mapping):
            raise ConfigError("must be a table", key=f"{prefix}.{g}", source=source)
        for k in spec:
            if k not in ("max_score", "min_score"):
                raise ConfigError("unknown key (known: max_score, min_score)", key=f"{prefix}.{g}.{k}", source=source)
        out[g] = {k: _coerce(v, float, f"{prefix}.{g}.{k}", source) for k, v in spec.items()}
    return out
