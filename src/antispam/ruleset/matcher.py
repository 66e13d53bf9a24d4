"""Matching engines: one multi-pattern scan per buffer, two interchangeable implementations.

* :class:`HyperscanMatcher` compiles the rules of each buffer into one
  Hyperscan database and scans the buffer once, whatever the number of rules
  (``HS_FLAG_SINGLEMATCH``: a rule reports once, the callback only collects
  ids).  Hyperscan guarantees linear-time matching.  Databases are serialised
  to a cache directory keyed by the rules' digest, so a restart skips the
  compilation.
* :class:`PythonMatcher` runs each rule's Python ``re`` pattern; the compiler
  has already refused any pattern that could backtrack exponentially.

A group whose patterns are mostly non-ASCII look-alikes also gets databases of the
patterns' projections on ASCII and on Western UTF-8 bytes (projection.py), used for the
buffers made of those bytes only, where they match exactly as the patterns do.

Rules that Hyperscan cannot express exactly (look-arounds, back-references)
are compiled in Hyperscan's prefilter mode, which matches a superset; only
when the prefilter fires does Python ``re`` confirm the match.  A pattern
Hyperscan refuses even as a prefilter runs in Python ``re`` on every scan.
The patterns Python runs on most scans get possessive repeats where that changes no
match (possessive.py), which spares ``re`` most of its backtracking.  A confirmation starts
where a match can begin, when that is known: near the match ends Hyperscan reported (rules
of bounded width), after the first end less the longest match the buffer allows (body rules
whose unbounded parts are repeats of one byte class: runwidth.py), or at the line starts a
``(?m)^LITERAL`` rule's literal follows.

Both give the same set of matched rules on the same bytes (the test suite
runs both over the default rules and a sample of the corpus).  Hit *counts* of ``tflags multiple`` rules are counted
with Python ``finditer`` (non-overlapping matches, as Perl's ``/g`` loop does)
in both engines, Hyperscan serving as the prefilter.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple, Protocol

from .compiler import SA_BODY, SA_URI, CompiledRules
from .pattern_tree import parsed, walk
from .possessive import leftmost, possessive
from .projection import ASCII, WESTERN, projection
from .runwidth import RunWidth

try:  # the regex parser of the running Python (named sre_parse before 3.11)
    from re import _parser as _sre_parse  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - Python < 3.11
    import sre_parse as _sre_parse  # type: ignore[no-redef]

log = logging.getLogger("antispam.rules")

try:  # optional: wheels (Vectorscan) exist for x86-64 and 64-bit ARM Linux and macOS
    import hyperscan as _hs
except Exception:  # pragma: no cover - depends on the platform
    _hs = None

#: most matches counted for a ``multiple`` rule without ``maxhits``
MAX_COUNT = 1000
#: longest match (bytes) of a prefiltered rule confirmed only around the prefilter's match ends
NEAR_MAX_WIDTH = 160
#: more prefilter match ends than this: confirm with one search of the whole buffer instead
NEAR_MAX_ENDS = 16
#: a group gets a database for buffers made of one of these sets of bytes (see projection.py),
#: from the projections of its patterns on the set, when they are at most PROJECTED_MAX_SHARE of
#: the patterns' length; a buffer is scanned with the database of the first set it fits in
VARIANTS = (("ascii", ASCII), ("western", WESTERN))
PROJECTED_MAX_SHARE = 0.75
#: the bytes of WESTERN, deleted from a buffer to see whether anything else is left
_WESTERN_BYTES = bytes(sorted(WESTERN))


def variant_key(variant: str, group: str) -> str:
    """The key of a group's database for the buffers of one of :data:`VARIANTS`."""
    return f"{variant}>{group}"



def hyperscan_available() -> bool:
    return _hs is not None


class Matcher(Protocol):
    name: str

    def scan(self, group: str, data: bytes, ends: dict[int, int] | None = None) -> dict[int, int]:
        """Rule id -> hit count (>= 1) for the rules of ``group`` that match ``data``.

        With ``ends``, also records for rules where it comes for free the end
        offset of a real match that ends no later than the leftmost match does
        (the first end Hyperscan reports, or the end of Python's ``search``):
        the options of a hit search for the matched text from near that end
        instead of from the start of the buffer (see ``RulesCheck._options``).
        """

    def direct_scanners(self) -> dict[str, tuple[object, object]]:
        """Group -> (scan function, scratch) for groups a caller may scan itself (this thread's)."""


def line_search(rx: re.Pattern[bytes], data: bytes) -> re.Match[bytes] | None:
    """The leftmost match of ``rx`` that lies within one line of ``data``, each line searched as if
    it stood alone (``$`` and look-aheads see its end).

    The buffer search comes first: a match within a line is also a match of the buffer, so when
    the leftmost one holds no line break it is the answer, and otherwise the answer starts on its
    line or a later one.  Only then are lines searched one by one.
    """
    m = rx.search(data)
    if m is None or data.find(b"\n", m.start(), m.end()) < 0:
        return m
    for start, end in _lines(data, data.rfind(b"\n", 0, m.start()) + 1):
        m = rx.search(data, start, end)
        if m is not None:
            return m
    return None


def _line_finditer(rx: re.Pattern[bytes], data: bytes) -> Iterator[re.Match[bytes]]:
    """Every match of ``rx`` within a line of ``data``, line by line (see :func:`line_search`)."""
    for start, end in _lines(data, 0):
        yield from rx.finditer(data, start, end)


def _lines(data: bytes, start: int) -> Iterator[tuple[int, int]]:
    """``(start, end)`` of each line of ``data`` from the one that begins at ``start`` (end: its line break or the end)."""
    size = len(data)
    while start <= size:
        end = data.find(b"\n", start)
        if end < 0:
            end = size
        yield start, end
        start = end + 1


def _after_line_start(pattern: bytes, flags: int) -> tuple[int, list] | None:
    """``(flags, items)`` of a pattern that starts ``(?m)^``: its final flags and the parsed items
    after the anchor; None for any other pattern (or one that does not parse)."""
    try:
        tree = parsed(pattern, flags)
    except Exception:
        return None
    items = list(tree)
    if not tree.state.flags & re.MULTILINE or not items or (str(items[0][0]), str(items[0][1])) != ("AT", "AT_BEGINNING"):
        return None
    return tree.state.flags, items[1:]


def line_prefix(pattern: bytes, flags: int) -> tuple[bytes, bool] | None:
    """``(literal, folded)`` for a pattern that starts ``(?m)^LITERAL`` (two bytes or more; folded:
    case-insensitive, the literal lower-cased), else None: see :func:`_search_line_starts`."""
    parsed = _after_line_start(pattern, flags)
    if parsed is None:
        return None
    flags, items = parsed
    lit = bytearray()
    for op, av in items:
        if str(op) != "LITERAL":
            break
        lit.append(av)
    if len(lit) < 2:
        return None
    fold = bool(flags & re.IGNORECASE)
    return (bytes(lit).lower() if fold else bytes(lit)), fold


#: zero-width items that look at no byte after their position (a search cut short just past the
#: last occurrence of a pattern's final literal sees every byte they would)
_BACKWARD_ONLY_AT = frozenset({"AT_BEGINNING", "AT_BEGINNING_STRING", "AT_BEGINNING_LINE", "AT_BOUNDARY",
                               "AT_NON_BOUNDARY"})


def last_literal(pattern: bytes, flags: int) -> bytes | None:
    """The literal bytes a pattern's every match ends with, when nothing in it looks past a byte it
    matched (no look-ahead, no ``$`` or ``\\Z``): see :func:`_search_to_last`; else None.

    Case-insensitive patterns keep only the bytes after their last letter, since ``rfind`` is
    exact (``money back guarantee`` has none left, ``guarantee!`` keeps ``!``)."""
    try:
        tree = parsed(pattern, flags)
    except Exception:
        return None
    items = list(tree)
    lit = bytearray()
    for op, av in reversed(items):
        if str(op) != "LITERAL":
            break
        lit.insert(0, av)
    if tree.state.flags & re.IGNORECASE:
        del lit[:max((i + 1 for i, b in enumerate(lit) if bytes((b,)).isalpha()), default=0)]
    if not lit or not _looks_back_only(items):
        return None
    return bytes(lit)


def _looks_back_only(items) -> bool:  # type: ignore[no-untyped-def]
    """No item here or inside looks at bytes after its own position: no look-ahead, no end anchor."""
    for op, av in walk(items):
        name = str(op)
        if (name == "AT" and str(av) not in _BACKWARD_ONLY_AT) or (name in ("ASSERT", "ASSERT_NOT") and av[0] >= 0):
            return False  # an ASSERT's direction is 1 for a look-ahead, -1 for a look-behind
    return True


def _search_to_last(search, literal: bytes, data: bytes, start: int = 0) -> re.Match[bytes] | None:  # type: ignore[no-untyped-def]
    """``search(data, start)`` for a pattern whose every match ends with ``literal`` (:func:`last_literal`):
    over the bytes up to the literal's last occurrence only, and not at all when it does not occur.

    No match ends later, and the pattern reads no byte past the end of its match, so the search
    finds what it finds over the whole buffer.  What it saves is the tries that read to the end of
    the buffer looking for a final byte that is not there: ``<[^<>\\s]*\\s[^>]*>`` (AS_MID_SPACES)
    read from every ``<`` of a Message-ID of 30 KB of ``< `` to its end, seconds a scan, where a
    ``>`` was missing."""
    last = data.rfind(literal)
    if last < start:
        return None
    return search(data, start, last + len(literal))


def _search_line_starts(rx: re.Pattern[bytes], literal: bytes, folded: bool, data: bytes,
                        start: int = 0) -> re.Match[bytes] | None:
    """``rx.search(data)`` for a pattern that starts ``(?m)^LITERAL``: ``rx.match`` at each line start
    followed by the literal, in order (found by ``bytes.find``; folded: in the ASCII-lower-cased buffer,
    which is how a bytes pattern ignores case).  A search tries every position in turn with the same
    matcher, and only these can begin a match, so the first match found is the search's.  (Python's
    ``re`` has no literal-prefix scan for a pattern that starts with an anchor: it tries every byte;
    SpamAssassin's ``__FROM_NAME_IN_MSG`` walks the whole message that way.)"""
    hay = data.lower() if folded else data
    if start == 0 and hay.startswith(literal):
        m = rx.match(data, 0)
        if m is not None:
            return m
    needle = b"\n" + literal
    p = hay.find(needle, max(0, start - 1))  # line starts at start or later
    while p >= 0:
        m = rx.match(data, p + 1)
        if m is not None:
            return m
        p = hay.find(needle, p + 1)
    return None


def _built_then(name: str):  # type: ignore[no-untyped-def]
    """A method of :class:`_PyRule` that builds the rule (:meth:`_PyRule._build`), then calls what
    the build put in ``name``."""
    def call(self, *args):  # type: ignore[no-untyped-def]
        self._build()
        return getattr(self, name)(*args)
    return call


class _PyRule:
    __slots__ = ("id", "pattern", "search", "search_from", "match", "finditer", "count_max", "width", "ascii_literals",
                 "other_literals", "line_count", "run_width", "_unbuilt")

    def __init__(self, rid: int, pattern: bytes, flags: int, multiple: bool, maxhits: int, per_line: bool = False,
                 searched: bool = True, lazy: bool = False):
        # ``searched``: Python will run it on most scans; then possessive repeats (the same matches, less
        # backtracking) are worth their parse at start-up (~1 ms a rule, more for ReplaceTags rules).
        # ``lazy``: compiled when first used (see _build)
        self.id = rid
        self.pattern = pattern
        # read now, from the parse the load shares (pattern_tree.parsed), not when built
        prefix = None if per_line else line_prefix(pattern, flags)
        last = None if per_line or prefix is not None else last_literal(pattern, flags)
        #: what :meth:`_build` needs, until it has run; then None
        self._unbuilt: tuple[int, bool, bool, tuple[bytes, bool] | None, bytes | None] | None = \
            (flags, per_line, searched, prefix, last)
        if lazy:
            self.search = self._first_search
            self.search_from = None if per_line else self._first_search_from
            self.finditer = self._first_finditer
            self.match = self._first_match
        else:
            self._build()
        self.count_max = (maxhits or MAX_COUNT) if multiple else 0
        #: (shortest, longest) match in bytes when confirmed near match ends (see _confirm_near)
        self.width: tuple[int, int] | None = None
        #: for a rule searched from before its first match end (HyperscanMatcher._starts): its
        #: longest match in a given buffer
        self.run_width: RunWidth | None = None
        lits = disjoint_literals(pattern, flags) if self.count_max and not per_line else None
        #: a counted rule that is a set of literals no two occurrences of which can overlap: counted
        #: with ``bytes.count`` (see _count); the literals with a byte >= 0x80 apart, since most
        #: buffers are ASCII and ``bytes.isascii`` rules them all out at once (a rule confined to
        #: a line is not counted so: its literals could hold a line break)
        self.ascii_literals = tuple(x for x in lits if x.isascii()) if lits else None
        self.other_literals = tuple(x for x in lits if not x.isascii()) if lits else ()
        #: a counted rule shaped ``^X.*?LITERAL`` (``__HAS_HREF``): counted from the literal's occurrences
        self.line_count = LineStartCount.of(pattern, flags) if self.count_max and not per_line and not lits else None

    def _build(self) -> None:
        """Compile the pattern and set the search functions over it.  Done at once, or, for a
        Hyperscan matcher's Python twins (``lazy``), when one of them is first called: most twins
        confirm or count rules whose Hyperscan match is rare, and compiling them all took a fifth of
        the start-up with SpamAssassin's rules (1.1 s for 1,482)."""
        if self._unbuilt is None:
            return
        flags, per_line, searched, prefix, last = self._unbuilt
        pattern = self.pattern
        rx = re.compile(possessive(pattern, flags) if searched else pattern, flags)
        if per_line:  # matches confined to a line: a uri rule that could otherwise join two links
            self.search = functools.partial(line_search, rx)
            self.search_from = None
            self.finditer = functools.partial(_line_finditer, rx)
        else:
            #: ``search_from(data, start)``: the first match that starts at ``start`` or later
            self.search_from = (rx.search if last is None else functools.partial(_search_to_last, rx.search, last)) \
                if prefix is None else functools.partial(_search_line_starts, rx, *prefix)
            self.search = self.search_from
            if prefix is None and searched:
                # the leftmost match, without trying each position of a run of the leading repeat's
                # bytes (``possessive.run_start``: the square of the run's length otherwise; 30,000
                # tabs before ``\s{3,}...`` took seconds).  Not for ``search_from`` or counting,
                # which may have to start inside a run.
                lead = leftmost(pattern, flags)
                if lead is not None:
                    found = re.compile(lead, flags).search
                    self.search = found if last is None else functools.partial(_search_to_last, found, last)
            self.finditer = rx.finditer
        self.match = rx.match
        self._unbuilt = None

    # A lazy twin's functions until it is built.  A caller may hold one of these in a local across
    # calls (``match = r.match``): each builds at most once, then hands over to what was built.
    _first_search = _built_then("search")
    _first_search_from = _built_then("search_from")
    _first_finditer = _built_then("finditer")
    _first_match = _built_then("match")


def per_line(group: str, rule) -> bool:  # type: ignore[no-untyped-def]
    """Whether ``rule``'s matches in ``group`` must be confined to one line: a uri rule (one link
    per line of its buffer; SpamAssassin matches each link alone) or a mimeheader rule (one part's
    value per line; SpamAssassin matches each part's alone) whose pattern could match a line
    break, like ``[^/]+``."""
    return ((group in ("uri", SA_URI) or group.startswith("mime:")) and rule.py is not None
            and not match_shape(rule.py, rule.py_flags)[0])


def _width(pattern: bytes, flags: int) -> tuple[int, int] | None:
    """(shortest, longest) match of a pattern in bytes; None when unbounded or longer than NEAR_MAX_WIDTH."""
    lo, hi = parsed(pattern, flags).getwidth()
    return (lo, hi) if hi <= NEAR_MAX_WIDTH else None


def match_shape(pattern: bytes, flags: int) -> tuple[bool, int | None]:
    """``(single_line, max_width)`` of a pattern, from one parse.

    ``single_line``: no match can contain a newline.  Then every match lies within one
    line, and the leftmost match is found by searching from the start of the line where
    any match that ends no later than it ends (see ``RulesCheck._options``).

    ``max_width``: the longest match in bytes, or None when unbounded.

    Look-arounds count for neither: they read around the match but are not part of it.
    Anything not understood counts as "may contain a newline" and "unbounded", which
    only costs a longer search.
    """
    try:
        tree = parsed(pattern, flags)
    except Exception:
        return False, None
    hi = tree.getwidth()[1]
    return (not _may_match_nl(tree.data if hasattr(tree, "data") else tree, bool(flags & re.DOTALL)),
            hi if hi < _sre_parse.MAXREPEAT else None)


_NL = 10
#: character-class categories that contain the newline
_NL_CATEGORIES = frozenset(str(c) for c in ("CATEGORY_SPACE", "CATEGORY_NOT_DIGIT", "CATEGORY_NOT_WORD",
                                             "CATEGORY_LINEBREAK", "CATEGORY_UNI_SPACE", "CATEGORY_UNI_NOT_DIGIT",
                                             "CATEGORY_UNI_NOT_WORD", "CATEGORY_UNI_LINEBREAK"))


def _may_match_nl(items, dotall: bool) -> bool:  # type: ignore[no-untyped-def]
    for op, av in items:
        name = str(op)
        if name == "LITERAL":
            if av == _NL:
                return True
        elif name == "NOT_LITERAL":
            if av != _NL:
                return True
        elif name == "ANY":
            if dotall:
                return True
        elif name == "IN":
            if _class_has_nl(av):
                return True
        elif name in ("AT", "ASSERT", "ASSERT_NOT"):
            continue
        elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            if _may_match_nl(av[2], dotall):
                return True
        elif name == "SUBPATTERN":
            if _may_match_nl(av[-1], dotall):
                return True
        elif name == "ATOMIC_GROUP":
            if _may_match_nl(av, dotall):
                return True
        elif name == "BRANCH":
            if any(_may_match_nl(b, dotall) for b in av[1]):
                return True
        else:  # back-references, conditionals, anything new: assume the worst
            return True
    return False


def _class_has_nl(items) -> bool:  # type: ignore[no-untyped-def]
    negate = False
    hit = False
    for op, av in items:
        name = str(op)
        if name == "NEGATE":
            negate = True
        elif name == "LITERAL":
            hit = hit or av == _NL
        elif name == "RANGE":
            hit = hit or av[0] <= _NL <= av[1]
        elif name == "CATEGORY":
            hit = hit or str(av) in _NL_CATEGORIES
        else:  # CHARSET, BIGCHARSET: not produced by the parser, but be safe
            return True
    return hit != negate


def _confirm_near(r: _PyRule, data: bytes, ends: list[int]) -> bool:
    """Does ``r`` match ``data``, knowing that any match ends at one of ``ends``?

    Hyperscan's prefilter reports every offset where the exact pattern could end
    a match (a superset), so a match of ``r`` ends at some ``e`` in ``ends`` and,
    as ``r`` matches at most ``hi`` and at least ``lo`` bytes, starts in
    ``[e - hi, e - lo]``.  ``match(data, s)`` tries exactly one start and, unlike
    slicing, still sees the bytes before ``s`` (look-behinds, ``\\b``) and after
    the window (look-aheads), so the answer equals ``search(data) is not None``
    at the cost of a few anchored attempts instead of a scan of the buffer.
    """
    if len(ends) > NEAR_MAX_ENDS or r.width is None:
        return r.search(data) is not None
    lo, hi = r.width
    match = r.match
    tried: set[int] = set()
    for e in ends:
        for s in range(max(0, e - hi), e - lo + 1):
            if s not in tried:
                tried.add(s)
                if match(data, s) is not None:
                    return True
    return False


def _syntax_positions(p: bytes) -> list[int] | None:
    """Positions of the bytes of a pattern that are syntax: outside escapes and character classes.

    An escape takes the next byte with it; a class (a leading ``^`` negates, a ``]`` first is
    literal) is skipped whole.  None when a class never closes.
    """
    out: list[int] = []
    i, n = 0, len(p)
    while i < n:
        c = p[i]
        if c == 0x5C:  # backslash: the next byte is escaped
            i += 2
            continue
        if c == 0x5B:  # [ ... ]
            i += 1
            if i < n and p[i] == 0x5E:
                i += 1
            if i < n and p[i] == 0x5D:
                i += 1
            while i < n and p[i] != 0x5D:
                i += 2 if p[i] == 0x5C else 1
            if i >= n:
                return None
            i += 1
            continue
        out.append(i)
        i += 1
    return out


def drop_anchors(p: bytes) -> bytes | None:
    """The pattern without its ``^`` and ``$`` assertions; None when it has none (or cannot be read).

    Hyperscan refuses a ``^`` or ``$`` inside a pattern (``^X-Priority:.*?^Cc:``,
    ``(?:$|\\W)``), even as a prefilter.  Anchors are zero-width assertions, so
    the pattern without them matches wherever the original does, and more: a
    prefilter that Python re confirms.  Escapes (``\\$``) and character classes
    (``[$^]``) are skipped, every other byte is kept as it is.
    """
    syntax = _syntax_positions(p)
    anchors = [i for i in syntax or () if p[i] in (0x5E, 0x24)]  # ^ $
    if not anchors:
        return None
    edges = [-1, *anchors, len(p)]
    return b"".join(p[a + 1 : b] for a, b in zip(edges, edges[1:]))


#: longest pattern piece handed to Hyperscan (its own limit is 16,000 bytes)
PIECE_LIMIT = 12000
#: most pieces one rule may become
MAX_PIECES = 128


def _structure(p: bytes) -> tuple[list[int], list[tuple[int, int, int, bytes]]] | None:
    """Top-level ``|`` positions and top-level groups ``(start, inner_start, end, quantifier)`` of a pattern.

    ``end`` is the index after the closing parenthesis; ``quantifier`` the bytes after it that
    repeat the group (``b""`` when none).  None when the pattern cannot be read.
    """
    syntax = _syntax_positions(p)
    if syntax is None:
        return None
    bars: list[int] = []
    groups: list[tuple[int, int, int, bytes]] = []
    depth = 0
    start = inner = 0
    n = len(p)
    for i in syntax:
        c = p[i]
        if c == 0x28:  # (
            if depth == 0:
                start = i
                inner = i + 3 if p[i + 1 : i + 3] == b"?:" else i + 1 if p[i + 1 : i + 2] != b"?" else -1
            depth += 1
        elif c == 0x29:  # )
            depth -= 1
            if depth < 0:
                return None
            if depth == 0:
                j = i + 1
                if j < n and p[j] in b"?*+":
                    j += 1
                elif j < n and p[j] == 0x7B:  # {m,n}
                    k = p.find(b"}", j)
                    j = k + 1 if k > 0 else j
                if j < n and p[j] == 0x3F:  # lazy
                    j += 1
                groups.append((start, inner, i + 1, p[i + 1 : j]))
        elif c == 0x7C and depth == 0:  # |
            bars.append(i)
    return (bars, groups) if depth == 0 else None


def compact_escapes(p: bytes) -> bytes:
    """The pattern with every ``\\xHH`` escape of a byte >= 0x80 written as the byte itself.

    Such bytes are never metacharacters, so the pattern means the same, in a quarter of
    the length: SpamAssassin's ReplaceTags classes are mostly such escapes.
    """
    if b"\\x" not in p:
        return p
    out = bytearray()
    i, n = 0, len(p)
    while i < n:
        c = p[i]
        if c == 0x5C and i + 1 < n:
            if p[i + 1] == 0x78 and i + 3 < n and all(h in b"0123456789abcdefABCDEF" for h in p[i + 2 : i + 4]):
                v = int(p[i + 2 : i + 4], 16)
                if v >= 0x80:
                    out.append(v)
                    i += 4
                    continue
            out += p[i : i + 2]  # any other escape, kept whole (so an escaped backslash stays one)
            i += 2
            continue
        out.append(c)
        i += 1
    return bytes(out)


def split_alternatives(p: bytes, limit: int = PIECE_LIMIT) -> list[bytes] | None:
    """Patterns, each at most ``limit`` bytes, one of which matches wherever ``p`` matches (and only there).

    Hyperscan refuses patterns longer than 16,000 bytes, and SpamAssassin's ReplaceTags
    rules (every letter a class of look-alikes) reach 120,000.  Alternation distributes
    over concatenation, so ``X(?:A|B|C)Y`` matches exactly where ``X(?:A|B)Y`` or ``X(?:C)Y``
    does: the alternatives of the largest group that is not repeated are shared out among
    as few copies of the pattern as fit, and each copy split again until every piece fits.  A matcher that only asks *whether*
    a rule matches (and where a match ends) can compile all the pieces under the rule's
    id.  None when that is impossible here (repeated or look-around groups, back-references,
    or more than :data:`MAX_PIECES` pieces).
    """
    if re.search(rb"\\[1-9]", p):
        return None  # a back-reference would count groups that splitting renumbers
    out: list[bytes] = []
    todo = [p]
    while todo:
        q = todo.pop()
        if len(q) <= limit:
            out.append(q)
            if len(out) > MAX_PIECES:
                return None
            continue
        st = _structure(q)
        if st is None:
            return None
        bars, groups = st
        if bars:  # alternatives of the whole pattern: each its own piece
            edges = [-1, *bars, len(q)]
            todo.extend(q[a + 1 : b] for a, b in zip(edges, edges[1:]))
            continue
        # the largest group that is plain or optional, and neither a look-around nor inline flags
        cands = [g for g in groups if g[1] >= 0 and g[3] in (b"", b"?", b"??")]
        if not cands:
            return None
        s0, inner, end, quant = max(cands, key=lambda g: g[2] - g[1])
        body = q[inner : end - 1]
        sub = _structure(body)
        if sub is None:
            return None
        edges = [-1, *sub[0], len(body)]
        alts = [body[a + 1 : b] for a, b in zip(edges, edges[1:])]
        if quant:  # (?:X)? is (?:X|)
            alts.append(b"")
        if len(alts) == 1:  # a group around no alternation (and not repeated): its parentheses go
            todo.append(q[:s0] + alts[0] + q[end:])
            continue
        # The alternatives in as few groups as fit beside the rest of the pattern (one each, to be
        # split further, when even one does not fit).
        head, tail = q[:s0], q[end + len(quant) :]
        budget = limit - len(head) - len(tail) - 4
        chunks: list[list[bytes]] = [[]]
        size = 0
        for a in alts:
            if chunks[-1] and size + len(a) + 1 > budget:
                chunks.append([])
                size = 0
            chunks[-1].append(a)
            size += len(a) + 1
        todo.extend(head + b"(?:" + b"|".join(c) + b")" + tail for c in chunks)
        if len(todo) + len(out) > MAX_PIECES:
            return None
    return out


#: most literals a counted rule may expand to and still be counted with ``bytes.count``
MAX_LITERALS = 64


def disjoint_literals(pattern: bytes, flags: int) -> tuple[bytes, ...] | None:
    """The strings a pattern matches, when it is a finite set of literals no two occurrences of which overlap.

    Then the non-overlapping matches that Python's ``finditer`` (and Perl's ``/g``) counts
    are all the occurrences of all the literals: wherever one occurs, no other occurrence
    shares a byte with it, so the scan from left to right finds each one, and only these.
    Each is counted by ``bytes.count``, which counts non-overlapping occurrences, i.e.
    all of them when a literal cannot overlap itself.  Two occurrences overlap when a
    proper suffix of one is a prefix of the other (or the other lies inside it), or when
    one literal is a prefix of the other (same start).

    None for anything else: case-insensitive patterns, assertions, repeats, more than
    :data:`MAX_LITERALS` strings, or literals that could overlap.  SpamAssassin counts
    letters this way (``e``, and an ``e`` with its look-alikes in UTF-8).
    """
    if flags & re.IGNORECASE:
        return None
    try:
        tree = parsed(pattern, flags)
    except Exception:
        return None
    lits = _literals(list(tree))
    if not lits or b"" in lits:
        return None
    for a in lits:
        for b in lits:
            if a != b and (a.startswith(b) or b.startswith(a)):
                return None
            for k in range(1, len(a)):
                tail = a[k:]
                if b.startswith(tail) or tail.startswith(b):
                    return None
    return tuple(sorted(lits))


def _literals(items) -> set[bytes] | None:  # type: ignore[no-untyped-def]
    """The set of strings a sequence of parse items matches, or None when not a small finite set."""
    out = {b""}
    for op, av in items:
        name = str(op)
        if name == "LITERAL":
            alts = {bytes((av,))}
        elif name == "IN":
            alts = _class_bytes(av)
        elif name == "SUBPATTERN":
            alts = _literals(list(av[-1]))
        elif name == "BRANCH":
            alts = set()
            for b in av[1]:
                sub = _literals(list(b))
                if sub is None:
                    return None
                alts |= sub
        else:
            return None
        if alts is None:
            return None
        out = {x + y for x in out for y in alts}
        if len(out) > MAX_LITERALS:
            return None
    return out


def _class_bytes(items) -> set[bytes] | None:  # type: ignore[no-untyped-def]
    """The bytes of a character class made of literals and ranges (None for negated or category classes)."""
    out: set[bytes] = set()
    for op, av in items:
        name = str(op)
        if name == "LITERAL":
            out.add(bytes((av,)))
        elif name == "RANGE":
            out.update(bytes((c,)) for c in range(av[0], av[1] + 1))
        else:
            return None
        if len(out) > MAX_LITERALS:
            return None
    return out


class LineStartCount:
    """Counts the matches of a rule shaped ``(?m)^X.*?(?:L1|L2...)`` without a regex scan.

    ``X`` is one byte (``[^>]``, or ``.``) and the ``Li`` literals of one length (SpamAssassin's
    ``__HAS_HREF`` is ``/^[^>].*?<a href=/im``, counted up to 100).  Python's ``finditer`` tries
    such a pattern at every line start and walks each line byte by byte; the matches follow
    from the literals' occurrences alone, found by ``bytes.find``:

    * a match ends with an occurrence at ``t`` (the first one after its start) and starts at a
      line start ``s < t`` with no line break in ``data[s+1:t]`` (``.`` stops at line breaks):
      ``s`` is the start ``ls`` of ``t``'s line when ``ls < t``, or ``ls - 1`` when that is a line
      start itself (an empty line, whose line break ``X`` may take);
    * the search from ``pos`` finds the first occurrence at ``pos + 1`` or later; the lowest of
      its (at most two) starts that is at ``pos`` or later and whose byte ``X`` allows is the
      leftmost match, ending after that occurrence; no start serves an earlier occurrence,
      and a start serving a later occurrence on another line lies after these;
    * when neither start serves, the next occurrence is tried (on the same line, ``ls`` may
      serve a later occurrence: the line's first byte began the first one).

    Case-insensitive patterns fold ASCII only (bytes patterns), as ``bytes.lower`` does.
    """

    __slots__ = ("refused", "literals", "width", "fold")

    def __init__(self, refused: bytes, literals: tuple[bytes, ...], fold: bool):
        #: the bytes ``X`` does not match
        self.refused = refused
        self.literals = literals
        self.width = len(literals[0])
        self.fold = fold

    @classmethod
    def of(cls, pattern: bytes, flags: int) -> LineStartCount | None:
        """The counter for ``pattern`` when it has that shape, else None."""
        parsed = _after_line_start(pattern, flags)
        if parsed is None:
            return None
        flags, items = parsed
        if flags & re.DOTALL or len(items) < 3:
            return None
        (one, c), (rep, av) = items[:2]
        if str(rep) != "MIN_REPEAT":
            return None
        lo, hi, body = av
        if lo != 0 or hi != _sre_parse.MAXREPEAT or [(str(o), a) for o, a in body] != [("ANY", None)]:
            return None
        fold = bool(flags & re.IGNORECASE)
        if str(one) == "NOT_LITERAL" and not (fold and bytes((c,)).isalpha()):
            refused = bytes((c,))
        elif str(one) == "ANY":
            refused = b"\n"
        else:
            return None
        lits = _literals(items[2:])
        if not lits or len({len(x) for x in lits}) != 1 or b"" in lits:
            return None
        return cls(refused, tuple(sorted({x.lower() for x in lits} if fold else lits)), fold)

    def count(self, data: bytes, cap: int) -> int:
        """The non-overlapping matches ``finditer`` finds in ``data``, at most ``cap``."""
        hay = data.lower() if self.fold else data
        lits, refused, width = self.literals, self.refused, self.width
        n = pos = 0
        t = 1  # occurrences before pos + 1 serve no match from pos
        #: each literal's next occurrence at t or later, found again only once t passes it (-1: none
        #: left), so that a literal absent from a long buffer is looked for once, not once a match
        nxt = [hay.find(x, t) for x in lits]
        # The line start of each occurrence, from the line breaks since the last one looked at
        # (occurrences come in order): rfind back to the buffer's start each time read a long
        # line once per occurrence, the square of its length (1 MB of `<img src=`: 2 s a scan).
        ls, seen = 0, 0
        while n < cap:
            best = -1  # the first occurrence of a literal at t or later
            for i, k in enumerate(nxt):
                if 0 <= k < t:
                    k = nxt[i] = hay.find(lits[i], t)
                if k >= 0 and (best < 0 or k < best):
                    best = k
            if best < 0:
                break
            brk = data.rfind(b"\n", seen, best)
            if brk >= 0:
                ls = brk + 1  # the start of the occurrence's line
            seen = best
            if ((ls > pos and (ls == 1 or data[ls - 2] == 10) and b"\n" not in refused)  # an empty line before it
                    or (pos <= ls < best and data[ls : ls + 1] not in refused)):
                n += 1
                pos = best + width
                t = pos + 1
            else:
                t = best + 1
        return n


#: counting literals: first in this many bytes per hit allowed, which suffices when they are frequent
COUNT_PREFIX_PER_HIT = 16


def _count(r: _PyRule, data: bytes, start: int = 0) -> int:
    """Non-overlapping matches of a counted rule, at most its ``count_max``.

    A rule that is a set of literals (see :func:`disjoint_literals`) is counted with
    ``bytes.count``: first in a prefix of the buffer, since an occurrence within the prefix
    is one in the buffer, and a frequent letter reaches the cap there (SpamAssassin's ``e``
    counts stop at 230 or 320); then in the whole buffer.  A buffer with bytes >= 0x80 and
    a rule with literals made of such bytes go to ``finditer``, which stops at the cap,
    rather than to one ``bytes.count`` per literal.  ``start``: no match starts before it
    (the regex scan begins there; the literal counts ignore it).
    """
    if r.line_count is not None:
        return r.line_count.count(data, r.count_max)
    lits = r.ascii_literals
    if lits is not None and (not r.other_literals or data.isascii()):
        cap = r.count_max
        k = COUNT_PREFIX_PER_HIT * cap
        if len(data) > k:
            n = 0
            for x in lits:
                n += data.count(x, 0, k)
            if n >= cap:
                return cap
        return min(sum(map(data.count, lits)), cap)
    n = 0
    for _ in r.finditer(data, start) if start else r.finditer(data):
        n += 1
        if n >= r.count_max:
            break
    return n


class PythonMatcher:
    """Every rule through Python ``re`` (bytes, ASCII semantics), one search per rule."""

    name = "python"

    def direct_scanners(self) -> dict[str, tuple[object, object]]:
        """No group is a single Hyperscan call here: callers always go through :meth:`scan`."""
        return {}

    def __init__(self, compiled: CompiledRules):
        self.groups: dict[str, list[_PyRule]] = {}
        for key, ids in compiled.groups.items():
            rules = compiled.rules
            self.groups[key] = [_PyRule(i, rules[i].py, rules[i].py_flags, rules[i].multiple, rules[i].maxhits,  # type: ignore[arg-type]
                                        per_line(key, rules[i]))
                                for i in ids]

    def scan(self, group: str, data: bytes, ends: dict[int, int] | None = None) -> dict[int, int]:
        out: dict[int, int] = {}
        _scan_python_rules(self.groups.get(group, ()), data, out, ends)
        return out


def _scan_python_rules(rules, data: bytes, out: dict[int, int], ends: dict[int, int] | None = None) -> None:  # type: ignore[no-untyped-def]
    """Run rules with Python ``re`` over ``data``, adding ``rule id -> hit count`` to ``out``
    (and, with ``ends``, the end of the leftmost match of each rule searched)."""
    for r in rules:
        if r.count_max:
            n = _count(r, data)
            if n:
                out[r.id] = n
        else:
            m = r.search(data)
            if m is not None:
                out[r.id] = 1
                if ends is not None:
                    ends[r.id] = m.end()


_MAGIC = b"ANTISPAM-HSDB-13\n"


class _Cached(NamedTuple):
    """A rules cache as :meth:`HyperscanMatcher._read_cache` read and checked it, not yet applied."""

    dbs: dict[str, object]
    #: ids of the rules Hyperscan ran only as a prefilter
    prefilter: list[int]
    #: (id, pattern without its anchors) of the rules run unanchored
    unanchored: list[tuple[int, bytes]]
    #: group -> the rules that run in Python there, beyond those that already do
    py: dict[str, list[_PyRule]]


#: a rules cache file not used for this long is removed when another is written (see prune_cache)
CACHE_UNUSED_SECONDS = 7 * 86400


def prune_cache(directory: Path, keep: Path) -> None:
    """Remove this directory's rules caches (``rules-*.db``, and the ``.tmp<pid>`` files of writes that
    never finished) that no engine has loaded for :data:`CACHE_UNUSED_SECONDS`, but ``keep``.

    Every change of the rules writes a new cache, of 75 MB with SpamAssassin's, and a daily
    ``sa-update`` changes them daily: kept for ever, they would fill the disk.  A load touches its
    file, so a rule set in use keeps its cache however old it is; one unused for a week (the rules
    changed since, or an engine that has not restarted) pays one compile if it is loaded again."""
    now = time.time()
    freed = removed = 0
    try:
        candidates = [*directory.glob("rules-*.db"), *directory.glob("rules-*.tmp*")]
    except OSError:
        return
    for f in candidates:
        if f == keep:
            continue
        try:
            st = f.stat()
            if now - st.st_mtime > CACHE_UNUSED_SECONDS:
                f.unlink()
                freed += st.st_size
                removed += 1
        except OSError:  # gone already, or not ours to remove
            continue
    if removed:
        log.info("removed %d rules cache file(s) unused for %d days from %s (%.0f MB)", removed,
                 CACHE_UNUSED_SECONDS // 86400, directory, freed / 1e6)


class HyperscanMatcher:
    """One Hyperscan database per buffer; Python ``re`` for the few rules Hyperscan cannot run."""

    name = "hyperscan"

    def __init__(self, compiled: CompiledRules, cache_dir: str | os.PathLike[str] | None = None):
        if _hs is None:
            raise RuntimeError("hyperscan is not installed (pip install hyperscan)")
        rules = compiled.rules
        self._py: dict[str, list[_PyRule]] = {}
        self._counters: dict[int, _PyRule] = {}
        #: Python twins of the Hyperscan rules, for those Hyperscan turns out to refuse
        self._twins: dict[int, _PyRule] = {}
        #: rules matched by a Hyperscan prefilter that Python re must confirm
        self._confirm: dict[int, _PyRule] = {}
        #: rules with a Hyperscan pattern that Hyperscan only accepted in prefilter mode
        self._as_prefilter: set[int] = set()
        #: prefiltered rules of bounded width, not counted: Hyperscan reports every match end
        #: (no SINGLEMATCH) and Python re tries only the starts that can lead to those ends
        self._near: dict[int, _PyRule] = {}
        #: prefiltered rules of unbounded width whose longest match in a buffer is bounded by the runs of
        #: a few byte classes there (runwidth): Hyperscan reports every match end (no SINGLEMATCH) and
        #: Python searches from the first end less that width
        self._starts: dict[int, _PyRule] = {}
        #: rules refused for an embedded anchor, run by Hyperscan as a prefilter without anchors
        self._unanchored: dict[int, bytes] = {}
        #: rules too long for Hyperscan, run exactly as several pieces under one id (split_alternatives)
        self._pieces: dict[int, list[bytes]] = {}
        hs_groups: dict[str, list[int]] = {}
        for key, ids in compiled.groups.items():
            for i in ids:
                r = rules[i]
                one_line = per_line(key, r)
                pr = _PyRule(i, r.py, r.py_flags, r.multiple, r.maxhits, one_line,  # type: ignore[arg-type]
                             searched=r.hs is None or r.multiple or one_line, lazy=True)
                hs_groups.setdefault(key, []).append(i)
                self._twins[i] = pr
                if one_line and not pr.count_max:
                    # Hyperscan's match of the buffer may join two links: Python confirms within one
                    self._confirm[i] = pr
                elif r.hs is None:
                    # Hyperscan cannot run it exactly (look-around, back-reference): it runs
                    # in prefilter mode, a superset, and Python re confirms each candidate.
                    self._confirm[i] = pr
                    pr.width = None if pr.count_max else _width(r.py, r.py_flags)  # type: ignore[arg-type]
                    if pr.width is not None:
                        self._near[i] = pr
                    elif key in ("body", SA_BODY):
                        # only in the body, the long buffer: in a header the bound's runs cost what the search does
                        pr.run_width = RunWidth.of(r.py, r.py_flags)  # type: ignore[arg-type]
                        if pr.run_width is not None:
                            self._starts[i] = pr
                elif pr.count_max:
                    self._counters[i] = pr
        self.dbs: dict[str, object] = {}
        self._local = threading.local()
        cache = Path(cache_dir) / (f"rules-{compiled.digest[:32]}-hs{_hs.__version__}-v12w{NEAR_MAX_WIDTH}p{PIECE_LIMIT}"
                                   f"x{MAX_PIECES}{''.join(v[0][0] for v in VARIANTS)}{PROJECTED_MAX_SHARE}.db") if cache_dir else None
        loaded = self._load(cache, compiled) if cache else None
        if loaded is not None:
            self.dbs = loaded
        else:
            # Large rule sets (SpamAssassin's: minutes) say so, since a first start waits for this.
            log.log(logging.INFO if len(compiled.rules) > 1000 else logging.DEBUG,
                    "compiling %d rules into Hyperscan databases%s", len(compiled.rules),
                    f" (cached afterwards in {cache})" if cache else " (no cache directory: every start compiles)")
            t0 = time.monotonic()
            self.dbs = self._compile(compiled, hs_groups)
            log.debug("compiled in %.1f s", time.monotonic() - t0)
            if cache:
                self._save(cache)
        self._scratch_proto = {k: _hs.Scratch(db) for k, db in self.dbs.items()}
        #: group -> keys of the databases for (ASCII, WESTERN) buffers, for the groups that have
        #: a projected database (an ASCII buffer is a WESTERN one too; the group's own database
        #: serves every buffer)
        self._variants: dict[str, tuple[str, str]] = {}
        for k in compiled.groups:
            a, w = (variant_key(v, k) for v, _ in VARIANTS)
            if a in self.dbs or w in self.dbs:
                w = w if w in self.dbs else k
                self._variants[k] = (a if a in self.dbs else w, w)
        # Groups where every Hyperscan report is a final hit counted once (no counting,
        # no Python confirmation, no Python-only rule, one database): their scan is one Hyperscan call.
        post = set(self._counters) | set(self._confirm)
        self._plain = frozenset(k for k, ids in compiled.groups.items()
                                if k in self.dbs and k not in self._py and k not in self._variants
                                and not post.intersection(ids))
        #: groups with rules confirmed near their match ends or searched from before the first: their scan
        #: collects the ends
        self._with_ends = frozenset(k for k, ids in compiled.groups.items()
                                    if k in self.dbs and (self._near.keys() | self._starts.keys()) & set(ids))

    # ------------------------------------------------------------------ building

    def _expr(self, rule) -> bytes:
        unanchored = self._unanchored.get(rule.id)
        if unanchored is not None:
            return unanchored
        return rule.hs if rule.hs is not None and rule.id not in self._as_prefilter else rule.py

    def _exprs(self, ids: list[int], rules) -> tuple[list[bytes], list[int]]:
        """Expressions and their ids for a database: a rule split in pieces gives one per piece, same id."""
        exprs: list[bytes] = []
        out_ids: list[int] = []
        for i in ids:
            pieces = self._pieces.get(i)
            for e in pieces if pieces is not None else (self._expr(rules[i]),):
                exprs.append(e)
                out_ids.append(i)
        return exprs, out_ids

    def _rule_flags(self, rule, prefilter: bool) -> int:
        """A rule's Hyperscan flags: every match end of the rules confirmed near them or searched from
        before the first, else the first only."""
        f = self._flags(rule.hs_flags, prefilter)
        return f & ~_hs.HS_FLAG_SINGLEMATCH if rule.id in self._near or rule.id in self._starts else f

    @staticmethod
    def _flags(hs_flags: int, prefilter: bool = False) -> int:
        f = _hs.HS_FLAG_SINGLEMATCH | _hs.HS_FLAG_ALLOWEMPTY | (_hs.HS_FLAG_PREFILTER if prefilter else 0)
        if hs_flags & 1:
            f |= _hs.HS_FLAG_CASELESS
        if hs_flags & 2:
            f |= _hs.HS_FLAG_DOTALL
        if hs_flags & 4:
            f |= _hs.HS_FLAG_MULTILINE
        return f

    def _compile(self, compiled: CompiledRules, hs_groups: dict[str, list[int]]) -> dict[str, object]:
        rules = compiled.rules
        dbs: dict[str, object] = {}
        for key, ids in hs_groups.items():
            good = self._compilable(ids, rules)
            for i in set(ids) - set(good):
                log.debug("rule %s runs in Python re: Hyperscan refuses its pattern", rules[i].name)
                self._counters.pop(i, None)
                self._confirm.pop(i, None)
                self._near.pop(i, None)
                self._starts.pop(i, None)
                self._py.setdefault(key, []).append(self._twins[i])
            if not good:
                continue
            db = _hs.Database(mode=_hs.HS_MODE_BLOCK)
            exprs, expr_ids = self._exprs(good, rules)
            flags = [self._rule_flags(rules[i], rules[i].hs is None or i in self._as_prefilter or i in self._unanchored)
                     for i in expr_ids]
            db.compile(expressions=exprs, ids=expr_ids, elements=len(exprs), flags=flags)
            dbs[key] = db
            for variant, allowed in VARIANTS:
                twin = _projected_database(exprs, expr_ids, flags, allowed)
                if twin is not None:
                    dbs[variant_key(variant, key)] = twin
        return dbs

    def _compilable(self, ids: list[int], rules) -> list[int]:
        """The ids whose patterns Hyperscan accepts: all of them when the group compiles,
        else each pattern is tried alone (Hyperscan's error does not say which one failed)."""
        flags = [self._rule_flags(rules[i], rules[i].hs is None) for i in ids]
        db = _hs.Database(mode=_hs.HS_MODE_BLOCK)
        try:
            db.compile(expressions=[self._expr(rules[i]) for i in ids], ids=ids, elements=len(ids), flags=flags)
            return ids
        except Exception:
            pass
        good = []
        for i, f in zip(ids, flags):
            one = _hs.Database(mode=_hs.HS_MODE_BLOCK)
            try:
                one.compile(expressions=[self._expr(rules[i])], ids=[i], elements=1, flags=[f])
                good.append(i)
                continue
            except Exception:
                pass
            if rules[i].hs is None:
                if self._try_unanchored(rules[i]):
                    good.append(i)
                continue
            if self._try_pieces(rules[i], f):
                good.append(i)
                continue
            # Refused as written (too long, an anchor Hyperscan dislikes): a prefilter,
            # which Hyperscan may simplify, still saves the Python search on most messages.
            one = _hs.Database(mode=_hs.HS_MODE_BLOCK)
            try:
                pf = self._flags(rules[i].hs_flags, True)
                one.compile(expressions=[rules[i].py], ids=[i], elements=1, flags=[pf])
            except Exception:
                if self._try_unanchored(rules[i]):
                    good.append(i)
                continue
            good.append(i)
            self._as_prefilter.add(i)
            self._counters.pop(i, None)
            self._confirm[i] = self._twins[i]
        return good

    def _try_pieces(self, rule, flags: int) -> bool:
        """A rule too long for Hyperscan runs exactly as several shorter patterns under its id
        (escapes compacted, then :func:`split_alternatives`), when every piece compiles."""
        if len(rule.hs) <= PIECE_LIMIT:
            return False
        pieces = split_alternatives(compact_escapes(rule.hs))
        if not pieces:
            return False
        try:
            _hs.Database(mode=_hs.HS_MODE_BLOCK).compile(expressions=pieces, ids=[rule.id] * len(pieces),
                                                          elements=len(pieces), flags=[flags] * len(pieces))
        except Exception:
            return False
        self._pieces[rule.id] = pieces
        return True

    def _try_unanchored(self, rule) -> bool:
        """A rule refused for an embedded ``^``/``$`` runs as a Hyperscan prefilter
        without its anchors (a superset, see :func:`drop_anchors`), confirmed by Python re."""
        pattern = drop_anchors(rule.py)
        if pattern is None:
            return False
        try:
            _hs.Database(mode=_hs.HS_MODE_BLOCK).compile(expressions=[pattern], ids=[0], elements=1,
                                                          flags=[self._rule_flags(rule, True)])
        except Exception:
            return False
        self._unanchored[rule.id] = pattern
        self._counters.pop(rule.id, None)
        self._confirm[rule.id] = self._twins[rule.id]
        return True

    def _save(self, path: Path) -> None:
        """Container: magic, the sha256 of the rest, JSON index (group -> offset, size, python-only ids),
        then the blobs."""
        try:
            blobs = {k: _hs.dumpb(db) for k, db in self.dbs.items()}
            index, off = {}, 0
            for k, b in blobs.items():
                index[k] = [off, len(b)]
                off += len(b)
            meta = json.dumps({"dbs": index, "py": {k: [r.id for r in v] for k, v in self._py.items()},
                               "prefilter": sorted(self._as_prefilter),
                               "unanchored": sorted(self._unanchored)}).encode()
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            body = [struct.pack(">I", len(meta)), meta, *blobs.values()]
            sha = hashlib.sha256()
            for b in body:
                sha.update(b)
            with open(tmp, "wb") as fh:
                fh.write(_MAGIC + sha.digest())
                for b in body:
                    fh.write(b)
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("cannot write the rules cache %s: %s", path, exc)
            return
        prune_cache(path.parent, keep=path)

    def _load(self, path: Path, compiled: CompiledRules) -> dict[str, object] | None:
        """The cached databases, with this matcher's state set as when they were built; None (the
        state untouched) for a cache that is missing, damaged or does not fit these rules.

        The whole cache is read and checked against the rules first (:meth:`_read_cache`), and only a
        cache that passes changes the state, so a bad one leaves nothing to undo.
        """
        try:
            data = path.read_bytes()
        except OSError:
            return None
        try:
            cached = self._read_cache(path, data, compiled)
        except Exception as exc:  # a damaged cache is rebuilt, never trusted
            log.warning("ignoring damaged rules cache %s: %s", path, exc)
            return None
        if cached is None:
            return None
        for i in cached.prefilter:
            self._as_prefilter.add(i)
            self._counters.pop(i, None)
            self._confirm[i] = self._twins[i]
        for i, pattern in cached.unanchored:
            self._unanchored[i] = pattern
            self._counters.pop(i, None)
            self._confirm[i] = self._twins[i]
        # Rules that Hyperscan refused at compile time run in Python, as when the cache was written.
        for k, added in cached.py.items():
            for pr in added:
                self._counters.pop(pr.id, None)
                self._confirm.pop(pr.id, None)
                self._near.pop(pr.id, None)
                self._starts.pop(pr.id, None)
                self._py.setdefault(k, []).append(pr)
        try:  # its time is its last use: what prune_cache keeps by
            os.utime(path)
        except OSError:
            pass
        return cached.dbs

    def _read_cache(self, path: Path, data: bytes, compiled: CompiledRules) -> _Cached | None:
        """The databases and rule states of the cache file ``data``, checked against these rules without
        changing anything; None when it is no cache of ours or does not fit them (raises when damaged)."""
        if not data.startswith(_MAGIC):
            return None
        p = len(_MAGIC) + 32
        if hashlib.sha256(memoryview(data)[p:]).digest() != data[len(_MAGIC):p]:
            log.warning("ignoring damaged rules cache %s: checksum mismatch", path)
            return None
        (n,) = struct.unpack(">I", data[p : p + 4])
        meta = json.loads(data[p + 4 : p + 4 + n])
        base = p + 4 + n
        dbs = {k: _hs.loadb(data[base + o : base + o + size], _hs.HS_MODE_BLOCK) for k, (o, size) in meta["dbs"].items()}
        prefilter = list(meta.get("prefilter", ()))
        if any(i not in self._twins for i in prefilter):
            return None
        unanchored: list[tuple[int, bytes]] = []
        for i in meta.get("unanchored", ()):
            pattern = drop_anchors(self._twins[i].pattern) if i in self._twins else None
            if pattern is None:
                return None
            unanchored.append((i, pattern))
        py: dict[str, list[_PyRule]] = {}
        for k, ids in meta["py"].items():
            have = {r.id for r in self._py.get(k, ())}
            for i in ids:
                if i not in have:
                    pr = self._twins.get(i)
                    if pr is None:
                        return None  # index does not fit these rules: rebuild
                    py.setdefault(k, []).append(pr)
        # Every rule of every group is run: by the group's database or by Python.
        for k, ids in compiled.groups.items():
            if k not in dbs and set(ids) - {r.id for r in (*self._py.get(k, ()), *py.get(k, ()))}:
                log.warning("ignoring rules cache %s: no database for %s", path, k)
                return None
        return _Cached(dbs, prefilter, unanchored, py)

    # ------------------------------------------------------------------ scanning

    def _scratch(self, key: str):
        """This thread's scratch space for ``key`` (Hyperscan scratch must not be shared between threads)."""
        try:
            return self._local.s[key]
        except AttributeError:
            self._local.s = {}
        except KeyError:
            pass
        s = self._local.s[key] = self._scratch_proto[key].clone()
        return s

    def direct_scanners(self) -> dict[str, tuple[object, object]]:
        """For this thread, group -> (the database's ``scan``, scratch) of every *plain* group.

        A plain group's scan is one Hyperscan call whose reports are final hits, so a
        caller scanning many groups per message (the rules check: ~20 header groups)
        can make that call itself with :func:`collect_first_end` as the callback and skip
        this wrapper's per-call work.  :meth:`scan` gives the same result.

        Every ``Database.scan`` here passes its arguments by position,
        ``scan(data, callback, 0, context, scratch)``: the binding parses keyword
        arguments slowly, ~330 ns more a call (550 against 230 ns for a header),
        ~6 us a message over its ~20 scans.
        """
        try:
            return self._local.direct
        except AttributeError:
            pass
        out = {g: (self.dbs[g].scan, self._scratch(g)) for g in self._plain}  # type: ignore[attr-defined]
        self._local.direct = out
        return out

    def scan(self, group: str, data: bytes, ends: dict[int, int] | None = None) -> dict[int, int]:
        if group in self._plain:
            return scan_plain(self.direct_scanners()[group], data, ends)
        key = group
        variants = self._variants.get(group)
        if variants is not None:
            if data.isascii():
                key = variants[0]
            elif not data.translate(None, _WESTERN_BYTES):
                key = variants[1]
        db = self.dbs.get(key)
        out: dict[int, int] = {}
        if db is not None:
            if group in self._with_ends:
                firsts = self._scan_near(db, key, data, out)
            else:
                firsts = {}
                db.scan(data, collect_first_end, 0, firsts, self._scratch(key))  # type: ignore[attr-defined]
            counters = self._counters
            confirm = self._confirm
            for rid, end in firsts.items():
                c = counters.get(rid)
                if c is not None:
                    n = _count(c, data)
                    if n:
                        out[rid] = n
                        if ends is not None:
                            ends[rid] = end
                    continue
                c = confirm.get(rid)
                if c is None:
                    out[rid] = 1
                    if ends is not None:
                        ends[rid] = end
                    continue
                # a rule searched from before its first match end: no match starts earlier (runwidth)
                start = 0 if c.run_width is None else max(0, end - c.run_width.bound(data))
                if c.count_max:
                    n = _count(c, data, start)
                    if n:
                        out[rid] = n
                else:
                    m = c.search_from(data, start) if start else c.search(data)
                    if m is not None:
                        out[rid] = 1
                        if ends is not None:
                            ends[rid] = m.end()
        _scan_python_rules(self._py.get(group, ()), data, out, ends)
        return out

    def _scan_near(self, db, key: str, data: bytes, out: dict[int, int]) -> dict[int, int]:
        """Scan (with the database and scratch of ``key``) collecting match ends; settle the rules
        confirmed near their ends into ``out``, return the other rules reported, each with its first
        match end, for the usual treatment."""
        reports: list[tuple[int, int]] = []
        db.scan(data, _collect_ends, 0, reports, self._scratch(key))
        near = self._near
        found: dict[int, int] = {}
        ends: dict[int, list[int]] = {}
        for rid, end in reports:
            if rid in near:
                e = ends.get(rid)
                if e is None:
                    ends[rid] = [end]
                else:
                    e.append(end)
            else:  # the first end: the smallest (the order of reports is not promised)
                first = found.get(rid)
                if first is None or end < first:
                    found[rid] = end
        for rid, e in ends.items():
            if _confirm_near(near[rid], data, e):
                out[rid] = 1
        return found


def _projected_database(exprs: list[bytes], ids: list[int], flags: list[int], allowed: frozenset[int]):  # type: ignore[no-untyped-def]
    """A database for buffers of the bytes ``allowed`` from the projections of a group's expressions,
    or None when the projections are not much shorter (or do not compile).

    Same ids and flags, so a scan of such a buffer reports what the group's own database
    reports; an expression that cannot match there is left out.
    """
    out_e: list[bytes] = []
    out_i: list[int] = []
    out_f: list[int] = []
    left = 0.0  # the length of the projections, in the units of the expressions' lengths
    for e, i, f in zip(exprs, ids, flags):
        p = projection(e, allowed)
        left += p.share * len(e)
        if p.pattern is not None:
            out_e.append(p.pattern)
            out_i.append(i)
            out_f.append(f)
    if not out_e or left > PROJECTED_MAX_SHARE * sum(map(len, exprs)):
        return None
    db = _hs.Database(mode=_hs.HS_MODE_BLOCK)
    try:
        db.compile(expressions=out_e, ids=out_i, elements=len(out_e), flags=out_f)
    except Exception as exc:  # the group's own database still serves every buffer
        log.debug("no projected database: %s", exc)
        return None
    return db


def scan_plain(scanner: tuple[object, object], data: bytes, ends: dict[int, int] | None = None) -> dict[int, int]:
    """One plain group's scan, given its ``(database scan, scratch)`` from :meth:`HyperscanMatcher.direct_scanners`.

    Every report is a final hit counted once.  Each rule reports once (SINGLEMATCH), at its
    first match end, which is no later than where the leftmost match ends: recorded in
    ``ends`` as a start for finding the matched text.
    """
    got: dict[int, int] = {}
    scanner[0](data, collect_first_end, 0, got, scanner[1])  # type: ignore[operator]
    if not got:
        return got
    if ends is not None:
        ends.update(got)
    return dict.fromkeys(got, 1)


def collect_first_end(rid: int, start: int, end: int, flags: int, found: dict[int, int]) -> None:
    """Hyperscan match callback: the rule id and its first match end (SINGLEMATCH reports once per
    expression; a rule split in pieces may report once per piece, and the first report is kept)."""
    if rid not in found:
        found[rid] = end


def _collect_ends(rid: int, start: int, end: int, flags: int, found: list[tuple[int, int]]) -> None:
    """Hyperscan match callback for groups with rules confirmed near their match ends."""
    found.append((rid, end))


def make_matcher(compiled: CompiledRules, engine: str = "auto", cache_dir: str | os.PathLike[str] | None = None) -> Matcher:
    """``auto``: Hyperscan when installed, else Python; ``hyperscan`` fails when it is missing."""
    from ..config import RULES_ENGINES

    if engine not in RULES_ENGINES:
        # a configuration mistake ([rules] engine), reported as one (antispam: ..., exit 2), not a traceback;
        # Config.load checks it first and names the file
        from ..errors import ConfigError

        raise ConfigError(f"unknown rules engine {engine!r} ({', '.join(RULES_ENGINES)})", key="rules.engine")
    if engine == "python" or (engine == "auto" and _hs is None):
        return PythonMatcher(compiled)
    return HyperscanMatcher(compiled, cache_dir)
