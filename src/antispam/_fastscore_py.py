"""Pure-Python twin of ``_fastscore.pyx``: the same functions, bit-identical results.

Used when the compiled module is missing or ``ANTISPAM_NO_EXTENSIONS=1``.
Every function here must give exactly what its compiled twin gives, for every
input; ``tests/test_fastscore_parity.py`` checks them side by side.  This file
is also the specification of the kernels:

Words
    A *word* is a maximal run of word characters: code points for which
    ``str.isalnum()`` is true, plus ``_ $ ' . -``.  Leading and trailing
    ``_ ' . -`` are trimmed (so ``e-mail`` and ``example.com`` stay whole but
    ``end.`` loses its dot).  Words shorter than 2 code points are dropped;
    words longer than 20 become ``skip:<first char>:<length // 10, max 9>``
    (SpamBayes' idea: a very long run is evidence as a shape, not as a word).
    Callers case-fold before calling (``str.lower()``), so both kernels see
    the same code points.

Tokens
    Subject words are namespaced ``subject:<word>``; body words are bare.  With
    ``bigrams``, each body word also makes ``bi:<previous> <word>`` with the
    previous kept body word (dropped short words are ignored; a ``skip:``
    token breaks the chain).  ``meta`` strings (header, URL, MIME evidence,
    already namespaced by the tokenizer) are tokens as they are.

Hash
    A token's id is 64-bit FNV-1a over its UTF-8 bytes (lone surrogates
    encoded as by ``'surrogatepass'``), started from ``FNV64_OFFSET ^ seed``,
    then xor-folded and masked to ``bits`` bits:
    ``id = (h ^ (h >> 32)) & (2**bits - 1)``.  The fold mixes the
    well-avalanched high half into the low bits that the mask keeps.
    FNV-1a is tiny, table-free and the same in every language; the seed and
    ``bits`` are stored in each model's metadata.

Score
    ``total = bias``, then ``total += float(weights[id])`` for each id in the
    given order, in IEEE double (float32 weights widen exactly).  The clues
    are the nonzero contributions ordered by larger ``|weight|`` first, then
    smaller id, cut to ``nclues``.
"""

from __future__ import annotations

import re

import numpy as np

FNV64_OFFSET = 0xCBF29CE484222325
FNV64_PRIME = 0x100000001B3
MASK64 = 0xFFFFFFFFFFFFFFFF

MIN_WORD = 2
MAX_WORD = 20
MAX_CLUES = 64

# re's \w in a str pattern is exactly str.isalnum() or "_", the compiled kernel's class.
_WORD_RE = re.compile(r"[\w$'.\-]+")
_TRIM = "_'.-"


def hash_bytes(data: bytes, seed: int) -> int:
    """64-bit FNV-1a of ``data``, started from ``FNV64_OFFSET ^ seed``."""
    h = (FNV64_OFFSET ^ seed) & MASK64
    for b in data:
        h = ((h ^ b) * FNV64_PRIME) & MASK64
    return h


def feature_id(token: str, seed: int, bits: int) -> int:
    """The feature id of one whole token string."""
    h = hash_bytes(token.encode("utf-8", "surrogatepass"), seed)
    return (h ^ (h >> 32)) & ((1 << bits) - 1)


def _word_tokens(s: str, prefix: str, bigrams: bool) -> list[str]:
    out: list[str] = []
    prev: str | None = None
    for m in _WORD_RE.finditer(s):
        w = m.group().strip(_TRIM)
        n = len(w)
        if n < MIN_WORD:
            continue
        if n > MAX_WORD:
            out.append(f"{prefix}skip:{w[0]}:{min(n // 10, 9)}")
            prev = None
            continue
        out.append(prefix + w)
        if bigrams:
            if prev is not None:
                out.append(f"bi:{prev} {w}")
            prev = w
    return out


def tokens(subject: str, text: str, meta: list[str], bigrams: bool) -> list[str]:
    """Every token string of a message's views, in order, with repeats (for vocabularies and tests)."""
    return _word_tokens(subject, "subject:", False) + _word_tokens(text, "", bigrams) + list(meta)


def features(subject: str, text: str, meta: list, seed: int, bits: int, bigrams: bool) -> np.ndarray:
    """Sorted distinct feature ids (uint32 array) of one message's views."""
    if bits < 1 or bits > 31:
        raise ValueError("bits must be in 1..31")
    for item in meta:
        if not isinstance(item, str):
            raise TypeError(f"Expected str, got {type(item).__name__}")
    ids = {feature_id(t, seed, bits) for t in tokens(subject, text, meta, bigrams)}
    return np.array(sorted(ids), dtype=np.uint32)


def score(ids, weights, bias: float, nclues: int) -> tuple[float, list[tuple[int, float]]]:
    """``bias + sum(weights[ids])`` accumulated in float64 in the order of ``ids``, and the
    ``nclues`` strongest nonzero contributions as ``[(id, weight)]``."""
    if nclues < 0 or nclues > MAX_CLUES:
        raise ValueError(f"nclues must be in 0..{MAX_CLUES}")
    idl = [int(i) for i in ids]
    nw = len(weights)
    for fid in idl:
        if fid >= nw:
            raise ValueError(f"feature id {fid} outside the model ({nw} features)")
    contribs = np.asarray(weights, dtype=np.float32)[np.asarray(idl, dtype=np.int64)].tolist() if idl else []
    total = float(bias)
    for c in contribs:
        total += c
    clues: list[tuple[int, float]] = []
    if nclues:
        nz = [(i, c) for i, c in zip(idl, contribs) if c != 0.0]
        nz.sort(key=lambda t: (-abs(t[1]), t[0]))
        clues = nz[:nclues]
    return total, clues


# ---- rules kernels ------------------------------------------------------------------------
# Counting helpers of the rule evals (``antispam.ruleset.evals``).

#: Latin-1 code point -> U (a capital), l (another letter), space (not a letter); every capital is a letter
_LETTER_CLASS = bytes(ord("U") if chr(b).isupper() else ord("l") if chr(b).isalpha() else ord(" ") for b in range(256))
#: what ``visible_count`` does not count
BLANKS = " \n\t\r\xa0"


def letter_counts(text: str, limit: int) -> tuple[int, int]:
    """(letters, capitals) among the first ``limit`` characters of ``text``, Latin-1 letters only.

    Characters outside Latin-1 are skipped (not counted as letters): capitals
    are rare in the other scripts' spam anyway, and the Latin-1 table is what
    every implementation can agree on exactly.
    """
    if limit < 0:
        raise ValueError("limit must be >= 0")
    c = text[:limit].encode("latin-1", "ignore").translate(_LETTER_CLASS)
    upper = c.count(b"U")
    return upper + c.count(b"l"), upper


def visible_count(text: str) -> int:
    """Characters of ``text`` that are not blanks (space, newline, tab, carriage return, no-break space)."""
    return len(text) - sum(text.count(c) for c in BLANKS)


# ---- text kernels ----------------------------------------------------------------------------
# Steps of the HTML-to-text rendering of ``antispam.message`` (the definitions are these regexes).

#: block-level tags, which become line breaks
HTML_BREAK_RE = re.compile(r"<(?:br|p|div|tr|li|h\d|table|blockquote)\b[^>]*>", re.I)
#: any tag: from a ``<`` that opens one to the next ``>``.  A ``<`` opens a tag, an end tag, a comment
#: or a declaration only before a letter, ``/``, ``!`` or ``?`` (WHATWG HTML, the tokenizer's tag open
#: state); any other is text that a browser shows (``Pills for < $5 each``), not a tag eating the words
#: up to the next ``>``
HTML_TAG_RE = re.compile(r"<(?=[A-Za-z/!?])[^>]*>")
#: runs of horizontal blanks (matching runs of two or more, or one blank that is not a space,
#: leaves single spaces alone: the same text with far fewer replacements)
BLANK_RUN_RE = re.compile(r"[ \t\r\f\v\xa0]{2,}|[\t\r\f\v\xa0]")


def html_strip_tags(markup: str) -> str:
    """Block-level tags become ``\\n``, then every other tag is removed."""
    return sub_tags(HTML_TAG_RE, "", sub_tags(HTML_BREAK_RE, "\n", markup))


def sub_tags(pattern: re.Pattern[str], repl: str, text: str) -> str:
    """``pattern.sub(repl, text)`` for a ``pattern`` of tags that end at a ``>`` (``<...[^>]*>``), in linear time.

    No such tag begins after the last ``>``, but ``re`` tries each ``<`` there and reads on to the end
    looking for one: the square of the length for a run of ``<`` without ``>`` (minutes for 100 KB).
    """
    end = text.rfind(">") + 1
    if text.find("<", end) < 0:
        return pattern.sub(repl, text)
    return pattern.sub(repl, text[:end]) + text[end:]


def collapse_blanks(text: str) -> str:
    """Every run of horizontal blanks (space, tab, CR, form feed, vertical tab, no-break space) becomes one space."""
    return BLANK_RUN_RE.sub(" ", text)


#: a paragraph break: a line end, blank lines (horizontal blanks only), then any white space
PARA_BREAK_RE = re.compile(r"\n(?:[ \t\r\f\v\xa0]*\n)+\s*")
#: what is stripped from the end of each paragraph but the last
LINE_BLANKS = " \t\r\f\v\xa0"


def paragraph_lines(text: str) -> str:
    """One paragraph per line: paragraph breaks become one ``\\n``, line breaks inside a paragraph a space,
    blanks at the end of each paragraph but the last are dropped."""
    paras = PARA_BREAK_RE.split(text)
    if len(paras) > 1:
        last = paras.pop()
        paras = [p.rstrip(LINE_BLANKS) for p in paras]
        paras.append(last)
    return "\n".join(p.replace("\n", " ") for p in paras)


# ---- text URL kernel -------------------------------------------------------------------------
# Links in plain text for ``antispam.message.Message.urls`` (the definition is ``text_urls``).

#: what follows a scheme's ``://``, or a bare ``www.`` host: an optional bracketed IPv6 literal,
#: then everything up to white space or a character that cannot stand in a URL
URL_TAIL_RE = re.compile(r"""(?:\[[0-9A-Fa-f:.]+\])?[^\s<>"'{}|\\^`\[\]]+""")
URL_SCHEMES = ("http", "https", "ftp")
#: bare hosts are found in these three spellings only
WWW_SPELLINGS = ("www.", "WWW.", "Www.")
#: punctuation that ends a sentence rather than the URL before it
URL_TRAILING = ".,;:!?)>'\""


def text_urls(text: str) -> list[str]:
    """URLs in plain text: ``scheme://...`` for http(s)/ftp, and bare ``www.`` hosts, in order.

    Found from the literal anchors (``://``, ``www.``) with ``str.find``, far faster than trying
    a regex at every position; the scheme is the up to five letters before ``://``, and a bare
    host must not follow ``/``, ``.`` or a letter or digit.
    """
    found: list[tuple[int, str]] = []
    i = text.find("://")
    while i >= 0:
        j = i
        while j > 0 and i - j < 5 and text[j - 1].isalpha():
            j -= 1
        if text[j:i].lower() in URL_SCHEMES:
            m = URL_TAIL_RE.match(text, i + 3)
            if m:
                found.append((j, text[j : m.end()]))
                i = m.end()
        i = text.find("://", i + 3)
    for anchor in WWW_SPELLINGS:
        i = text.find(anchor)
        while i >= 0:
            prev = text[i - 1] if i else " "
            if prev != "/" and prev != "." and not prev.isalnum():
                m = URL_TAIL_RE.match(text, i)
                if m:
                    found.append((i, m.group(0)))
            i = text.find(anchor, i + 4)
    found.sort()
    return [u.rstrip(URL_TRAILING) for _, u in found]


# ---- header kernel ---------------------------------------------------------------------------
# The header block of ``antispam.message``, split into fields (the definition is this regex).

#: one field per line of the unfolded block: a name of printable ASCII but ``:``, the colon (blanks
#: around it allowed), and the value up to its last non-white-space character on the line
HEADER_FIELD_RE = re.compile(r"^([!-9;-~]+)[ \t]*:[ \t]*(.*\S|)", re.M)


def header_fields(block: str) -> list[tuple[str, str]]:
    """``[(name, value)]`` of a header block with LF line ends, in order.

    Unfolded first: a line break followed by a space or tab is removed, so every field
    is one line.  Lines that are not ``name: value`` are skipped.
    """
    if "\n " in block or "\n\t" in block:
        block = block.replace("\n ", " ").replace("\n\t", "\t")
    return HEADER_FIELD_RE.findall(block)


# ---- date kernel -----------------------------------------------------------------------------
# The canonical RFC 5322 date of ``antispam.ruleset.evals.parse_date``'s fast path (the definition
# is this regex and the tuple built from its groups).

MONTH_NUMBER = {m: i for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct",
                                             "Nov", "Dec"), 1)}
#: The zone names ``parsedate_tz`` knows, written in capitals, and their offsets in seconds
NAMED_ZONES = {"UT": 0, "UTC": 0, "GMT": 0, "Z": 0, "AST": -4 * 3600, "ADT": -3 * 3600, "EST": -5 * 3600,
               "EDT": -4 * 3600, "CST": -6 * 3600, "CDT": -5 * 3600, "MST": -7 * 3600, "MDT": -6 * 3600,
               "PST": -8 * 3600, "PDT": -7 * 3600}
#: ``Wed, 25 Nov 2026 11:33:33 +0100 (CET)``: optional day name, day, month name, year, time, numeric zone
#: or a zone name of NAMED_ZONES (``Mon, 9 Sep 2002 12:06:48 EDT``)
CANONICAL_DATE_RE = re.compile(r"\s*(?:[A-Za-z]{3},\s*)?([0-9]{1,2})\s+(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
                               r"\s+([12][0-9]{3})\s+([0-9]{2}):([0-9]{2}):([0-9]{2})\s+"
                               r"(?:([+-])([0-9]{2})([0-9]{2})|(" + "|".join(NAMED_ZONES) + r"))(?:\s|$)")


def canonical_date(value: str) -> tuple[int, ...] | None:
    """The date at the start of ``value`` in the canonical form, as ``email.utils.parsedate_tz``
    returns it (year, month, day, hour, minute, second, 0, 1, -1, zone offset in seconds), or
    None when ``value`` does not start with that form (``\\s`` is Unicode white space)."""
    m = CANONICAL_DATE_RE.match(value)
    if m is None:
        return None
    dd, mon, yy, hh, mi, ss, sign, zh, zm, name = m.groups()
    off = NAMED_ZONES[name] if name else int(zh) * 3600 + int(zm) * 60
    return (int(yy), MONTH_NUMBER[mon], int(dd), int(hh), int(mi), int(ss), 0, 1, -1, -off if sign == "-" else off)


# ---- received kernel -------------------------------------------------------------------------
# The relay facts of one Received header for ``antispam.message.Message.received`` (the definition
# is these regexes and the steps of ``received_fields``).

RCVD_FROM_RE = re.compile(r"^\s*from\s+(\S+)", re.I)
RCVD_BY_RE = re.compile(r"\bby\s+([^\s;()]+)", re.I)
RCVD_IP_RE = re.compile(r"[\[(](?:IPv6:)?((?:\d{1,3}\.){3}\d{1,3}|[0-9a-fA-F]*:[0-9a-fA-F:.]+)[\])]")
RCVD_RDNS_RE = re.compile(r"\(([A-Za-z0-9][-A-Za-z0-9.]*\.[A-Za-z]{2,})\s*\[")
RCVD_HELO_RE = re.compile(r"\(HELO\s+([^\s)]+)\)|helo=([^\s)]+)", re.I)
IPV4_RE = re.compile(r"(?:\d{1,3}\.){3}\d{1,3}")


def received_fields(head: str) -> tuple[str | None, str | None, str | None, str | None]:
    """``(ip, rdns, helo, by)`` of a Received header's text before its ``;``.

    helo: the word after ``from``, brackets stripped, unless a ``(HELO x)`` or ``helo=x`` clause
    names it (looked for only when the text has ``elo`` or ``ELO``).  by: the host after the first
    ``by``, lower-cased.  ip: the first bracketed IPv4 or IPv6 address before that ``by`` (else the
    HELO, when it is a dotted quad).  rdns: the first ``(name [`` before it, lower-cased.
    """
    m = RCVD_FROM_RE.match(head)
    helo = m.group(1).strip("[]()") if m else None
    if "elo" in head or "ELO" in head:
        hm = RCVD_HELO_RE.search(head)
        if hm:
            helo = hm.group(1) or hm.group(2)
    # Only look for the IP in the "from" clause, before " by ".  The usual lower-case " by " is
    # tried in place first; a search from there finds the same clause.
    i = head.find(" by ")
    by_m = RCVD_BY_RE.match(head, i + 1) if i >= 0 else None
    if by_m is None:
        by_m = RCVD_BY_RE.search(head, max(i, 0))
    end = by_m.start() if by_m else len(head)
    ip_m = RCVD_IP_RE.search(head, 0, end)
    ip = ip_m.group(1) if ip_m else None
    if ip is None and helo and IPV4_RE.fullmatch(helo):
        ip = helo
    rd = RCVD_RDNS_RE.search(head, 0, end) if head.find("[", 0, end) >= 0 else None
    return ip, rd.group(1).lower() if rd else None, helo, by_m.group(1).lower() if by_m else None


# ---- bytes kernel ----------------------------------------------------------------------------
# A check on raw message bytes for the SMTP filter (the definition is these three counts).


def crlf_only(data: bytes) -> bool:
    """Every line end is CRLF: each LF follows a CR and each CR precedes an LF."""
    return data.count(b"\n") == data.count(b"\r\n") == data.count(b"\r")
