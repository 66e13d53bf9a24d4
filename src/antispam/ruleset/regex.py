"""Perl regular expressions (as written in rule files) to Python ``re`` and Hyperscan.

Both engines match *bytes*, as SpamAssassin does: ``\\w``, ``\\d``, ``\\s`` and
``/i`` are ASCII, and a non-ASCII character in a pattern stands for its UTF-8
bytes (the buffers are UTF-8).  That choice is what makes the two engines give
the same hits: Python's ``re`` on bytes and Hyperscan without ``HS_FLAG_UTF8``
agree on every construct that both accept.

:func:`translate` walks the pattern once and writes two versions:

* ``py``: for Python's ``re`` (``\\z`` -> ``\\Z``, POSIX classes spelled out,
  mid-pattern ``(?i)`` scoped to its group, ``/x`` whitespace removed...);
* ``hs``: for Hyperscan, or None when the pattern needs what Hyperscan lacks
  (back-references, look-arounds, atomic groups, possessive quantifiers).
  Such a rule runs through Python ``re`` in both engines.

:func:`backtracking_risk` then refuses patterns whose Python matching could
take exponential time (a repeat of something that can itself match in more
than one way), since the fallback engine must be as safe as Hyperscan.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .pattern_tree import parsed

try:  # Python 3.11+: the parser behind re.compile
    import re._constants as _sre_c  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover
    import sre_constants as _sre_c  # type: ignore[no-redef]

_POSIX = {
    "alpha": "a-zA-Z", "digit": "0-9", "alnum": "a-zA-Z0-9", "upper": "A-Z", "lower": "a-z",
    "space": r" \t\n\r\f\x0b", "blank": r" \t", "punct": r"!-/:-@\[-`{-~", "xdigit": "0-9A-Fa-f",
    "word": "a-zA-Z0-9_", "cntrl": r"\x00-\x1f\x7f", "print": r" -~", "graph": r"!-~", "ascii": r"\x00-\x7f",
}
_SIMPLE_ESC = set("dDwWsSbBntrfa")
_CLASS_ESC = set("dDwWsSntrfa")


class Unsupported(ValueError):
    """The pattern uses a Perl feature that neither engine can run faithfully."""


@dataclass(frozen=True, slots=True)
class Translated:
    py: bytes
    hs: bytes | None
    #: why ``hs`` is None (the Perl feature Hyperscan lacks), else ""
    hs_missing: str
    caseless: bool
    dotall: bool
    multiline: bool
    #: True when the text had to be rewritten (not just re-encoded)
    changed: bool


def _hexbytes(ch: str) -> str:
    return "".join(f"\\x{b:02x}" for b in ch.encode("utf-8", "surrogateescape"))


def _lit(ch: str) -> str:
    """One literal character as a pattern piece valid in both engines, outside a class."""
    o = ord(ch)
    if 0xDC80 <= o <= 0xDCFF:  # a raw byte that was not UTF-8 in the rule file
        return f"\\x{o - 0xDC00:02x}"
    if o > 0x7F:
        b = ch.encode("utf-8")
        return "(?:" + "".join(f"\\x{x:02x}" for x in b) + ")"
    if ch.isalnum() or ch == "_":
        return ch
    if o < 0x20 and ch not in "\t\n" or o == 0x7F:
        # a raw control byte (NUL above all: Hyperscan reads its pattern as a C string) as an escape
        return f"\\x{o:02x}"
    if ch in " \t":
        return "\\x20" if ch == " " else "\\t"
    if ch == "\n":
        return "\\n"
    return "\\" + ch if ch in r".^$*+?{}[]\|()#/-&~'\"<>=!:,%@`;" else ch


def _byte_in_class(ch: str) -> str:
    o = ord(ch)
    if 0xDC80 <= o <= 0xDCFF:
        return f"\\x{o - 0xDC00:02x}"
    if o > 0x7F:
        raise Unsupported(f"non-ASCII character {ch!r} inside a character class")
    if ch.isalnum():
        return ch
    return f"\\x{o:02x}"


def translate(pattern: str, flags: str = "", *, force_multiline: bool = False) -> Translated:
    """Translate a Perl pattern with Perl flags (``imsx``) for both engines."""
    multiline = ("m" in flags) or force_multiline
    t = _Translator(pattern, "x" in flags, multiline or _INLINE_M.search(pattern) is not None)
    py, hs = t.run()
    return Translated(
        py=py.encode("ascii"), hs=None if t.hs_missing else hs.encode("ascii"), hs_missing=t.hs_missing,
        caseless="i" in flags, dotall="s" in flags, multiline=multiline,
        changed=t.changed,
    )


#: an inline flag group that may turn on multiline mode
_INLINE_M = re.compile(r"\(\?\^?[a-zA-Z]*m")
#: groups nested deeper than this are refused (Python's parser, and every walk of its tree, recurse)
MAX_GROUP_DEPTH = 64
#: Python's guard after ``^`` in multiline mode: no line start after a final newline (see run)
_NOT_AFTER_FINAL_NL = "(?!(?<=\\n)\\Z)"


class _Translator:
    def __init__(self, pattern: str, extended: bool, multiline: bool = False):
        self.p = pattern
        #: whether ``^`` may mean a line start (multiline flag, or an inline ``m``)
        self.multiline = multiline
        self.i = 0
        self.x = extended
        self.hs_missing = ""
        self.changed = False
        self.groups = 0
        # For each open group: the inline flag scopes opened inside it, which close
        # with it (and are closed and reopened around each ``|`` at its level).
        self.close_extra: list[list[str]] = [[]]

    def need_python(self, why: str) -> None:
        if not self.hs_missing:
            self.hs_missing = why

    def run(self) -> tuple[str, str]:
        py: list[str] = []
        hs: list[str] = []
        p = self.p
        n = len(p)
        at_start = True
        while self.i < n:
            c = p[self.i]
            if self.x and c in " \t\n\r\f":
                self.i += 1
                continue
            if self.x and c == "#":
                j = p.find("\n", self.i)
                self.i = n if j < 0 else j + 1
                continue
            if c == "\\":
                a, b = self.escape()
            elif c == "[":
                a = b = self.char_class()
            elif c == "(":
                if len(self.close_extra) > MAX_GROUP_DEPTH:
                    raise Unsupported(f"groups nested more than {MAX_GROUP_DEPTH} deep")
                a, b = self.open_group(at_start)
            elif c == ")":
                if len(self.close_extra) <= 1:
                    raise Unsupported("unbalanced ')'")
                extra = self.close_extra.pop()
                a = b = ")" * (len(extra) + 1)
                self.i += 1
            elif c == "{":
                m = re.compile(r"\{(\d+)(,(\d*))?\}").match(p, self.i)
                if m and (py and py[-1] != "("):
                    a = b = m.group(0)
                    self.i = m.end()
                    a2, b2 = self.quant_suffix()
                    a, b = a + a2, b + b2
                else:
                    a = b = "\\{"
                    self.i += 1
            elif c in "*+?":
                self.i += 1
                a2, b2 = self.quant_suffix()
                a, b = c + a2, c + b2
            elif c == "|" and self.close_extra[-1]:
                scopes = self.close_extra[-1]
                a = b = ")" * len(scopes) + "|" + "".join(scopes)
                self.i += 1
            elif c == "^" and self.multiline and self.line_start_may_end():
                # Python's ``re`` sees a line start after a buffer's final newline, Perl and
                # Hyperscan do not: for Python, ``^`` there is refused (same matches elsewhere).
                a, b = "^" + _NOT_AFTER_FINAL_NL, "^"
                self.i += 1
            elif c in ".^$|":
                a = b = c
                self.i += 1
            elif c == "}":
                a = b = "\\}"
                self.i += 1
            else:
                a = b = _lit(c)
                self.i += 1
            at_start = False
            py.append(a)
            hs.append(b)
        if len(self.close_extra) > 1:
            raise Unsupported("unbalanced '('")
        py.append(")" * len(self.close_extra[0]))
        hs.append(")" * len(self.close_extra[0]))
        return "".join(py), "".join(hs)

    def line_start_may_end(self) -> bool:
        """Whether what follows the ``^`` at ``self.i`` may match the empty string (conservatively:
        True unless it is one character, class or escape that must consume a byte)."""
        p = self.p
        j = self.i + 1
        if self.x or j >= len(p):
            return True
        ch = p[j]
        if ch == "\\":
            m = re.compile(r"\\(?:[dDwWsSntrfe]|x\{[0-9A-Fa-f]{1,6}\}|x[0-9A-Fa-f]{1,2}|[^0-9A-Za-z])").match(p, j)
            if not m:
                return True
            end = m.end()
        elif ch == "[":
            saved = self.i, self.changed
            try:
                self.i = j
                self.char_class()
                end = self.i
            except Unsupported:
                return True
            finally:
                self.i, self.changed = saved
        elif ch in "()|^$*+?{}#":
            return True
        else:
            end = j + 1
        if end < len(p) and p[end] in "?*":
            return True
        m = re.compile(r"\{(\d+)(?:,\d*)?\}").match(p, end)
        return bool(m) and int(m.group(1)) == 0

    def quant_suffix(self) -> tuple[str, str]:
        if self.i < len(self.p) and self.p[self.i] == "?":
            self.i += 1
            return "?", "?"
        if self.i < len(self.p) and self.p[self.i] == "+":
            self.i += 1
            self.need_python("possessive quantifier")
            return "+", ""
        return "", ""

    def escape(self) -> tuple[str, str]:
        p = self.p
        i = self.i
        if i + 1 >= len(p):
            raise Unsupported("trailing backslash")
        c = p[i + 1]
        self.i = i + 2
        if c == "B":
            # Python's ``\\B`` never matches in an empty buffer, Perl's and Hyperscan's do
            return "(?:\\B|\\A\\Z)", "\\B"
        if c in _SIMPLE_ESC:
            return "\\" + c, "\\" + c
        if c == "A":
            return "\\A", "\\A"
        if c == "z":
            self.changed = True
            return "\\Z", "\\z"
        if c == "Z":
            self.changed = True
            return "(?=\\n?\\Z)", "\\Z"
        if c == "h":
            self.changed = True
            return "[\\x20\\t]", "[\\x20\\t]"
        if c == "H":
            self.changed = True
            return "[^\\x20\\t]", "[^\\x20\\t]"
        if c == "v":
            self.changed = True
            return "[\\n\\x0b\\f\\r]", "[\\n\\x0b\\f\\r]"
        if c == "e":
            return "\\x1b", "\\x1b"
        if c == "x":
            m = re.compile(r"\{([0-9A-Fa-f]+)\}|([0-9A-Fa-f]{1,2})").match(p, self.i)
            if not m:
                return "\\x00", "\\x00"
            self.i = m.end()
            if m.group(1) is not None:
                cp = int(m.group(1), 16)
                if cp > 0x10FFFF or 0xD800 <= cp <= 0xDFFF:
                    raise Unsupported(f"\\x{{{m.group(1)}}} is not a Unicode character")
                self.changed = True
                if cp < 0x80:
                    s = f"\\x{cp:02x}"
                    return s, s
                s = "(?:" + _hexbytes(chr(cp)) + ")"
                return s, s
            s = f"\\x{int(m.group(2), 16):02x}"
            return s, s
        if c == "c" and self.i < len(p):
            ch = p[self.i]
            self.i += 1
            s = f"\\x{ord(ch.upper()) ^ 0x40:02x}"
            return s, s
        if c == "0":
            m = re.compile(r"[0-7]{0,2}").match(p, self.i)
            self.i = m.end()  # type: ignore[union-attr]
            s = f"\\x{int('0' + m.group(0), 8):02x}"  # type: ignore[union-attr]
            return s, s
        if c in "123456789":
            # Perl: three octal digits are a character (\\223); otherwise a back-reference.
            m = re.compile(r"[0-7]{2}").match(p, self.i)
            if c in "1234567" and m:
                self.i = m.end()
                v = f"\\x{int(c + m.group(0), 8) & 0xFF:02x}"
                return v, v
            self.need_python("back-reference")
            return "\\" + c, ""
        if c == "Q":
            j = p.find("\\E", self.i)
            body = p[self.i:] if j < 0 else p[self.i:j]
            self.i = len(p) if j < 0 else j + 2
            self.changed = True
            s = "".join(_lit(ch) for ch in body)
            return s, s
        if c == "E":
            return "", ""
        if c in "GKCXpPNRgkol":
            raise Unsupported(f"\\{c} is not supported")
        if c.isalnum():
            # Perl reads an unknown letter escape as the letter; Python refuses it.
            self.changed = True
            return c, c
        s = _lit(c)
        return s, s

    def char_class(self) -> str:
        p = self.p
        i = self.i + 1
        out = ["["]
        negated = False
        if i < len(p) and p[i] == "^":
            out.append("^")
            negated = True
            i += 1
        first = True
        # Non-ASCII members are several bytes each: they become alternatives beside the class.
        wide: list[str] = []
        while True:
            if i >= len(p):
                raise Unsupported("unterminated character class")
            c = p[i]
            if c == "]" and not first:
                i += 1
                break
            first = False
            if c == "[" and p.startswith("[:", i):
                j = p.find(":]", i)
                name = p[i + 2 : j] if j > 0 else ""
                neg = name.startswith("^")
                if neg or name not in _POSIX:
                    raise Unsupported(f"POSIX class [:{name}:] is not supported")
                out.append(_POSIX[name])
                self.changed = True
                i = j + 2
                continue
            if c == "\\" and i + 1 < len(p):
                e = p[i + 1]
                i += 2
                if e in _CLASS_ESC:
                    out.append("\\" + e)
                elif e == "b":
                    out.append("\\x08")
                elif e == "h":
                    out.append("\\x20\\t")
                elif e == "v":
                    out.append("\\n\\x0b\\f\\r")
                elif e == "e":
                    out.append("\\x1b")
                elif e == "x":
                    m = re.compile(r"\{([0-9A-Fa-f]+)\}|([0-9A-Fa-f]{1,2})").match(p, i)
                    if not m:
                        out.append("\\x00")
                        continue
                    i = m.end()
                    cp = int(m.group(1) or m.group(2), 16)
                    if m.group(1) is not None and cp > 0x7F:
                        raise Unsupported("\\x{...} above 0x7f inside a character class")
                    out.append(f"\\x{cp:02x}")
                elif e == "0":
                    m = re.compile(r"[0-7]{0,2}").match(p, i)
                    i = m.end()  # type: ignore[union-attr]
                    out.append(f"\\x{int('0' + m.group(0), 8):02x}")  # type: ignore[union-attr]
                elif e in "1234567":
                    m = re.compile(r"[0-7]{0,2}").match(p, i)
                    i = m.end()  # type: ignore[union-attr]
                    out.append(f"\\x{int(e + m.group(0), 8) & 0xFF:02x}")  # type: ignore[union-attr]
                elif e in "pPNRXCGK":
                    raise Unsupported(f"\\{e} in a character class is not supported")
                elif e.isalnum():
                    out.append(e)
                else:
                    out.append(f"\\x{ord(e):02x}")
                continue
            if c == "-":
                # A range dash between two single members stays; a leading or trailing
                # one, or one next to a class like \\w, is literal (as in Perl).
                nxt = p[i + 1] if i + 1 < len(p) else ""
                prev = out[-1] if len(out) > 1 else "["
                single = prev not in ("[", "^", "-") and not (len(prev) == 2 and prev[0] == "\\" and prev[1] in "dDwWsS") \
                    and len(prev) in (1, 4)
                if single and nxt not in ("]", "\\") or (single and nxt == "\\" and p[i + 2:i + 3] in ("x", "0")):
                    out.append("-")
                else:
                    out.append("\\x2d")
                i += 1
                continue
            if ord(c) > 0x7F and not 0xDC80 <= ord(c) <= 0xDCFF:
                if negated or p[i + 1 : i + 2] == "-" or (len(out) > 1 and out[-1] == "-"):
                    raise Unsupported(f"non-ASCII character {c!r} in a negated class or range")
                wide.append(_lit(c))
                self.changed = True
                i += 1
                continue
            out.append(_byte_in_class(c))
            i += 1
        self.i = i
        out.append("]")
        if not wide:
            return "".join(out)
        alts = wide if len(out) == 2 else ["".join(out), *wide]
        return "(?:" + "|".join(alts) + ")"

    def open_group(self, at_start: bool) -> tuple[str, str]:
        p = self.p
        i = self.i
        if not p.startswith("(?", i):
            self.i = i + 1
            self.groups += 1
            self.close_extra.append([])
            return "(", "("
        rest = p[i + 2 : i + 4]
        if rest.startswith("#"):
            j = p.find(")", i)
            self.i = len(p) if j < 0 else j + 1
            return "", ""
        if rest.startswith(":"):
            self.i = i + 3
            self.close_extra.append([])
            return "(?:", "(?:"
        if rest.startswith(("=", "!")) or rest in ("<=", "<!"):
            self.need_python("look-around assertion")
            k = 3 if rest[0] in "=!" else 4
            self.i = i + k
            self.close_extra.append([])
            return p[i : i + k], ""
        if rest.startswith(">"):
            self.need_python("atomic group")
            self.i = i + 3
            self.close_extra.append([])
            return "(?>", ""
        m = re.compile(r"\(\?(?:P?<([A-Za-z_]\w*)>|'([A-Za-z_]\w*)')").match(p, i)
        if m:
            self.i = m.end()
            self.groups += 1
            self.changed = True
            self.close_extra.append([])
            return "(", "("
        m = re.compile(r"\(\?\^?([a-zA-Z]*)(?:-([a-zA-Z]*))?(:|\))").match(p, i)
        if m:
            on = "".join(f for f in "imsx" if f in m.group(1))
            off = "".join(f for f in "imsx" if f in (m.group(2) or ""))
            unknown = set(m.group(1) + (m.group(2) or "")) - set("imsxaulnpd")
            if unknown:
                raise Unsupported(f"inline flags {m.group(0)!r}")
            if "x" in on:
                self.x = True
            if "x" in off:
                self.x = False
            on, off = on.replace("x", ""), off.replace("x", "")
            self.i = m.end()
            spec = on + ("-" + off if off else "")
            if m.group(3) == ":":
                self.close_extra.append([])
                s = f"(?{spec}:" if spec else "(?:"
                return s, s
            # ``(?i)`` mid-pattern applies to the rest of the enclosing group: open a
            # scoped group now and close it when the enclosing group closes.
            if not spec:
                return "", ""
            self.changed = self.changed or not at_start
            s = f"(?{spec}:"
            self.close_extra[-1].append(s)
            return s, s
        raise Unsupported(f"group syntax {p[i:i + 4]!r}")


# --------------------------------------------------------------------------- safety

_MAXREPEAT = _sre_c.MAXREPEAT
#: A bounded repeat above this many iterations is treated like an unbounded one.
_BIG = 32
#: A repeat over a sub-pattern that can match in several ways: at most this many iterations
#: whatever those ways (a polynomial of this degree), more only while count x ways <= _BIG.
_SMALL = 3
#: At most this many big repeats in a row that can match the same bytes.
_RUN = 3
_INF = 1 << 62


def backtracking_risk(pattern: bytes, flags: int = 0) -> str | None:
    """Why Python matching of ``pattern`` could take exponential time, or None if it cannot.

    The classic cause is a repeated sub-pattern that can match the same text in
    more than one way, e.g. ``(a+)+`` or ``(\\w|\\d)*``: a failing match then
    tries exponentially many splits.  Refused here: a repeat (``*``, ``+``,
    ``{n,}``, ``{n,m}`` with m > 32) whose body contains another variable repeat
    or an alternation.  Bounded small repeats (``(?:\\w+\\s){0,3}``) cost at most
    a small polynomial and are allowed.

    The bounds of nested repeats multiply (``(?:(?:a|b){1,8}c){1,8}`` repeats the
    alternation up to 64 times), and a repeat of more than :data:`_SMALL`
    iterations over a sub-pattern that can match in several ways is refused when
    its count times those ways passes :data:`_BIG` (``(?:.*?,){30}P``, a
    polynomial of degree 30; ``(?:a{1,32}){1,32}``).  More than :data:`_RUN`
    big repeats in a row whose bytes overlap (``.*.*.*.*=``, ``.*,.*,.*,.*,``)
    are refused as well: each one more multiplies the work by the line length.
    """
    try:
        tree = parsed(pattern, flags)
    except (re.error, OverflowError, RecursionError) as exc:
        return f"invalid: {exc}"
    try:
        return _walk(tree, 1, bool(flags & re.I))
    except RecursionError:
        return "nested too deeply"


def _is_variable(items) -> bool:
    for op, av in items:
        if op in (_sre_c.MAX_REPEAT, _sre_c.MIN_REPEAT, getattr(_sre_c, "POSSESSIVE_REPEAT", None)):
            lo, hi, sub = av
            if hi != lo or _is_variable(sub):
                return True
        elif op is _sre_c.BRANCH:
            return True
        elif op is _sre_c.SUBPATTERN:
            if _is_variable(av[-1]):
                return True
        elif op in (_sre_c.ASSERT, _sre_c.ASSERT_NOT):
            continue
        elif op is _sre_c.GROUPREF:
            return True
    return False


_ALL = frozenset(range(256))
_CATS = {
    "CATEGORY_DIGIT": frozenset(range(48, 58)),
    "CATEGORY_SPACE": frozenset(b" \t\n\r\f\x0b"),
    "CATEGORY_WORD": frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"),
}


def _charset(op, av, caseless: bool) -> frozenset[int] | None:
    """The bytes one single-character item can match, or None if it is not a single-character item."""
    if op is _sre_c.LITERAL:
        out = {av}
    elif op is _sre_c.NOT_LITERAL:
        return _ALL - {av}
    elif op is _sre_c.ANY:
        return _ALL
    elif op is _sre_c.IN:
        out = set()
        neg = False
        for o, a in av:
            if o is _sre_c.NEGATE:
                neg = True
            elif o is _sre_c.LITERAL:
                out.add(a)
            elif o is _sre_c.RANGE:
                out.update(range(a[0], a[1] + 1))
            elif o is _sre_c.CATEGORY:
                name = str(a)
                base = name.replace("CATEGORY_NOT_", "CATEGORY_")
                cat = _CATS.get(base)
                if cat is None:
                    return _ALL
                out.update(_ALL - cat if "NOT_" in name else cat)
            else:
                return _ALL
        if neg:
            return _ALL - out
    else:
        return None
    if caseless:
        out |= {c ^ 0x20 for c in out if 65 <= (c & ~0x20) <= 90}
    return frozenset(out)


def _delimited(sub, caseless: bool) -> bool:
    """A repeated body whose iterations can be split only one way.

    The body must be a sequence of single-character items, each possibly
    repeated (``[a-z0-9-]+``, ``\\.``, ``\\d{2,3}``, ``\\s+``), where every
    variable-length item is followed by an item it cannot match (the last one
    wrapping around to the first, for the next iteration).  Then every
    position in the text belongs to exactly one item of one iteration, so the
    matcher never retries another split and the repeat stays linear; e.g.
    ``(?:[a-z0-9-]+\\.)+``, ``(?:&\\#\\d{2,3};){4,}`` and ``(?:\\w+\\s+)+``
    are accepted, ``(?:\\S+\\.)+`` is not (``\\S`` matches the dot too).
    """
    items = list(sub)
    if len(items) == 1 and items[0][0] is _sre_c.SUBPATTERN:
        return _delimited(items[0][1][-1], caseless)
    segs: list[tuple[frozenset[int], bool, bool]] = []  # (chars, variable, may be empty)
    for op, av in items:
        if op is _sre_c.AT:
            continue
        cs = _charset(op, av, caseless)
        if cs is not None:
            segs.append((cs, False, False))
            continue
        if op in (_sre_c.MAX_REPEAT, _sre_c.MIN_REPEAT):
            lo, hi, inner = av
            inner = list(inner)
            if len(inner) != 1:
                return False
            ics = _charset(*inner[0], caseless)
            if ics is None:
                return False
            segs.append((ics, lo != hi, lo == 0))
            continue
        return False
    if len(segs) < 2 or all(opt for _, _, opt in segs):
        return False
    n = len(segs)
    for i, (cs, var, _) in enumerate(segs):
        if not var:
            continue
        # What can come next: the following items up to the first one that cannot be empty.
        j = (i + 1) % n
        while True:
            if cs & segs[j][0]:
                return False
            if not segs[j][2] or j == i:
                break
            j = (j + 1) % n
    return True


def _span(items) -> int:
    """How many ways (roughly) a sub-pattern can match a given stretch: the product of the
    ranges of its variable repeats and of its alternations' sizes (capped at _INF)."""
    n = 1
    for op, av in items:
        if op in (_sre_c.MAX_REPEAT, _sre_c.MIN_REPEAT):
            lo, hi, sub = av
            k = _INF if hi is _MAXREPEAT or hi == _MAXREPEAT else hi - lo + 1
            n *= k * _span(sub)
        elif op is _sre_c.BRANCH:
            n *= sum(_span(alt) for alt in av[1])
        elif op is _sre_c.SUBPATTERN:
            n *= _span(av[-1])
        n = min(n, _INF)  # (a back-reference matches one string: one way)
    return n


def _fixed_start(sub, caseless: bool) -> bool:
    """A repeated body that starts with a byte none of its variable parts can match
    (``(?:&\\#\\d{1,3}\\s{0,64};){10}``): each iteration starts at such a byte, so the
    iterations cannot trade bytes and the count does not multiply the ways."""
    items = list(sub)
    while len(items) == 1 and items[0][0] is _sre_c.SUBPATTERN:
        items = list(items[0][1][-1])
    first = _charset(*items[0], caseless) if items else None
    if first is None:
        return False
    groups: dict[int, frozenset[int]] = {}

    def chars(its) -> frozenset[int]:
        out: set[int] = set()
        for op, av in its:
            cs = _charset(op, av, caseless)
            if cs is not None:
                out |= cs
            elif op in (_sre_c.MAX_REPEAT, _sre_c.MIN_REPEAT):
                out |= chars(av[2])
            elif op is _sre_c.BRANCH:
                for alt in av[1]:
                    out |= chars(alt)
            elif op is _sre_c.SUBPATTERN:
                cs = chars(av[-1])
                if av[0] is not None:
                    groups[av[0]] = cs
                out |= cs
            elif op is _sre_c.GROUPREF:
                out |= groups.get(av, _ALL)
            elif op not in (_sre_c.AT, _sre_c.ASSERT, _sre_c.ASSERT_NOT):
                return _ALL
        return frozenset(out)

    def variable(its) -> frozenset[int]:
        """The bytes the variable parts of ``its`` can match."""
        out: set[int] = set()
        for op, av in its:
            if op in (_sre_c.MAX_REPEAT, _sre_c.MIN_REPEAT):
                out |= chars(av[2]) if av[0] != av[1] or _is_variable(av[2]) else variable(av[2])
            elif op is _sre_c.BRANCH:
                for alt in av[1]:
                    out |= chars(alt)
            elif op is _sre_c.SUBPATTERN:
                out |= variable(av[-1])
            elif op is _sre_c.GROUPREF:
                out |= groups.get(av, _ALL)
        return frozenset(out)

    chars(items)  # the groups' bytes, for back-references
    return not first & variable(items)


def _walk(items, mult: int, caseless: bool = False) -> str | None:
    """``mult``: the product of the bounds of the repeats around ``items``."""
    run = 0  # big repeats in a row (only single-byte items between) that can all match the bytes in run_cs
    run_cs: frozenset[int] = frozenset()
    for op, av in items:
        if op in (_sre_c.MAX_REPEAT, _sre_c.MIN_REPEAT):
            lo, hi, sub = av
            unbounded = hi is _MAXREPEAT or hi == _MAXREPEAT
            eff = _INF if unbounded else min(hi * mult, _INF)
            big = eff > _BIG
            if _is_variable(sub) and not _delimited(sub, caseless):
                if big:
                    return "a repeat over a sub-pattern that can itself match in several ways (exponential backtracking)"
                if eff > _SMALL and eff * _span(sub) > _BIG and not _fixed_start(sub, caseless):
                    return (f"{eff} repeats of a sub-pattern that can match in several ways "
                            "(polynomial backtracking of high degree)")
            why = _walk(sub, eff, caseless)
            if why:
                return why
            sub = list(sub)
            cs = _charset(*sub[0], caseless) if len(sub) == 1 else None
            if cs is None:
                run = 0
            elif unbounded or hi > _BIG:
                if run and run_cs & cs:
                    run, run_cs = run + 1, run_cs & cs
                else:
                    run, run_cs = 1, cs
                if run > _RUN:
                    return f"more than {_RUN} unbounded repeats in a row that can match the same bytes (polynomial backtracking)"
            elif run:
                run_cs &= cs
                run = run if run_cs else 0
            continue
        cs = _charset(op, av, caseless)
        if cs is not None:
            if run:
                run_cs &= cs
                run = run if run_cs else 0
            continue
        if op is not _sre_c.AT:
            run = 0
        if getattr(_sre_c, "POSSESSIVE_REPEAT", None) is op:
            continue  # possessive repeats never backtrack into their body
        elif op is _sre_c.BRANCH:
            for alt in av[1]:
                why = _walk(alt, mult, caseless)
                if why:
                    return why
        elif op is _sre_c.SUBPATTERN:
            why = _walk(av[-1], mult, caseless)
            if why:
                return why
        elif op in (_sre_c.ASSERT, _sre_c.ASSERT_NOT):
            why = _walk(av[1], mult, caseless)
            if why:
                return why
        elif op is getattr(_sre_c, "ATOMIC_GROUP", None):
            continue
    return None
