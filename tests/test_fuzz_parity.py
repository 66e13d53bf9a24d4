"""Defects found by differential fuzzing (compiled kernels against their twin, and ``Engine.scan`` on
mutated mail), and a small seeded property test that keeps guarding both.

Every test runs with each kernel module in turn (``fastscore.impl`` swapped in the one process, as
``ANTISPAM_NO_EXTENSIONS=1`` would choose at import), on small hand-written inputs.
"""

from __future__ import annotations

import random

import pytest

from antispam import Engine, fastscore
from antispam import _fastscore_py as twin
from antispam.message import Message, decode_rfc2047

try:
    from antispam import _fastscore as compiled
except ImportError:  # built without a compiler: the twin alone
    compiled = None

IMPLS = [pytest.param(twin, id="python"),
         pytest.param(compiled, id="cython", marks=pytest.mark.skipif(compiled is None, reason="compiled core not built"))]


@pytest.fixture(params=IMPLS)
def impl(request, monkeypatch):
    """The kernel module under test, made the active one."""
    monkeypatch.setattr(fastscore, "impl", request.param)
    return request.param


@pytest.fixture(scope="module")
def engine():
    return Engine()


def _clean_verdict(engine, raw: bytes):
    v = engine.scan(raw)
    assert "CHECK_ERROR" not in v.symbols, v.symbols["CHECK_ERROR"].options
    return v


# --------------------------------------------------------------------------- charsets that are not text codecs


@pytest.mark.parametrize("charset", ["rot13", "hex", "base64", "zlib", "bz2", "uu", "quopri", "idna", "punycode", "undefined"])
def test_a_charset_naming_a_codec_that_cannot_decode_text_is_unknown(impl, engine, charset):
    """``codecs.lookup`` finds bytes-to-bytes and str-to-str codecs too; ``bytes.decode`` with one of them
    raises ``LookupError``, and idna, punycode and undefined raise a bare ``UnicodeError``.  An encoded-word
    ``=?rot13?Q?...?=`` in a Subject made ``Engine.scan`` itself raise (from ``Message.headers``)."""
    raw = (f"From: a@example.com\nTo: b@example.net\nSubject: =?{charset}?Q?xn--abc=FF?=\n"
           f"Content-Type: text/plain; charset={charset}\n\nhello \xff there\n").encode("latin-1")
    _clean_verdict(engine, raw)
    m = Message(raw)
    assert "xn--abc" in m.subject
    assert "hello" in m.text
    defects: set[str] = set()
    assert decode_rfc2047(f"=?{charset}?B?4pyT?=", defects) == "\u2713"  # read as UTF-8, as an unknown charset is
