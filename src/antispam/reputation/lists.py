"""DNS list definitions (RFC 5782): what a list checks and what its answers mean.

A list is data: a zone, the inputs it is asked about, and the meaning of its
answers.  Answers come in two styles:

* *code* lists answer a distinct ``127.0.0.x`` per reason (``codes`` maps an
  address to a symbol; ``default_symbol`` catches any other listing);
* *bitmask* lists answer ``127.0.0.N`` whose last octet is a sum of flags
  (``bitmask`` maps a flag to a symbol).

Some answers are not listings at all: lists that refuse a resolver (public
resolvers, over quota, unregistered users) answer with special addresses.
Those are in ``refused``; they never count as a listing and they disable the
list until its health check passes again.

Which addresses are never asked (DNSxLs describe hosts of the public
Internet): anything that is not globally routable (loopback, RFC 1918,
CGNAT 100.64.0.0/10, link-local, documentation and other special-purpose
ranges, multicast) and any IPv6 address with a zone (``fe80::1%eth0``).
Asking a public list about them leaks internal addresses and, for
127.0.0.2, hits the list's own test point (RFC 5782 section 5), so a link
to ``http://127.0.0.2/`` would "list" the message.  Domain-only lists
(``ip_queries = False``, e.g. Spamhaus DBL) are never asked about IP-literal
URLs at all.

The well-known lists below ship *disabled*: enabling one is one line,
``[dnsbl] enable = ["spamhaus_zen"]``.  Their zones and return codes are the
lists' own published facts; check each list's usage terms before enabling it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..domains import Address, is_ip, parse_ip, to_ascii
from ..errors import ConfigError

INPUTS = {
    "ip": ("client_ip", "relays"),
    "domain": ("mail_from", "from", "helo", "rdns", "reply_to"),
    "uri": ("urls",),
    "hash": ("from", "mail_from", "reply_to"),
}


@dataclass(frozen=True, slots=True)
class ListSpec:
    """One DNS list."""

    name: str
    zone: str
    #: "ip" (reversed address), "domain" (a domain name), "uri" (URL registered domains; public
    #: IP-literal URLs are asked as reversed addresses unless ``ip_queries`` is off), "hash" (hex
    #: digest of an identifier, e.g. an address)
    kind: str
    inputs: tuple[str, ...]
    codes: Mapping[str, str] = field(default_factory=dict)
    bitmask: Mapping[int, str] = field(default_factory=dict)
    default_symbol: str | None = None
    refused: frozenset[str] = frozenset()
    #: True for allow lists (DNSWL): their symbols score negative
    allow: bool = False
    #: digest for "hash" lists: "sha1", "sha256" or "md5"
    hash: str = "sha1"
    #: symbols that count only for the connecting client, never for relays (policy lists such
    #: as Spamhaus PBL name dynamic ranges, which legitimately hand mail to their ISP's relay)
    client_only: frozenset[str] = frozenset()
    #: False for "uri" lists that list domains only: they are never asked about IP-literal URLs.
    #: Spamhaus DBL answers any IP question with 127.0.1.255 ("IP queries prohibited", a refused
    #: code), so asking it about one ``http://44.4.4.4/`` link would disable it for every scan.
    ip_queries: bool = True
    #: what the health check asks and must find listed: an address for an "ip" list, a name for the
    #: others; None is RFC 5782's (127.0.0.2, ``test``), "" skips the health check for this list.
    #: Lists publish their own (Spamhaus DBL ``dbltest.com``, SURBL ``test.surbl.org``, URIBL
    #: ``test.uribl.com``), and a list whose test point is not listed is disabled as broken.
    test_point: str | None = None
    description: str = ""

    def symbols(self) -> list[str]:
        out = list(self.codes.values()) + list(self.bitmask.values())
        if self.default_symbol:
            out.append(self.default_symbol)
        return list(dict.fromkeys(out))

    def interpret(self, addresses: list[str]) -> tuple[list[tuple[str, str]], bool]:
        """Answers -> ``([(symbol, answer)], refused)``.

        Anything outside 127.0.0.0/8 is not a valid DNSBL answer (RFC 5782
        section 2.3 reserves 127.0.0.0/8) and is ignored, as a hijacked or
        wildcarded zone would otherwise list the whole Internet.
        """
        hits: list[tuple[str, str]] = []
        refused = False
        for a in addresses:
            if a in self.refused:
                refused = True
                continue
            if not a.startswith("127."):
                continue
            if self.bitmask:
                last = int(a.rsplit(".", 1)[1])
                for flag, sym in self.bitmask.items():
                    if last & flag:
                        hits.append((sym, a))
                continue
            sym = self.codes.get(a) or self.default_symbol
            if sym:
                hits.append((sym, a))
        return hits, refused


def reverse_ip(ip: str) -> str | None:
    """``192.0.2.1`` -> ``1.2.0.192``; IPv6 as 32 reversed nibbles (RFC 5782 section 2.4).

    Never raises: the nibbles come from the packed address, because ``exploded``
    raises for an address with a zone (``fe80::1%eth0``) on the Python versions we
    support.  Whether an address may be *asked* is :func:`lookup_ip`'s decision.
    """
    addr = parse_ip(ip)
    if addr is None:
        return None
    if addr.version == 6:
        return ".".join(reversed(addr.packed.hex()))
    return ".".join(reversed(str(addr).split(".")))


def lookup_ip(ip: str | None) -> Address | None:
    """The address if a public DNS list may be asked about it, else None.

    RFC 5782 lists describe hosts of the public Internet; a non-global address
    (loopback, RFC 1918, CGNAT 100.64.0.0/10, link-local, documentation and other
    IANA special-purpose ranges) means nothing to them, leaks our internal
    addressing to the list operator, and 127.0.0.2 is every list's test point
    (RFC 5782 section 5), listed by definition.  Multicast is not a host.  An
    IPv6 zone (``%eth0``) only means something on this machine.
    """
    if not ip:
        return None
    addr = parse_ip(ip)
    if addr is None or not addr.is_global or addr.is_multicast:
        return None
    if getattr(addr, "scope_id", None):
        return None
    return addr


_NUMBER_RE = re.compile(r"0[xX][0-9a-fA-F]*|[0-9]+")
_OCTAL_RE = re.compile(r"0[0-7]+")


def ends_in_number(host: str) -> bool:
    """Whether a browser reads ``host`` as an IPv4 address, not a domain (WHATWG URL "ends in a number").

    ``http://738460676/``, ``http://0x2c.4.4.4/`` and ``http://054.4.4.4/`` all open 44.4.4.4: a host
    whose last label is a number is an address, never a domain with a numeric top-level label.
    """
    return bool(_NUMBER_RE.fullmatch(host.rstrip(".").rpartition(".")[2]))


def numeric_ipv4(host: str) -> str | None:
    """The dotted quad a browser opens for a host of 1-4 numbers (decimal, ``0x`` hex, leading-``0``
    octal; the last number fills the remaining bytes), or None if it is no valid address.

    A URL list must be asked about the address the link leads to: asked as a domain, such a link
    was either skipped or sent as a meaningless name (``4.4`` for ``0x2c.4.4.4``).
    """
    parts = host.rstrip(".").split(".")
    if not 1 <= len(parts) <= 4 or not all(_NUMBER_RE.fullmatch(p) for p in parts):
        return None
    nums = [_ipv4_number(p) for p in parts]
    if None in nums:
        return None
    *head, last = nums
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(nums)):
        return None
    value = last
    for i, n in enumerate(head):
        value += n << (8 * (3 - i))
    return ".".join(str((value >> shift) & 255) for shift in (24, 16, 8, 0))


def _ipv4_number(part: str) -> int | None:
    """One number of a numeric host (already matched by ``_NUMBER_RE``), in the base its prefix
    names; None for a leading-``0`` number with an 8 or 9, which makes the URL invalid in a browser."""
    if part[:2] in ("0x", "0X"):
        return int(part[2:] or "0", 16)
    if len(part) > 1 and part[0] == "0":
        return int(part, 8) if _OCTAL_RE.fullmatch(part) else None
    return int(part, 10)


def query_name(spec: ListSpec, item: str) -> str | None:
    """The name to ask ``spec`` about ``item``, or None when the item must not or cannot be asked.

    IP items (of "ip" lists, and IP-literal URLs of "uri" lists) are asked only when
    :func:`lookup_ip` accepts them, and never of a list with ``ip_queries`` off.
    """
    if spec.kind == "ip" or (spec.kind == "uri" and is_ip(item)):
        if spec.kind == "uri" and not spec.ip_queries:
            return None
        if lookup_ip(item) is None:
            return None
        rev = reverse_ip(item)
        return f"{rev}.{spec.zone}." if rev else None
    if spec.kind == "hash":
        h = hashlib.new(spec.hash, item.strip().lower().encode("utf-8", "replace")).hexdigest()
        return f"{h}.{spec.zone}."
    item = item.strip().rstrip(".").lower()
    if not item or len(item) > 200 or ".." in item or is_ip(item):
        return None
    try:
        item = to_ascii(item)
    except UnicodeError:
        return None
    return f"{item}.{spec.zone}."


def health_points(spec: ListSpec) -> tuple[str, str] | None:
    """(must be listed, must not be listed) per RFC 5782 section 5, the first from the list's own
    ``test_point`` when it has one; None when its health is not checked (``test_point = ""``)."""
    if spec.test_point == "":
        return None
    if spec.kind == "ip":
        return f"{reverse_ip(spec.test_point or '127.0.0.2')}.{spec.zone}.", f"1.0.0.127.{spec.zone}."
    return f"{spec.test_point or 'test'}.{spec.zone}.", f"invalid.{spec.zone}."


# --------------------------------------------------------------------------- known lists

_SPAMHAUS_REFUSED = frozenset({"127.255.255.252", "127.255.255.254", "127.255.255.255"})

KNOWN_LISTS: dict[str, dict[str, Any]] = {
    "spamhaus_zen": dict(
        zone="zen.spamhaus.org", kind="ip", inputs=("client_ip", "relays"),
        codes={"127.0.0.2": "RBL_SPAMHAUS_SBL", "127.0.0.3": "RBL_SPAMHAUS_CSS",
               "127.0.0.4": "RBL_SPAMHAUS_XBL", "127.0.0.5": "RBL_SPAMHAUS_XBL", "127.0.0.6": "RBL_SPAMHAUS_XBL",
               "127.0.0.7": "RBL_SPAMHAUS_XBL", "127.0.0.9": "RBL_SPAMHAUS_DROP",
               "127.0.0.10": "RBL_SPAMHAUS_PBL", "127.0.0.11": "RBL_SPAMHAUS_PBL"},
        refused=_SPAMHAUS_REFUSED, client_only=frozenset({"RBL_SPAMHAUS_PBL"}),
        description="Spamhaus ZEN: SBL, CSS, XBL, DROP and PBL in one zone (PBL only on the client IP)"),
    "spamcop": dict(zone="bl.spamcop.net", kind="ip", inputs=("client_ip", "relays"),
                    codes={"127.0.0.2": "RBL_SPAMCOP"}, description="SpamCop blocking list"),
    "barracuda": dict(zone="b.barracudacentral.org", kind="ip", inputs=("client_ip",),
                      codes={"127.0.0.2": "RBL_BARRACUDA"}, description="Barracuda reputation block list (registration required)"),
    "dnswl": dict(zone="list.dnswl.org", kind="ip", inputs=("client_ip",), allow=True,
                  codes={}, default_symbol="RCVD_IN_DNSWL", refused=frozenset({"127.0.0.255"}),
                  description="DNSWL.org allow list: 127.0.<category>.<trust 0-3>"),
    "spamhaus_dbl": dict(
        zone="dbl.spamhaus.org", kind="domain", inputs=("mail_from", "from", "helo", "rdns", "reply_to"),
        codes={"127.0.1.2": "DBL_SPAM", "127.0.1.4": "DBL_PHISH", "127.0.1.5": "DBL_MALWARE", "127.0.1.6": "DBL_BOTNET",
               "127.0.1.102": "DBL_ABUSED_LEGIT", "127.0.1.103": "DBL_ABUSED_LEGIT", "127.0.1.104": "DBL_ABUSED_LEGIT",
               "127.0.1.105": "DBL_ABUSED_LEGIT", "127.0.1.106": "DBL_ABUSED_LEGIT"},
        refused=_SPAMHAUS_REFUSED | {"127.0.1.255"}, ip_queries=False, test_point="dbltest.com",
        description="Spamhaus domain block list (sender and HELO domains)"),
    # The DBL lists domains only; its documented return codes answer any IP question with
    # 127.0.1.255 ("IP queries prohibited"), so IP-literal URLs are never asked of it.
    "spamhaus_dbl_uri": dict(
        zone="dbl.spamhaus.org", kind="uri", inputs=("urls",),
        codes={"127.0.1.2": "URI_DBL_SPAM", "127.0.1.4": "URI_DBL_PHISH", "127.0.1.5": "URI_DBL_MALWARE",
               "127.0.1.6": "URI_DBL_BOTNET"},
        refused=_SPAMHAUS_REFUSED | {"127.0.1.255"}, ip_queries=False, test_point="dbltest.com",
        description="Spamhaus DBL on URL domains"),
    # SURBL answers 127.0.0.1 (bit 1) to every question from a blocked resolver.
    "surbl": dict(zone="multi.surbl.org", kind="uri", inputs=("urls",),
                  bitmask={8: "SURBL_PHISH", 16: "SURBL_MALWARE", 64: "SURBL_ABUSE", 128: "SURBL_CRACKED"},
                  refused=frozenset({"127.0.0.1"}), test_point="test.surbl.org",
                  description="SURBL multi: bitmask of phishing, malware, abuse and cracked-site lists; 127.0.0.1 means blocked"),
    "uribl": dict(zone="multi.uribl.com", kind="uri", inputs=("urls",),
                  bitmask={2: "URIBL_BLACK", 4: "URIBL_GREY", 8: "URIBL_RED"},
                  refused=frozenset({"127.0.0.1"}), test_point="test.uribl.com",
                  description="URIBL multi: 127.0.0.1 means the query was refused"),
}


#: Default scores of the symbols of the known lists (configuration overrides them).
DEFAULT_SCORES: dict[str, float] = {
    "RBL_SPAMHAUS_SBL": 4.0, "RBL_SPAMHAUS_CSS": 3.0, "RBL_SPAMHAUS_XBL": 4.0, "RBL_SPAMHAUS_DROP": 6.0,
    "RBL_SPAMHAUS_PBL": 1.5, "RBL_SPAMCOP": 2.5, "RBL_BARRACUDA": 2.5, "RCVD_IN_DNSWL": -2.0,
    "DBL_SPAM": 4.0, "DBL_PHISH": 5.0, "DBL_MALWARE": 5.0, "DBL_BOTNET": 5.0, "DBL_ABUSED_LEGIT": 1.0,
    "URI_DBL_SPAM": 4.5, "URI_DBL_PHISH": 6.0, "URI_DBL_MALWARE": 6.0, "URI_DBL_BOTNET": 6.0,
    "SURBL_PHISH": 6.0, "SURBL_MALWARE": 6.0, "SURBL_ABUSE": 4.5, "SURBL_CRACKED": 3.0,
    "URIBL_BLACK": 4.5, "URIBL_GREY": 1.0, "URIBL_RED": 0.5,
}


def parse_lists(known: Mapping[str, Mapping[str, Any]], custom: Mapping[str, Any], enable: tuple[str, ...],
                key: str = "dnsbl") -> list[ListSpec]:
    """Build the enabled lists: the known ones named in ``enable`` plus every custom table."""
    specs: list[ListSpec] = []
    for name in enable:
        if name not in known and name not in custom:
            raise ConfigError(f"unknown list {name!r} (known: {', '.join(sorted(known))})", key=f"{key}.enable")
    for name in enable:
        if name in known and name not in custom:
            specs.append(_spec(name, known[name], f"{key}.enable"))
    for name, table in custom.items():
        if not isinstance(table, Mapping):
            raise ConfigError("must be a table", key=f"{key}.lists.{name}")
        specs.append(_spec(name, table, f"{key}.lists.{name}"))
    return specs


_FIELDS = {"zone", "kind", "inputs", "codes", "bitmask", "default_symbol", "refused", "allow", "hash", "description",
           "client_only", "ip_queries", "test_point"}


def _spec(name: str, t: Mapping[str, Any], key: str) -> ListSpec:
    unknown = set(t) - _FIELDS
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(_FIELDS))})", key=key)
    zone = t.get("zone")
    if not isinstance(zone, str) or not zone or " " in zone:
        raise ConfigError("needs a zone name", key=f"{key}.zone")
    kind = t.get("kind", "ip")
    if kind not in INPUTS:
        raise ConfigError(f"must be one of {', '.join(INPUTS)}", key=f"{key}.kind")
    inputs = tuple(t.get("inputs", INPUTS[kind][:1]))
    bad = [i for i in inputs if i not in INPUTS[kind]]
    if bad:
        raise ConfigError(f"{', '.join(bad)} cannot be asked of a {kind} list (allowed: {', '.join(INPUTS[kind])})",
                          key=f"{key}.inputs")
    codes = dict(t.get("codes", {}))
    for addr in codes:
        if not addr.startswith("127."):
            raise ConfigError(f"return code {addr!r} is outside 127.0.0.0/8", key=f"{key}.codes")
    try:
        bitmask = {int(k): v for k, v in dict(t.get("bitmask", {})).items()}
    except ValueError:
        raise ConfigError("bitmask keys must be integers", key=f"{key}.bitmask") from None
    default_symbol = t.get("default_symbol")
    if not codes and not bitmask and not default_symbol:
        default_symbol = "RBL_" + name.upper()
    h = t.get("hash", "sha1")
    if h not in ("sha1", "sha256", "md5"):
        raise ConfigError("must be sha1, sha256 or md5", key=f"{key}.hash")
    ip_queries = t.get("ip_queries", True)
    if not isinstance(ip_queries, bool):
        raise ConfigError("must be true or false", key=f"{key}.ip_queries")
    if kind == "ip" and not ip_queries:
        raise ConfigError("an ip list is asked about addresses only; ip_queries = false would ask it nothing",
                          key=f"{key}.ip_queries")
    return ListSpec(name=name, zone=zone.rstrip(".").lower(), kind=kind, inputs=inputs, codes=codes, bitmask=bitmask,
                    default_symbol=default_symbol, refused=frozenset(t.get("refused", ())), allow=bool(t.get("allow", False)),
                    hash=h, description=str(t.get("description", "")), client_only=frozenset(t.get("client_only", ())),
                    ip_queries=ip_queries, test_point=_test_point(t.get("test_point"), kind, f"{key}.test_point"))


def _test_point(value: Any, kind: str, key: str) -> str | None:
    """A list's ``test_point``: an IPv4 or IPv6 address for an ``ip`` list, a name for the others (asked
    as is, before the zone), or "" for no health check."""
    if value is None or value == "":
        return value
    if not isinstance(value, str):
        raise ConfigError("must be a string", key=key)
    point = value.strip().rstrip(".").lower()
    if kind == "ip":
        if parse_ip(point) is None:
            raise ConfigError(f"{value!r} is not an IP address (an ip list's test point is the address it lists)", key=key)
        return str(parse_ip(point))
    try:
        ascii_point = to_ascii(point)
    except UnicodeError:
        ascii_point = ""
    if not ascii_point or len(ascii_point) > 200 or ".." in ascii_point or " " in ascii_point:
        raise ConfigError(f"{value!r} is not a domain name", key=key)
    return ascii_point
