"""Possessive repeats where giving back a byte can never help: the same matches, without the backtracking.

Python's ``re`` backtracks into a repeat one byte at a time.  SpamAssassin's header rules
with back-references (``__SUBJ_HAS_TO_2``, ``__TO_EQ_FROM_*``) skip lines with
``(?:[^\\n]+\\n+)*``; every time the ``*`` gives back a line, ``[^\\n]+`` gives back its
bytes one by one, and each attempt fails at once since ``\\n+`` needs a line break where
only non-breaks were.  Over the ~2 KB of all headers that is ~30 us per search.

When a repeat of a single-character item ``X`` is followed directly by an item that must
begin with a byte from ``Y``, and no byte is in both ``X`` and ``Y``, a shorter run of ``X``
leaves an ``X`` byte where a ``Y`` byte is needed: the rest of the pattern cannot match
after it.  So only the longest run can lead to a match, which is what a possessive repeat
(``X++``, Python 3.11) tries, alone: the matches, their spans and groups are unchanged.
(This is what PCRE calls auto-possessification; Python's engine does not do it.)

In the same pass, with ``.`` matching line breaks and ``^`` at line starts (flags ``s`` and
``m``, for the whole pattern), ``.{a,b}^`` (``a >= 1``) becomes ``.{a-1,b-1}\n``: after at
least one byte, a line start is the position after a line break, so both match the same bytes
and try the same lengths in the same order.  Python's engine backs out of a repeat quickly
when a literal follows (it skips to the positions holding it), not when an anchor does:
SpamAssassin's ``__FROM_NAME_IN_MSG`` looks for its name at a line start within 2 KB with
``(?=.{1,2048}^\1\r?$)``, 2,048 anchor tests where a few line breaks are found at once.

And a pattern that begins with a repeat of one byte class, ``X{a,b}`` (``a >= 1``), begins
with ``X`` written out instead: ``X{a,b}`` becomes ``XX{a-1,b-1}`` (every copy of a literal: ``!{3,}``
becomes ``!!!!*``).  Both try the same lengths in the same order.  Python's engine looks for a
pattern's first literal bytes, or for its first byte class, before it tries a position.  It does
not look inside a repeat. Without the rewrite it tries the whole pattern at every position: a
``/!{3,}/`` count walked a 5 KB body in ~60 us, against ~20 us with ``!!!!*``.

Used for the Python side only (Hyperscan never backtracks).  A pattern with a construct
pattern_tree.py does not print is kept as written.
"""

from __future__ import annotations

import re

from .pattern_tree import Unsupported, _c, _p, print_items, walk
from .regex import _charset


def possessive(pattern: bytes, flags: int) -> bytes:
    """``pattern`` with possessive repeats wherever that changes no match (see the module's text);
    ``pattern`` itself when there is none or the pattern is not understood."""
    tree = _parsed(pattern, flags)
    if tree is None:
        return pattern
    items = list(tree)
    lines = tree.state.flags & re.DOTALL and tree.state.flags & re.MULTILINE and not _scoped_line_flags(items)
    changed = _rewrite(items, bool(lines))
    changed |= _lead_written_out(items)
    if not changed:
        return pattern
    try:
        return print_items(items)
    except Unsupported:
        return pattern


def _parsed(pattern: bytes, flags: int):  # type: ignore[no-untyped-def]
    """The parse tree of ``pattern``, or None when it is not understood or sets global flags inline
    (which a rewrite would not reproduce)."""
    try:
        tree = _p.parse(pattern, flags)
    except Exception:
        return None
    return None if tree.state.flags & ~(flags | re.UNICODE | re.ASCII) else tree


def _first_set(item) -> frozenset[int] | None:  # type: ignore[no-untyped-def]
    """The bytes an item's match must begin with, when it is one that must consume one (else None).

    Case-insensitivity is assumed everywhere (each letter with its other case), which can
    only make the sets larger and the rewrite rarer.
    """
    op, av = item
    if op in (_c.MAX_REPEAT, _c.MIN_REPEAT, _c.POSSESSIVE_REPEAT):
        lo, _, sub = av
        if lo < 1 or len(sub) != 1:
            return None
        op, av = list(sub)[0]
    return _charset(op, av, True)


def _rewrite(items: list, lines: bool) -> bool:  # type: ignore[type-arg]
    """Rewrite a sequence of items in place (and the sequences inside them); True when anything changed.
    ``lines``: ``.`` matches line breaks and ``^`` matches at line starts everywhere in the pattern."""
    changed = False
    for k, (op, av) in enumerate(items):
        if op is _c.BRANCH:
            for alt in av[1]:
                changed |= _rewrite(alt.data if hasattr(alt, "data") else alt, lines)
        elif op is _c.SUBPATTERN:
            changed |= _rewrite(_seq(av[3]), lines)
        elif op in (_c.ASSERT, _c.ASSERT_NOT):
            changed |= _rewrite(_seq(av[1]), lines)
        elif op in (_c.MAX_REPEAT, _c.MIN_REPEAT, _c.POSSESSIVE_REPEAT):
            lo, hi, sub = av
            inner = _seq(sub)
            changed |= _rewrite(inner, lines)
            if (lines and op is not _c.POSSESSIVE_REPEAT and lo >= 1 and inner == [(_c.ANY, None)]
                    and k + 1 < len(items) and items[k + 1] == (_c.AT, _c.AT_BEGINNING)):
                # .{a,b}^ -> .{a-1,b-1}\n (see the module's text)
                items[k] = (op, (lo - 1, hi if hi == _c.MAXREPEAT else hi - 1, sub))
                items[k + 1] = (_c.LITERAL, 10)
                changed = True
            elif op is _c.MAX_REPEAT and lo != hi and len(inner) == 1 and k + 1 < len(items):
                mine = _charset(*inner[0], True)
                after = _first_set(items[k + 1])
                if mine is not None and after is not None and not mine & after:
                    items[k] = (_c.POSSESSIVE_REPEAT, (lo, hi, sub))
                    changed = True
    return changed


def _lead_written_out(items: list) -> bool:  # type: ignore[type-arg]
    """A leading repeat of one byte class ``X{a,b}`` (``a >= 1``) as ``X`` then ``X{a-1,b-1}``, a literal
    as its ``a`` copies then the rest of the repeat (see the module's text); True when rewritten."""
    if not items or items[0][0] not in (_c.MAX_REPEAT, _c.MIN_REPEAT, _c.POSSESSIVE_REPEAT):
        return False
    op, (lo, hi, sub) = items[0]
    inner = _seq(sub)
    if lo < 1 or len(inner) != 1 or inner[0][0] not in (_c.LITERAL, _c.IN):
        return False
    copies = lo if inner[0][0] is _c.LITERAL else 1
    rest = (op, (lo - copies, hi if hi == _c.MAXREPEAT else hi - copies, sub))
    items[:1] = [inner[0]] * copies + ([rest] if rest[1][1] else [])
    return True


def _scoped_line_flags(items) -> bool:  # type: ignore[no-untyped-def]
    """Whether a group turns ``s`` or ``m`` on or off for its part of the pattern."""
    return any(op is _c.SUBPATTERN and (av[1] | av[2]) & (re.DOTALL | re.MULTILINE) for op, av in walk(items))


def _seq(sub) -> list:  # type: ignore[no-untyped-def,type-arg]
    """The list of items of a parsed sub-pattern, to rewrite in place."""
    return sub.data if hasattr(sub, "data") else sub


def run_start(pattern: bytes, flags: int) -> bytes:
    """``pattern`` for a search of its leftmost match, ``(?<!X)`` in front when it begins with an unbounded
    repeat of one byte class ``X`` (``X{a,}``, ``a >= 1``), or in front of each branch of a pattern that
    is an alternation and whose branch begins so; ``pattern`` itself when none does.

    A match starting inside a run of ``X`` bytes, after an ``X``, is also a match from the byte before
    it (the repeat takes one ``X`` more), so the leftmost match never starts after an ``X`` and the
    look-behind changes no leftmost match.  Without it ``re`` tries every position of a long run, each
    time eating the rest of the run and giving it back: the square of the run's length.  A Subject of
    words, 18,000 tabs and more words took 5 s to name the text ``\\s{3,}...\\s*$`` matched
    (AS_SUBJ_TRAILING_ID).  The same holds branch by branch: a branch that matches inside a run
    matches from the byte before too, where the search, going left to right, finds it (or an earlier
    branch) first; so ``A|(?<!X)X+B`` finds what ``A|X+B`` finds (a Subject of 30,000 digits, then
    ``5 USD``: 15 s to name AS_SUBJ_DOLLARS' ``\\$\\s?\\d{2,}|\\d+\\s?(?:USD|...)``).  Only for a
    search of the leftmost match from the top, or from a position no later than it: a search that must
    find a match starting at a given position inside a run (``finditer`` after a match, ``match``)
    would miss it.
    """
    tree = _parsed(pattern, flags)
    if tree is None:
        return pattern
    items = list(tree)
    if len(items) == 1 and items[0][0] is _c.BRANCH:
        branches = [list(_seq(b)) for b in items[0][1][1]]
        guarded = [_run_guarded(b) for b in branches]
        if all(g is None for g in guarded):
            return pattern
        items = [(_c.BRANCH, (None, [g if g is not None else b for g, b in zip(guarded, branches)]))]
    else:
        lead = _run_guarded(items)
        if lead is None:
            return pattern
        items = lead
    try:
        return print_items(items)
    except Unsupported:
        return pattern


def leftmost(pattern: bytes, flags: int) -> bytes | None:
    """``pattern`` made for a search of its leftmost match (:func:`run_start`), with possessive repeats
    (:func:`possessive`); None when :func:`run_start` leaves it as it is.

    :func:`run_start` reads the rule as written: :func:`possessive` would write a leading ``X{3,}``
    as ``XXX*``, which no longer begins with the repeat it looks for."""
    lead = run_start(pattern, flags)
    return None if lead == pattern else possessive(lead, flags)


def _run_guarded(items: list) -> list | None:  # type: ignore[type-arg]
    """``items`` with ``(?<!X)`` in front when they begin with ``X{a,}`` (see :func:`run_start`), else None."""
    if not items or items[0][0] not in (_c.MAX_REPEAT, _c.MIN_REPEAT, _c.POSSESSIVE_REPEAT):
        return None
    lo, hi, sub = items[0][1]
    inner = _seq(sub)
    if lo < 1 or hi != _c.MAXREPEAT or len(inner) != 1 or inner[0][0] not in (_c.LITERAL, _c.NOT_LITERAL, _c.IN, _c.ANY):
        return None
    return [(_c.ASSERT_NOT, (-1, [inner[0]]))] + items
