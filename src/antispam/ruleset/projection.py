"""A pattern's projection on a set of bytes: what it can still match in a buffer made of those bytes only.

SpamAssassin's ReplaceTags rules (``FUZZY_*``, the drug-name obfuscations) write every
letter as a class of look-alikes, most of them multi-byte UTF-8 sequences and HTML
entities.  Hyperscan pays for every alternative at every byte (the ten ``FUZZY_*``
rules cost ~15 us per message each), yet most buffers are pure ASCII (86% of the
corpus's body texts), where no alternative that needs a byte >= 0x80 can match.

The projection on a set of bytes (ASCII; or ASCII and the UTF-8 of Western European
text, :data:`WESTERN`) drops exactly the alternatives that need another byte: in a buffer
made of those bytes a pattern and its projection match at the same places, because a
match never reads another byte there.

* a literal byte outside the set cannot match: the sequence holding it is impossible;
* a positive class loses the bytes outside the set (impossible when none is left);
* an alternation keeps its possible branches (impossible when none is left);
* ``X{0,n}`` of an impossible ``X`` matches only the empty string, and goes;
* a look-ahead or look-behind that cannot match makes its sequence impossible,
  a negative one that cannot match always holds, and goes.

Negated classes and ``.`` are kept as written: what they say about bytes outside the set
is never asked in such a buffer.  The sets hold every ASCII byte, so the classes
``\\d``, ``\\w`` and ``\\s`` (ASCII on bytes) are kept too.  The projection is printed
back construct for construct (every byte but letters and digits as a hex escape).  The
patterns are those the translator wrote (regex.py), in the syntax on which Python ``re``
and Hyperscan agree, so Python's parser reads them as Hyperscan does.  A pattern with a
construct this module does not reproduce (back-references, conditionals, atomic groups,
inline global flags) is kept as written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .pattern_tree import CATEGORIES, Unsupported, _c, _p, print_items


#: every ASCII byte
ASCII = frozenset(range(0x80))
#: ASCII and the UTF-8 of U+0080..U+00FF (lead bytes C2, C3: Latin-1's letters, the no-break
#: space) and of U+2000..U+2FFF (lead byte E2: typographic quotes, dashes, the euro sign),
#: with every continuation byte: what most non-ASCII mail in Western languages is made of
WESTERN = ASCII | frozenset(range(0x80, 0xC0)) | frozenset((0xC2, 0xC3, 0xE2))


#: a branch or sequence that cannot match in a buffer of the allowed bytes
_IMPOSSIBLE = None



@dataclass(frozen=True, slots=True)
class Projection:
    #: matches every buffer of the allowed bytes exactly where the pattern does; None: it matches none
    pattern: bytes | None
    #: how much of the pattern is left, as the length of the projection over that of the pattern
    #: (both printed the same way); 1.0 when the pattern is kept as written
    share: float


def projection(pattern: bytes, allowed: frozenset[int] = ASCII) -> Projection:
    """The pattern restricted to what can match in a buffer made of the bytes ``allowed`` (a
    superset of :data:`ASCII`).

    The pattern is parsed without flags (the rule's flags do not change what is printed
    back); when it uses a construct this module does not reproduce, it is kept as it is,
    which is trivially exact.
    """
    if not ASCII <= allowed:
        raise ValueError("a projection keeps every ASCII byte")
    try:
        tree = _p.parse(pattern, 0)
    except Exception:
        return Projection(pattern, 1.0)
    if tree.state.flags & ~(re.UNICODE | re.ASCII):
        return Projection(pattern, 1.0)  # inline global flags: not reproduced
    try:
        items = _project(list(tree), allowed)
        if items is _IMPOSSIBLE:
            return Projection(None, 0.0)
        out = print_items(items)
        return Projection(out, len(out) / max(1, len(print_items(list(tree)))))
    except Unsupported:
        return Projection(pattern, 1.0)


def _project(items: list, allowed: frozenset[int]) -> list | None:  # type: ignore[type-arg]
    """A sequence of parse items projected, or None when it cannot match a buffer of the allowed bytes."""
    out = []
    for op, av in items:
        if op is _c.LITERAL:
            if av not in allowed:
                return _IMPOSSIBLE
            out.append((op, av))
        elif op is _c.IN:
            cls = _project_class(av, allowed)
            if cls is _IMPOSSIBLE:
                return _IMPOSSIBLE
            out.append((op, cls))
        elif op in (_c.NOT_LITERAL, _c.ANY, _c.AT):
            out.append((op, av))
        elif op is _c.BRANCH:
            alts = [a for a in (_project(list(b), allowed) for b in av[1]) if a is not _IMPOSSIBLE]
            if not alts:
                return _IMPOSSIBLE
            out.append((op, (None, alts)))
        elif op is _c.SUBPATTERN:
            group, add, dele, sub = av
            inner = _project(list(sub), allowed)
            if inner is _IMPOSSIBLE:
                return _IMPOSSIBLE
            out.append((op, (group, add, dele, inner)))
        elif op in (_c.MAX_REPEAT, _c.MIN_REPEAT):
            lo, hi, sub = av
            inner = _project(list(sub), allowed)
            if inner is _IMPOSSIBLE:
                if lo > 0:
                    return _IMPOSSIBLE
                continue  # only the empty repetition is left
            out.append((op, (lo, hi, inner)))
        elif op in (_c.ASSERT, _c.ASSERT_NOT):
            direction, sub = av
            inner = _project(list(sub), allowed)
            if inner is _IMPOSSIBLE:
                if op is _c.ASSERT:
                    return _IMPOSSIBLE
                continue  # a negative look-around that cannot match always holds
            out.append((op, (direction, inner)))
        else:  # back-references, conditionals, atomic groups, possessive repeats
            raise Unsupported(str(op))
    return out


def _project_class(items: list, allowed: frozenset[int]) -> list | None:  # type: ignore[type-arg]
    if items and items[0][0] is _c.NEGATE:
        return items  # a negated class: its verdict on the bytes left out is never asked
    out = []
    for op, av in items:
        if op is _c.LITERAL:
            if av in allowed:
                out.append((op, av))
        elif op is _c.RANGE:
            lo, hi = av
            run = None  # the runs of allowed bytes within the range, each a range of its own
            for b in range(lo, hi + 2):
                if b <= hi and b in allowed:
                    run = b if run is None else run
                elif run is not None:
                    out.append((op, (run, b - 1)) if b - 1 > run else (_c.LITERAL, run))
                    run = None
        elif op is _c.CATEGORY:
            if av not in CATEGORIES:
                raise Unsupported(str(av))
            out.append((op, av))
        else:
            raise Unsupported(str(op))
    return out or _IMPOSSIBLE
