"""Tokenizer: namespaces, limits, unicode, and the hash pinned by fixed vectors (both kernels)."""

from __future__ import annotations

import pytest

from antispam import _fastscore_py as twin
from antispam import fastscore
from antispam.classifier.tokenizer import (DEFAULT_SEED, MAX_TEXT_CHARS, TokenizerSpec, features, meta_tokens,
                                           token_strings, views)
from antispam.message import Message

SPEC = TokenizerSpec()


def _kernels():
    ks = [twin]
    try:
        from antispam import _fastscore

        ks.append(_fastscore)
    except ImportError:
        pass
    return ks


KERNELS = _kernels()
IDS = [k.__name__.rsplit(".", 1)[-1] for k in KERNELS]

MULTIPART = b"""From: "Cheap Pills" <offers@pharma.example>
To: a@x.example, b@y.example
Reply-To: collect@elsewhere.example
Subject: Your ORDER is ready
X-Mailer: Bulk Sender Pro 5.1
Content-Type: multipart/mixed; boundary="BB"

--BB
Content-Type: text/html; charset="iso-8859-1"

<html><body><p>Buy now at <a href="http://shop.pills.example/x">http://other.example</a></p></body></html>
--BB
Content-Type: application/zip; name="invoice.zip"
Content-Transfer-Encoding: base64

UEsDBAo=
--BB--
"""


def test_word_rules_limits_and_namespaces():
    toks = twin.tokens("re: hello", "e-mail me at bob@example.com... it's $100 a-b x " + "y" * 21 + " " + "z" * 120,
                       ["header:x"], False)
    assert toks[:2] == ["subject:re", "subject:hello"]
    body = toks[2:-1]
    # punctuation splits, inner . - ' stay, ends are trimmed, one-letter words are dropped
    assert body[:6] == ["e-mail", "me", "at", "bob", "example.com", "it's"]
    assert "$100" in body and "a-b" in body and "x" not in body
    # over-long words become shape tokens: first char and length // 10 (capped at 9)
    assert "skip:y:2" in body and "skip:z:9" in body
    assert toks[-1] == "header:x"


def test_bigrams_follow_kept_words_and_break_at_skip_tokens():
    toks = twin.tokens("", "click a here " + "q" * 30 + " now then", [], True)
    assert toks == ["click", "here", "bi:click here", "skip:q:3", "now", "then", "bi:now then"]
    assert "bi:here now" not in toks


def test_subject_words_never_make_bigrams():
    assert twin.tokens("free money", "", [], True) == ["subject:free", "subject:money"]


@pytest.mark.parametrize("k", KERNELS, ids=IDS)
def test_hash_fixed_vectors(k):
    """These ids pin the feature space: changing them silently breaks every shipped model."""
    vectors = {"viagra": 364992, "subject:free": 1036393, "from:dom:example.com": 139399,
               "bi:click here": 336591, "straße": 960630, "日本語": 746390, "skip:x:3": 374581, "": 189550}
    for tok, fid in vectors.items():
        assert k.feature_id(tok, DEFAULT_SEED, 20) == fid, tok
    assert twin.hash_bytes("straße".encode(), DEFAULT_SEED) == 0x7C6909499D77A13F


@pytest.mark.parametrize("k", KERNELS, ids=IDS)
def test_features_are_sorted_distinct_ids_of_the_tokens(k):
    subject, text, meta = "hello hello", "spam spam eggs", ["from:dom:x.example", "from:dom:x.example"]
    got = k.features(subject, text, meta, 7, 20, False)
    want = sorted({twin.feature_id(t, 7, 20) for t in ["subject:hello", "spam", "eggs", "from:dom:x.example"]})
    assert got.dtype.name == "uint32"
    assert got.tolist() == want


@pytest.mark.parametrize("k", KERNELS, ids=IDS)
def test_seed_and_bits_change_the_space(k):
    a = k.features("", "alpha beta gamma", [], 1, 20, False)
    b = k.features("", "alpha beta gamma", [], 2, 20, False)
    c = k.features("", "alpha beta gamma", [], 1, 8, False)
    assert a.tolist() != b.tolist()
    assert max(c.tolist()) < 256
    with pytest.raises(ValueError):
        k.features("", "x", [], 1, 0, False)
    with pytest.raises(TypeError):
        k.features("", "x", [b"not str"], 1, 20, False)


@pytest.mark.parametrize("k", KERNELS, ids=IDS)
def test_unicode_words(k):
    # non-ASCII letters are word characters; CJK runs without spaces are long words (skip tokens)
    toks = twin.tokens("", "überweisung straße ∑∑ 日本語テキストの長い長い長い文章がここにありますよねえ 😀😀", [], False)
    assert toks[:2] == ["überweisung", "straße"]
    assert "∑∑" not in toks and not any("😀" in t for t in toks)
    assert toks[2] == "skip:日:2"
    # a lone surrogate (possible in decoded junk) separates words, and in a meta token it hashes
    # like 'surrogatepass' UTF-8; nothing crashes
    f = k.features("", "ab\ud800cd", ["m:\ud800"], 3, 20, False)
    assert f.tolist() == sorted(twin.feature_id(t, 3, 20) for t in ("ab", "cd", "m:\ud800"))


def test_views_fold_case_and_bound_text():
    msg = Message(b"Subject: BIG Offer\n\n" + b"WORD " * (MAX_TEXT_CHARS // 4))
    subject, text, meta = views(msg)
    assert subject == "big offer"
    assert text.startswith("word word") and len(text) == MAX_TEXT_CHARS


def test_meta_tokens_cover_headers_mime_urls_and_attachments():
    meta = meta_tokens(Message(MULTIPART))
    for tok in ["from:dom:pharma.example", "from:tld:example", "from:name:cheap", "from:name:pills",
                "reply-to:other-domain", "to:n:2", "header:x-mailer", "header:x-mailer:bulk",
                "mime:text/html", "mime:application/zip", "mime:html-only", "charset:iso-8859-1",
                "attach:zip", "url:host:shop.pills.example", "url:dom:pills.example", "url:anchor-mismatch",
                "rcvd:n:0"]:
        assert tok in meta, tok
    assert "header:in-reply-to" not in meta and "mime:image-only" not in meta


def test_collection_headers_are_not_read():
    base = b"From: a@b.example\nSubject: s\n"
    extra = b"Delivery-Date: Mon, 1 Jan 2002\nX-Keywords: junk\nX-Status: RO\nX-Spam-Status: Yes\nReturn-Path: <x@y>\n"
    a = Message(base + b"\nbody words here")
    b = Message(base + extra + b"\nbody words here")
    assert features(a, SPEC).tolist() == features(b, SPEC).tolist()


def test_reply_headers_make_tokens():
    msg = Message(b"From: Ann <ann@lists.example>\nIn-Reply-To: <1@x>\nSubject: Re: build\n\nok")
    toks = token_strings(msg, SPEC)
    assert "header:in-reply-to" in toks and "subject:re" in toks and "from:name:ann" in toks


def test_bad_mail_still_tokenizes():
    for raw in (b"", b"\xff\xfe\x00garbage", b"Content-Type: multipart/mixed\n\nno boundary", b"Subject: =?bad?Q?x?=\n\n"):
        ids = features(Message(raw), SPEC)
        assert ids.dtype.name == "uint32" and len(ids) > 0  # meta tokens are always there


def test_active_kernel_is_used_by_default():
    msg = Message(MULTIPART)
    assert features(msg, SPEC).tolist() == features(msg, SPEC, impl=fastscore.impl).tolist()


SHAPES = """From: Deals <sales2024@mailer.example>
To: you@x.example
Subject: FREE MONEY NOW!!!      ref 77
Message-ID: <20240101.ABCdef99@bulk.other.example>
X-Face: abc
Content-Type: text/plain; charset=utf-8

Привет, see http://mailer.example/cgi-bin/track?id=5 and mailto:stop@mailer.example
""".encode()


def test_version_2_meta_tokens():
    meta = meta_tokens(Message(SHAPES))
    for tok in ["hname:x-face", "hname:message-id", "mid:shape:9.Aa9", "mid:dom:other", "from:local:a9",
                "from:local:digits", "from:localw:sales2024"]:
        assert tok in meta, tok
    assert "mid:none" not in meta
    # groups tried and dropped (version 4): no URL path words, subject shape or script tokens
    assert not [t for t in meta if t.startswith(("url:path:", "subject:caps:", "script:"))]


def test_version_2_tokens_of_a_plain_reply():
    raw = b"From: Ann <ann@lists.example>\nMessage-ID: <a1@mx.lists.example>\nSubject: re: build\n\nok, thanks"
    meta = meta_tokens(Message(raw))
    assert "mid:dom:same" in meta and "mid:shape:a9" in meta and "from:local:a" in meta
    assert "from:local:digits" not in meta
    assert "mid:none" in meta_tokens(Message(b"From: a@b.example\n\nno id"))


def test_version_3_software_shapes():
    raw = (b"Received: from mail.example.org (HELO mx1.example.org) by mx.example.net\n"
           b"From: Bob <bob@example.org>\nDate: Mon, 2 Sep 2002 10:00:00 +0100\n"
           b"X-Mailer: Mutt 1.4i\nSubject: hi\n\ntext")
    meta = meta_tokens(Message(raw))
    assert "date:shape:a, 9 a 9 9:9:9 +9" in meta and "date:tz:+0100" in meta
    assert "mailer:Aa 9.9a" in meta
    assert [t for t in meta if t.startswith("rcvd:helo:")] == ["rcvd:helo:a9.a.a"]
    bare = meta_tokens(Message(b"From: a@b.example\nUser-Agent: KMail/1.4\n\nx"))
    assert "date:none" in bare and "mailer:Aa/9.9" in bare and not [t for t in bare if t.startswith("rcvd:helo:")]


def test_version_5_recipient_local_shape():
    raw = (b"From: Shop <news@shop.example>\nTo: Ann Lee <ann.lee+shop42@mail.example>, bob@mail.example\n"
           b"Subject: offers\n\ntext")
    meta = meta_tokens(Message(raw))
    # the first recipient only, by shape (never the address itself)
    assert [t for t in meta if t.startswith("to:local:")] == ["to:local:a.a+a9"]
    assert not [t for t in meta if "ann" in t or "shop42" in t]
    # no recipient address: no token (and no crash)
    assert not [t for t in meta_tokens(Message(b"From: a@b.example\nTo: undisclosed-recipients:;\n\nx"))
                if t.startswith("to:local:")]


def test_version_5_list_mail_conjunctions():
    def mail(extra: bytes, html: bool) -> Message:
        ctype = b"text/html" if html else b"text/plain"
        return Message(b"From: a@b.example\nTo: list@lists.example\n" + extra
                       + b"Subject: s\nContent-Type: " + ctype + b"\n\n<p>hello</p>\n")

    def lst(m: Message) -> list[str]:
        return sorted(t for t in meta_tokens(m) if t.startswith("list:"))

    listed = b"List-Id: <talk.lists.example>\n"
    assert lst(mail(listed, html=True)) == ["list:html", "list:new:html"]
    assert lst(mail(listed + b"In-Reply-To: <x@y.example>\n", html=True)) == ["list:html"]
    assert lst(mail(b"Mailing-List: contact talk-help@lists.example\n", html=True)) == ["list:html", "list:new:html"]
    assert lst(mail(listed, html=False)) == []
    assert lst(mail(b"", html=True)) == []


def test_version_6_list_membership_is_not_a_token():
    raw = (b"From: a@b.example\nTo: talk@lists.example\nList-Id: <talk.lists.example>\n"
           b"List-Unsubscribe: <mailto:leave@lists.example>\nPrecedence: list\nSubject: s\n"
           b"Content-Type: text/html\n\n<p>buy now</p>\n")
    meta = meta_tokens(Message(raw))
    # which lists a mailbox is on says nothing about a message: no presence token, no hname: token
    assert not [t for t in meta if "list-id" in t or "list-unsubscribe" in t]
    # the sender-side precedence and the list conjunctions stay
    assert "header:precedence" in meta and "header:precedence:list" in meta
    assert "list:html" in meta and "list:new:html" in meta
