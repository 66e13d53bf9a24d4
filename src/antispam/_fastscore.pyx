# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled hot kernels.  ``_fastscore_py.py`` is the pure-Python twin: same
functions, bit-identical results (see its docstring for the exact definitions
of words, tokens, the hash and the score, and the parity tests)."""

from libc.stdint cimport uint64_t, uint32_t, uint16_t, uint8_t
from libc.stdlib cimport malloc, free
from libc.string cimport memchr
from libc.math cimport fabs

import numpy as np

cdef extern from "Python.h":
    int PyUnicode_KIND(object o)
    const void* PyUnicode_DATA(object o)
    bint Py_UNICODE_ISALNUM(Py_UCS4 ch) noexcept nogil
    Py_UCS4 PyUnicode_READ(int kind, const void* data, Py_ssize_t index) noexcept nogil


cdef struct UStr:
    # a str's code points read in place (PEP 393 storage: 1, 2 or 4 bytes each)
    int kind
    const void* data
    Py_ssize_t n


cdef inline UStr _ustr(str s):
    cdef UStr u
    u.kind = PyUnicode_KIND(s)
    u.data = PyUnicode_DATA(s)
    u.n = len(s)
    return u


cdef inline Py_UCS4 _at(const UStr* u, Py_ssize_t i) noexcept nogil:
    return PyUnicode_READ(u.kind, u.data, i)

cdef uint64_t FNV64_OFFSET = 0xCBF29CE484222325ULL
cdef uint64_t FNV64_PRIME = 0x100000001B3ULL

# Must equal the constants of the twin.
cdef enum:
    MIN_WORD = 2
    MAX_WORD = 20
    MAX_CLUES = 64

# 1 for ASCII word characters (alnum and _ $ ' . -), 2 for those also trimmed from word ends (_ ' . -).
cdef unsigned char ASCII_CLASS[128]
cdef int _c
for _c in range(128):
    ASCII_CLASS[_c] = 0
for _c in range(ord("0"), ord("9") + 1):
    ASCII_CLASS[_c] = 1
for _c in range(ord("a"), ord("z") + 1):
    ASCII_CLASS[_c] = 1
for _c in range(ord("A"), ord("Z") + 1):
    ASCII_CLASS[_c] = 1
ASCII_CLASS[ord("$")] = 1
ASCII_CLASS[ord("_")] = 2
ASCII_CLASS[ord("'")] = 2
ASCII_CLASS[ord(".")] = 2
ASCII_CLASS[ord("-")] = 2


cdef inline bint _is_word(Py_UCS4 c) noexcept nogil:
    if c < 128:
        return ASCII_CLASS[c] != 0
    return Py_UNICODE_ISALNUM(c)


cdef inline bint _is_trim(Py_UCS4 c) noexcept nogil:
    return c < 128 and ASCII_CLASS[c] == 2


cdef inline uint64_t _feed(uint64_t h, uint32_t b) noexcept nogil:
    return (h ^ b) * FNV64_PRIME


cdef inline uint64_t _feed_cp(uint64_t h, uint32_t c) noexcept nogil:
    """FNV-1a over the UTF-8 bytes of one code point (surrogates as 3 bytes, like 'surrogatepass')."""
    if c < 0x80:
        return _feed(h, c)
    if c < 0x800:
        h = _feed(h, 0xC0 | (c >> 6))
        return _feed(h, 0x80 | (c & 0x3F))
    if c < 0x10000:
        h = _feed(h, 0xE0 | (c >> 12))
        h = _feed(h, 0x80 | ((c >> 6) & 0x3F))
        return _feed(h, 0x80 | (c & 0x3F))
    h = _feed(h, 0xF0 | (c >> 18))
    h = _feed(h, 0x80 | ((c >> 12) & 0x3F))
    h = _feed(h, 0x80 | ((c >> 6) & 0x3F))
    return _feed(h, 0x80 | (c & 0x3F))


cdef inline uint64_t _feed_str(uint64_t h, const UStr* s, Py_ssize_t start, Py_ssize_t end) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(start, end):
        h = _feed_cp(h, <uint32_t>_at(s, i))
    return h


cdef inline uint64_t _feed_ascii(uint64_t h, bytes prefix):
    cdef const unsigned char* p = prefix
    cdef Py_ssize_t i
    for i in range(len(prefix)):
        h = _feed(h, p[i])
    return h


cdef inline uint32_t _fold(uint64_t h, uint32_t mask) noexcept nogil:
    return <uint32_t>((h ^ (h >> 32)) & mask)


cdef void _radix_sort(uint32_t* a, uint32_t* tmp, Py_ssize_t n, int bits) noexcept nogil:
    """LSD radix sort of ``n`` ids below ``2**bits``, 8 bits per pass (result in ``a``)."""
    cdef Py_ssize_t count[256]
    cdef Py_ssize_t i, total, c
    cdef int shift = 0
    cdef uint32_t* src = a
    cdef uint32_t* dst = tmp
    cdef uint32_t* sw
    while shift < bits:
        for i in range(256):
            count[i] = 0
        for i in range(n):
            count[(src[i] >> shift) & 0xFF] += 1
        total = 0
        for i in range(256):
            c = count[i]
            count[i] = total
            total += c
        for i in range(n):
            c = (src[i] >> shift) & 0xFF
            dst[count[c]] = src[i]
            count[c] += 1
        sw = src
        src = dst
        dst = sw
        shift += 8
    if src != a:
        for i in range(n):
            a[i] = src[i]


cdef inline uint64_t _fnv1a(const unsigned char[:] data, uint64_t seed) noexcept nogil:
    cdef uint64_t h = FNV64_OFFSET ^ seed
    cdef Py_ssize_t i
    for i in range(data.shape[0]):
        h = (h ^ data[i]) * FNV64_PRIME
    return h


def hash_bytes(const unsigned char[:] data, uint64_t seed):
    """64-bit FNV-1a of ``data`` started from ``FNV64_OFFSET ^ seed`` (see the twin)."""
    return _fnv1a(data, seed)


def feature_id(str token, uint64_t seed, int bits):
    """The feature id of one whole token string (see the twin)."""
    cdef uint32_t mask = <uint32_t>((1ULL << bits) - 1)
    cdef UStr u = _ustr(token)
    return _fold(_feed_str(FNV64_OFFSET ^ seed, &u, 0, u.n), mask)


ctypedef fused cp_t:
    # one code point of a str's PEP 393 storage; the word loop is compiled once per width, so the
    # common 1-byte (ASCII / Latin-1) text reads its bytes directly instead of switching on the
    # width at every character as PyUnicode_READ does
    uint8_t
    uint16_t
    uint32_t


cdef inline uint64_t _feed_run(uint64_t h, const cp_t* d, Py_ssize_t start, Py_ssize_t end) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(start, end):
        h = _feed_cp(h, <uint32_t>d[i])
    return h


cdef Py_ssize_t _words_of(const cp_t* d, Py_ssize_t L, uint64_t start_h, uint64_t bigram_h, bint bigrams,
                          uint64_t skip_h, uint32_t mask, uint32_t* out, Py_ssize_t n) noexcept nogil:
    """Append the ids of the word tokens of the ``L`` code points at ``d`` to ``out[n:]``; return
    the new count.

    ``start_h`` is the hash state after the namespace prefix (``subject:`` or
    nothing); ``bigram_h`` the state after ``bi:``; ``skip_h`` after the prefix and ``skip:``.
    """
    cdef Py_ssize_t i = 0, ws, we, length
    cdef Py_ssize_t ps = -1, pe = -1
    cdef uint64_t h
    while i < L:
        if not _is_word(d[i]):
            i += 1
            continue
        ws = i
        i += 1
        while i < L and _is_word(d[i]):
            i += 1
        we = i
        while ws < we and _is_trim(d[ws]):
            ws += 1
        while we > ws and _is_trim(d[we - 1]):
            we -= 1
        length = we - ws
        if length < MIN_WORD:
            continue
        if length > MAX_WORD:
            # "skip:<first char>:<length // 10, at most 9>"
            h = _feed_cp(skip_h, <uint32_t>d[ws])
            h = _feed(h, 0x3A)
            h = _feed(h, 0x30 + (length // 10 if length < 100 else 9))
            out[n] = _fold(h, mask)
            n += 1
            ps = -1
            continue
        out[n] = _fold(_feed_run(start_h, d, ws, we), mask)
        n += 1
        if bigrams:
            if ps >= 0:
                h = _feed_run(bigram_h, d, ps, pe)
                h = _feed(h, 0x20)
                out[n] = _fold(_feed_run(h, d, ws, we), mask)
                n += 1
            ps = ws
            pe = we
    return n


cdef Py_ssize_t _words(const UStr* s, uint64_t start_h, uint64_t bigram_h, bint bigrams,
                       uint64_t skip_h, uint32_t mask, uint32_t* out, Py_ssize_t n) noexcept nogil:
    """:func:`_words_of` for the storage width of ``s``."""
    if s.kind == 1:
        return _words_of(<const uint8_t*>s.data, s.n, start_h, bigram_h, bigrams, skip_h, mask, out, n)
    if s.kind == 2:
        return _words_of(<const uint16_t*>s.data, s.n, start_h, bigram_h, bigrams, skip_h, mask, out, n)
    return _words_of(<const uint32_t*>s.data, s.n, start_h, bigram_h, bigrams, skip_h, mask, out, n)


def features(str subject, str text, list meta, uint64_t seed, int bits, bint bigrams):
    """Sorted distinct feature ids (uint32 array) of one message's views (see the twin)."""
    if bits < 1 or bits > 31:
        raise ValueError("bits must be in 1..31")
    cdef uint32_t mask = <uint32_t>((1ULL << bits) - 1)
    cdef uint64_t h0 = FNV64_OFFSET ^ seed
    cdef Py_ssize_t cap = 2 * (len(subject) + len(text)) + len(meta) + 16
    cdef uint32_t* buf = <uint32_t*>malloc(2 * cap * sizeof(uint32_t))
    if buf == NULL:
        raise MemoryError()
    cdef Py_ssize_t n = 0, k, m
    cdef uint64_t bi_h = _feed_ascii(h0, b"bi:")
    cdef uint64_t subj_h = _feed_ascii(h0, b"subject:")
    cdef object item
    cdef UStr u
    cdef uint32_t[::1] out
    try:
        u = _ustr(subject)
        n = _words(&u, subj_h, bi_h, False, _feed_ascii(subj_h, b"skip:"), mask, buf, n)
        u = _ustr(text)
        n = _words(&u, h0, bi_h, bigrams, _feed_ascii(h0, b"skip:"), mask, buf, n)
        for item in meta:
            u = _ustr(<str?>item)
            buf[n] = _fold(_feed_str(h0, &u, 0, u.n), mask)
            n += 1
        _radix_sort(buf, buf + cap, n, bits)
        m = 0
        for k in range(n):
            if m == 0 or buf[k] != buf[m - 1]:
                buf[m] = buf[k]
                m += 1
        result = np.empty(m, dtype=np.uint32)
        out = result
        for k in range(m):
            out[k] = buf[k]
        return result
    finally:
        free(buf)


cdef inline bint _better(double ca, uint32_t ia, double cb, uint32_t ib) noexcept nogil:
    """Clue order: larger |contribution| first, then smaller feature id."""
    cdef double a = fabs(ca), b = fabs(cb)
    return a > b or (a == b and ia < ib)


def score(const uint32_t[::1] ids, const float[::1] weights, double bias, int nclues):
    """``bias + sum(weights[ids])`` accumulated in float64 in the order of ``ids``, and the
    ``nclues`` strongest nonzero contributions as ``[(id, weight)]`` (see the twin)."""
    cdef Py_ssize_t n = ids.shape[0], nw = weights.shape[0], k, j, used = 0
    cdef double total = bias, c
    cdef uint32_t fid
    cdef double cc[MAX_CLUES]
    cdef uint32_t ci[MAX_CLUES]
    if nclues < 0 or nclues > MAX_CLUES:
        raise ValueError(f"nclues must be in 0..{MAX_CLUES}")
    for k in range(n):
        fid = ids[k]
        if fid >= nw:
            raise ValueError(f"feature id {fid} outside the model ({nw} features)")
        c = <double>weights[fid]
        total += c
        if c == 0.0 or nclues == 0:
            continue
        if used == nclues and not _better(c, fid, cc[used - 1], ci[used - 1]):
            continue
        j = used if used < nclues else nclues - 1
        while j > 0 and _better(c, fid, cc[j - 1], ci[j - 1]):
            cc[j] = cc[j - 1]
            ci[j] = ci[j - 1]
            j -= 1
        cc[j] = c
        ci[j] = fid
        if used < nclues:
            used += 1
    return total, [(int(ci[j]), cc[j]) for j in range(used)]


# ---- rules kernels ------------------------------------------------------------------------
# Counting helpers of the rule evals; definitions in the twin.

from . import _fastscore_py as _twin

cdef unsigned char LETTER_CLASS[256]  # 2: capital, 1: other letter, 0: not a letter (Latin-1)
cdef unsigned char IS_BLANK[256]  # 1 for what visible_count does not count
for _c in range(256):
    LETTER_CLASS[_c] = 2 if chr(_c).isupper() else 1 if chr(_c).isalpha() else 0
    IS_BLANK[_c] = 1 if chr(_c) in _twin.BLANKS else 0


def letter_counts(str text, Py_ssize_t limit):
    """(letters, capitals) among the first ``limit`` characters, Latin-1 letters only (see the twin)."""
    cdef UStr u = _ustr(text)
    cdef Py_ssize_t i, n = u.n if u.n < limit else limit
    cdef Py_ssize_t letters = 0, upper = 0
    cdef Py_UCS4 ch
    cdef unsigned char k
    cdef const unsigned char* b
    if limit < 0:
        raise ValueError("limit must be >= 0")
    if u.kind == 1:  # every code point below 256: one table lookup per byte
        b = <const unsigned char*>u.data
        for i in range(n):
            k = LETTER_CLASS[b[i]]
            letters += k != 0
            upper += k == 2
        return letters, upper
    for i in range(n):
        ch = _at(&u, i)
        if ch < 256:
            k = LETTER_CLASS[ch]
            if k:
                letters += 1
                if k == 2:
                    upper += 1
    return letters, upper


def visible_count(str text):
    """Characters that are not blanks (space, newline, tab, carriage return, no-break space)."""
    cdef UStr u = _ustr(text)
    cdef Py_ssize_t i, blanks = 0
    cdef Py_UCS4 ch
    cdef const unsigned char* b
    if u.kind == 1:
        b = <const unsigned char*>u.data
        for i in range(u.n):
            blanks += IS_BLANK[b[i]]
        return u.n - blanks
    for i in range(u.n):
        ch = _at(&u, i)
        if ch < 256 and IS_BLANK[ch]:
            blanks += 1
    return u.n - blanks


# ---- text kernels ----------------------------------------------------------------------------
# Steps of the HTML-to-text rendering; the definitions are the twin's regexes, which this code
# follows exactly (and calls where a case-insensitive match of a non-ASCII tag name would need
# Unicode case folding).


cdef extern from "Python.h":
    object PyUnicode_FromKindAndData(int kind, const void* buffer, Py_ssize_t size)
    bint Py_UNICODE_ISSPACE(Py_UCS4 ch) noexcept nogil

cdef inline void _put(void* buf, int kind, Py_ssize_t k, Py_UCS4 c) noexcept nogil:
    # Output is written in the input's storage width: the kernels only drop characters or
    # replace them with ASCII, so it always fits; PyUnicode_FromKindAndData then makes the
    # canonical (narrowest) string.
    if kind == 1:
        (<unsigned char*>buf)[k] = <unsigned char>c
    elif kind == 2:
        (<unsigned short*>buf)[k] = <unsigned short>c
    else:
        (<Py_UCS4*>buf)[k] = c


cdef inline bint _is_word_cp(Py_UCS4 c) noexcept nogil:
    # the regex engine's \w for str patterns: alphanumeric or underscore
    return c == 95 or Py_UNICODE_ISALNUM(c)

cdef inline Py_UCS4 _lower_ascii(Py_UCS4 c) noexcept nogil:
    return <Py_UCS4>(<uint32_t>c + 32) if 65 <= c <= 90 else c


cdef bint _break_name(const Py_UCS4* s, Py_ssize_t n) noexcept nogil:
    # br p div tr li h<digit> table blockquote (ASCII, already lower-cased)
    if n == 1:
        return s[0] == 112  # p
    if n == 2:
        if s[0] == 104:  # h + ASCII digit
            return 48 <= s[1] <= 57
        return ((s[0] == 98 and s[1] == 114) or (s[0] == 116 and s[1] == 114)  # br tr
                or (s[0] == 108 and s[1] == 105))  # li
    if n == 3:
        return s[0] == 100 and s[1] == 105 and s[2] == 118  # div
    if n == 5:
        return s[0] == 116 and s[1] == 97 and s[2] == 98 and s[3] == 108 and s[4] == 101  # table
    if n == 10:
        return (s[0] == 98 and s[1] == 108 and s[2] == 111 and s[3] == 99 and s[4] == 107 and s[5] == 113
                and s[6] == 117 and s[7] == 111 and s[8] == 116 and s[9] == 101)  # blockquote
    return False


def html_strip_tags(str markup):
    """Block-level tags become ``\\n``, then every other tag is removed (see the twin)."""
    cdef UStr u = _ustr(markup)
    cdef Py_ssize_t n = u.n, i, j, k, w, out = 0, gt
    cdef Py_UCS4 c
    cdef Py_UCS4 name[10]
    cdef Py_UCS4* a
    cdef void* b
    if n == 0 or markup.find("<") < 0:
        return markup
    a = <Py_UCS4*>malloc(n * sizeof(Py_UCS4))
    b = malloc(n * u.kind)
    if a == NULL or b == NULL:
        free(a)
        free(b)
        raise MemoryError()
    try:
        # Pass 1, block-level tags -> "\n".  At a "<": the name is the run of word characters
        # after it (the pattern's \b ends it there); it must be one of the names, and a ">"
        # must follow somewhere.  next_gt caches the position of the next ">".
        gt = -1
        i = 0
        while i < n:
            c = _at(&u, i)
            if c != 60:  # <
                a[out] = c
                out += 1
                i += 1
                continue
            j = i + 1
            w = 0
            while j < n and _is_word_cp(_at(&u, j)):
                if w < 11:
                    c = _at(&u, j)
                    if c >= 128:
                        # a non-ASCII letter may equal an ASCII one under Unicode case folding
                        return _twin.html_strip_tags(markup)
                    if w < 10:
                        name[w] = _lower_ascii(c)
                    w += 1
                j += 1
            if 0 < w <= 10 and j - i - 1 == w and _break_name(name, w):
                if gt < j:
                    gt = j
                    while gt < n and _at(&u, gt) != 62:  # >
                        gt += 1
                if gt < n:
                    a[out] = 10
                    out += 1
                    i = gt + 1
                    continue
            a[out] = 60
            out += 1
            i += 1
        # Pass 2, every other tag removed: from a "<" that opens one (before an ASCII letter, "/",
        # "!" or "?") to the next ">", when there is one.
        k = 0
        i = 0
        gt = -1
        while i < out:
            c = a[i]
            if c == 60 and i + 1 < out and _opens_tag(a[i + 1]):
                if gt < i:
                    gt = i + 1
                    while gt < out and a[gt] != 62:
                        gt += 1
                if gt < out:
                    i = gt + 1
                    continue
            _put(b, u.kind, k, c)
            k += 1
            i += 1
        return PyUnicode_FromKindAndData(u.kind, b, k)
    finally:
        free(a)
        free(b)


cdef inline bint _opens_tag(Py_UCS4 c) noexcept nogil:
    # what may follow a "<" that opens a tag (the twin's HTML_TAG_RE look-ahead): an ASCII letter, / ! ?
    return (65 <= c <= 90) or (97 <= c <= 122) or c == 47 or c == 33 or c == 63


cdef inline bint _is_blank(Py_UCS4 c) noexcept nogil:
    # horizontal blanks: space, tab, CR, form feed, vertical tab, no-break space (the twin's LINE_BLANKS)
    return c == 32 or c == 9 or c == 13 or c == 12 or c == 11 or c == 0xA0


def collapse_blanks(str text):
    """Every run of horizontal blanks becomes one space (see the twin)."""
    cdef UStr u = _ustr(text)
    cdef Py_ssize_t n = u.n, i, k = 0
    cdef Py_UCS4 c
    cdef bint change = False, prev = False
    cdef void* b
    for i in range(n):
        c = _at(&u, i)
        if _is_blank(c):
            if prev or c != 32:
                change = True
                break
            prev = True
        else:
            prev = False
    if not change:
        return text
    b = malloc(n * u.kind + 1)
    if b == NULL:
        raise MemoryError()
    try:
        prev = False
        for i in range(n):
            c = _at(&u, i)
            if _is_blank(c):
                if not prev:
                    _put(b, u.kind, k, 32)
                    k += 1
                prev = True
            else:
                _put(b, u.kind, k, c)
                k += 1
                prev = False
        return PyUnicode_FromKindAndData(u.kind, b, k)
    finally:
        free(b)


cdef Py_ssize_t _paragraph_lines_1(const unsigned char* s, Py_ssize_t n, unsigned char* out) noexcept nogil:
    # paragraph_lines over one-byte storage: the same steps on plain bytes; returns the length written
    cdef Py_ssize_t i = 0, j, e, ps = 0, pe, k = 0, q
    cdef unsigned char c
    while i < n:
        if s[i] != 10:
            i += 1
            continue
        j = i + 1
        while j < n and _is_blank(s[j]):
            j += 1
        if j >= n or s[j] != 10:
            i += 1
            continue
        pe = i
        while pe > ps and _is_blank(s[pe - 1]):
            pe -= 1
        for q in range(ps, pe):
            c = s[q]
            out[k] = 32 if c == 10 else c
            k += 1
        out[k] = 10
        k += 1
        e = j + 1
        while e < n and Py_UNICODE_ISSPACE(s[e]):
            e += 1
        ps = e
        i = e
    for q in range(ps, n):
        c = s[q]
        out[k] = 32 if c == 10 else c
        k += 1
    return k


def paragraph_lines(str text):
    """One paragraph per line (see the twin).

    A break is a line end whose following blanks-only line ends prove an empty line
    (the first non-blank after it is a line end); it then swallows the whole run of
    white space that follows, as the twin's ``\\s*`` does.
    """
    cdef UStr u = _ustr(text)
    cdef Py_ssize_t n = u.n, i = 0, j, e, ps = 0, pe, k = 0, q
    cdef Py_UCS4 c
    cdef void* b
    if n == 0 or text.find("\n") < 0:
        return text
    b = malloc(n * u.kind)
    if b == NULL:
        raise MemoryError()
    if u.kind == 1:
        try:
            k = _paragraph_lines_1(<const unsigned char*>u.data, n, <unsigned char*>b)
            return PyUnicode_FromKindAndData(1, b, k)
        finally:
            free(b)
    try:
        while i < n:
            if _at(&u, i) != 10:
                i += 1
                continue
            j = i + 1
            while j < n and _is_blank(_at(&u, j)):
                j += 1
            if j >= n or _at(&u, j) != 10:
                i += 1
                continue
            # a break from i: the paragraph text[ps:i], blanks at its end dropped
            pe = i
            while pe > ps and _is_blank(_at(&u, pe - 1)):
                pe -= 1
            for q in range(ps, pe):
                c = _at(&u, q)
                _put(b, u.kind, k, 32 if c == 10 else c)
                k += 1
            _put(b, u.kind, k, 10)
            k += 1
            e = j + 1
            while e < n and Py_UNICODE_ISSPACE(_at(&u, e)):
                e += 1
            ps = e
            i = e
        for q in range(ps, n):  # the last paragraph, kept as it is but for its line breaks
            c = _at(&u, q)
            _put(b, u.kind, k, 32 if c == 10 else c)
            k += 1
        return PyUnicode_FromKindAndData(u.kind, b, k)
    finally:
        free(b)


# ---- text URL kernel -------------------------------------------------------------------------
# Links in plain text; the definition is the twin's ``text_urls``, followed step by step.  Its
# regex, ``URL_TAIL_RE``, has one way to match at a position: the bracketed part is taken when it
# is there (its run of hex digits, colons and dots cannot hold the ``]``), and the run after it
# is every character that is not white space or excluded.

cdef extern from "Python.h":
    bint Py_UNICODE_ISALPHA(Py_UCS4 ch) noexcept nogil

cdef inline bint _url_char(Py_UCS4 c) noexcept nogil:
    # [^\s<>"'{}|\\^`\[\]]
    if c < 128:
        return not (c <= 32 and Py_UNICODE_ISSPACE(c)) and c != 60 and c != 62 and c != 34 and c != 39 \
            and c != 123 and c != 125 and c != 124 and c != 92 and c != 94 and c != 96 and c != 91 and c != 93
    return not Py_UNICODE_ISSPACE(c)

cdef inline bint _ip_literal_char(Py_UCS4 c) noexcept nogil:
    # [0-9A-Fa-f:.]
    return (48 <= c <= 58) or (65 <= c <= 70) or (97 <= c <= 102) or c == 46

cdef Py_ssize_t _url_tail(const UStr* u, Py_ssize_t p) noexcept nogil:
    """Where ``URL_TAIL_RE`` matched at ``p`` ends, or -1."""
    cdef Py_ssize_t k, e, n = u.n
    if p < n and _at(u, p) == 91:  # [ : the IPv6 literal, else no match ([ is excluded from the run)
        k = p + 1
        while k < n and _ip_literal_char(_at(u, k)):
            k += 1
        if k == p + 1 or k >= n or _at(u, k) != 93:
            return -1
        p = k + 1
    e = p
    while e < n and _url_char(_at(u, e)):
        e += 1
    return e if e > p else -1

cdef bint _url_scheme(const UStr* u, Py_ssize_t j, Py_ssize_t i) noexcept nogil:
    """``text[j:i].lower() in URL_SCHEMES``: only ASCII letters lower to these letters (the one other
    character whose lower case is ASCII, the Kelvin sign, gives k)."""
    cdef Py_ssize_t k
    cdef Py_UCS4 c
    cdef uint32_t w[5]
    if i - j < 3 or i - j > 5:
        return False
    for k in range(j, i):
        c = _at(u, k)
        if not _ascii_letter(c):
            return False
        w[k - j] = <uint32_t>c | 0x20  # lower case
    if i - j == 3:
        return w[0] == 102 and w[1] == 116 and w[2] == 112  # ftp
    if not (w[0] == 104 and w[1] == 116 and w[2] == 116 and w[3] == 112):  # http
        return False
    return i - j == 4 or w[4] == 115  # https


def text_urls(str text):
    """URLs in plain text, in order (see the twin)."""
    cdef UStr u = _ustr(text)
    cdef Py_ssize_t i, j, m
    cdef Py_UCS4 c
    cdef list found = []
    i = text.find("://")
    while i >= 0:
        j = i
        while j > 0 and i - j < 5 and Py_UNICODE_ISALPHA(_at(&u, j - 1)):
            j -= 1
        if _url_scheme(&u, j, i):
            m = _url_tail(&u, i + 3)
            if m >= 0:
                found.append((j, text[j:m]))
                i = m
        i = text.find("://", i + 3)
    for anchor in _twin.WWW_SPELLINGS:
        i = text.find(anchor)
        while i >= 0:
            c = _at(&u, i - 1) if i else 32
            if c != 47 and c != 46 and not Py_UNICODE_ISALNUM(c):
                m = _url_tail(&u, i)
                if m >= 0:
                    found.append((i, text[i:m]))
            i = text.find(anchor, i + 4)
    found.sort()
    trailing = _twin.URL_TRAILING
    return [x.rstrip(trailing) for _, x in found]


# ---- header kernel ---------------------------------------------------------------------------
# The header block split into fields; the definition is the twin's regex, followed exactly.

cdef inline bint _is_field_name(Py_UCS4 c) noexcept nogil:
    # [!-9;-~]: printable ASCII but the colon
    return 33 <= c <= 126 and c != 58


def header_fields(str block):
    """``[(name, value)]`` of a header block with LF line ends (see the twin).

    Line by line, as the twin's ``^``-anchored pattern reads it: the name is the run of
    name characters at the line start (a shorter run would be followed by a name
    character, never by the blanks or colon the pattern needs next), the value starts
    after the colon's blanks and ends at the line's last non-white-space character.
    Unfolding (a line break before a space or tab removed) is done as the text is
    copied, in the block's own storage width.
    """
    cdef UStr u = _ustr(block)
    cdef Py_ssize_t n = u.n, i, j, k, e, ve, m = 0
    cdef Py_UCS4 c
    cdef list out = []
    cdef void* b
    cdef UStr v
    cdef str text
    if n == 0:
        return out
    # Unfold into a copy (when there is anything to unfold): drop each "\n" followed by " " or "\t".
    if "\n " in block or "\n\t" in block:
        b = malloc(n * u.kind)
        if b == NULL:
            raise MemoryError()
        try:
            if u.kind == 1:
                m = _unfold_1(<const unsigned char*>u.data, n, <unsigned char*>b)
            else:
                for i in range(n):
                    c = _at(&u, i)
                    if c == 10 and i + 1 < n and (_at(&u, i + 1) == 32 or _at(&u, i + 1) == 9):
                        continue
                    _put(b, u.kind, m, c)
                    m += 1
            text = PyUnicode_FromKindAndData(u.kind, b, m)
        finally:
            free(b)
    else:
        text = block
    v = _ustr(text)
    n = v.n
    if v.kind == 1:
        return _fields_1(text, <const unsigned char*>v.data, n)
    i = 0
    while i < n:
        j = i
        while j < n and _is_field_name(_at(&v, j)):
            j += 1
        e = j
        if j > i:
            k = j
            while k < n and (_at(&v, k) == 32 or _at(&v, k) == 9):
                k += 1
            if k < n and _at(&v, k) == 58:  # :
                k += 1
                while k < n and (_at(&v, k) == 32 or _at(&v, k) == 9):
                    k += 1
                e = k
                while e < n and _at(&v, e) != 10:
                    e += 1
                ve = e
                while ve > k and Py_UNICODE_ISSPACE(_at(&v, ve - 1)):
                    ve -= 1
                out.append((text[i:j], text[k:ve]))
        while e < n and _at(&v, e) != 10:  # on to the next line
            e += 1
        i = e + 1
    return out


cdef Py_ssize_t _unfold_1(const unsigned char* s, Py_ssize_t n, unsigned char* out) noexcept nogil:
    # the unfolding copy over one-byte storage; returns the length written
    cdef Py_ssize_t i, m = 0
    for i in range(n):
        if s[i] == 10 and i + 1 < n and (s[i + 1] == 32 or s[i + 1] == 9):
            continue
        out[m] = s[i]
        m += 1
    return m


cdef list _fields_1(str text, const unsigned char* s, Py_ssize_t n):
    # header_fields over one-byte (Latin-1) storage: the same steps on plain bytes
    cdef Py_ssize_t i = 0, j, k, e, ve
    cdef list out = []
    while i < n:
        j = i
        while j < n and 33 <= s[j] <= 126 and s[j] != 58:
            j += 1
        e = j
        if j > i:
            k = j
            while k < n and (s[k] == 32 or s[k] == 9):
                k += 1
            if k < n and s[k] == 58:
                k += 1
                while k < n and (s[k] == 32 or s[k] == 9):
                    k += 1
                e = k
                while e < n and s[e] != 10:
                    e += 1
                ve = e
                while ve > k and Py_UNICODE_ISSPACE(s[ve - 1]):
                    ve -= 1
                out.append((text[i:j], text[k:ve]))
        while e < n and s[e] != 10:
            e += 1
        i = e + 1
    return out


# ---- date kernel -----------------------------------------------------------------------------
# The canonical RFC 5322 date; the definition is the twin's regex.  Read left to right without
# going back: every step of the regex is followed by something it cannot consume (digits by a
# blank, a blank run by a letter or digit), so its one way to match is this one.

cdef extern from "Python.h":
    bint Py_UNICODE_ISSPACE(Py_UCS4 ch) noexcept nogil

cdef inline bint _ascii_digit(Py_UCS4 c) noexcept nogil:
    return 48 <= c <= 57

cdef inline bint _ascii_letter(Py_UCS4 c) noexcept nogil:
    return (65 <= c <= 90) or (97 <= c <= 122)

cdef inline Py_ssize_t _blanks(const UStr* u, Py_ssize_t i) noexcept nogil:
    while i < u.n and Py_UNICODE_ISSPACE(_at(u, i)):
        i += 1
    return i

cdef inline int _two_digits(const UStr* u, Py_ssize_t i) noexcept nogil:
    """The number of two ASCII digits at ``i``, or -1."""
    if i + 1 < u.n and _ascii_digit(_at(u, i)) and _ascii_digit(_at(u, i + 1)):
        return (<int>_at(u, i) - 48) * 10 + (<int>_at(u, i + 1) - 48)
    return -1

def _letters_code(name):
    """The letters of a month or zone name as one number, a byte each (as the kernel reads them)."""
    code = 0
    for ch in name:
        code = (code << 8) | ord(ch)
    return code

# The month names (the twin's MONTH_NUMBER, in order) and the zone names parsedate_tz knows (its
# NAMED_ZONES) as codes of their letters, and the zones' offsets
if len(_twin.MONTH_NUMBER) != 12 or len(_twin.NAMED_ZONES) != 14:
    raise ImportError("the date kernel's tables no longer fit the twin's")
cdef uint32_t MONTH_CODES[12]
for _c, _name in enumerate(_twin.MONTH_NUMBER):
    MONTH_CODES[_c] = _letters_code(_name)
cdef uint32_t ZONE_CODES[14]
cdef int ZONE_OFFSETS[14]
for _c, (_name, _off) in enumerate(_twin.NAMED_ZONES.items()):
    ZONE_CODES[_c], ZONE_OFFSETS[_c] = _letters_code(_name), _off


def canonical_date(str value):
    """The canonical date at the start of ``value`` as ``parsedate_tz`` returns it, or None (see the twin)."""
    cdef UStr u = _ustr(value)
    cdef Py_ssize_t i, j
    cdef int dd, mon = 0, yy, hh, mi, ss, zh, zm, off, k
    cdef Py_UCS4 a, b, c
    cdef uint32_t code
    i = _blanks(&u, 0)
    # the day name and its comma, with the blanks after them
    if i + 3 < u.n and _ascii_letter(_at(&u, i)) and _ascii_letter(_at(&u, i + 1)) and \
            _ascii_letter(_at(&u, i + 2)) and _at(&u, i + 3) == 44:
        i = _blanks(&u, i + 4)
    # the day: one or two digits, then blanks
    j = i
    dd = 0
    while j < u.n and _ascii_digit(_at(&u, j)):
        dd = dd * 10 + (<int>_at(&u, j) - 48)
        j += 1
        if j - i > 2:
            return None
    if j == i or j >= u.n or not Py_UNICODE_ISSPACE(_at(&u, j)):
        return None
    i = _blanks(&u, j)
    # the month's name (case as written), then blanks
    if i + 3 >= u.n:
        return None
    a, b, c = _at(&u, i), _at(&u, i + 1), _at(&u, i + 2)
    if a > 127 or b > 127 or c > 127:
        return None
    code = (<uint32_t>a << 16) | (<uint32_t>b << 8) | <uint32_t>c
    for k in range(12):
        if MONTH_CODES[k] == code:
            mon = k + 1
            break
    if mon == 0 or not Py_UNICODE_ISSPACE(_at(&u, i + 3)):
        return None
    i = _blanks(&u, i + 3)
    # the year: 1 or 2, then three digits, then blanks
    if i + 4 >= u.n or not (_at(&u, i) == 49 or _at(&u, i) == 50):
        return None
    yy = _two_digits(&u, i)
    k = _two_digits(&u, i + 2)
    if yy < 0 or k < 0 or not Py_UNICODE_ISSPACE(_at(&u, i + 4)):
        return None
    yy = yy * 100 + k
    i = _blanks(&u, i + 4)
    # the time, hh:mm:ss, then blanks
    if i + 8 >= u.n or _at(&u, i + 2) != 58 or _at(&u, i + 5) != 58:
        return None
    hh, mi, ss = _two_digits(&u, i), _two_digits(&u, i + 3), _two_digits(&u, i + 6)
    if hh < 0 or mi < 0 or ss < 0 or not Py_UNICODE_ISSPACE(_at(&u, i + 8)):
        return None
    i = _blanks(&u, i + 8)
    # the zone: a name (one to three capitals), then a blank or the end
    if i < u.n and 65 <= _at(&u, i) <= 90:
        code = 0
        j = i
        while j < u.n and j - i < 4 and 65 <= _at(&u, j) <= 90:
            code = (code << 8) | <uint32_t>_at(&u, j)
            j += 1
        if j - i > 3 or (j < u.n and not Py_UNICODE_ISSPACE(_at(&u, j))):
            return None
        for k in range(14):
            if ZONE_CODES[k] == code:
                return (yy, mon, dd, hh, mi, ss, 0, 1, -1, ZONE_OFFSETS[k])
        return None
    # or +hhmm or -hhmm, then a blank or the end
    if i + 4 >= u.n or not (_at(&u, i) == 43 or _at(&u, i) == 45):
        return None
    zh, zm = _two_digits(&u, i + 1), _two_digits(&u, i + 3)
    if zh < 0 or zm < 0 or (i + 5 < u.n and not Py_UNICODE_ISSPACE(_at(&u, i + 5))):
        return None
    off = zh * 3600 + zm * 60
    return (yy, mon, dd, hh, mi, ss, 0, 1, -1, -off if _at(&u, i) == 45 else off)


# ---- received kernel -------------------------------------------------------------------------
# One Received header's relay facts; the definition is the twin's regexes.  ASCII text only (the
# rest, rare, goes to the twin): there ``\s`` is Py_UNICODE_ISSPACE, ``\d`` the ASCII digits,
# ``\b`` a change between [A-Za-z0-9_] and the rest, and IGNORECASE plain ASCII case.  Each regex
# has one way to match at a given start, read left to right (each repeat is followed by a byte it
# cannot consume), so a scan from each start is the regex's search.

cdef inline unsigned char _lc(unsigned char c) noexcept nogil:
    return c + 32 if 65 <= c <= 90 else c

cdef inline bint _is_sp(unsigned char c) noexcept nogil:
    return Py_UNICODE_ISSPACE(c)

cdef inline bint _is_alnum(unsigned char c) noexcept nogil:
    return _ascii_digit(c) or _ascii_letter(c)

cdef inline bint _is_wc(unsigned char c) noexcept nogil:
    return _is_alnum(c) or c == 95

cdef inline bint _is_hex(unsigned char c) noexcept nogil:
    return _ascii_digit(c) or (65 <= c <= 70) or (97 <= c <= 102)

cdef inline bint _ci_at(const unsigned char* s, Py_ssize_t n, Py_ssize_t i, const char* lit) noexcept nogil:
    """``s[i:]`` starts with the lower-case ASCII ``lit``, ignoring case."""
    cdef Py_ssize_t j = 0
    while lit[j] != 0:
        if i + j >= n or _lc(s[i + j]) != <unsigned char>lit[j]:
            return False
        j += 1
    return True

cdef inline Py_ssize_t _dotted_quad(const unsigned char* s, Py_ssize_t i, Py_ssize_t end) noexcept nogil:
    """End of ``(?:\\d{1,3}\\.){3}\\d{1,3}`` matched at ``i`` (digit runs read whole), or -1."""
    cdef Py_ssize_t j, g
    for g in range(4):
        j = i
        while i < end and _ascii_digit(s[i]):
            i += 1
        if i == j or i - j > 3:
            return -1
        if g < 3:
            if i >= end or s[i] != 46:
                return -1
            i += 1
    return i

cdef inline Py_ssize_t _ip_at(const unsigned char* s, Py_ssize_t q, Py_ssize_t end) noexcept nogil:
    """End of the address group of RCVD_IP_RE starting at ``q`` (its closing bracket follows), or -1."""
    cdef Py_ssize_t i = _dotted_quad(s, q, end)
    if i >= 0 and i < end and (s[i] == 93 or s[i] == 41):
        return i
    i = q
    while i < end and _is_hex(s[i]):
        i += 1
    if i >= end or s[i] != 58:
        return -1
    i += 1
    q = i
    while i < end and (_is_hex(s[i]) or s[i] == 58 or s[i] == 46):
        i += 1
    if i > q and i < end and (s[i] == 93 or s[i] == 41):
        return i
    return -1


def received_fields(str head):
    """``(ip, rdns, helo, by)`` of a Received header's text before its ``;`` (see the twin)."""
    if not head.isascii():
        return _twin.received_fields(head)
    cdef const unsigned char* s = <const unsigned char*>PyUnicode_DATA(head)
    cdef Py_ssize_t n = len(head), i, j, k, p, q, e, d, end, by_start = -1
    helo = ip = rdns = by = None
    # helo: ^\s*from\s+(\S+)
    i = 0
    while i < n and _is_sp(s[i]):
        i += 1
    if _ci_at(s, n, i, b"from") and i + 4 < n and _is_sp(s[i + 4]):
        j = i + 4
        while j < n and _is_sp(s[j]):
            j += 1
        k = j
        while k < n and not _is_sp(s[k]):
            k += 1
        if k > j:
            helo = head[j:k].strip("[]()")
    # \(HELO\s+([^\s)]+)\)|helo=([^\s)]+), searched only when the text has "elo" or "ELO"
    if "elo" in head or "ELO" in head:
        for p in range(n):
            if s[p] == 40 and _ci_at(s, n, p + 1, b"helo") and p + 5 < n and _is_sp(s[p + 5]):
                q = p + 5
                while q < n and _is_sp(s[q]):
                    q += 1
                e = q
                while e < n and not _is_sp(s[e]) and s[e] != 41:
                    e += 1
                if e > q and e < n and s[e] == 41:
                    helo = head[q:e]
                    break
            if _ci_at(s, n, p, b"helo="):
                q = p + 5
                e = q
                while e < n and not _is_sp(s[e]) and s[e] != 41:
                    e += 1
                if e > q:
                    helo = head[q:e]
                    break
    # by: \bby\s+([^\s;()]+), at the first " by " if it matches there, else searched from it
    i = head.find(" by ")
    for p in range(i + 1 if i >= 0 else 0, n):
        if (p == 0 or not _is_wc(s[p - 1])) and _ci_at(s, n, p, b"by") and p + 2 < n and _is_sp(s[p + 2]):
            q = p + 2
            while q < n and _is_sp(s[q]):
                q += 1
            e = q
            while e < n and not _is_sp(s[e]) and s[e] != 59 and s[e] != 40 and s[e] != 41:
                e += 1
            if e > q:
                by_start = p
                by = head[q:e].lower()
                break
    end = by_start if by_start >= 0 else n
    # ip: [\[(](?:IPv6:)?(dotted quad | IPv6)[\])] before the by clause
    for p in range(end):
        if s[p] == 91 or s[p] == 40:
            q = p + 1
            if q + 5 <= end and s[q] == 73 and s[q + 1] == 80 and s[q + 2] == 118 and s[q + 3] == 54 and s[q + 4] == 58:
                q += 5
            e = _ip_at(s, q, end)
            if e >= 0:
                ip = head[q:e]
                break
    if ip is None and helo:
        h = <str>helo
        if h.isascii() and _dotted_quad(<const unsigned char*>PyUnicode_DATA(h), 0, len(h)) == len(h):
            ip = helo
    # rdns: \(([A-Za-z0-9][-A-Za-z0-9.]*\.[A-Za-z]{2,})\s*\[ before the by clause: the name is the
    # whole run of name bytes after "(", its part after the last dot two letters or more
    for p in range(end):
        if s[p] != 40 or p + 1 >= end or not _is_alnum(s[p + 1]):
            continue
        q = p + 1
        e = q + 1
        d = -1
        while e < end and (_is_alnum(s[e]) or s[e] == 45 or s[e] == 46):
            if s[e] == 46:
                d = e
            e += 1
        if d < 0 or e - d - 1 < 2:
            continue
        k = d + 1
        while k < e and _ascii_letter(s[k]):
            k += 1
        if k < e:
            continue
        k = e
        while k < end and _is_sp(s[k]):
            k += 1
        if k < end and s[k] == 91:
            rdns = head[q:e].lower()
            break
    return ip, rdns, helo, by


# ---- bytes kernel ----------------------------------------------------------------------------
# A check on raw message bytes for the SMTP filter; the definition is the twin's three counts.

def crlf_only(const unsigned char[:] data):
    """Every line end is CRLF: each LF follows a CR and each CR precedes an LF (see the twin).

    Every LF is checked for its CR; then, each LF having its own CR, there is no other CR
    exactly when the CRs number as many as the LFs.
    """
    cdef Py_ssize_t n = data.shape[0], lf = 0, cr = 0, i
    cdef const unsigned char* s
    cdef const unsigned char* p
    cdef const unsigned char* end
    if n == 0:
        return True
    s = &data[0]
    end = s + n
    p = s
    while True:
        p = <const unsigned char*>memchr(p, 10, end - p)
        if p == NULL:
            break
        if p == s or p[-1] != 13:
            return False
        lf += 1
        p += 1
    p = s
    while True:
        p = <const unsigned char*>memchr(p, 13, end - p)
        if p == NULL:
            break
        cr += 1
        p += 1
    return cr == lf
