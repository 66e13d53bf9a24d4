"""Authentication-Results (RFC 8601): writing our results, reading and policing earlier ones.

Writing: each authentication check adds one ``resinfo`` with :func:`resinfo`
through ``ctx.add_auth_result``; the engine prefixes the authserv-id and puts
the header in ``Verdict.authentication_results``.

Reading: a message may arrive with Authentication-Results written by hosts
before us.  Only those whose authserv-id the operator listed as trusted mean
anything (RFC 8601 section 5: anyone can write the header), and any claiming
*our* authserv-id was forged by the sender or an earlier hop, since we have
not seen the message yet.  :class:`AuthResultsCheck` reports both, publishes
the trusted ones as an :class:`UpstreamAuth` fact, and :func:`strip_forged`
removes the forged headers for integrations that rewrite the message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable

from ..check import Check, Hit, ScanContext, SymbolDef
from ..domains import to_ascii

if TYPE_CHECKING:  # pragma: no cover
    from ..config import Config
    from ..message import Message

# RFC 8601 2.2: pvalue = value / [ [ local-part ] "@" ] domain-name, value being a MIME token
# (RFC 2045: no tspecials, so no "/", "=", "@") or a quoted-string.  A token, or an address whose
# local part is a dot-atom, is written bare; anything else (a DKIM b= prefix with "/" or "=")
# is quoted.
_TOKEN = re.compile(r"^[A-Za-z0-9!#$%&'*+\-.^_`{|}~]+$")
#: a host name: letters, digits and inner hyphens, in dot-separated labels
_DOMAIN = r"[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?)*"
_ADDR = re.compile(r"^(?:[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+(?:\.[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+)*)?@" + _DOMAIN + "$")


def quote_value(value: str) -> str:
    """A property value as RFC 8601 wants it: bare when it is a token/addr-spec, else quoted.
    Unfolded first (a value may be quoted from a folded tag of the message): the header we write
    breaks only where we fold it."""
    if value and (_TOKEN.match(value) or _ADDR.match(value)):
        return value
    if "\r" in value or "\n" in value:
        value = re.sub(r"[\r\n]+", "", value)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def ascii_value(value: str) -> str:
    """A property value an Authentication-Results field can carry: ASCII (RFC 8601 fields are, unless
    the whole message is internationalized, which the servers that write ours cannot tell).

    A domain, or an address's domain, written in Unicode (an SMTPUTF8 sender, an RFC 6532 From) is
    given as its A-labels (:func:`antispam.domains.to_ascii`, UTS 46 non-transitional: the name
    SPF and DMARC asked about, ``faß.de`` as ``xn--fa-hia.de``, never IDNA 2003's ``fass.de``);
    an address whose local part is not ASCII is given as its domain alone, the part SPF and
    DMARC checked.  A value neither maps to (no domain UTS 46 can encode) is returned as it is
    (:func:`antispam.verdict.header_safe` then writes ``?`` for what a header cannot carry)."""
    if value.isascii():
        return value
    local, at, domain = value.rpartition("@")
    try:
        a_domain = to_ascii(domain)
    except UnicodeError:
        return value
    if not at:
        return a_domain
    return f"{local}@{a_domain}" if local.isascii() else a_domain


def _comment(text: str) -> str:
    # Comments nest in RFC 5322; escaping parentheses and backslashes keeps ours flat and closed.
    # Line breaks and runs of whitespace (a sender's folded tag value quoted in a reason) become
    # one space: a header value we write never breaks where we did not fold it.
    return "(" + re.sub(r"([()\\])", r"\\\1", re.sub(r"\s+", " ", text)) + ")"


def resinfo(method: str, result: str, props: Iterable[tuple[str, str]] = (), reason: str | None = None,
            comment: str | None = None) -> str:
    """One resinfo, e.g. ``resinfo("spf", "pass", [("smtp.mailfrom", "a@b.example")])``."""
    out = f"{method}={result}"
    if comment:
        out += " " + _comment(comment)
    if reason:
        out += " reason=" + quote_value(reason)
    for ptype_prop, value in props:
        out += f" {ptype_prop}={quote_value(ascii_value(value))}"
    return out


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True, slots=True)
class ResInfo:
    method: str
    result: str
    reason: str | None = None
    props: tuple[tuple[str, str], ...] = ()

    def prop(self, name: str) -> str | None:
        for k, v in self.props:
            if k == name:
                return v
        return None


@dataclass(frozen=True, slots=True)
class AuthResults:
    """One parsed Authentication-Results header field."""

    authserv_id: str
    results: tuple[ResInfo, ...] = ()


def _tokens(text: str) -> list[str]:
    """Split into words, '=', ';' and quoted strings (unquoted), dropping comments.

    A word right after '=' is a value and runs to whitespace, ';', '(' or '"' only: RFC 8601's
    pvalue may be an address whose local part holds '=' (an SRS or VERP sender,
    ``smtp.mailfrom=SRS0=HHH=TT=example.org=alice@fwd.example``, which we write bare ourselves).
    """
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        after_equals = bool(out) and out[-1] == "="
        if c.isspace():
            i += 1
        elif c == "(":
            depth = 0
            while i < n:
                if text[i] == "\\":
                    i += 2
                    continue
                if text[i] == "(":
                    depth += 1
                elif text[i] == ")":
                    depth -= 1
                    if depth == 0:
                        i += 1
                        break
                i += 1
        elif c == '"':
            i += 1
            buf = []
            while i < n and text[i] != '"':
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                buf.append(text[i])
                i += 1
            i += 1
            out.append("\0" + "".join(buf))  # mark as quoted so '=' inside is not syntax
        elif c == ";" or (c == "=" and not after_equals):
            out.append(c)
            i += 1
        elif c == ")":  # a stray closing parenthesis: no comment to close, skip it
            i += 1
        else:
            stops = ';()"' if after_equals else '=;()"'
            j = i
            while j < n and not text[j].isspace() and text[j] not in stops:
                j += 1
            out.append(text[i:j])
            i = j
    return out


def _val(tok: str) -> str:
    return tok[1:] if tok.startswith("\0") else tok


def parse(value: str) -> AuthResults | None:
    """Parse a header value; None when it has no authserv-id.  Unparsable resinfos are skipped."""
    toks = _tokens(value)
    if not toks or toks[0] in (";", "="):
        return None
    authserv_id = _val(toks[0]).lower()
    groups: list[list[str]] = [[]]
    for t in toks[1:]:
        if t == ";":
            groups.append([])
        else:
            groups[-1].append(t)
    results = []
    for g in groups[1:]:
        # method[/version] = result [reason=value] {ptype.prop=value}
        if len(g) < 3 or g[0] == "none" or g[1] != "=":
            continue
        k = 1
        method, result = g[0].lower().partition("/")[0], _val(g[k + 1]).lower()
        reason = None
        props: list[tuple[str, str]] = []
        j = k + 2
        while j + 2 < len(g) and g[j + 1] == "=":
            name, v = g[j].lower(), _val(g[j + 2])
            if name == "reason":
                reason = v
            else:
                props.append((name, v))
            j += 3
        results.append(ResInfo(method, result, reason, tuple(props)))
    return AuthResults(authserv_id, tuple(results))


# --------------------------------------------------------------------------- the check


@dataclass(frozen=True)
class UpstreamAuth:
    """Authentication-Results written by hosts the operator trusts, newest first."""

    headers: tuple[AuthResults, ...] = ()
    forged: int = 0
    results: tuple[ResInfo, ...] = field(default=())


class AuthResultsCheck(Check):
    """Reads earlier Authentication-Results: trusts listed authserv-ids, flags ones forging ours."""

    name = "authres"
    symbols = (
        SymbolDef("AUTHRES_FORGED", 3.0, "An Authentication-Results header claims our authserv-id before we saw the message", "auth"),
        SymbolDef("AUTHRES_TRUSTED", 0.0, "Authentication-Results from a trusted authserv-id were read", "auth"),
    )

    def __init__(self, authserv_id: str, trusted: Iterable[str] = ()):
        self.authserv_id = authserv_id.lower()
        self.trusted = frozenset(t.lower() for t in trusted)

    def run(self, msg: "Message", ctx: ScanContext) -> list[Hit]:
        trusted: list[AuthResults] = []
        forged = 0
        for raw in msg.get_all("Authentication-Results"):
            parsed = parse(raw)
            if parsed is None:
                continue
            if parsed.authserv_id == self.authserv_id:
                forged += 1
            elif parsed.authserv_id in self.trusted:
                trusted.append(parsed)
        ctx.publish(UpstreamAuth(tuple(trusted), forged, tuple(r for h in trusted for r in h.results)))
        hits = []
        if forged:
            hits.append(Hit("AUTHRES_FORGED", 1.0, (f"{forged} header(s) claiming {self.authserv_id}",)))
        if trusted:
            hits.append(Hit("AUTHRES_TRUSTED", 1.0, tuple(sorted({h.authserv_id for h in trusted}))))
        return hits


def strip_forged(raw: bytes, authserv_id: str) -> bytes:
    """``raw`` without the Authentication-Results header fields that claim ``authserv_id``.

    Works on the header block bytes so the body and every other header stay
    byte-identical (DKIM signatures over them keep verifying).
    """
    sep = raw.find(b"\r\n\r\n")
    sep_len = 4
    lf = raw.find(b"\n\n")
    if sep < 0 or (0 <= lf < sep):
        sep, sep_len = lf, 2
    head, body = (raw, b"") if sep < 0 else (raw[:sep + sep_len // 2], raw[sep + sep_len // 2:])
    lines = head.splitlines(keepends=True)
    fields: list[list[bytes]] = []
    for line in lines:
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    want = authserv_id.lower()
    kept = []
    for f in fields:
        name, _, value = b"".join(f).partition(b":")
        if name.strip().lower() == b"authentication-results":
            parsed = parse(value.decode("utf-8", "replace"))
            if parsed is not None and parsed.authserv_id == want:
                continue
        kept.extend(f)
    return b"".join(kept) + body


def authres_check(config: "Config", store: object = None) -> AuthResultsCheck | None:
    """Enabled when trusted authserv-ids are configured or an authserv-id is set (to catch forgeries)."""
    auth = getattr(config, "auth", None)
    if auth is None or not (auth.trusted_authserv_ids or config.engine.authserv_id):
        return None
    from ..engine import _hostname

    return AuthResultsCheck(config.engine.authserv_id or _hostname(), auth.trusted_authserv_ids)
