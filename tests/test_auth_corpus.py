"""Real mail through every authentication check: no crash, and every message gets its results.

The corpus predates DKIM, so every other message is signed here (dkimpy,
our test key, d=corpus.test) before the scan: those must verify whatever
their MIME structure, line endings or header oddities.  The loopback DNS
server knows none of the senders' domains, so SPF is none and no DMARC
policy exists.  Nothing may raise (no CHECK_ERROR), and each check reports
once per message.
"""

from __future__ import annotations

import re

import pytest

from antispam import Envelope
from antispam.config import Config
from authkeys import auth_engine, rsa_key, sign
from dnsserver import DNSServer


@pytest.fixture(scope="module")
def server():
    with DNSServer({"s._domainkey.corpus.test": [("TXT", rsa_key().record)]}) as s:
        yield s


def test_corpus_messages_through_spf_dkim_dmarc_arc(server, corpus_test):
    e = auth_engine(Config().merged({
        "dns": {"nameservers": [server.host], "port": server.port, "timeout": 0.5, "attempts": 1},
        "auth": {"arc": True, "trusted_authserv_ids": ["mx.example.net"]},
        "engine": {"authserv_id": "mx.test"}}))
    messages = corpus_test[:250]
    signed = 0
    for i, m in enumerate(messages):
        raw = m.data
        if i % 2 == 0:
            try:
                raw = sign(raw, "corpus.test", "s", rsa_key(), headers=(b"from", b"subject", b"date"))
            except Exception:  # dkimpy refuses some messages (no From, unparsable headers): leave unsigned
                raw = m.data
        sender = re.search(rb"^From:.*?([\w.+-]+@[\w.-]+)", m.data, re.M | re.I)
        env = Envelope(client_ip="192.0.2.1", helo="mx.sender.example",
                       mail_from=sender.group(1).decode() if sender else "")
        v = e.scan(raw, env)
        assert "CHECK_ERROR" not in v.symbols and "CHECK_TIMEOUT" not in v.symbols, (m.name, v.symbols)
        names = set(v.symbols)
        assert len(names & {"R_SPF_NA", "R_SPF_PERMFAIL", "R_SPF_TEMPFAIL"}) == 1, (m.name, names)
        if raw is not m.data:
            signed += 1
            assert v.symbols.get("R_DKIM_ALLOW") and v.symbols["R_DKIM_ALLOW"].options == ("corpus.test:s",), (m.name, names)
        else:
            assert names & {"R_DKIM_NA", "R_DKIM_PERMFAIL", "R_DKIM_TEMPFAIL"}, (m.name, names)
        assert len(names & {"DMARC_NA", "DMARC_TEMPFAIL"}) == 1, (m.name, names)
        assert not names & {"R_SPF_ALLOW", "DMARC_POLICY_ALLOW"}  # nothing else can pass here
    assert signed >= 0.4 * len(messages), signed
