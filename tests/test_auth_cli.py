"""``antispam auth`` against a loopback DNS server."""

from __future__ import annotations

import json

import pytest

from antispam.cli import main
from authkeys import message, rsa_key, sign
from dnsserver import DNSServer


@pytest.fixture(scope="module")
def server():
    zone = {
        "example.org": [("TXT", "v=spf1 ip4:192.0.2.0/24 -all")],
        "_dmarc.example.org": [("TXT", "v=DMARC1; p=reject")],
        "rsa._domainkey.example.org": [("TXT", rsa_key().record)],
    }
    with DNSServer(zone) as s:
        yield s


def test_auth_command_prints_results(server, tmp_path, capsys):
    f = tmp_path / "m.eml"
    f.write_bytes(sign(message(), "example.org", "rsa", rsa_key()))
    ns = f"{server.host}#{server.port}"
    assert main(["auth", str(f), "--ip", "203.0.113.9", "--mail-from", "a@example.org", "--nameserver", ns, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["symbols"]) >= {"R_SPF_FAIL", "R_DKIM_ALLOW", "DMARC_POLICY_ALLOW"}
    assert "dmarc=pass" in out["authentication_results"]
    assert main(["auth", str(f), "--ip", "192.0.2.1", "--mail-from", "a@example.org", "--nameserver", ns]) == 0
    text = capsys.readouterr().out
    assert text.startswith("Authentication-Results: ") and "R_SPF_ALLOW" in text


def test_auth_command_needs_a_nameserver(tmp_path, capsys):
    f = tmp_path / "m.eml"
    f.write_bytes(message())
    assert main(["auth", str(f)]) == 2
    assert "no nameserver" in capsys.readouterr().err


def test_auth_command_usage_mistakes_are_one_line(tmp_path, capsys):
    """A message that cannot be read, or a resolver port that is not a number: one line, status 2."""
    f = tmp_path / "m.eml"
    f.write_bytes(message())
    for argv, said in ((["auth", str(tmp_path / "missing.eml"), "--nameserver", "127.0.0.1"],
                        f"antispam: cannot read {tmp_path / 'missing.eml'}: No such file or directory"),
                       (["auth", str(tmp_path), "--nameserver", "127.0.0.1"], f"antispam: cannot read {tmp_path}: "),
                       (["auth", str(f), "--nameserver", "127.0.0.1#x"],
                        "antispam: --nameserver 127.0.0.1#x: the port after '#' must be a number")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(said) and err.count("\n") == 1, err
