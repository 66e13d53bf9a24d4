"""The servers' message editing (``servers.common``) and the verdict's wire numbers.

Every server that hands a message back (SMTP filter, spamd PROCESS) adds our fields with
``rewrite_headers``; what it writes must stay in the header block the scan read, and a Subject
it tags must keep the sender's bytes as they were, never become a way to inject a header.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from antispam import Engine
from antispam.message import Message
from antispam.servers.common import rewrite_headers, split_headers
from antispam.verdict import NEVER_SPAM_SHOWN, shown_score

GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine()


@pytest.mark.parametrize("raw", [
    b"From: a@x.example\r\nTo: b@y.example\r\n\r\nbody\r\n",
    b"From: a@x.example\nTo: b@y.example\n\nbody\n",
    b"From: a@x.example\r\nTo: b@y.example\r\n\nbody\r\n\r\nmore\r\n",  # CRLF header, bare-LF blank line
    b"From: a@x.example\nTo: b@y.example\n\r\nbody\n\nmore\n",  # LF header, CRLF blank line
    b"\r\nFrom: a@x.example\r\n\r\nbody\r\n",  # no header block at all
    b"From: a@x.example\r\nTo: b@y.example\r\n",  # no blank line: all header
])
def test_split_headers_splits_where_the_scan_does(raw: bytes) -> None:
    head, body = split_headers(raw)
    msg = Message(raw)
    assert body == msg.body_bytes
    assert not head.endswith((b"\n", b"\r"))
    assert [n for n, _ in Message(head + b"\r\n\r\n").raw_headers] == [n for n, _ in msg.raw_headers]


@pytest.mark.parametrize("raw", [
    b"\r\nFrom: a@x.example\r\n\r\n" + GTUBE + b"\r\n",
    b"Subject: hi\r\nFrom: a@x.example\r\n\n" + GTUBE + b"\r\n",
    b"Subject: hi\nFrom: a@x.example\n\r\n" + GTUBE + b"\n",
    b"Subject: hi\r\nFrom: a@x.example\r\n",
])
def test_our_fields_land_in_the_header_block(engine: Engine, raw: bytes) -> None:
    v = engine.scan(raw)
    out = Message(rewrite_headers(raw, v))
    assert out.get("X-Spam-Flag") == ("YES" if v.is_spam else "NO")
    assert out.body_bytes.replace(b"\r\n", b"\n") == Message(raw).body_bytes.replace(b"\r\n", b"\n")


@pytest.mark.parametrize("raw", [
    GTUBE + b"\r\nsecond line\r\n",
    b"text from the first line\nsecond line\n",
    b" an indented first line\r\n",
])
def test_text_without_a_header_block_gets_our_fields_first(engine: Engine, raw: bytes) -> None:
    """A reader's header block ends at the first line that is no field: ours go before the text
    (and a blank line), Subject tag included, or they would be read as body."""
    import email

    eol = b"\r\n" if b"\r\n" in raw else b"\n"
    for out in (rewrite_headers(raw, engine.scan(raw)), _tagged(engine, raw)[0]):
        msg = email.message_from_bytes(out)
        assert msg["X-Spam-Flag"] and not msg.defects, out
        assert out.endswith(eol + eol + raw)
    assert msg["Subject"] == "***SPAM***"


def _tagged(engine: Engine, raw: bytes, prefix: str = "***SPAM*** ") -> tuple[bytes, Message]:
    v = replace(engine.scan(raw), action="rewrite subject", subject_prefix=prefix)
    out = rewrite_headers(raw, v)
    return out, Message(out)


def test_the_tag_goes_before_the_subject_as_sent(engine: Engine) -> None:
    raw = b"From: a@x.example\r\nSubject: =?iso-8859-1?q?caf=E9?=\r\n  and more\r\n\r\n" + GTUBE + b"\r\n"
    out, msg = _tagged(engine, raw)
    assert b"Subject: ***SPAM*** =?iso-8859-1?q?caf=E9?=\r\n  and more\r\n" in out
    assert msg.get_all("Subject") == ["***SPAM*** caf\u00e9  and more"]  # unfolding keeps the WSP
    assert out.split(b"\r\n\r\n", 1)[0].isascii()  # no 8-bit bytes written into the header


def test_an_encoded_line_break_in_the_subject_starts_no_header(engine: Engine) -> None:
    raw = (b"From: a@x.example\r\nSubject: =?utf-8?q?hi=0D=0AReply-To:_x@evil.test=0D=0A=0D=0A?=\r\n\r\n"
           + GTUBE + b"\r\n")
    out, msg = _tagged(engine, raw)
    names = [n.lower() for n, _ in msg.raw_headers]
    assert "reply-to" not in names
    assert msg.get("X-Spam-Flag") == "YES"  # still in the header block, not pushed into the body


def test_a_second_subject_is_dropped_and_a_missing_one_added(engine: Engine) -> None:
    _, msg = _tagged(engine, b"Subject: first\r\nSubject: second\r\n\r\n" + GTUBE + b"\r\n")
    assert msg.get_all("Subject") == ["***SPAM*** first"]
    _, msg = _tagged(engine, b"From: a@x.example\r\n\r\n" + GTUBE + b"\r\n")
    assert msg.get_all("Subject") == ["***SPAM***"]


def test_a_non_ascii_tag_is_encoded(engine: Engine) -> None:
    out, msg = _tagged(engine, b"Subject: offer\r\n\r\n" + GTUBE + b"\r\n", prefix="[\u0421\u041f\u0410\u041c] ")
    assert out.split(b"\r\n\r\n", 1)[0].isascii()
    assert msg.get("Subject") == "[\u0421\u041f\u0410\u041c] offer"


def test_a_subject_already_tagged_is_left_alone(engine: Engine) -> None:
    raw = b"Subject: ***SPAM*** offer\r\n\r\n" + GTUBE + b"\r\n"
    out, msg = _tagged(engine, raw)
    assert msg.get_all("Subject") == ["***SPAM*** offer"]


# --------------------------------------------------------------------------- the numbers clients compare


@pytest.mark.parametrize("score, spam, digits, text", [
    (4.96, False, 1, "4.9"),    # would print 5.0 / 5.0, which Exim reads as spam
    (4.94, False, 1, "4.9"),
    (4.5, False, 1, "4.5"),
    (4.96, True, 1, "5.0"),
    (4.996, False, 2, "4.99"),
    (-1.0, False, 1, "-1.0"),
])
def test_a_ham_never_shows_the_required_score(score: float, spam: bool, digits: int, text: str) -> None:
    assert shown_score(score, 5.0, spam, digits) == text


def test_no_spam_action_shows_a_finite_required_score(engine: Engine) -> None:
    v = replace(engine.scan(b"Subject: hi\r\n\r\nhello\r\n"), required_score=float("inf"))
    assert json.loads(json.dumps(v.to_dict(), allow_nan=False))["required_score"] == NEVER_SPAM_SHOWN
    status = dict(v.headers())["X-Spam-Status"]
    assert f"required={NEVER_SPAM_SHOWN:.1f}" in status and "inf" not in status


def test_a_ham_at_the_threshold_reads_as_ham_in_every_format(engine: Engine) -> None:
    v = replace(engine.scan(b"Subject: hi\r\n\r\nhello\r\n"), score=4.9996, required_score=5.0, action="no action")
    assert v.to_dict()["score"] < v.to_dict()["required_score"]
    assert "score=4.9 " in dict(v.headers())["X-Spam-Status"]
    assert dict(v.headers())["X-Spam-Score"] == "4.9"


def test_a_long_x_spam_status_is_folded_and_unfolds_to_the_same_list(engine: Engine) -> None:
    """RFC 5322 2.1.1: lines within 998 characters (78 recommended), whatever the number of symbols."""
    from antispam.verdict import SymbolResult

    names = [f"A_RULE_FROM_A_LARGE_RULESET_{i:03d}" for i in range(60)]
    v = replace(engine.scan(b"Subject: hi\r\n\r\nhello\r\n"),
                symbols={n: SymbolResult(n, 0.1, 1.0, (), "", "") for n in names})
    status = dict(v.headers())["X-Spam-Status"]
    lines = ("X-Spam-Status: " + status).split("\n")
    assert len(lines) > 10 and all(len(line.expandtabs(8)) <= 78 for line in lines)
    unfolded = status.replace("\n", "")
    assert "".join(unfolded.split("tests=")[1].split("autolearn=")[0].split()).split(",") == names


def test_our_folded_fields_take_the_messages_line_ending(engine: Engine) -> None:
    raw = b"Subject: hi\r\nFrom: a@x.example\r\n\r\n" + GTUBE + b"\r\n"
    out = rewrite_headers(raw, engine.scan(raw))
    head = out.split(b"\r\n\r\n", 1)[0]
    assert b"\n\t" in head and b"\n" not in head.replace(b"\r\n", b"")  # folded, and no bare LF
