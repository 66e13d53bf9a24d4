"""Parse trees of patterns (Python's own parser) printed back as pattern text.

The rewrites of patterns (projection.py for Hyperscan, possessive.py for Python ``re``)
work on the tree Python's parser builds and print the result: every byte but letters and
digits as a hex escape, every repeated item in a non-capturing group, capturing groups
(in their order, so their numbers stay) and back-references by number.  A construct not listed here raises
:class:`Unsupported`, and the caller keeps the pattern as written.
"""

from __future__ import annotations

import functools
import re

try:
    from re import _constants as _c  # type: ignore[attr-defined]
    from re import _parser as _p  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - Python < 3.11
    import sre_constants as _c  # type: ignore[no-redef]
    import sre_parse as _p  # type: ignore[no-redef]


@functools.lru_cache(maxsize=4096)
def parsed(pattern: bytes, flags: int):  # type: ignore[no-untyped-def]
    """The parse tree of ``pattern``, shared by the steps of a ruleset's load that only read it:
    the compiler's checks (that Python compiles the pattern, :func:`~.regex.backtracking_risk`)
    and the matcher's analyses (:func:`~.matcher.line_prefix`, :func:`~.matcher.last_literal`,
    :func:`~.matcher.match_shape`...).  Each parsed it again: with SpamAssassin's 2,800 rules,
    parsing was the largest part of the start-up.  :func:`~.check.load_rules` and ``RulesCheck``
    empty the cache when they are done, so no tree is kept for the life of the process.  A step
    that rewrites a tree (``possessive``, ``projection``) parses its own.  A pattern that does not
    parse raises each time."""
    return _p.parse(pattern, flags)


class Unsupported(Exception):
    """A construct the printer does not reproduce: the caller keeps the pattern as written."""


_AT = {_c.AT_BEGINNING: b"^", _c.AT_END: b"$", _c.AT_BEGINNING_STRING: b"\\A", _c.AT_END_STRING: b"\\Z",
       _c.AT_BOUNDARY: b"\\b", _c.AT_NON_BOUNDARY: b"\\B"}
#: the class escapes, by parser category
CATEGORIES = {_c.CATEGORY_DIGIT: b"\\d", _c.CATEGORY_NOT_DIGIT: b"\\D", _c.CATEGORY_SPACE: b"\\s",
              _c.CATEGORY_NOT_SPACE: b"\\S", _c.CATEGORY_WORD: b"\\w", _c.CATEGORY_NOT_WORD: b"\\W"}
_FLAG_LETTERS = ((re.IGNORECASE, b"i"), (re.MULTILINE, b"m"), (re.DOTALL, b"s"))


def walk(items):  # type: ignore[no-untyped-def]
    """Every ``(op, av)`` item of a parsed sequence and, depth first, of every sequence inside it
    (groups, alternatives, repeats, look-arounds, atomic groups, conditionals): for the questions
    asked of a whole pattern ("does anything in it look ahead?")."""
    for op, av in items:
        yield op, av
        if op is _c.SUBPATTERN:
            yield from walk(av[3])
        elif op is _c.BRANCH:
            for alt in av[1]:
                yield from walk(alt)
        elif op in (_c.MAX_REPEAT, _c.MIN_REPEAT, _c.POSSESSIVE_REPEAT):
            yield from walk(av[2])
        elif op in (_c.ASSERT, _c.ASSERT_NOT):
            yield from walk(av[1])
        elif op is _c.ATOMIC_GROUP:
            yield from walk(av)
        elif op is _c.GROUPREF_EXISTS:
            for sub in av[1:]:
                if sub is not None:
                    yield from walk(sub)


def _byte(c: int) -> bytes:
    return bytes((c,)) if (0x30 <= c <= 0x39 or 0x41 <= c <= 0x5A or 0x61 <= c <= 0x7A) else b"\\x%02x" % c


def print_items(items: list) -> bytes:  # type: ignore[type-arg]
    """The pattern text of parse items (as Python's parser gives them), construct for construct."""
    out = []
    for op, av in items:
        if op is _c.LITERAL:
            out.append(_byte(av))
        elif op is _c.NOT_LITERAL:
            out.append(b"[^" + _byte(av) + b"]")
        elif op is _c.ANY:
            out.append(b".")
        elif op is _c.AT:
            if av not in _AT:
                raise Unsupported(str(av))
            out.append(_AT[av])
        elif op is _c.IN:
            out.append(_print_class(av))
        elif op is _c.BRANCH:
            out.append(b"(?:" + b"|".join(print_items(a) for a in av[1]) + b")")
        elif op is _c.SUBPATTERN and av[0] is not None:  # a capturing group (the parser gives it no flags)
            out.append(b"(" + print_items(av[3]) + b")")
        elif op is _c.GROUPREF:
            out.append(b"(?:\\%d)" % av)  # grouped: a digit after it must not extend the number
        elif op is _c.SUBPATTERN:
            _, add, dele, sub = av
            on = b"".join(ch for f, ch in _FLAG_LETTERS if add & f)
            off = b"".join(ch for f, ch in _FLAG_LETTERS if dele & f)
            if (add | dele) & ~(re.IGNORECASE | re.MULTILINE | re.DOTALL):
                raise Unsupported("inline flags")
            out.append(b"(?" + on + (b"-" + off if off else b"") + b":" + print_items(sub) + b")")
        elif op in (_c.MAX_REPEAT, _c.MIN_REPEAT, _c.POSSESSIVE_REPEAT):
            lo, hi, sub = av
            hi_s = b"" if hi == _c.MAXREPEAT else str(hi).encode()
            q = b"{%d,%s}" % (lo, hi_s) if lo != hi else b"{%d}" % lo
            mode = b"?" if op is _c.MIN_REPEAT else b"+" if op is _c.POSSESSIVE_REPEAT else b""
            out.append(b"(?:" + print_items(sub) + b")" + q + mode)
        elif op in (_c.ASSERT, _c.ASSERT_NOT):
            direction, sub = av
            kind = (b"=" if op is _c.ASSERT else b"!") if direction == 1 else (b"<=" if op is _c.ASSERT else b"<!")
            out.append(b"(?" + kind + print_items(sub) + b")")
        else:
            raise Unsupported(str(op))
    return b"".join(out)


def _print_class(items: list) -> bytes:  # type: ignore[type-arg]
    out = [b"["]
    for op, av in items:
        if op is _c.NEGATE:
            out.append(b"^")
        elif op is _c.LITERAL:
            out.append(b"\\x%02x" % av)
        elif op is _c.RANGE:
            out.append(b"\\x%02x-\\x%02x" % av)
        elif op is _c.CATEGORY:
            out.append(CATEGORIES[av])
        else:
            raise Unsupported(str(op))
    out.append(b"]")
    return b"".join(out)
