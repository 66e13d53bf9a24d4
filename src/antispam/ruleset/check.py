"""The rules check: builds the buffers of a message, runs the matcher, evals and metas, emits hits.

Buffers (all UTF-8 bytes, matched with byte semantics as SpamAssassin does):

* ``body``: the subject as the first line, then the readable text (plain parts
  and rendered HTML), one paragraph per line (line breaks inside a paragraph
  become spaces).  Body and URI rules see ``^``/``$`` at line boundaries, so
  a rule anchored at ``^`` matches at any paragraph start, as in SpamAssassin.
* ``rawbody``: the decoded text parts before HTML rendering (markup included).
* ``uri``: one link per line; ``uri:sa``, read by SpamAssassin's own uri rules, holds its
  ``mailto:`` links too (:mod:`.sa_uri`).
* ``body:sa``: what SpamAssassin's own body rules read, ``body`` with each run of blanks one space.
* ``full``: the raw message.
* ``hdr:NAME:ACCESSOR:IFUNSET``: the header's decoded value (every occurrence,
  joined by newlines), ``ALL`` = every header as ``Name: value`` lines,
  ``ToCc`` = To and Cc; accessors ``raw`` (undecoded), ``addr``, ``name``,
  ``first``, ``last``, ``host``/``domain`` (of the address).  A missing header
  reads as the ``[if-unset: ...]`` text, else as empty; the rules that an
  empty value satisfies (``!~`` rules and patterns matching "") are worked out
  once at load time, so absent headers cost nothing per scan.

Per scan: one :meth:`Matcher.scan` per buffer that some rule reads, then the
evals, then the metas in dependency order over the list of hit counts.  The
result is published as a :class:`RuleHits` fact, and every hit rule that is
not a ``__`` sub-rule and has a non-zero score becomes a :class:`Hit` whose
options say what matched (the text, the URL host, what an eval found).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from .. import fastscore
from ..check import Check, Hit, ScanContext, SymbolDef
from ..config import RulesConfig
from ..errors import RuleError
from ..message import Message, Url, domain_of, split_addresses
from .compiler import SA_BODY, SA_URI, CompiledRule, CompiledRules, compile_rules, defined_under, scored_only
from .evals import envelope_sender, eval_function, header_absent, header_count_over, per_message, relays_by_trust
from .matcher import Matcher, collect_first_end, line_search, make_matcher, match_shape
from . import pattern_tree
from .parser import parse_paths
from .possessive import leftmost
from .runwidth import RunWidth
from .sa_uri import sa_uri_links

log = logging.getLogger("antispam.rules")



@dataclass(frozen=True, slots=True)
class RuleHits:
    """Every rule that hit in this scan (sub-rules and zero-scored rules included), name -> count."""

    counts: Mapping[str, int]


# --------------------------------------------------------------------------- buffers


@per_message  # read again for SpamAssassin's own body rules (sa_body_text) when both are loaded
def body_text(msg: Message) -> str:
    """Subject line, then one paragraph per line: what ``body`` rules read."""
    text = msg.text.strip()
    if not text:
        return msg.subject
    if "\x00" in text:
        text = text.replace("\x00", " ")  # as the text has always read (a NUL is no paragraph mark)
    # Paragraph breaks become one newline, line breaks inside a paragraph a space (a compiled kernel;
    # the twin's regex split is the definition).
    return msg.subject + "\n" + fastscore.impl.paragraph_lines(text)


def sa_body_text(msg: Message) -> str:
    """``body`` as SpamAssassin renders it: every run of blanks one space.  It collapses the white
    space of the whole text, where ours keeps a plain part's own spacing (a line broken after
    "Financial " reads "Financial  Independence"), which its rules' single spaces do not match."""
    return fastscore.impl.collapse_blanks(body_text(msg))


def rawbody_text(msg: Message) -> str:
    return "\n".join(p.text for p in msg.text_parts if p.text)  # type: ignore[misc]


def uri_text(msg: Message) -> str:
    """One link per line: what this project's uri rules read."""
    return link_lines(msg.urls)


def link_lines(links: Sequence[Url]) -> str:
    """One link per line.  A link's own tabs and line breaks are dropped, as browsers drop them
    from a URL (WHATWG URL parsing), so that line k is always link k."""
    urls = [u.url for u in links]
    text = "\n".join(urls)
    if urls and (text.count("\n") >= len(urls) or "\r" in text or "\t" in text):
        text = "\n".join(u.translate(_URL_BLANKS) for u in urls)
    return text


_URL_BLANKS = {9: None, 10: None, 13: None}


#: Pseudo-headers, matched case-sensitively as in SpamAssassin (``MessageID`` is an
#: ordinary header name, ``MESSAGEID`` the pseudo-header), to internal keys.
_PSEUDO_NAMES = {"ALL": "*all", "ToCc": "*tocc", "MESSAGEID": "*messageid", "EnvelopeFrom": "*envelopefrom",
                 "X-Spam-Relays-External": "*relays-external", "X-Spam-Relays-Internal": "*relays-internal",
                 "X-Spam-Relays-Trusted": "*relays-trusted", "X-Spam-Relays-Untrusted": "*relays-untrusted"}
_PSEUDO = frozenset(_PSEUDO_NAMES.values())


def header_key(name: str) -> str:
    """The lookup key of a header name: a pseudo-header's key, else the lower-cased name."""
    return _PSEUDO_NAMES.get(name) or name.lower()


def header_exists(msg: Message, name: str) -> bool:
    """``exists:NAME``: the header is present (a pseudo-header: it has a value)."""
    key = header_key(name)
    if key in _PSEUDO:
        return _header_value(msg, key, ()) is not None
    return msg.has(key)


def header_text(msg: Message, name: str, accessor: str) -> str | None:
    """The value a header rule reads, or None when the header is absent."""
    return _header_value(msg, header_key(name), tuple(a for a in accessor.split("+") if a))


def _header_value(msg: Message, lname: str, accs: tuple[str, ...]) -> str | None:
    if lname not in _PSEUDO:
        if not msg.has(lname):
            return None  # the common case: most headers that rules read are absent
        if not accs:
            vals = msg.get_all(lname)
            return vals[0] if len(vals) == 1 else "\n".join(vals)
    raw = "raw" in accs
    if lname == "*all":
        hs = msg.raw_headers if raw else msg.headers
        return "\n".join(map(": ".join, hs)) if hs else None  # each header a (name, value) pair
    if lname == "*tocc":
        values = (msg.get_raw("To") + msg.get_raw("Cc")) if raw else (msg.get_all("To") + msg.get_all("Cc"))
    elif lname == "*messageid":
        values = []
        for h in ("Message-Id", "Resent-Message-Id", "X-Message-Id"):
            values += msg.get_raw(h) if raw else msg.get_all(h)
    elif lname.startswith("*relays-"):
        v = relays_text(msg, lname[8:])
        values = [v] if v is not None else []
    elif lname == "*envelopefrom":
        ef = envelope_sender(msg)
        values = [] if ef is None else [ef]
    else:
        values = msg.get_raw(lname) if raw else msg.get_all(lname)
    if not values:
        return None
    if "first" in accs:
        values = values[:1]
    elif "last" in accs:
        values = values[-1:]
    if "addr" in accs or "name" in accs or "host" in accs or "domain" in accs:
        out = []
        for v in values:
            addrs = split_addresses(v)
            if not addrs:
                continue
            dname, addr = addrs[0]
            if "name" in accs:
                out.append(dname)
            elif "addr" in accs:
                out.append(addr)
            else:
                out.append(domain_of(addr) or "")
        values = out
    return "\n".join(values)


def _address_field(msg: Message, lname: str, accs: tuple[str, ...]) -> str | None:
    """:func:`_header_value` for an ordinary header read as ``:addr`` or ``:name`` alone (From,
    Reply-To...): the same text, without the general accessor's tests."""
    pos = msg.header_index.get(lname)
    if pos is None:
        return None
    k = 1 if accs[0] == "addr" else 0
    # Not Message.from_addresses, which reads the field as sent (for DMARC an encoded word is never
    # an address): rules read addresses out of the decoded value, as SpamAssassin's From:addr does.
    if len(pos) == 1 and lname == "reply-to" and k:
        return msg.reply_to or ""  # the message's own view (reputation reads it too)
    headers = msg.headers
    out = []
    for i in pos:
        addrs = split_addresses(headers[i][1])
        if addrs:
            out.append(addrs[0][k])
    return "\n".join(out)


def mime_header_text(msg: Message, name: str, accessor: str) -> str | None:
    """``mimeheader`` rules: the header in every MIME part (raw values), one per line; None when no part has it."""
    values = _mime_headers(msg).get(name.lower())
    if not values:
        return None
    if "raw" not in accessor:
        from ..message import decode_rfc2047

        values = [decode_rfc2047(v) for v in values]
    return "\n".join(" ".join(v.split("\n")) for v in values)


@per_message
def _mime_headers(msg: Message) -> dict[str, list[str]]:
    """Lower-cased name -> the raw values of that header in every MIME part, in order: one walk
    of the parts a message for the ~6 ``mimeheader`` groups of SpamAssassin's rules, which each
    walked every header of every part (~4 us a group)."""
    out: dict[str, list[str]] = {}
    for p in msg.parts:
        for n, v in p.headers:
            k = n.lower()
            vals = out.get(k)
            if vals is None:
                out[k] = [v]
            else:
                vals.append(v)
    return out


def relays_text(msg: Message, which: str) -> str | None:
    """SpamAssassin's ``X-Spam-Relays-*`` pseudo-headers, newest relay first.

    Each relay reads ``[ ip=... rdns=... helo=... by=... ident= envfrom= intl=0|1 id= auth= msa=0 ]``.
    Trusted relays are internal, untrusted ones external; trust is inferred as SpamAssassin
    infers it without configured networks, approximately (:func:`.evals.relays_by_trust`).
    """
    if which in ("trusted", "internal"):
        return _relays_texts(msg)[0]
    if which in ("untrusted", "external"):
        return _relays_texts(msg)[1]
    return None


@per_message
def _relays_texts(msg: Message) -> tuple[str, str]:
    """The trusted and the untrusted relays' texts, built once a message (two to four groups read them)."""
    return tuple(" ".join(f"[ ip={r.ip} rdns={r.rdns or ''} helo={r.helo or ''} by={r.by or ''} ident= envfrom= "
                          f"intl={intl} id= auth= msa=0 ]" for r in chosen)
                 for chosen, intl in zip(relays_by_trust(msg), ("1", "0")))  # type: ignore[return-value]


def _enc(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class LoadedRules:
    compiled: CompiledRules
    matcher: Matcher
    #: problems that did not stop loading (ignored lines, skipped bad rules)
    problems: tuple[str, ...]
    #: rules reported though their files score them 0: the configuration gives them a score
    also_reported: frozenset[str] = frozenset()


def load_rules(paths: Sequence[str | Path], *, sa_paths: Sequence[str | Path] = (), engine: str = "auto",
               skip_bad: bool = False, cache_dir: str | Path | None = None,
               sa_pre_dirs: Sequence[str | Path] = (), every_rule: bool = False,
               report: Iterable[str] = ()) -> LoadedRules:
    """Parse, compile and build the matcher.

    Errors in ``paths`` raise :class:`RuleError` listing all of them, unless
    ``skip_bad``.  Rules from ``sa_paths`` (a SpamAssassin rules directory)
    are foreign: those that cannot be used are left out and summarised in the
    log, never fatal.  Rules scored 0 that no reported meta reads are not
    evaluated (:func:`~.compiler.scored_only`) unless ``every_rule``, which
    corpus statistics and score fitting ask for.  ``report``: rule names to report
    even when their files score them 0 (``__`` sub-rules never are), because the
    configuration's ``[scores]`` (or a profile's) gives them a score.
    """
    try:
        return _load_rules(paths, sa_paths, engine, skip_bad, cache_dir, sa_pre_dirs, every_rule, report)
    finally:  # the patterns' parse trees served this load only (see pattern_tree.parsed)
        pattern_tree.parsed.cache_clear()


def _load_rules(paths: Sequence[str | Path], sa_paths: Sequence[str | Path], engine: str, skip_bad: bool,
                cache_dir: str | Path | None, sa_pre_dirs: Sequence[str | Path], every_rule: bool,
                report: Iterable[str]) -> LoadedRules:
    parsed = parse_paths([*paths, *sa_paths], pre_dirs=sa_pre_dirs)
    sa_roots = [str(Path(p)) for p in sa_paths]
    compiled = compile_rules(parsed, lenient_meta=bool(sa_paths), sa_roots=sa_roots)
    fatal = [p for p in compiled.errors() if not defined_under(p.where, sa_roots)]
    if fatal and not skip_bad:
        raise RuleError([str(p) for p in fatal])
    if sa_paths:
        r = compiled.report
        a, t, x = r.total()
        log.info("SpamAssassin rules: %d accepted, %d translated, %d refused", a, t, x)
    also = frozenset(n for n in report if not n.startswith("__") and n in compiled.by_name)
    if not every_rule:
        compiled = scored_only(compiled, also)
    matcher = make_matcher(compiled, engine, cache_dir)
    if sa_paths and matcher.name == "python":
        # Measured: with SpamAssassin 4.0.1's rules, 8 KB of line breaks in a header or a link took
        # 0.2-2 s a scan under re, the square of the length; none of the default rules does.
        log.warning("SpamAssassin rules on the Python matcher: a hostile message can take seconds to "
                    "scan (re backtracks where Hyperscan does not); install hyperscan for them")
    kept = tuple(str(p) for p in compiled.problems if p.severity != "ignored" or not defined_under(p.where, sa_roots))
    return LoadedRules(compiled, matcher, kept, also)


# --------------------------------------------------------------------------- the check


class RulesCheck(Check):
    """Runs a compiled ruleset.  Symbols are the loaded rules, so they are built per instance."""

    name = "rules"

    def __init__(self, loaded: LoadedRules, max_header_bytes: int = RulesConfig.max_header_bytes):
        self.loaded = loaded
        #: bytes of a header's value that the rules read, at most (0: all): ``[rules] max_header_bytes``,
        #: whose default is this one too, so that the ``rules stats`` and ``rules fit`` tools (which
        #: build a RulesCheck directly) see a header as a scan sees it
        self.max_header_bytes = max_header_bytes
        c = loaded.compiled
        self.compiled = c
        self.matcher = loaded.matcher
        reported = [r.reported(loaded.also_reported) for r in c.rules]
        self.symbols = tuple(  # type: ignore[misc]
            SymbolDef(r.name, r.score, r.description or r.name, "rules") for r, rep in zip(c.rules, reported) if rep
        )
        self._n = len(c.rules)
        self._names = [r.name for r in c.rules]
        self._emitted = reported
        # Header groups: (group key, reader, name, accessor, if-unset text, rule ids, ids of !~ rules, hits on "");
        # reader None: an ordinary header read as decoded, taken from the table built once per scan.
        self._headers: list[tuple[str, Callable[..., str | None] | None, str, object, str | None, tuple[int, ...],
                                  frozenset[int], dict[int, int]]] = []
        self._body_groups = [g for g in ("body", SA_BODY, "rawbody", "uri", SA_URI, "full") if g in c.groups]
        for key, ids in c.groups.items():
            if not key.startswith(("hdr:", "mime:")):
                continue
            first = c.rules[ids[0]]
            assert first.header is not None
            hname, acc, unset = first.header
            negs = frozenset(i for i in ids if c.rules[i].negate)
            empty_matches = self.matcher.scan(key, b"")
            if key.startswith("hdr:"):
                reader, name_arg, acc_arg = _header_value, header_key(hname), tuple(a for a in acc.split("+") if a)
                if not acc_arg and name_arg not in _PSEUDO:
                    reader = None
                elif acc_arg in (("addr",), ("name",)) and name_arg not in _PSEUDO:
                    reader = _address_field
            else:
                reader, name_arg, acc_arg = mime_header_text, hname, acc
            self._headers.append((key, reader, name_arg, acc_arg, unset, tuple(ids), negs, empty_matches))
        #: each rule's pattern as written, compiled when a hit of it is first named (:meth:`_options`): compiling
        #: all of them here was ~0.8 s of the start-up with SpamAssassin's rules, for the few that hit
        self._rx: dict[int, re.Pattern[bytes]] = {}
        #: the patterns of _rx made for a search of the leftmost match (possessive.leftmost), made when first needed
        self._rx_leftmost: dict[int, re.Pattern[bytes]] = {}
        # Metas: who depends on whom, their order, and their values when nothing hits.
        self._meta_fns = dict(c.metas)
        # A meta's level: one more than the highest level among what it reads (other rules: 0),
        # so every meta comes after its inputs when taken level by level (c.metas is in
        # dependency order, so the levels of its inputs are known when it is reached).
        level: dict[int, int] = {}
        for rid, _ in c.metas:
            level[rid] = 1 + max((level.get(d, 0) for d in c.rules[rid].deps), default=0)
        self._levels = 1 + max(level.values(), default=0)
        # The template: every count as it is for a message where every header that
        # rules read is absent and nothing else hits.  A scan starts from a copy and
        # only touches what differs, so its cost follows the headers present and the
        # hits, not the number of rules.
        template = [0] * self._n
        for key, _, _, _, unset, ids, negs, empty in self._headers:
            found = empty if unset is None or unset == "" else self.matcher.scan(key, _enc(unset))
            for rid in ids:
                n = found.get(rid, 0)
                template[rid] = (0 if n else 1) if rid in negs else n
        for rid, fn in c.metas:
            try:
                template[rid] = 1 if fn(template) else 0
            except (ZeroDivisionError, TypeError):
                template[rid] = 0
        self._template = template
        # rule -> the metas that read it and that a rise (_rise) or a fall (_fall)
        # of its count could move off its template value (.monotone: most cannot; ``A && !B`` is
        # false in the template and stays false when B hits).
        # Entries: (level, the metas of that level), so that a change queues each level's metas at once.
        rise: dict[int, dict[int, set[int]]] = {}
        fall: dict[int, dict[int, set[int]]] = {}
        for rid, _ in c.metas:
            on = template[rid] != 0
            for d, sign in c.rules[rid].polarity:
                # sign +1: the meta's truth never falls as d rises, so a rise can move it only when false
                if sign == 0 or (sign > 0) != on:
                    rise.setdefault(d, {}).setdefault(level[rid], set()).add(rid)
                if sign == 0 or (sign > 0) == on:
                    fall.setdefault(d, {}).setdefault(level[rid], set()).add(rid)
        self._rise = {d: tuple((lv, frozenset(ms)) for lv, ms in by.items()) for d, by in rise.items()}
        self._fall = {d: tuple((lv, frozenset(ms)) for lv, ms in by.items()) for d, by in fall.items()}
        # Per header group, the rules whose count can change other than by a plain match
        # (``!~`` rules and rules that hit on the absent header's value): the scan visits
        # these and the rules Hyperscan reported, never the whole group.  Entries: (group key,
        # reader, name, accessor, if-unset text given, hits on "", those rules as a set and in order, !~ rules).
        self._header_scan = [
            (key, reader, name_arg, acc_arg, bool(unset), empty,
             frozenset(i for i in ids if i in negs or template[i]), tuple(i for i in ids if i in negs or template[i]), negs)
            for key, reader, name_arg, acc_arg, unset, ids, negs, empty in self._headers
        ]
        # exists: rules, by the lower-case header name they test (a scan visits only the names the
        # message has: ~70 names against its ~25), and those on pseudo-headers, tested one by one
        self._exists: dict[str, list[int]] = {}
        self._exists_pseudo: list[tuple[int, str]] = []
        for rid in c.exists:
            header = c.rules[rid].header
            if header is None:
                continue
            key = header_key(header[0])
            if key in _PSEUDO:
                self._exists_pseudo.append((rid, header[0]))
            else:
                self._exists.setdefault(key, []).append(rid)
        # Header-count evals are answered from the message's header index, without a call;
        # entries: (rule id, lower-case name, hit when the count is above this; -1: when absent).
        self._header_counts: list[tuple[int, str, int]] = []
        self._evals = []
        for rid in c.evals:
            r = c.rules[rid]
            fn = eval_function(r.eval_name, r.spamassassin).fn  # type: ignore[arg-type,union-attr]
            if fn is header_absent:
                self._header_counts.append((rid, r.eval_args[0].lower(), -1))
            elif fn is header_count_over:
                self._header_counts.append((rid, r.eval_args[0].lower(), r.eval_args[1]))
            else:
                self._evals.append((rid, fn, r.eval_args, r.name))
        # Where the text shown for a hit is searched from (see _options); only rules that are
        # emitted show a text.  One parse of each pattern gives both answers.
        shapes = {r.id: match_shape(r.py, r.py_flags) for r in c.rules if reported[r.id] and r.py is not None}
        pattern_tree.parsed.cache_clear()  # those parse trees served this step only (as in load_rules)
        #: rules whose matches never contain a newline: searched from the line of the first match end
        self._single_line = frozenset(i for i, (line, _) in shapes.items() if line)
        #: rule id -> longest possible match, for the rules whose matches are bounded
        self._max_width = {i: w for i, (_, w) in shapes.items() if w is not None}
        #: rule id -> the longest match in a given buffer, for the others where runs of byte classes bound it
        self._run_width = {i: rw for i, (_, w) in shapes.items() if w is None
                           and (rw := RunWidth.of(c.rules[i].py, c.rules[i].py_flags)) is not None}  # type: ignore[arg-type]
        #: rules that hit in the template (``!~`` rules on absent headers, metas like ``!A``)
        self._template_hits = tuple(i for i, n in enumerate(template) if n)

    def run(self, msg: Message, ctx: ScanContext) -> Iterable[Hit]:
        c = self.compiled
        rules = c.rules
        counts = self._template.copy()
        hit: list[int] = []  # ids whose count differs from the template (repeats allowed)
        scan = self.matcher.scan
        where: dict[int, bytes] = {}  # rule id -> buffer it matched, for the options
        ends: dict[int, int] = {}  # rule id -> end of a match no later than the leftmost one, when known
        index = msg.header_index
        headers = msg.headers
        direct = self.matcher.direct_scanners()
        cap = self.max_header_bytes
        for key, reader, hname, acc, unset, empty, special_set, special, negs in self._header_scan:
            if reader is None:
                pos = index.get(hname)
                value = None if pos is None else headers[pos[0]][1] if len(pos) == 1 else "\n".join([headers[i][1] for i in pos])
            else:
                value = reader(msg, hname, acc)
            if not value:
                # absent (None), or empty and read like absent: the template holds the counts
                if value is None or not unset:
                    continue
                found, data = empty, b""
            else:
                data = value.encode("utf-8", "surrogateescape")
                if cap and len(data) > cap:
                    data = data[:cap]
                d = direct.get(key)
                if d is not None:
                    # a plain Hyperscan group: one call, its reports final hits counted once, each
                    # with the end of its first match (scan_plain, inlined: ~20 groups a message)
                    firsts: dict[int, int] = {}
                    d[0](data, collect_first_end, 0, firsts, d[1])
                    if firsts:
                        ends.update(firsts)
                        found = dict.fromkeys(firsts, 1)
                    else:
                        found = firsts
                else:
                    found = scan(key, data, ends)
            for rid, n in found.items():
                if rid in special_set:
                    continue
                # an ordinary rule: 0 in the template, so a match is a change
                counts[rid] = n
                hit.append(rid)
                where[rid] = data
            for rid in special:
                n = found.get(rid, 0)
                if rid in negs:
                    n = 0 if n else 1
                if n != counts[rid]:
                    counts[rid] = n
                    hit.append(rid)
                if n:
                    where[rid] = data
        for key in self._body_groups:
            if key == "body":
                data = _enc(body_text(msg))
            elif key == SA_BODY:
                data = _enc(sa_body_text(msg))
            elif key == "rawbody":
                data = _enc(rawbody_text(msg))
            elif key == "uri":
                data = _enc(uri_text(msg))
            elif key == SA_URI:
                data = _enc(link_lines(sa_uri_links(msg)))
            else:
                data = msg.raw
            for rid, n in scan(key, data, ends).items():
                counts[rid] = n
                where[rid] = data
                hit.append(rid)
        options: dict[int, tuple[str, ...]] = {}
        exists = self._exists
        for lname in exists.keys() & index.keys():
            for rid in exists[lname]:
                counts[rid] = 1
                hit.append(rid)
        for rid, hname in self._exists_pseudo:
            if header_exists(msg, hname):
                counts[rid] = 1
                hit.append(rid)
        for rid, lname, over in self._header_counts:
            pos = index.get(lname)
            if (pos is None) if over < 0 else (pos is not None and len(pos) > over):
                counts[rid] = 1
                hit.append(rid)
        for rid, fn, args, rname in self._evals:
            # EvalFunc.__call__ inlined: a truth value or count, or (hit, options)
            try:
                r = fn(msg, *args)
                if isinstance(r, tuple):
                    ok, opts = r
                    if not ok:
                        continue
                    n, opts = int(ok), tuple(opts)
                else:
                    n, opts = int(r), ()
            except Exception as exc:  # a broken eval is one silent rule, never a lost scan
                log.debug("eval %s failed: %s", rname, exc)
                continue
            if n:
                counts[rid] = n
                options[rid] = opts
                hit.append(rid)
        hit.extend(self._metas(counts, hit))
        names = self._names
        fired = sorted(i for i in {*self._template_hits, *hit} if counts[i])
        ctx.publish(RuleHits({names[i]: counts[i] for i in fired}))
        hits = []
        emitted = self._emitted
        for rid in fired:
            if emitted[rid]:
                opts = options.get(rid)
                if opts is None:
                    opts = self._options(rules[rid], where.get(rid), ends.get(rid), msg)
                hits.append(Hit(names[rid], 1.0, opts))
        return hits

    def _metas(self, counts: list[int], hit: list[int]) -> list[int]:
        """Re-evaluate only the metas that a rule that changed could move off their template values.

        Every other meta keeps the value it has when nothing hits (precomputed
        in the template), so the cost follows the number of hits, not the
        number of rules.  A change of a count queues the metas that read it and
        that a change in that direction could move (``_rise``, ``_fall``: a meta
        false in the template that cannot rise when the count rises is left out).
        Metas are taken level by level (a meta's level is above those of all it
        reads), so each is evaluated at most once, after all of its inputs are
        final; a meta whose value changes queues its readers in their levels.
        (Sets per level cost half of what a heap on the metas' dependency order
        did.  SpamAssassin's rules evaluate ~176 metas a message without the
        directions, 86 with them, of which 16 change.)
        """
        rise, fall, fns, template = self._rise, self._fall, self._meta_fns, self._template
        pending: list[set[int] | None] = [None] * self._levels
        for rid in hit:
            n, t = counts[rid], template[rid]
            if n == t:
                continue
            for lv, ms in (rise if n > t else fall).get(rid, ()):
                todo = pending[lv]
                if todo is None:
                    pending[lv] = set(ms)
                else:
                    todo |= ms
        changed: list[int] = []
        for todo in pending:
            if not todo:
                continue
            for m in todo:
                try:
                    v = 1 if fns[m](counts) else 0
                except (ZeroDivisionError, TypeError):
                    v = 0
                if v != counts[m]:
                    counts[m] = v
                    changed.append(m)
                    for lv, ms in (rise if v else fall).get(m, ()):
                        later = pending[lv]
                        if later is None:
                            pending[lv] = set(ms)
                        else:
                            later |= ms
        return changed

    def _options(self, rule: CompiledRule, data: bytes | None, end: int | None, msg: Message) -> tuple[str, ...]:
        """What matched: the matched text (shortened), or for uri rules the host of the link it is in.

        The text is that of the leftmost match, as a search from the start of the
        buffer finds it (for uri rules: the link where that match starts).  When a
        match end ``e`` is known that is no later than the leftmost match ends, the
        search may start later than the top of a long body:

        * when the rule cannot match across a line break, the leftmost match starts
          on ``e``'s line (a match on an earlier line would end before ``e``);
        * when no match of the rule is longer than ``w`` bytes, the leftmost match
          starts at ``e - w`` or later (it ends at ``e`` or later);
        * when its matches are unbounded but the runs of a few byte classes bound them
          (runwidth), the part of the leftmost match before ``e`` is no longer than the
          bound taken over the bytes from the search's start to ``e``: that part's
          runs are runs there.  (A rule matching ``\\d+`` on a long paragraph was
          searched from the paragraph's start at every hit: ~150 us.)

        A search from a position still reads the bytes before it, for ``\\b`` and
        look-behinds, so it finds exactly the match a search from the top finds.
        (Hyperscan's first report for a rule is its earliest match end in practice,
        although its manual does not promise an order; were a later end reported
        first, the options would name a later match, never change a hit.  The
        corpus test compares the options of both matchers.)
        """
        if rule.py is None or data is None or rule.negate:
            return ()
        rx = self._rx.get(rule.id)
        if rx is None:
            rx = self._rx[rule.id] = re.compile(rule.py, rule.py_flags)
        if rule.kind == "uri":
            # The host of the first link the rule matches alone; line k of the buffer is link k.
            # A known end is on that link's line: Hyperscan's first end for a rule that cannot match
            # a line break, else the end of the match confirmed within one line (not the buffer
            # report kept for a counted rule).
            if end is None or (rule.multiple and rule.id not in self._single_line):
                m = rx.search(data) if rule.id in self._single_line else line_search(rx, data)
                if m is None:
                    return ()
                end = m.start()
            k = data.count(b"\n", 0, end)
            links = sa_uri_links(msg) if rule.buffer == SA_URI else msg.urls
            if k >= len(links):
                return ()  # a match of the empty string in a buffer without links (e.g. /^$/)
            u = links[k]
            return ((u.host or u.url[:60]).translate(_URL_BLANKS),)
        # The leftmost match is searched for from the top or from no later than where it starts: the
        # pattern can skip positions inside a run of its leading repeat's bytes (run_start: a run of
        # 18,000 tabs in a Subject made naming a match take seconds, the square of the run's length).
        lm = self._rx_leftmost.get(rule.id)
        if lm is None:
            lm = self._rx_leftmost[rule.id] = _leftmost(rx)
        rx = lm
        m = None
        if end is not None:
            start = data.rfind(b"\n", 0, end) + 1 if rule.id in self._single_line else 0
            w = self._max_width.get(rule.id)
            if w is None and end - start > _RUN_WIDTH_FROM:
                rw = self._run_width.get(rule.id)
                if rw is not None:
                    w = rw.bound(data[start:end])
            if w is not None and end - w > start:
                start = end - w
            if start:
                m = rx.search(data, start)
        if m is None:
            m = rx.search(data)
        if m is None:
            return ()
        text = m.group(0).decode("utf-8", "replace").strip()
        if len(text) > 40:
            text = text[:37] + "..."
        return (text,) if text else ()


def _leftmost(rx: re.Pattern[bytes]) -> re.Pattern[bytes]:
    """``rx`` made for a search of its leftmost match (see :func:`.possessive.leftmost`)."""
    pattern = leftmost(rx.pattern, rx.flags)
    return rx if pattern is None else re.compile(pattern, rx.flags)


#: The bytes before a known match end from which a bound from the runs there pays: over a short
#: stretch the search costs less than one pass over it per byte class of the rule.
_RUN_WIDTH_FROM = 256


def iter_rule_hits(check: RulesCheck, messages: Iterable[bytes]) -> Iterable[Mapping[str, int]]:
    """Every rule that hit (sub-rules included), name -> count, for each raw message in turn.

    What corpus tools (``antispam rules stats``, the score fits) read: the rules alone, no policy.
    """
    from ..config import Config

    cfg = Config()
    for raw in messages:
        msg = Message(raw)
        ctx = ScanContext(msg.envelope, cfg)
        check.run(msg, ctx)
        rh = ctx.get(RuleHits)
        yield rh.counts if rh is not None else {}


def rules_check(config, store=None) -> Check | None:
    """Engine factory: the configured rules (the embedded default set unless ``[rules] dirs`` says otherwise)."""
    from ..resources import default_rules_dir

    rc = getattr(config, "rules", None)
    if rc is not None and not rc.enabled:
        return None
    dirs = list(rc.dirs) if rc is not None and rc.dirs else [str(default_rules_dir())]
    if rc is not None:
        dirs += list(rc.extra_dirs)
    # A rule its files score 0 is left out (as SpamAssassin does), unless the configuration scores
    # it: then it runs and reports, and [scores] (or the profile) gives it its score.
    scored = {n for n, s in getattr(config, "scores", {}).items() if s}
    for profile in getattr(config, "profiles", {}).values():
        scored |= {n for n, s in profile.get("scores", {}).items() if s}
    loaded = load_rules(
        dirs, sa_paths=rc.sa_dirs if rc else (), engine=rc.engine if rc else "auto",
        skip_bad=rc.skip_bad if rc else False, cache_dir=_cache_dir(rc.cache_dir) if rc else None,
        sa_pre_dirs=(rc.sa_pre_dir,) if rc and rc.sa_dirs and rc.sa_pre_dir and Path(rc.sa_pre_dir).is_dir() else (),
        report=scored,
    )
    # What loading passed over in the site's own files (a directive misspelt, a score for a rule
    # that does not exist, a rule skipped with skip_bad): said where a server's operator reads,
    # at every start and reload, not only by ``antispam rules lint``.  SpamAssassin's own files'
    # problems are summed up by load_rules instead (hundreds of lines).
    sa_roots = tuple(str(Path(d)) for d in (*rc.sa_dirs, rc.sa_pre_dir) if d) if rc and rc.sa_dirs else ()
    for problem in loaded.problems:
        if not (sa_roots and problem.startswith(sa_roots)):
            log.warning("rules: %s", problem)
    return RulesCheck(loaded, rc.max_header_bytes) if rc is not None else RulesCheck(loaded)


def _cache_dir(setting: str) -> Path | None:
    """``"auto"``: the user's cache directory (XDG); ``""``: no cache; else the path given."""
    if setting != "auto":
        return Path(setting) if setting else None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "antispam"
