"""The longest match a pattern can have in a given buffer, for patterns of unbounded width.

A rule that Python confirms after a Hyperscan prefilter is searched from the top of the buffer.
Hyperscan reports every end its (superset) pattern matches at, so every match of the rule ends at
one of them, no earlier than the first, ``e``; a match no longer than ``w`` bytes starts at
``e - w`` or later, and a search from there finds exactly the match a search from the top finds.
``w`` is unbounded for most such rules (SpamAssassin's ``__LOTSA_MONEY_*`` carry ``E+\\.\\s?U+``
in one alternative), but in a given buffer a repeat of one byte class can take no more bytes than
the longest run of that class there: ``w`` = the fixed part + the longest runs of those classes.

:class:`RunWidth` holds that sum: fixed bytes, and (multiplier, class) terms.  Alternatives are
bounded by the largest fixed part and the sum of every alternative's runs (looser than the largest
alternative's own bound, and simpler), a repeat of at most ``n``
multiplies what it repeats, a back-reference counts as its group, look-arounds count nothing,
and an unbounded repeat of a group counts the longest run of all the bytes the group can hold.
Anything else unbounded (such a group with a back-reference, a conditional) gives None:
searched from the top.
"""

from __future__ import annotations

import re
from functools import lru_cache

from .pattern_tree import Unsupported, _c, _p, print_items

_SINGLE = (_c.LITERAL, _c.NOT_LITERAL, _c.ANY, _c.IN)


class RunWidth:
    """``bound(data)``: no match of the pattern in ``data`` is longer (see the module's text)."""

    __slots__ = ("fixed", "terms")

    def __init__(self, fixed: int, terms: tuple[tuple[int, bytes], ...]):
        self.fixed = fixed
        #: (multiplier, translation table: a class's bytes to 1, the others to 0)
        self.terms = terms

    @classmethod
    @lru_cache(maxsize=4096)
    def of(cls, pattern: bytes, flags: int) -> RunWidth | None:
        """The bound of ``pattern``, or None.  Cached: the rules check (for options) and the matcher
        (for confirmations) both ask it of the same body rules at start-up."""
        try:
            tree = _p.parse(pattern, flags)
            got = _bound(list(tree), tree.state.flags, {})
        except (Unsupported, re.error, RecursionError):
            return None
        if got is None:
            return None
        fixed, terms = got
        merged: dict[bytes, int] = {}
        for mult, table in terms:
            merged[table] = merged.get(table, 0) + mult
        return cls(fixed, tuple((m, t) for t, m in merged.items()))

    def bound(self, data: bytes) -> int:
        w = self.fixed
        for mult, table in self.terms:
            w += mult * longest_run(data.translate(table))
        return w


def longest_run(marks: bytes) -> int:
    """The longest run of ``\\x01`` in ``marks`` (bytes of 0 and 1): doubling, then halving, with
    ``in`` (a fast substring search) rather than a byte-by-byte walk in Python."""
    if b"\x01" not in marks:
        return 0
    lo, hi = 1, 2  # a run of lo is present; look for one of hi
    while b"\x01" * hi in marks:
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # a run of lo is present, none of hi
        mid = (lo + hi) // 2
        if b"\x01" * mid in marks:
            lo = mid
        else:
            hi = mid
    return lo


def _table(item, flags: int) -> bytes:  # type: ignore[no-untyped-def]
    """The translation table of a one-byte item under ``flags``: its bytes to 1, the others to 0."""
    return _class_table(print_items([item]), flags & (re.IGNORECASE | re.DOTALL))


@lru_cache(maxsize=1024)
def _class_table(item: bytes, flags: int) -> bytes:
    # cached: a ruleset repeats a few classes (\s, \S, \d, [^\n]...) in hundreds of rules
    rx = re.compile(item, flags)
    return bytes(1 if rx.fullmatch(bytes((b,))) else 0 for b in range(256))


Bound = tuple[int, list[tuple[int, bytes]]]


def _bytes_of(items, flags: int) -> bytes | None:  # type: ignore[no-untyped-def]
    """The table of every byte a match of ``items`` can hold (None: a construct not followed here).

    An unbounded repeat of a group, ``(?:,\\d{3}){2,}``, takes no more bytes than the longest run
    of those bytes: everything it matches is one run of them."""
    table = bytearray(256)
    for op, av in items:
        if op in _SINGLE:
            one: bytes | None = _table((op, av), flags)
        elif op in (_c.AT, _c.ASSERT, _c.ASSERT_NOT):
            continue  # zero width
        elif op is _c.SUBPATTERN:
            one = _bytes_of(list(av[3]), (flags | av[1]) & ~av[2])
        elif op is _c.BRANCH:
            one = bytes(256)
            for alt in av[1]:
                got = _bytes_of(list(alt), flags)
                if got is None:
                    return None
                one = bytes(a | b for a, b in zip(one, got))
        elif op in (_c.MAX_REPEAT, _c.MIN_REPEAT, _c.POSSESSIVE_REPEAT):
            one = _bytes_of(list(av[2]), flags)
        else:
            return None  # back-references (their group's bytes could lie elsewhere), conditionals
        if one is None:
            return None
        table = bytearray(a | b for a, b in zip(table, one))
    return bytes(table)


def _bound(items, flags: int, groups: dict[int, Bound]) -> Bound | None:  # type: ignore[no-untyped-def]
    fixed = 0
    terms: list[tuple[int, bytes]] = []
    for op, av in items:
        if op in _SINGLE:
            fixed += 1
            continue
        if op in (_c.AT, _c.ASSERT, _c.ASSERT_NOT):
            continue  # zero width
        if op is _c.SUBPATTERN:
            group, add, dele, sub = av
            got = _bound(list(sub), (flags | add) & ~dele, groups)
            if got is not None and group is not None:
                groups[group] = got
        elif op is _c.ATOMIC_GROUP:
            got = _bound(list(av), flags, groups)
        elif op is _c.BRANCH:
            got = (0, [])
            for alt in av[1]:
                one = _bound(list(alt), flags, groups)
                if one is None:
                    return None
                got = (max(got[0], one[0]), got[1] + one[1])
        elif op is _c.GROUPREF:
            got = groups.get(av)
        elif op in (_c.MAX_REPEAT, _c.MIN_REPEAT, _c.POSSESSIVE_REPEAT):
            lo, hi, sub = av
            inner = list(sub)
            if hi == _c.MAXREPEAT:  # the run of every byte it can take (one class for X+, a union for a group)
                union = _bytes_of(inner, flags)
                if union is None:
                    return None
                got = (0, [(1, union)])
            else:
                one = _bound(inner, flags, groups)
                got = None if one is None else (hi * one[0], [(hi * m, t) for m, t in one[1]])
        else:
            return None
        if got is None:
            return None
        fixed += got[0]
        terms += got[1]
    return fixed, terms
