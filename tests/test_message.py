"""Message parsing: headers, encodings, MIME, HTML, URLs, Received, defects and limits."""

from __future__ import annotations

import base64

import pytest

from antispam.message import Envelope, Limits, Message, decode_rfc2047, html_to_text, parse_params, split_addresses


def mk(headers: str, body: str = "", crlf: bool = False) -> bytes:
    raw = headers.strip("\n") + "\n\n" + body
    if crlf:
        raw = raw.replace("\n", "\r\n")
    return raw.encode("utf-8")


def test_headers_order_occurrences_and_folding():
    m = Message(mk("Received: a\nX-Test: one\nReceived: b\n  folded\nSubject: hello\n\tworld", "body"))
    assert [n for n, _ in m.headers] == ["Received", "X-Test", "Received", "Subject"]
    assert m.get_all("received") == ["a", "b  folded"]
    assert m.subject == "hello\tworld"
    assert m.get("x-test") == "one"
    assert m.get("missing") is None and m.get("missing", "d") == "d"
    assert m.has("X-TEST") and not m.has("Nope")


@pytest.mark.parametrize("crlf", [False, True])
def test_crlf_and_lf_give_same_views(crlf):
    m = Message(mk("From: a@b.example\nSubject: s", "line1\nline2\n", crlf=crlf))
    assert m.subject == "s"
    assert m.text.splitlines() == ["line1", "line2"]


def test_mbox_from_line_is_skipped():
    m = Message(b"From someone@example.com Mon Jan  1 00:00:00 2002\nSubject: x\n\nbody")
    assert m.subject == "x"
    assert [n for n, _ in m.headers] == ["Subject"]


def test_from_colon_header_is_not_mbox_line():
    m = Message(b"From: a@b.example\nSubject: y\n\nz")
    assert m.from_addr == "a@b.example"


def test_rfc2047_decoding_and_raw_kept():
    m = Message(mk("Subject: =?utf-8?B?w6lsw6h2ZQ==?= =?iso-8859-1?Q?caf=E9?= ok"))
    assert m.subject == "élèvecafé ok"
    assert m.get_raw("Subject")[0].startswith("=?utf-8?B?")


def test_rfc2047_bad_encoding_is_a_defect_not_a_crash():
    d: set[str] = set()
    out = decode_rfc2047("=?nosuchcharset?Q?abc?=", d)
    assert out == "abc"
    assert decode_rfc2047("plain") == "plain"


def test_addresses():
    assert split_addresses('"Doe, Ann" <ann@x.example>, bob@y.example (Bob)') == (
        ("Doe, Ann", "ann@x.example"), ("Bob", "bob@y.example"))
    assert split_addresses("a@x.example, <b@y.example>,,junk") == (("", "a@x.example"), ("", "b@y.example"))
    m = Message(mk('From: "Ann" <Ann@Example.COM>\nTo: a@t.example, "B" <b@t.example>\nCc: c@t.example\nReply-To: r@else.example'))
    assert m.from_domain == "example.com"
    assert m.from_name == "Ann"
    assert m.to_addrs == ["a@t.example", "b@t.example", "c@t.example"]
    assert m.reply_to == "r@else.example"
    assert Message(mk("From: not an address")).from_addr is None


def test_received_chain_parsed():
    m = Message(mk(
        "Received: from mx.mid.example (mx.mid.example [192.0.2.10]) by mx.final.example with ESMTP; Mon\n"
        "Received: from [198.51.100.7] (helo=client.example) by mx.mid.example with smtp; Mon\n"
        "Received: from unknown (HELO pc) (203.0.113.9) by relay.example with SMTP; Mon\n"
        "Received: from h (h [IPv6:2001:db8::1]) by v6.example; Mon"))
    r = m.received
    assert (r[0].ip, r[0].rdns, r[0].helo, r[0].by) == ("192.0.2.10", "mx.mid.example", "mx.mid.example", "mx.final.example")
    assert (r[1].ip, r[1].helo, r[1].by) == ("198.51.100.7", "client.example", "mx.mid.example")
    assert (r[2].ip, r[2].helo) == ("203.0.113.9", "pc")
    assert r[3].ip == "2001:db8::1"


def test_head_body_split_is_at_the_first_empty_line_of_either_kind():
    """The split reads only as far as it must, and finds the earliest LF or CRLF empty line."""
    import random

    from antispam.message import _split_head_body

    def reference(data: bytes):
        if data.startswith(b"\n") or data.startswith(b"\r\n"):
            return b"", data[1 if data[:1] == b"\n" else 2 :], True
        i, j = data.find(b"\n\n"), data.find(b"\n\r\n")
        if j >= 0 and (i < 0 or j < i):
            return data[:j], data[j + 3 :], True
        return (data[:i], data[i + 2 :], True) if i >= 0 else (data, b"", False)

    pieces = [b"\n", b"\r", b"\r\n", b"a", b"b: c", b" ", b"\n\n", b"\r\n\r\n", b"\n\r\n"]
    rnd = random.Random(1)
    for _ in range(20000):
        data = b"".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 12)))
        assert _split_head_body(data) == reference(data), data


def test_received_clauses_equal_the_sliced_definition():
    """The from clause searched in place (up to ``by``) gives what searching a slice of it gave."""
    import random

    from antispam._fastscore_py import IPV4_RE as _IPV4_RE
    from antispam._fastscore_py import RCVD_BY_RE as _RCVD_BY_RE
    from antispam._fastscore_py import RCVD_IP_RE as _RCVD_IP_RE
    from antispam._fastscore_py import RCVD_RDNS_RE as _RCVD_RDNS_RE

    def reference(head: str):
        by_m = _RCVD_BY_RE.search(head, head.find(" by ") if " by " in head else 0)
        from_clause = head[: by_m.start()] if by_m else head
        ip_m = _RCVD_IP_RE.search(from_clause)
        rd = _RCVD_RDNS_RE.search(from_clause) if "[" in from_clause else None
        return (ip_m.group(1) if ip_m else None, rd.group(1).lower() if rd else None, by_m.group(1).lower() if by_m else None)

    pieces = ["from", " mail.example.com", " (", ")", " [192.0.2.1]", "[10.0.0.9]", " by", " BY", " By ", " by (", " by ",
              "mx.example.org", " with ESMTP", " id 123", " (host.example.net [198.51.100.7])", " (HELO x)", "bye", " "]
    rnd = random.Random(3)
    for _ in range(3000):
        head = "".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 10)))
        r = Message(f"Received: {head}; Mon, 1 Jan 2024 10:00:00 +0000\n\nx".encode()).received[0]
        ip, rdns, by = reference(r.raw.partition(";")[0])
        helo_ip = r.helo if ip is None and r.helo and _IPV4_RE.fullmatch(r.helo) else None
        assert (r.ip, r.rdns, r.by) == (ip or helo_ip, rdns, by), head


def test_multipart_base64_qp_and_charsets():
    body = (
        "--XX\nContent-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: quoted-printable\n\n"
        "Gr=FC=DFe, soft=\nbreak\n"
        "--XX\nContent-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: base64\n\n"
        + base64.b64encode("<p>Hé <a href='http://h.example/p'>link</a></p>".encode()).decode() + "\n"
        "--XX\nContent-Type: application/octet-stream; name=\"x.exe\"\nContent-Disposition: attachment; filename=\"x.exe\"\n"
        "Content-Transfer-Encoding: base64\n\nTVqQAAMAAAAEAAAA\n--XX--\n")
    m = Message(mk('Content-Type: multipart/mixed; boundary="XX"', body))
    types = [p.content_type for p in m.parts]
    assert types == ["text/plain", "text/html", "application/octet-stream"]
    assert m.plain_text == "Grüße, softbreak"  # the newline before a delimiter belongs to it
    assert "Hé link" in m.html_text
    assert m.urls[0].url == "http://h.example/p" and m.urls[0].text == "link" and m.urls[0].host == "h.example"
    assert [(a.name, a.content_type, a.size) for a in m.attachments] == [("x.exe", "application/octet-stream", 12)]
    assert not m.defects


def test_nested_multipart_and_rfc822():
    inner = "Subject: inner\n\ninner body text\n"
    body = ("--a\nContent-Type: multipart/alternative; boundary=b\n\n--b\nContent-Type: text/plain\n\nalt text\n--b--\n"
            "--a\nContent-Type: message/rfc822\n\n" + inner + "--a--\n")
    m = Message(mk("Content-Type: multipart/mixed; boundary=a", body))
    assert [p.text.strip() for p in m.parts] == ["alt text", "inner body text"]
    assert [p.depth for p in m.parts] == [2, 2]


@pytest.mark.parametrize("headers,body,defect", [
    ("Content-Type: multipart/mixed", "no boundary param", "MIME_MISSING_BOUNDARY"),
    ("Content-Type: multipart/mixed; boundary=zz", "boundary never appears", "MIME_MISSING_BOUNDARY"),
    ("Content-Type: multipart/mixed; boundary=zz", "--zz\n\ntext but no close\n", "MIME_MISSING_CLOSE_BOUNDARY"),
    ("Content-Transfer-Encoding: base64", "aGVsbG8gd29ybGQ", "MIME_BAD_BASE64"),
    ("Content-Type: text/plain; charset=x-no-such-charset", "abc", "MIME_UNKNOWN_CHARSET"),
    ("Content-Type: text/plain; charset=utf-8", "\udcff", "MIME_BAD_CHARSET_DATA"),
    ("Content-Type: text/plain", "caf\udce9", "MIME_8BIT_UNDECLARED"),
    ("Content-Type: garbage", "x", "MIME_BAD_CONTENT_TYPE"),
    ("Content-Transfer-Encoding: x-weird", "x", "MIME_UNKNOWN_ENCODING"),
])
def test_defects(headers, body, defect):
    raw = (headers + "\n\n").encode() + body.encode("utf-8", "surrogateescape")
    m = Message(raw).parse_all()
    assert defect in m.defects


@pytest.mark.parametrize("ctype", ["multipart/alternative", 'multipart/alternative; boundary="zz"'])
def test_multipart_without_a_delimiter_is_read_as_text(ctype):
    # No boundary, or one no line is: Python's email package shows the body as text, and
    # SpamAssassin parses it as one part.  Read as all preamble, the words were hidden.
    m = Message(mk(f"Content-Type: {ctype}", "Buy cheap pills now\n--zzz not the boundary\n")).parse_all()
    assert [p.content_type for p in m.parts] == ["text/plain"]
    assert "Buy cheap pills now" in m.text
    assert "MIME_MISSING_BOUNDARY" in m.defects


def test_bad_base64_still_salvages_text():
    m = Message(b"Content-Transfer-Encoding: base64\n\naGVsbG8gd29ybGQ!!")
    assert "hello" in m.text
    assert "MIME_BAD_BASE64" in m.parse_all().defects


def test_8bit_header_and_missing_separator():
    m = Message("Subject: caf\xe9 ok".encode("latin-1")).parse_all()
    assert "HEADER_8BIT" in m.defects and "MISSING_HEADER_BODY_SEPARATOR" in m.defects
    assert m.subject == "café ok"


def test_limits_are_reported_not_raised():
    parts = "".join(f"--b\nContent-Type: text/plain\n\npart {i}\n" for i in range(50)) + "--b--\n"
    m = Message(mk("Content-Type: multipart/mixed; boundary=b", parts), limits=Limits(max_parts=5)).parse_all()
    assert len(m.parts) == 5
    assert "MIME_TOO_MANY_PARTS" in m.defects and "parts>5" in m.skipped
    deep = "Content-Type: multipart/mixed; boundary=b0\n\n"
    for i in range(1, 30):
        deep += f"--b{i-1}\nContent-Type: multipart/mixed; boundary=b{i}\n\n"
    m = Message(deep.encode(), limits=Limits(max_depth=8)).parse_all()
    assert "MIME_TOO_DEEP" in m.defects
    m = Message(b"Subject: x\n\n" + b"a" * 5000, limits=Limits(max_bytes=1000))
    assert m.skipped == ("bytes>1000",) and len(m.raw) == 1000
    many = "".join(f"X-H{i}: v\n" for i in range(50))
    m = Message(mk(many), limits=Limits(max_headers=10)).parse_all()
    assert len(m.headers) == 10 and "HEADER_TOO_MANY" in m.defects
    # past the limit, the author and signature fields are kept (a bounded number of them)
    m = Message(("".join(f"X-H{i}: v\n" for i in range(50)) + "From: a@late.example\n" + "To: b@x.example\n" * 200
                 + "\nbody\n").encode(), limits=Limits(max_headers=10))
    assert m.get("from") == "a@late.example" and len(m.headers) == 10 + 100 and "HEADER_TOO_MANY" in m.defects
    links = " ".join(f"http://h{i}.example/" for i in range(30))
    m = Message(mk("Content-Type: text/plain", links), limits=Limits(max_urls=12)).parse_all()
    assert [u.host for u in m.urls] == [f"h{i}.example" for i in range(12)] and "urls>12" in m.skipped
    assert Message(mk("Content-Type: text/plain", links)).parse_all().skipped == ()


def test_html_to_text_drops_invisible_markup_and_finds_links():
    text, links = html_to_text(
        "<html><head><title>T</title><style>p{}</style></head><body><!-- hidden -->"
        "<script>var x=1;</script><p>Hello&nbsp;&amp; bye</p><a href=\"http://a.example/x?q=1&amp;r=2\">Click <b>here</b></a>"
        "<img src='http://img.example/i.gif'><form action=http://f.example/post></form></body></html>")
    assert "Hello" in text and "& bye" in text and "var x" not in text and "hidden" not in text and "T" not in text.split()
    assert ("http://a.example/x?q=1&r=2", "Click here") in links
    assert ("http://img.example/i.gif", "") in links and ("http://f.example/post", "") in links


def test_html_unclosed_head_hides_nothing():
    """A browser ends the head at the first thing that cannot be in it (WHATWG "in head" mode): a
    ``<head>`` never closed must not hide the body's words.  The title alone stays hidden."""
    m = Message(b"Content-Type: text/html\n\n<html><head><title>x</title>\n<meta name=a content=b>"
                b"<body><p>Cheap meds online, click here now</p></body></html>\n")
    assert m.html_text == "Cheap meds online, click here now"
    assert html_to_text("<head><title>T</title><style>p{}</style></head><body>Hi</body>")[0] == "Hi"


def test_html_hidden_markup_inside_a_word_does_not_split_it():
    """A comment, style or script shows nothing: the letters around it join, as a reader sees them."""
    m = Message(b"Content-Type: text/html\n\n<html><body>Buy V<!-- mom -->iagra and C<!--x-->ialis, "
                b"M<script>x()</script>ortgage r<style>p{}</style>ates</body></html>\n")
    assert m.html_text == "Buy Viagra and Cialis, Mortgage rates"
    assert "viagra" in [w.lower() for w in m.text.split()]


def test_multipart_delimiter_is_the_whole_line():
    """RFC 2046 5.1.1: a delimiter line is the boundary and blanks, nothing more.  An inner boundary
    that extends the outer one (``X`` and ``XAA``) must not split the outer multipart."""
    raw = (b'Content-Type: multipart/related; boundary="----=_NextPart_X"\n\n'
           b'------=_NextPart_X\n'
           b'Content-Type: multipart/alternative; boundary="----=_NextPart_XAA"\n\n'
           b'------=_NextPart_XAA\nContent-Type: text/html\n\n<p>Buy now</p>\n'
           b'------=_NextPart_XAA--\n\n'
           b'------=_NextPart_X-- \t\r\n')
    m = Message(raw).parse_all()
    assert [(p.content_type, p.text) for p in m.parts] == [("text/html", "<p>Buy now</p>")]
    assert not {"MIME_MISSING_BOUNDARY", "MIME_MISSING_CLOSE_BOUNDARY"} & m.defects
    # a line with text after the boundary is body text; padding blanks after a delimiter are allowed
    m = Message(b"Content-Type: multipart/mixed; boundary=b\n\n--b \nContent-Type: text/plain\n\n--bye\n--b--x\nmore\n--b--\n")
    assert [p.text for p in m.parts] == ["--bye\n--b--x\nmore"]


@pytest.mark.parametrize("charset, data, text", [
    # WHATWG Encoding Standard, as Thunderbird and browsers decode: the label iso-8859-1 (any spelling) is windows-1252
    (b'"iso-8859-1"', b"It\x92s only \x80100 \x96 \x93FREE\x94", "It\u2019s only \u20ac100 \u2013 \u201cFREE\u201d"),
    (b"latin1", b"\x85 caf\xe9", "\u2026 caf\u00e9"),
    (b"windows-1252", b"a\x81b\x9dc", "a\x81b\x9dc"),  # bytes cp1252 leaves undefined are C1 controls, not errors
    (b"iso-8859-9", b"\x80 \xfd", "\u20ac \u0131"),  # windows-1254
    (b"windows-1254", b"a\x8eb\x9ec", "a\x8eb\x9ec"),  # and every Windows code page's undefined C1 bytes
    (b"tis-620", b"\xa1\x81\x98\xe0", "\u0e01\x81\x98\u0e40"),  # windows-874
    (b"windows-1250", b"\x8a\x83", "\u0160\x83"),
    (b"euc-kr", "\ub620 \ubb34\ub8cc".encode("cp949"), "\ub620 \ubb34\ub8cc"),  # UHC: \ub620 is not in KS X 1001
    (b"shift_jis", "\u2460 \u7121\u6599".encode("cp932"), "\u2460 \u7121\u6599"),  # windows-31j
])
def test_charset_labels_decode_as_mail_clients_do(charset, data, text):
    m = Message(b"Content-Type: text/plain; charset=" + charset + b"\n\n" + data + b"\n").parse_all()
    assert m.plain_text == text + "\n" and "MIME_BAD_CHARSET_DATA" not in m.defects
    assert Message(b"Subject: =?iso-8859-1?Q?It=92s_=80100?=\n\nx").subject == "It\u2019s \u20ac100"


@pytest.mark.parametrize("charset, data, text", [
    (b"DEFAULT_CHARSET", "\u0130yi g\u00fcnler".encode("cp1254"), "\u00ddyi g\u00fcnler"),  # unknown: as undeclared text
    (b"x-no-such", "caf\u00e9 \u20ac".encode("utf-8"), "caf\u00e9 \u20ac"),
    (b"CHINESEBIG5", "\u96fb\u5b50\u90f5\u4ef6".encode("big5"), "\u96fb\u5b50\u90f5\u4ef6"),
    (b"GB2312_CHARSET", "\u514d\u8d39\u53d1\u7968".encode("gbk"), "\u514d\u8d39\u53d1\u7968"),  # a Windows font charset name
])
def test_unknown_charset_decodes_as_undeclared_text(charset, data, text):
    m = Message(b"Content-Type: text/plain; charset=" + charset + b"\n\n" + data).parse_all()
    assert m.plain_text == text
    assert ("MIME_UNKNOWN_CHARSET" in m.defects) == (charset in (b"DEFAULT_CHARSET", b"x-no-such"))


def test_html_lt_that_opens_no_tag_is_text():
    """WHATWG HTML: a "<" before a blank, digit or sign is text; it must not hide the words up to the next ">"."""
    m = Message(b"Content-Type: text/html\n\n<p>Pills for < $5 each, order today</p><p>bye</p>\n")
    assert m.html_text == "Pills for < $5 each, order today\nbye"
    assert html_to_text('<a href="http://x.example/">under <1% fees> now</a>')[1] == [("http://x.example/", "under <1% fees> now")]


def test_raw_8bit_header_reads_in_the_declared_charset():
    """Raw 8-bit header text (no encoded-words) is decoded in the charset of the block's Content-Type, as
    Thunderbird does; text that is UTF-8, or a block that names no charset, reads as before."""
    subject = "(\uad11\uace0) \ubb34\ub8cc"
    raw = (b"Subject: " + subject.encode("cp949") + b"\r\nFrom: " + "\ud64d\uae38\ub3d9".encode("cp949")
           + b" <a@example.com>\r\nContent-Type: text/plain;\r\n\tcharset=\"ks_c_5601-1987\"\r\n\r\nx\r\n")
    m = Message(raw)
    assert m.subject == subject and m.from_name == "\ud64d\uae38\ub3d9" and "HEADER_8BIT" in m.defects
    assert Message(b"Subject: caf\xe9\nContent-Type: text/plain\n\nx").subject == "caf\u00e9"  # Latin-1
    assert Message(b"Subject: caf\xc3\xa9\nContent-Type: text/plain; charset=euc-kr\n\nx").subject == "caf\u00e9"  # UTF-8
    part = (b"Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: application/octet-stream; charset=gb2312; name=\""
            + "\u53d1\u7968".encode("gbk") + b".doc\"\n\nx\n--b--\n")
    assert [a.name for a in Message(part).attachments] == ["\u53d1\u7968.doc"]
    for charset in (b"utf-16", b"utf-7", b"unicode-escape", b"raw-unicode-escape"):  # not ASCII-compatible: headers stay as sent
        m = Message(b"Subject: caf\xe9 +AGE- \\u0041\nContent-Type: text/plain; charset=" + charset + b"\nX: y\n\nx")
        assert (m.subject, m.get("X")) == ("caf\u00e9 +AGE- \\u0041", "y"), charset


@pytest.mark.parametrize("value, addr, domain", [
    ('"victim@paypal.example"@evil.example', '"victim@paypal.example"@evil.example', "evil.example"),  # RFC 5322 quoted local part
    ("o'brien@example.org", "o'brien@example.org", "example.org"),
    ("'john@example.com'", "john@example.com", "example.com"),  # an address in apostrophes
    ('"Bob" bob@x.example', "bob@x.example", "x.example"),
])
def test_bare_from_address_is_read_whole(value, addr, domain):
    m = Message(b"From: " + value.encode() + b"\n\nx\n")
    assert (m.from_addr, m.from_domain) == (addr, domain)


def test_bare_address_search_is_linear():
    import time

    from antispam.message import _BARE_ADDR_RE

    for hostile in ("a'" * 20_000, "''a" * 14_000, '"a' * 20_000, "a" * 40_000):  # quadratic: seconds
        t = time.perf_counter()
        _BARE_ADDR_RE.search(hostile)
        assert time.perf_counter() - t < 0.5, hostile[:10]


def test_mime_parameters_are_parsed_before_encoded_words_are_decoded():
    """An encoded-word that decodes to a quote or a semicolon is part of the file name, not its end."""
    raw = (b"Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/plain\n\nsee attached\n--b\n"
           b'Content-Type: application/octet-stream; name="=?utf-8?Q?invoice=22.pdf.exe?="\n'
           b"Content-Transfer-Encoding: base64\n\nTVqQAA==\n--b\n"
           b'Content-Disposition: attachment; filename="=?utf-8?Q?a=3B_b.scr?="\n\nx\n--b--\n')
    m = Message(raw)
    assert [a.name for a in m.attachments] == ['invoice".pdf.exe', "a; b.scr"]
    assert m.parts[1].headers[0] == ("Content-Type", 'application/octet-stream; name="invoice".pdf.exe"')  # decoded for the rules
    top = Message(b'Content-Type: application/zip; name="=?utf-8?B?eCIueC56aXA=?="\n\nx')  # x".x.zip
    assert [a.name for a in top.attachments] == ['x".x.zip']


def test_character_split_across_encoded_words_is_joined():
    """Adjacent encoded-words in one charset are decoded as one byte string, as Python's email package does."""
    raw = (b"Subject: =?utf-8?B?4oI=?= =?UTF-8?B?rCA1MDAgZnJlZQ==?=\n"
           b"From: =?UTF-8?Q?Gr=C3?=\n =?UTF-8?Q?=BC=C3=9Fe?= <a@example.com>\nTo: =?utf-8?q?a?= =?iso-8859-1?q?=E9?= x\n\nx\n")
    m = Message(raw)
    assert (m.subject, m.from_name, m.get("To")) == ("\u20ac 500 free", "Gr\u00fc\u00dfe", "a\u00e9 x")
    assert "HEADER_BAD_ENCODING" not in m.parse_all().defects
    assert decode_rfc2047("=?utf-8?B?w6k=?= =?utf-8?B?abcde?= =?utf-8?B?w6k=?=") == "\u00e9=?utf-8?B?abcde?=\u00e9"  # a bad word stays


@pytest.mark.parametrize("b64, text", [(b"aGVsbG8gd29ybGQ", "hello world"), (b"aGVsbG8gd29ybA", "hello worl"),
                                       (b"aGVsbG8g\nd29ybGQ*", "hello world"), (b"aGVsbG8gd29ybGQhI", "hello world!")])
def test_base64_without_padding_keeps_its_last_bytes(b64, text):
    m = Message(b"Content-Type: text/plain\nContent-Transfer-Encoding: base64\n\n" + b64 + b"\n").parse_all()
    assert m.plain_text == text and "MIME_BAD_BASE64" in m.defects


def test_anchor_texts_equal_the_lazy_definition():
    """The unrolled anchor pattern gives the links the plain lazy ``(.*?)`` one gives."""
    import random
    import re

    from antispam import fastscore
    from antispam.message import _HTML_ANCHOR_RE, _HTML_HREF_RE, _HTML_TAG_RE

    lazy = re.compile(r"<a\b([^>]*)>(.*?)(?:</a\s*>|(?=<a\b)|$)", re.S | re.I)

    def links(rx, markup):
        out = []
        for m in rx.finditer(markup):
            h = _HTML_HREF_RE.search(m.group(1))
            if h:
                anchor = _HTML_TAG_RE.sub("", m.group(2))
                out.append((h.group(0), fastscore.impl.collapse_blanks(anchor).strip()))
        return out

    pieces = ["<a href=x>", "<A HREF='y'>", "</a>", "</A >", "</a\n>", "<abbr>", "</abbr>", "<a\n href=z>", "<b>",
              "text", " ", "\n", "<", ">", "<ab", "</a", "click here"]
    rnd = random.Random(5)
    for _ in range(3000):
        markup = "".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 14)))
        assert links(_HTML_ANCHOR_RE, markup) == links(lazy, markup), markup
        assert html_to_text(markup)[1] == [(h[h.index("=") + 1:].strip("'\""), t) for h, t in links(lazy, markup)], markup


def test_urls_from_text_dedup_and_hosts():
    m = Message(mk("Subject: u", "see http://Example.COM:8080/path, www.site.example/x and http://example.com:8080/path, and http://[2001:db8::2]/z.\n"))
    assert [u.url for u in m.urls] == ["http://Example.COM:8080/path", "www.site.example/x", "http://example.com:8080/path", "http://[2001:db8::2]/z"]
    assert m.url_hosts == ("example.com", "www.site.example", "2001:db8::2")


def test_params_rfc2231():
    main, params = parse_params("attachment; filename*=utf-8''%E2%82%ACuro.txt; size=3")
    assert main == "attachment" and params["filename"] == "€uro.txt" and params["size"] == "3"
    main, params = parse_params('text/plain; charset="UTF-8"; name*0="a"; name*1="b.txt"')
    assert params == {"charset": "UTF-8", "name": "ab.txt"}


def test_envelope_normalises_recipients():
    e = Envelope(rcpt_tos=["a@x.example", "b@x.example"])
    assert e.rcpt_tos == ("a@x.example", "b@x.example")
    with pytest.raises(Exception):
        e.helo = "x"  # frozen


def test_message_rejects_non_bytes():
    with pytest.raises(TypeError):
        Message("a str")  # type: ignore[arg-type]


@pytest.mark.parametrize("raw", [b"", b"\n", b"\n\n\n", b":::", b"Content-Type: multipart/mixed; boundary=\n\n--\n--\n",
                                 b"\x00\xff\xfe" * 100, b"Subject: =?utf-8?B?###?=\n\nx", b"From \n"])
def test_garbage_never_raises(raw):
    m = Message(raw).parse_all()
    assert isinstance(m.text, str)


@pytest.mark.parametrize("url, host", [
    ("http://user@x.example@listed.example/", "listed.example"),  # the host follows the last "@"
    ("http://%6Cisted.example/a", "listed.example"),  # percent-decoded, as a browser does
    ("http://listed\u3002example/", "listed.example"),  # an ideographic full stop is a dot
    ("http://listed.example\\@evil.test/", "listed.example"),  # a backslash ends the authority
    ("HTTP://Listed.Example.:8080/x", "listed.example"),
    ("http://a:b@host.example:80/", "host.example"),
    ("http://[2001:db8::2]:8080/", "2001:db8::2"),
    ("www.x.example/path", "www.x.example"),
    ("mailto:a@b.example", ""),
])
def test_url_host_is_the_host_a_browser_opens(url, host):
    """URI reputation looks up what the reader's browser would open, however the URL disguises it."""
    from antispam.message import url_host

    assert url_host(url) == host


def test_from_addresses_read_the_field_as_sent():
    """RFC 2047 section 5: an encoded-word is never an address, whatever it decodes to."""
    m = Message(b"From: =?utf-8?q?=3Cx=40attacker=2Etest=3E=2C_Smith?= <ceo@victim.example>\r\n\r\nx\r\n")
    assert m.from_addresses == (("<x@attacker.test>, Smith", "ceo@victim.example"),)
    assert m.from_domain == "victim.example"


def test_charset_names_from_mail_do_not_grow_the_codec_registry():
    """The codec registry keeps every name it is asked about (``encodings`` caches a miss, the
    registry a hit under each spelling).  Mail chose those names: 2,000 messages naming a new
    charset each (and a new spelling of UTF-8 each) added 2,000 entries to ``encodings._cache``
    that no cache of ours could bound.  The same charsets still decode as before."""
    import encodings

    before = len(encodings._cache)
    for i in range(2000):
        bogus, spelling = f"x-bogus-{i}", "utf" + "-" * (1 + i % 40) + "8" + "_" * (i // 40)
        raw = (f"Content-Type: text/plain; charset={bogus}\nSubject: =?{spelling}?Q?caf=C3=A9?=\n\n"
               f"h\u00e9llo\n").encode("latin-1")
        m = Message(raw)
        assert m.subject == "caf\u00e9" and "llo" in m.text
    assert len(encodings._cache) - before < 50
    # the usual spellings are read as before
    for cs, text in (("UTF-8", "d\u00e9j\u00e0"), ("iso-8859-1", "d\u00e9j\u00e0"), ("latin1", "d\u00e9j\u00e0"),
                     ("windows-1252", "\u20ac"), ("ISO_8859-15", "\u20ac"), ("koi8-r", "\u0416")):
        enc = "cp1252" if cs == "windows-1252" else {"latin1": "latin-1"}.get(cs, cs)
        m = Message(b"Content-Type: text/plain; charset=" + cs.encode() + b"\n\n" + text.encode(enc) + b"\n")
        assert text in m.text, cs
