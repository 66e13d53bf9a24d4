"""Property tests: no byte string makes Message or the default Engine raise or hang."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from antispam import Engine
from antispam.message import Message
from antispam.resources import samples_dir

SAMPLES = [p.read_bytes() for p in sorted(samples_dir().glob("*.eml"))]
ENGINE = Engine()

# Fragments that exercise the parser's branches when spliced into messages.
FRAGMENTS = [b"\n", b"\r\n", b"\n\n", b"Content-Type: multipart/mixed; boundary=\"b\"\n", b"--b\n", b"--b--\n",
             b"Content-Transfer-Encoding: base64\n", b"Content-Transfer-Encoding: quoted-printable\n", b"=?utf-8?B?",
             b"?=", b"=?x?Q?=FF?=", b"<a href=\"", b"<script>", b"http://", b"www.", b"\xff\xfe", b"\x00", b"=\n",
             b"charset=\"bogus\"", b"Content-Type: text/html\n", b"message/rfc822\n", b"Received: from [", b":", b"From "]


def _check(raw: bytes) -> None:
    m = Message(raw).parse_all()
    assert isinstance(m.text, str) and isinstance(m.urls, tuple)
    v = ENGINE.scan(raw)
    assert v.action in ("no action", "greylist", "add header", "rewrite subject", "soft reject", "reject")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4000))
def test_random_bytes(raw):
    _check(raw)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SAMPLES), st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 200), st.sampled_from(FRAGMENTS)), max_size=8))
def test_mutated_samples(sample, edits):
    raw = bytearray(sample)
    for pos, cut, frag in edits:
        pos %= len(raw) + 1
        raw[pos:pos + cut] = frag
    _check(bytes(raw))
