"""The built-in evals on messages written for them, through the default ruleset, and the rules CLI."""

from __future__ import annotations

import base64
import io
import zipfile

import pytest

from antispam.check import ScanContext
from antispam.cli import main
from antispam.config import Config
from antispam.message import Message
from antispam.resources import default_rules_dir
from antispam.ruleset import load_rules
from antispam.ruleset.check import RuleHits, RulesCheck


@pytest.fixture(scope="module")
def check():
    return RulesCheck(load_rules([default_rules_dir()], every_rule=True))  # the evals, scored or not


def hits(check, raw: bytes) -> dict[str, int]:
    msg = Message(raw)
    ctx = ScanContext(msg.envelope, Config())
    check.run(msg, ctx)
    return dict(ctx.get(RuleHits).counts)


def _mime(attach_name: str, payload: bytes, ctype: str = "application/octet-stream") -> bytes:
    b64 = base64.encodebytes(payload).decode()
    return (f"From: a@b.example\nTo: c@d.example\nSubject: your document\nDate: Mon, 1 Jan 2024 10:00:00 +0000\n"
            f"Message-Id: <x@b.example>\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"BB\"\n\n"
            f"--BB\nContent-Type: text/plain\n\nPlease see the attached file.\n--BB\n"
            f"Content-Type: {ctype}; name=\"{attach_name}\"\nContent-Disposition: attachment; filename=\"{attach_name}\"\n"
            f"Content-Transfer-Encoding: base64\n\n{b64}--BB--\n").encode()


def test_attachment_evals(check):
    assert "AS_ATTACH_EXE" in hits(check, _mime("setup.exe", b"MZ\x90\x00"))
    h = hits(check, _mime("invoice.pdf.exe", b"MZ\x90\x00"))
    assert "AS_ATTACH_DOUBLE_EXT" in h and "AS_ATTACH_EXE" in h
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("docs/readme.txt", "hello")
        z.writestr("docs/payment.scr", "MZ")
    h = hits(check, _mime("docs.zip", buf.getvalue(), "application/zip"))
    assert "AS_ARCHIVE_HIDES_EXE" in h and "AS_ATTACH_EXE" not in h
    assert not {"AS_ATTACH_EXE", "AS_ARCHIVE_HIDES_EXE", "AS_ATTACH_DOUBLE_EXT"} & set(hits(check, _mime("report.pdf", b"%PDF-1.4")))
    assert "AS_ATTACH_RAR_ISO" in hits(check, _mime("photos.ISO", b"x"))
    assert "AS_ATTACH_HTML" in hits(check, _mime("login.html", b"<html>", "text/html"))
    assert "AS_ATTACH_OFFICE_MACRO" in hits(check, _mime("q3.xlsm", b"PK"))
    h = hits(check, _mime("invoice.pdf          .exe", b"MZ"))
    assert "AS_ATTACH_NAME_SPACES" in h and "AS_ATTACH_EXE" in h
    assert "AS_CT_APP_OCTET_EXE" in hits(check, _mime("a.bin", b"MZ", "application/x-msdownload"))
    plain = set(hits(check, _mime("notes.txt", b"hello", "text/plain")))
    assert not {"AS_ATTACH_RAR_ISO", "AS_ATTACH_HTML", "AS_ATTACH_OFFICE_MACRO", "AS_ATTACH_NAME_SPACES",
                "AS_CT_APP_OCTET_EXE"} & plain


def test_header_spam_word_reads_header_names(check):
    base = b"From: a@b.example\nTo: c@d.example\nSubject: hi\n"
    assert "AS_HEADER_SPAM_WORD" in hits(check, base + b"x-advertisement: yes\n\nhi\n")
    assert "AS_HEADER_SPAM_WORD" not in hits(check, base + b"X-Advertised: yes\n\nX-Advertisement: in the body\n")


def test_header_evals(check):
    base = b"To: c@d.example\nSubject: hello there\nDate: Mon, 1 Jan 2024 10:00:00 +0000\nMessage-Id: <x@b.example>\n"
    h = hits(check, b'From: "service@paypal.com" <info@cheap-pills.example>\n' + base + b"\nhi\n")
    assert "AS_FROM_NAME_SPOOF" in h
    assert "AS_FROM_NAME_SPOOF" not in hits(check, b'From: "Ann at b.example" <ann@mail.b.example>\n' + base + b"\nhi\n")
    h = hits(check, b"From: a@b.example\nReply-To: scam@gmail.com\n" + base + b"\nhi\n")
    assert "AS_REPLYTO_DIFFERS" in h and "AS_FREEMAIL_REPLYTO" in h
    h = hits(check, b"From: a@b.example\nTo: c@d.example\nSubject: YOUR ACCOUNT IS READY NOW\n\nhi\n")
    assert {"AS_SUBJ_ALL_CAPS", "AS_MISSING_DATE", "AS_MISSING_MID", "AS_NO_DATE_NO_MID"} <= set(h)
    h = hits(check, b"From: a@b.example\nSubject: x\nDate: 32 Foo 2024 99:00\n\nhi\n")
    assert "AS_DATE_INVALID" in h


def test_uri_and_html_evals(check):
    html = (b'<html><body><p>Dear customer, your account has been suspended. Verify your account at '
            b'<a href="http://203.0.113.7/login/">https://www.mybank.example/secure</a></p></body></html>')
    raw = (b"From: a@b.example\nTo: c@d.example\nSubject: notice\nMIME-Version: 1.0\nContent-Type: text/html\n\n" + html)
    h = hits(check, raw)
    assert {"AS_URI_TEXT_MISMATCH", "AS_URI_IP_HOST", "AS_ACCOUNT_SUSPEND", "AS_PHISH_COMBO", "AS_HTML_ONLY"} <= set(h)
    img = (b"From: a@b.example\nTo: c@d.example\nSubject: look\nMIME-Version: 1.0\nContent-Type: text/html\n\n"
           b'<html><body><a href="http://x.example/"><img src="http://x.example/a.gif"></a></body></html>')
    assert "AS_HTML_IMAGE_ONLY" in hits(check, img)


def test_rules_cli(tmp_path, capsys):
    assert main(["rules", "lint"]) == 0
    assert "0 error(s)" in capsys.readouterr().out
    bad = tmp_path / "bad.cf"
    bad.write_text("body X /(/\n")
    assert main(["rules", "lint", str(bad)]) == 1
    out = capsys.readouterr().out
    assert f"{bad}:1" in out and "X" in out


DATE_EDGES = ["Wed, 25 Nov 2026 11:33:33 -0000", "25 Nov 2026 11:33:33 +0000", "Wed,25 Nov 2026 01:33:33 +0100",
              "Wed, 5 Nov 2026 11:33:33 +0100 (CET)", " Tue, 1 Jan 2002 00:00:00 +1400 x", "Mon, 31 Feb 2026 99:99:99 -2359",
              "Sun, 1 Jan 0099 00:00:00 +0000", "Fri, 1 jan 2021 00:00:00 +0000", "1 Jan 2021 00:00:00 EST", "", "junk",
              "Mon, 9 Sep 2002 12:06:48 EDT", "Mon, 9 Sep 2002 12:06:48 UTC (x)", "Mon, 9 Sep 2002 12:06:48 Z",
              "Mon, 9 Sep 2002 12:06:48 gmt", "Mon, 9 Sep 2002 12:06:48 PDTX", "Mon, 9 Sep 2002 12:06:48 CET",
              "Mon, 9 Sep 2002 12:06:48 PST-0800", "Mon, 9 Sep 2002 12:06:48 UT"]


def test_parse_date_fast_path_equals_parsedate_tz(corpus):
    from email.utils import parsedate_tz

    from antispam._fastscore_py import canonical_date
    from antispam.ruleset.evals import parse_date

    fast = 0
    for m in corpus[::3]:
        msg = Message(m.data)
        stamps = msg.get_all("Date") + [r.raw[r.raw.rfind(";") + 1 :].strip() for r in msg.received if ";" in r.raw]
        for v in stamps:
            fast += canonical_date(v) is not None
            assert parse_date(v) == parsedate_tz(v), v
    assert fast > 1000  # the fast path is the one taken
    for v in DATE_EDGES:
        assert parse_date(v) == parsedate_tz(v), v


def test_epoch_seconds_equals_mktime_tz(corpus):
    from email.utils import mktime_tz

    from antispam.ruleset.evals import epoch_seconds, parse_date

    stamps = [r.raw[r.raw.rfind(";") + 1 :].strip() for m in corpus[::5] for r in Message(m.data).received if ";" in r.raw]
    parsed = [t for t in map(parse_date, stamps + DATE_EDGES) if t is not None]
    # month ends, a leap day, day numbers past the month's end (timegm counts on), a zone-less date
    parsed += [(2024, 2, 29, 23, 59, 59, 0, 1, -1, -3600), (2002, 12, 31, 0, 0, 0, 0, 1, -1, 50400),
               (2002, 2, 31, 1, 2, 3, 0, 1, -1, 0), (2002, 8, 1, 12, 0, 0, 0, 1, -1, None)]
    assert len(parsed) > 1000
    for t in parsed:
        try:
            want = mktime_tz(t)
        except (OverflowError, ValueError) as exc:
            with pytest.raises(type(exc)):
                epoch_seconds(t)
            continue
        assert epoch_seconds(t) == want, t


def test_shifted_date_is_measured_as_spamassassin_does():
    """check_for_shifted_date: the Received stamp closest to the date counts (not the newest), a
    fetchmail hand-over at the top is left out, Resent-Date comes before Date, and without a date
    or a stamp the difference is 0."""
    from antispam.ruleset.evals import check_for_shifted_date, shifted_date_diff

    def msg(*headers: str) -> Message:
        return Message(("\n".join(headers) + "\nSubject: t\n\nbody\n").encode())

    relays = ["Received: from a.example by b.example; Mon, 1 Jan 2024 20:00:00 +0000",  # 10 h after the date
              "Received: from c.example by a.example; Mon, 1 Jan 2024 10:30:00 +0000"]  # 30 min after
    m = msg(*relays, "Date: Mon, 1 Jan 2024 10:00:00 +0000")
    assert shifted_date_diff(m) == -1800.0
    assert check_for_shifted_date(m, -1.0, 0.0)[0] and not check_for_shifted_date(m, None, -6.0)[0]
    # a fetchmail hand-over (localhost, then "by localhost ... (fetchmail-") at the top is not a relay
    fetch = ["Received: from localhost (localhost [127.0.0.1]) by home.example; Mon, 1 Jan 2024 10:00:00 +0000",
             "Received: from mail.example [127.0.0.1] by localhost with IMAP (fetchmail-5.9.0); "
             "Mon, 1 Jan 2024 10:00:00 +0000"]
    m = msg(*fetch, "Received: from c.example by a.example; Tue, 2 Jan 2024 10:00:00 +0000",
            "Date: Mon, 1 Jan 2024 10:00:00 +0000")
    assert shifted_date_diff(m) == -86400.0
    # Resent-Date first; the oldest stamp is dropped when it equals the date and others exist
    m = msg(*relays, "Received: from d.example by c.example; Sun, 31 Dec 2023 10:00:00 +0000",
            "Resent-Date: Sun, 31 Dec 2023 10:00:00 +0000", "Date: Mon, 1 Jan 2024 10:00:00 +0000")
    assert shifted_date_diff(m) == -(86400.0 + 1800.0)
    assert shifted_date_diff(msg("Date: Mon, 1 Jan 2024 10:00:00 +0000")) == 0.0
    assert shifted_date_diff(msg(*relays)) == 0.0


def test_envelope_sender_is_guessed_from_the_headers_as_spamassassin_does():
    from antispam.message import Envelope
    from antispam.ruleset.evals import check_equal_from_domains, envelope_sender

    def msg(*headers: str, envelope: Envelope | None = None) -> Message:
        return Message(("\n".join(headers) + "\nSubject: t\n\nbody\n").encode(), envelope)

    rcvd = "Received: from a.example by b.example; Mon, 1 Jan 2024 10:00:00 +0000"
    assert envelope_sender(msg("Return-Path: <bounce@lists.example>", rcvd, "From: a@x.example")) == "bounce@lists.example"
    # written below a Received header: a relay's, not the final delivery's
    assert envelope_sender(msg(rcvd, "Return-Path: <bounce@lists.example>", "From: a@x.example")) is None
    assert envelope_sender(msg("Envelope-Sender: s@e.example", "Return-Path: <r@lists.example>", rcvd)) == "s@e.example"
    assert envelope_sender(msg(rcvd, "X-Envelope-From: s@e.example", "Return-Path: <r@lists.example>")) is None
    # an X-Sender address with fetchmail in the chain: fetchmail may have re-used it, nothing is trusted
    fetch = "Received: from x [127.0.0.1] by localhost with IMAP (fetchmail-5.9.0); Mon, 1 Jan 2024 10:00:00 +0000"
    assert envelope_sender(msg("Return-Path: <r@lists.example>", fetch, "X-Sender: a@x.example")) is None
    # the MTA's own envelope wins
    env = Envelope(mail_from="mta@given.example")
    assert envelope_sender(msg("Return-Path: <r@lists.example>", envelope=env)) == "mta@given.example"
    # compared on the last two labels, case-insensitively
    assert check_equal_from_domains(msg("Return-Path: <b@MAIL.Example.com>", "From: A <a@www.example.com>")) == (False, [])
    assert check_equal_from_domains(msg("Return-Path: <b@lists.other.org>", "From: a@www.example.com"))[0]
    assert check_equal_from_domains(msg(rcvd, "Return-Path: <b@lists.other.org>", "From: a@example.com")) == (False, [])


def test_base64_text_is_counted_only_in_ascii_as_spamassassin_does():
    """check_for_mime('mime_base64_encoded_text'): a base64 text part whose charset is absent or
    names ASCII (anywhere in the name, as SpamAssassin searches it), not one in Latin-1 or Big5,
    nor one marked as an attachment or inline."""
    from antispam.ruleset.evals import check_for_mime

    def msg(ctype: str, disposition: str = "") -> Message:
        body = base64.encodebytes(b"Hello there, this is plain text.\n").decode()
        cd = f"Content-Disposition: {disposition}\n" if disposition else ""
        return Message((f"From: a@b.example\nSubject: t\nMIME-Version: 1.0\nContent-Type: {ctype}\n{cd}"
                        f"Content-Transfer-Encoding: base64\n\n{body}").encode())

    assert check_for_mime(msg("text/plain"), "mime_base64_encoded_text")
    assert check_for_mime(msg('text/html; charset="US-ASCII"'), "mime_base64_encoded_text")
    assert check_for_mime(msg("text/plain; charset=x-us-foo"), "mime_base64_encoded_text")
    assert not check_for_mime(msg("text/plain; charset=iso-8859-1"), "mime_base64_encoded_text")
    assert not check_for_mime(msg("text/html; charset=big5"), "mime_base64_encoded_text")
    assert not check_for_mime(msg("text/plain", "inline"), "mime_base64_encoded_text")
    assert not check_for_mime(msg("text/plain", 'attachment; filename="a.txt"'), "mime_base64_encoded_text")
    assert check_for_mime(msg("text/plain; charset=iso-8859-1"), "mime_base64_count")


def test_envelope_sender_is_read_from_the_received_header_of_the_last_untrusted_relay():
    """SpamAssassin's EnvelopeFrom comes first from the ``envelope-from`` a receiving MTA noted in
    its Received header: that of the newest relay from a public address (the oldest trusted one
    when all are private), before Return-Path and the like."""
    from antispam.ruleset.evals import check_equal_from_domains, envelope_sender

    def msg(*headers: str) -> Message:
        return Message(("\n".join(headers) + "\nSubject: t\n\nbody\n").encode())

    local = ("Received: from hub.example (localhost [127.0.0.1])\n\tby hub.example (8.12.5) with ESMTP id 1\n"
             "\t(envelope-from owner@hub.example); Mon, 1 Jan 2024 10:00:02 +0000")
    outside = ("Received: from mx.list.example (mx.list.example [66.92.53.74])\n\tby hub.example (8.12.5) with ESMTP"
               " id 2\n\tfor <u@hub.example>; Mon, 1 Jan 2024 10:00:01 +0000\n\t(envelope-from <bounce@list.example>)")
    older = ("Received: from sender.example (sender.example [208.31.42.38])\n\tby mx.list.example with SMTP id 3\n"
             "\t(envelope-from spammer@elsewhere.example); Mon, 1 Jan 2024 10:00:00 +0000")
    m = msg(local, outside, older, "Return-Path: <r@other.example>", "From: a@sender.example")
    assert envelope_sender(m) == "bounce@list.example"
    assert check_equal_from_domains(m)[0]
    # every relay trusted: the oldest one's
    assert envelope_sender(msg(local, "From: a@hub.example")) == "owner@hub.example"
    # the public relay noted none: the headers' guess, as before
    plain = outside.replace("\n\t(envelope-from <bounce@list.example>)", "")
    assert envelope_sender(msg("Return-Path: <r@list.example>", plain, "From: a@x.example")) == "r@list.example"
    # a sender without "@" is no address
    assert envelope_sender(msg(plain.replace("2024 10:00:01 +0000", "2024 10:00:01 +0000 (envelope-from MAILER)"))) is None


@pytest.mark.parametrize("subject, expected", [
    ("Re: SYSTEMWORKS CLEARANCE SALE", True),   # spamd -L: SUBJ_ALL_CAPS on each of these
    ("fwd:  NORTON SALE!", True),
    ("FREE 100 $$$", True),
    ("AW: Re: LOW RATES NOW", True),
    ("BIG WIN", False),                          # under ten bytes
    ("ALLCAPSONEWORD", False),                   # one word
    ("=?koi8-r?B?8NLJ18XU?= HELLO WORLD", False),  # a charset that reads as capitals
    ("Hello WORLD again", False),
])
def test_sa_subject_is_all_caps_as_spamassassin_reads_it(subject, expected):
    """SpamAssassin's subject_is_all_caps (what its SUBJ_ALL_CAPS calls) takes reply and forward
    prefixes off and asks ten bytes, not ten letters; our own keeps its meaning."""
    from antispam.ruleset.evals import eval_function, subject_is_all_caps

    msg = Message(f"From: a@example.com\nSubject: {subject}\n\nhello there\n".encode())
    assert eval_function("subject_is_all_caps", spamassassin=True).fn(msg) is expected
    if subject.startswith(("Re:", "fwd:")):
        assert not subject_is_all_caps(msg)


@pytest.mark.parametrize("value, epoch", [
    # what SpamAssassin 4.0.1's own date reading returns for each (its parse_rfc822_date, run in Perl)
    ("Tue, 1 Jan 2002 10:00:00 EST", 1009897200),
    ("Mon, 27 May 2002 10:28:3 +0200", 1022450400),   # "10:28:3" is no time: midnight
    (" 29 Jul 2001 23:30:41 -400", 996449441),        # "-400" is no zone: UTC
    ("29 Jul 01 11:30:41 PM", 996406241),
    ("1 JAN 02 10:00 MON EST", 1009879200),           # the first capitals word is no zone: UTC
    ("Jan  5 10:11:12 2003", 1041724800),             # the ctime form: its time is not read
    ("32 Feb 2003 25:61:61 +0530", 1046543399),       # pulled into range
    ("5 Mar 102 01:02:03 CEST", 1015282923),
    ("3 Apr 75 07:08:09 PDT-DST", 165740889),
    ("0 Mar 2002 01:02:03", None),
    ("yesterday", None),
])
def test_sa_date_epoch_reads_dates_as_spamassassin_does(value, epoch):
    from antispam.ruleset.evals import sa_date_epoch

    assert sa_date_epoch(value) == epoch


def test_shifted_date_reads_odd_dates_and_folded_stamps_as_spamassassin_does():
    """A Date whose seconds have one digit reads as midnight, and a stamp folded before its zone
    is found (the fold reads as one space) with its three-digit zone as UTC: spamd -L gives the
    first DATE_IN_PAST_06_12, where RFC 5322's reading made it 1.3 hours."""
    from antispam.ruleset.evals import shifted_date_diff

    def msg(*headers: str) -> Message:
        return Message(("\n".join(headers) + "\nSubject: t\n\nbody\n").encode())

    m = msg("Received: from a.example by b.example; Mon, 27 May 2002 10:46:16 +0100",
            "Date: Mon, 27 May 2002 10:28:3 +0200")
    assert shifted_date_diff(m) == -(11 * 3600 + 46 * 60 + 16)
    m = msg("Received: from a.example by b.example;Sun, 29 Jul 2001 23:30:41\n    -400 (EDT)",
            "Date: 29 Jul 01 11:30:41 PM")
    assert shifted_date_diff(m) == -12 * 3600.0
