"""The result of a scan, and its two wire shapes: rspamd's JSON and SpamAssassin's headers.

``to_dict()`` follows rspamd's ``/checkv2`` result so that tooling written for
rspamd reads ours.  ``headers()`` follows SpamAssassin's ``X-Spam-*`` headers so
that existing Sieve and procmail rules keep working unchanged.
"""

from __future__ import annotations

import base64
import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from . import __version__
from .frozen import quick_init

#: the required score the wire formats show when a profile enables no spam action (the policy's
#: ``required_score`` is then infinite): JSON has no infinity, and spamc reads ``inf`` as 0
NEVER_SPAM_SHOWN = 1_000_000.0


def shown_required(required: float) -> float:
    """``required`` as a wire format may carry it: finite (see :data:`NEVER_SPAM_SHOWN`)."""
    return required if math.isfinite(required) else NEVER_SPAM_SHOWN


def shown_score(score: float, required: float, is_spam: bool, digits: int = 1) -> str:
    """``score`` with ``digits`` decimals as a client comparing it with the required score must read it.

    Clients decide from the printed pair: Exim's spamd support takes ``score >= required`` as spam.
    A message that is not spam but scored 4.96 of 5 would print ``5.0 / 5.0`` and be taken for
    spam there, so, as SpamAssassin does when it prints scores, a ham whose rounded score reaches
    the rounded required score is shown one step below it (``4.9``).
    """
    text = f"{score:.{digits}f}"
    req = round(shown_required(required), digits)
    if is_spam or float(text) < req:
        return text
    return f"{req - 10.0 ** -digits:.{digits}f}"


@quick_init
@dataclass(frozen=True, slots=True)
class SymbolResult:
    """One symbol in a verdict: its final score (configured score x weight) and why it fired."""

    name: str
    score: float
    weight: float
    options: tuple[str, ...]
    description: str
    group: str

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "score": round(self.score, 3), "metric_score": round(self.score / self.weight, 3) if self.weight else 0.0}
        if self.options:
            # str() each: an option a custom check gave as bytes (or a number) must not make the verdict unwritable as JSON
            d["options"] = [o if type(o) is str else str(o) for o in self.options]
        if self.description:
            d["description"] = self.description
        return d


@quick_init
@dataclass(frozen=True, slots=True)
class Verdict:
    """What antispam decided about one message, and why.

    ``required_score`` is the score at which a message counts as spam (the
    lowest threshold of a spam action, normally ``add header``), the meaning
    SpamAssassin gives it.  ``thresholds`` has every enabled action.
    """

    score: float
    required_score: float
    action: str
    symbols: Mapping[str, SymbolResult]
    thresholds: Mapping[str, float]
    #: seconds spent per check, plus ``"total"``
    timings: Mapping[str, float] = field(default_factory=dict)
    #: limits hit while parsing (the parts of the message that were not scanned)
    skipped: tuple[str, ...] = ()
    message_id: str | None = None
    #: the rendered Authentication-Results value, when authentication ran
    authentication_results: str | None = None
    subject: str | None = None
    subject_prefix: str = "***SPAM*** "
    #: our authserv-id (RFC 8601): Authentication-Results claiming it that came with the
    #: message are forgeries, and the servers remove them before adding ours
    authserv_id: str = ""

    @property
    def is_spam(self) -> bool:
        """Whether the content scored as spam: the score reaches ``required_score``, the least
        threshold of a spam action (SpamAssassin's meaning of ``X-Spam-Flag``, spamd's ``Spam:``).

        Not the action: a check may force one that says nothing of the content (greylisting and
        rate limits defer with ``soft reject``), and a deferred ham is still ham: flagged spam it
        would be refused by an MTA rule on the flag, and counted as spam by the reputation
        history.  Without forcing, the two agree: the action is a spam action exactly when the
        score reaches ``required_score``."""
        return self.score >= self.required_score

    def has(self, symbol: str) -> bool:
        return symbol in self.symbols

    def top_symbols(self, n: int = 5) -> list[SymbolResult]:
        """The ``n`` symbols that moved the score most, largest absolute score first."""
        return sorted(self.symbols.values(), key=lambda s: (-abs(s.score), s.name))[:n]

    def headers(self) -> list[tuple[str, str]]:
        """Headers to add, SpamAssassin style, plus Authentication-Results when auth ran.

        ``X-Spam-Status: Yes, score=7.3 required=5.0 tests=A,B autolearn=no version=...``

        Each value is printable ASCII, folded with LF + tab where it is long: ready to write.
        Authentication-Results quotes what the message and the envelope said (DKIM tags, the
        From domain, MAIL FROM); a character there that a header of ours must not carry (a
        control character, a line break that is not our fold, anything outside ASCII) is
        written as ``?`` (:func:`header_safe`).  :attr:`authentication_results` keeps it as read.
        """
        flag = "YES" if self.is_spam else "NO"
        score = shown_score(self.score, self.required_score, self.is_spam)
        names = sorted(self.symbols) or ["none"]
        pieces = [("", f"{'Yes' if self.is_spam else 'No'}, score={score}"),
                  (" ", f"required={shown_required(self.required_score):.1f}"), (" ", "tests=" + names[0])]
        pieces += [(",", n) for n in names[1:]]
        # version= is the bare number, as SpamAssassin writes its own: the spamassassin scanner of
        # rspamd releases tested against SpamAssassin 3.4.2 takes the rule list from tests= up to
        # "autolearn=.*version=%d%.%d%.%d" and, when that does not match, the whole line
        pieces += [(" ", "autolearn=no"), (" ", f"version={__version__}")]
        status = _fold(len("X-Spam-Status: "), pieces)
        out = [
            ("X-Spam-Flag", flag),
            ("X-Spam-Score", score),
            ("X-Spam-Level", "*" * max(0, min(50, int(self.score)))),
            ("X-Spam-Status", status),
            ("X-Spam-Action", self.action),
        ]
        if self.authentication_results:
            out.append(("Authentication-Results", header_safe(self.authentication_results)))
        return out

    def rewritten_subject(self) -> str | None:
        """The new Subject when the action is ``rewrite subject``, else None: a header value, ready to write.

        :attr:`subject` is the Subject as decoded for the scan, which may hold anything an encoded
        word can say: written back as it is, a CR LF in it starts a header of the sender's choosing
        and 8-bit text goes out raw.  So control characters (line breaks, NUL...) become spaces, and
        text that is not ASCII is written as RFC 2047 encoded words, as rspamd's ``/checkv2`` gives
        its ``subject`` (:func:`header_text`).  The servers tag the Subject as sent instead.
        """
        if self.action != "rewrite subject":
            return None
        subj = self.subject or ""
        return header_text(subj if subj.startswith(self.subject_prefix) else self.subject_prefix + subj)

    def to_dict(self) -> dict[str, Any]:
        """rspamd ``/checkv2`` shape: score, required_score, action, symbols{NAME: {...}}."""
        d: dict[str, Any] = {
            "is_skipped": False,
            "score": float(shown_score(self.score, self.required_score, self.is_spam, 3)),
            "required_score": shown_required(self.required_score),
            "action": self.action,
            "thresholds": dict(self.thresholds),
            "symbols": {name: s.to_dict() for name, s in sorted(self.symbols.items())},
            "time_real": round(self.timings.get("total", 0.0), 6),
        }
        if self.message_id:
            d["message-id"] = self.message_id.strip("<>")
        if self.skipped:
            d["skipped"] = list(self.skipped)
        if self.action == "rewrite subject":
            d["subject"] = self.rewritten_subject()
        if self.authentication_results:
            d["milter"] = {"add_headers": {"Authentication-Results": {"value": header_safe(self.authentication_results),
                                                                      "order": 0}}}
        return d


#: what a header value of ours may not carry: anything but printable ASCII and tabs, and a line break
#: that is not one of our folds (LF, then a tab)
_HEADER_UNSAFE = re.compile(r"[^\t\n\x20-\x7e]|\n(?!\t)")


def header_safe(value: str) -> str:
    """``value`` with each character a header of ours must not carry written as ``?`` (see ``_HEADER_UNSAFE``)."""
    return _HEADER_UNSAFE.sub("?", value)


#: control characters (C0, DEL, C1) and the Unicode line and paragraph separators
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
#: the UTF-8 bytes of text one encoded word carries: 45 bytes are 60 base64 characters, and with
#: ``=?UTF-8?B?``...``?=`` a word of 72, within the 75 of RFC 2047 section 2
_WORD_BYTES = 45


def header_text(text: str) -> str:
    """``text`` as an unstructured header value (a Subject): one line, printable ASCII.

    Each run of control characters becomes one space.  When what is left is not ASCII, the
    words from the first one that is not are RFC 2047 encoded words (UTF-8, base64) separated
    by spaces, which readers do not show between two encoded words; the ASCII words before
    stay as they are (so a filter matching the ``***SPAM***`` prefix still finds it).
    """
    text = _CONTROLS.sub(" ", text)
    if text.isascii():
        return text
    first = next(i for i, c in enumerate(text) if not c.isascii())
    cut = text.rfind(" ", 0, first) + 1
    words: list[bytes] = []
    chunk = b""
    for c in text[cut:]:
        b = c.encode("utf-8", "replace")  # a lone surrogate (undecodable input) is written as "?"
        if len(chunk) + len(b) > _WORD_BYTES:
            words.append(chunk)
            chunk = b""
        chunk += b
    words.append(chunk)
    return text[:cut] + " ".join(f"=?UTF-8?B?{base64.b64encode(w).decode('ascii')}?=" for w in words)


def _fold(start: int, pieces: list[tuple[str, str]], width: int = 78) -> str:
    """Join ``(separator, text)`` pieces into a header value folded (LF + tab) before a piece that
    would pass ``width`` columns, the first line starting at column ``start``.

    RFC 5322 2.1.1: a line MUST stay within 998 characters and SHOULD within 78.  A verdict with
    many symbols (a large ruleset) makes a long X-Spam-Status; unfolded, it could pass 998 and be
    split by an MTA (Postfix breaks lines past ``line_length_limit``) where no fold belongs.  A
    ``,`` separator stays at the end of its line, as SpamAssassin folds its test list.
    """
    out: list[str] = []
    col = start
    for sep, text in pieces:
        if out and col + len(sep) + len(text) > width:
            keep = sep.strip()
            out.append(keep + "\n\t")
            col = 8 + len(text)
            out.append(text)
        else:
            out.append(sep + text)
            col += len(sep) + len(text)
    return "".join(out)


def freeze(mapping: dict[str, Any]) -> Mapping[str, Any]:
    """The mapping a Verdict holds.  A plain dict (not a read-only proxy) so that
    verdicts pickle across the process pool of ``Engine.scan_many``."""
    return mapping
