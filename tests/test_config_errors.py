"""Configuration mistakes are load-time errors that name the key and the file.

A spam filter that silently reads a typo as "off", a negative timeout as "time out at once" or
``inf`` as a score (which then prints invalid JSON) fails in the worst way: quietly.  Each case
here was accepted before, or failed with a traceback instead of ``antispam: ... (key ..., in FILE)``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from pathlib import Path

import pytest

import antispam.config as config_module
from antispam.check import Check
from antispam.cli import main
from antispam.config import Config
from antispam.engine import Engine, default_checks
from antispam.errors import ConfigError
from antispam.resources import samples_dir
from antispam.store.memory import MemoryStore

SAMPLES = samples_dir()


def write(tmp_path: Path, text: str | bytes, name: str = "site.toml") -> Path:
    f = tmp_path / name
    f.write_bytes(text if isinstance(text, bytes) else text.encode())
    return f


def load_error(tmp_path: Path, text: str | bytes) -> tuple[ConfigError, Path]:
    """The ConfigError ``Config.load`` raises for a site file holding ``text``."""
    f = write(tmp_path, text)
    with pytest.raises(ConfigError) as ei:
        Config.load(f)
    return ei.value, f


def cli_scan(capsys: pytest.CaptureFixture[str], path: Path) -> tuple[int, str]:
    """``antispam -c FILE scan samples/``: exit code and stderr."""
    code = main(["-c", str(path), "scan", "--no-progress", str(SAMPLES)])
    return code, capsys.readouterr().err


def assert_cli_names(capsys: pytest.CaptureFixture[str], path: Path, key: str) -> str:
    code, err = cli_scan(capsys, path)
    assert code == 2, err
    assert err.startswith("antispam: ") and "Traceback" not in err
    assert repr(key) in err and str(path) in err
    return err


# --------------------------------------------------------------- 9: infinite and out-of-range numbers

@pytest.mark.parametrize("text, key", [
    ("[scores]\nGTUBE = inf\n", "scores.GTUBE"),
    ("[scores]\nGTUBE = -inf\n", "scores.GTUBE"),
    ("[actions]\nreject = inf\n", "actions.reject"),
    ("[groups.mime]\nmax_score = inf\n", "groups.mime.max_score"),
    ("[engine]\nscan_deadline = inf\n", "engine.scan_deadline"),
    ("[profiles.strict]\nscores = { GTUBE = -inf }\n", "profiles.strict.scores.GTUBE"),
])
def test_infinite_numbers_are_rejected(tmp_path, text, key):
    err, f = load_error(tmp_path, text)
    assert err.key == key and err.source == str(f) and "finite" in str(err)


@pytest.mark.parametrize("text, key", [
    ("[engine]\nscan_deadline = -5.0\n", "engine.scan_deadline"),
    ("[engine]\nscan_deadline = 0\n", "engine.scan_deadline"),
    ("[dns]\ntimeout = -1.0\n", "dns.timeout"),
    ("[dns]\nattempts = 0\n", "dns.attempts"),
    ("[dns]\nport = 70000\n", "dns.port"),
    ("[servers.spamd]\ntimeout = -1.0\n", "servers.spamd.timeout"),
    ("[servers.milter]\nshutdown_timeout = -3\n", "servers.milter.shutdown_timeout"),
    ("[servers.smtp]\nnext_hop_timeout = 0\n", "servers.smtp.next_hop_timeout"),
    ("[servers.smtp]\nnext_hop_data_timeout = 0\n", "servers.smtp.next_hop_data_timeout"),
    ("[store]\ntimeout = -0.5\n", "store.timeout"),
    ("[history]\nbad_ratio = 7.0\n", "history.bad_ratio"),
    ("[history]\ngood_ratio = -2.0\n", "history.good_ratio"),
    ("[history]\nhalf_life_days = 0\n", "history.half_life_days"),
    ("[greylist]\ndelay = -1\n", "greylist.delay"),
    ("[greylist]\nipv4_prefix = 33\n", "greylist.ipv4_prefix"),
    ("[ratelimit]\nip_rate = -1\n", "ratelimit.ip_rate"),
    ("[classifier]\nlearn_rate = -0.3\n", "classifier.learn_rate"),
    ("[classifier]\nclues = 65\n", "classifier.clues"),               # past the kernels' MAX_CLUES
    ("[ratelimit]\nenabled = true\nip_rate = 60\n", "ratelimit.ip_burst"),  # a rate with no burst
    ("[servers.milter]\nreject_reply = \"550 no\"\n", "servers.milter.reject_reply"),
    # RFC 5321 4.5.3.1.5: 512 octets a line with its CRLF; libmilter: at most 32 lines
    ("[servers.milter]\nreject_reply = \"550 5.7.1 " + "x" * 501 + "\"\n", "servers.milter.reject_reply"),
    ("[servers.smtp]\ntempfail_reply = \"451 4.7.1 " + "x" * 501 + "\"\n", "servers.smtp.tempfail_reply"),
    ("[servers.milter]\nreject_reply = \"" + "550-5.7.1 x\\n" * 32 + "550 5.7.1 x\"\n", "servers.milter.reject_reply"),
])
def test_out_of_range_numbers_are_rejected(tmp_path, text, key):
    err, f = load_error(tmp_path, text)
    assert err.key == key and err.source == str(f)


def test_out_of_range_overrides_are_rejected():
    with pytest.raises(ConfigError) as ei:
        Config.load(overrides={"engine": {"scan_deadline": -5.0}})
    assert ei.value.key == "engine.scan_deadline" and ei.value.source == "<overrides>"


def test_a_dotted_override_says_how_to_nest_it():
    """``Config.load(overrides={"rules.engine": "python"})`` named ``rules`` among the known sections it
    refused: the error now says what to write."""
    with pytest.raises(ConfigError, match=r"tables nest as in the file: \{'rules': \{'engine': \.\.\.\}\}"):
        Config.load(overrides={"rules.engine": "python"})
    with pytest.raises(ConfigError, match=r"known: actions, auth"):
        Config.load(overrides={"rulez": {}})


def test_in_range_edges_are_accepted():
    cfg = Config.load(overrides={"history": {"bad_ratio": 1, "good_ratio": 0}, "servers": {"spamd": {"shutdown_timeout": 0, "port": 0}},
                                 "dnsbl": {"health_interval": 0}, "classifier": {"learn_rate": 0}, "scores": {"GTUBE": -1e300}})
    assert cfg.history.bad_ratio == 1.0 and cfg.servers.spamd.shutdown_timeout == 0.0


def test_infinite_score_cannot_reach_the_json_output(tmp_path, capsys):
    """It used to print ``"score": Infinity``, which no JSON parser accepts."""
    f = write(tmp_path, "[scores]\nGTUBE = inf\n")
    code = main(["-c", str(f), "scan", "--json", str(SAMPLES / "gtube.eml")])
    out, err = capsys.readouterr()
    assert code == 2 and "Infinity" not in out and "'scores.GTUBE'" in err and str(f) in err


def test_negative_deadline_on_the_command_line(tmp_path, capsys):
    assert_cli_names(capsys, write(tmp_path, "[engine]\nscan_deadline = -5.0\n"), "engine.scan_deadline")


def _numeric_fields(cls: type, prefix: str) -> typing.Iterator[tuple[str, type]]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            yield from _numeric_fields(hint, f"{prefix}.{f.name}")
        elif hint in (int, float):
            yield f"{prefix}.{f.name}", hint


def test_every_float_setting_has_bounds():
    """A new float knob must say its range: an unbounded one is how a negative timeout got in."""
    missing = [key for name in config_module._SECTIONS
               for key, hint in _numeric_fields(typing.get_type_hints(Config)[name], name)
               if hint is float and config_module._rule_for(key) is None]
    assert not missing


def test_bounds_table_names_real_settings():
    """A misspelt key in the table would bound nothing."""
    known = {key for name in config_module._SECTIONS
             for key, _ in _fields_with_servers_wildcard(typing.get_type_hints(Config)[name], name)}
    assert set(config_module._RULES) <= known


def _fields_with_servers_wildcard(cls: type, prefix: str) -> typing.Iterator[tuple[str, type]]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _fields_with_servers_wildcard(hints[f.name], key)
        else:
            yield key, hints[f.name]
            if prefix.startswith("servers."):
                yield f"servers.*.{f.name}", hints[f.name]


def test_the_embedded_defaults_obey_the_rules():
    cfg = Config.default()
    for name in config_module._SECTIONS:
        section = getattr(cfg, name)
        for key, _ in _fields_with_servers_wildcard(type(section), name):
            if "*" in key:
                continue
            value = cfg
            for part in key.split("."):
                value = getattr(value, part)
            config_module._check_value(value, key, "<defaults>")
    assert all(math.isfinite(v) for v in cfg.scores.values())


# --------------------------------------------------------------- 10: typos in enumerated settings

@pytest.mark.parametrize("text, key, valid", [
    ('[store]\non_failure = "sometimes"\n', "store.on_failure", "closed"),
    ('[greylist]\nmode = "whatever"\n', "greylist.mode", "triplet"),
    ('[rules]\nengine = "turbo"\n', "rules.engine", "hyperscan"),
    ('[auth]\ndmarc_mode = "rfc1234"\n', "auth.dmarc_mode", "rfc7489"),
    ('[servers]\nevent_loop = "trio"\n', "servers.event_loop", "uvloop"),
    ('[servers.smtp]\nmode = "in-queue"\n', "servers.smtp.mode", "before-queue"),
    ('[ratelimit]\naction = "rejekt"\n', "ratelimit.action", "soft reject"),
    ('[store]\nurl = "mysql://x"\n', "store.url", "redis://"),
    ('[store]\nurl = "sqlite://"\n', "store.url", "sqlite:///"),
])
def test_enumerated_settings_are_checked_at_load(tmp_path, text, key, valid):
    err, f = load_error(tmp_path, text)
    assert err.key == key and err.source == str(f) and valid in str(err)


def test_enumerated_settings_accept_their_values():
    cfg = Config.load(overrides={"store": {"on_failure": "closed", "url": "sqlite:///tmp/x.db"}, "greylist": {"mode": "content"},
                                 "rules": {"engine": "python"}, "ratelimit": {"action": ""}, "auth": {"dmarc_mode": "rfc7489"}})
    assert cfg.store.on_failure == "closed" and cfg.ratelimit.action == ""


@pytest.mark.parametrize("text, key", [
    ('[store]\non_failure = "sometimes"\n', "store.on_failure"),
    ('[rules]\nengine = "turbo"\n', "rules.engine"),
    ('[store]\nurl = "mysql://x"\n', "store.url"),
    ('[greylist]\nmode = "whatever"\nenabled = true\n', "greylist.mode"),
])
def test_enumerated_typos_on_the_command_line(tmp_path, capsys, text, key):
    assert_cli_names(capsys, write(tmp_path, text), key)


def test_unknown_rules_engine_is_a_config_error_in_the_matcher():
    from antispam.ruleset.matcher import make_matcher

    with pytest.raises(ConfigError) as ei:
        make_matcher(None, "turbo")  # type: ignore[arg-type]
    assert ei.value.key == "rules.engine" and "python" in str(ei.value)


def test_disabled_checks_typo_is_an_error_listing_the_checks(tmp_path):
    f = write(tmp_path, '[engine]\ndisabled_checks = ["claasifier"]\n')
    with pytest.raises(ConfigError) as ei:
        Engine(Config.load(f))
    e = ei.value
    assert e.key == "engine.disabled_checks" and e.source == str(f)
    assert "'claasifier'" in str(e) and "classifier" in str(e).split("claasifier", 1)[1]


def test_disabled_checks_typo_on_the_command_line(tmp_path, capsys):
    err = assert_cli_names(capsys, write(tmp_path, '[engine]\ndisabled_checks = ["claasifier"]\n'), "engine.disabled_checks")
    assert "gtube" in err


def test_disabled_checks_may_name_checks_that_are_off():
    """greylist is off by default: disabling it anyway (say, in a shared file) is not a mistake."""
    e = Engine(Config.load(overrides={"engine": {"disabled_checks": ["greylist", "gtube"]}}))
    assert "gtube" not in {c.name for c in e.checks}


def test_disabled_checks_may_name_custom_checks():
    class Mine(Check):
        name = "mine"

    class Other(Check):
        name = "other"

    e = Engine(Config.load(overrides={"engine": {"disabled_checks": ["mine", "gtube"]}}), checks=[Mine(), Other()])
    assert [c.name for c in e.checks] == ["other"]
    with pytest.raises(ConfigError) as ei:
        Engine(Config.load(overrides={"engine": {"disabled_checks": ["mien"]}}), checks=[Mine()])
    assert "mine" in str(ei.value) and ei.value.source == "<overrides>"


def test_builtin_check_names_cover_every_default_check():
    """Every check a default factory can build, with everything switched on, is a known name."""
    from antispam.engine import builtin_check_names

    cfg = Config.load(overrides={"dns": {"nameservers": ["127.0.0.1"]}, "auth": {"arc": True},
                                 "engine": {"authserv_id": "mx.test"},
                                 "greylist": {"enabled": True}, "history": {"enabled": True},
                                 "ratelimit": {"enabled": True, "ip_rate": 1, "ip_burst": 1},
                                 "dnsbl": {"lists": {"bl": {"zone": "bl.test"}}}})
    names = {c.name for c in default_checks(cfg, MemoryStore())}
    assert names == set(builtin_check_names())


# --------------------------------------------------------------- 11: a -c file that cannot be read

def test_directory_as_config_file(tmp_path, capsys):
    d = tmp_path / "adir"
    d.mkdir()
    with pytest.raises(ConfigError) as ei:
        Config.load(d)
    assert ei.value.source == str(d)
    code, err = cli_scan(capsys, d)
    assert code == 2 and str(d) in err and "Traceback" not in err


def test_non_utf8_config_file(tmp_path, capsys):
    f = write(tmp_path, b"[engine]\nscan_deadline = 10.0\n\xff\xfe = 1\n")
    with pytest.raises(ConfigError) as ei:
        Config.load(f)
    assert ei.value.source == str(f) and "UTF-8" in str(ei.value)
    code, err = cli_scan(capsys, f)
    assert code == 2 and str(f) in err


def test_unreadable_config_file(tmp_path, monkeypatch):
    """No read permission (simulated: these tests may run as root, who reads anything)."""
    f = write(tmp_path, "[engine]\n")

    def denied(*args: object, **kwargs: object) -> typing.NoReturn:
        raise PermissionError(13, "Permission denied", str(f))

    monkeypatch.setattr(config_module, "open", denied, raising=False)
    with pytest.raises(ConfigError) as ei:
        Config.load(f)
    assert ei.value.source == str(f) and "Permission denied" in str(ei.value)


def test_missing_config_file_names_its_source(tmp_path):
    with pytest.raises(ConfigError) as ei:
        Config.load(tmp_path / "nope.toml")
    assert ei.value.source == str(tmp_path / "nope.toml")


# --------------------------------------------------------------- 12: errors name the full key and the file

@pytest.mark.parametrize("text, key", [
    ("[profiles.strict]\nactions = { rejekt = 8.0 }\n", "profiles.strict.actions.rejekt"),
    ("[profiles.strict]\ngroups = { mime = { max_scor = 3.0 } }\n", "profiles.strict.groups.mime.max_scor"),
    ("[profiles.strict]\nactions = 3\n", "profiles.strict.actions"),
    ("[profiles.strict]\ngroups = { mime = 3 }\n", "profiles.strict.groups.mime"),
])
def test_profile_errors_name_the_profile_key(tmp_path, text, key):
    err, f = load_error(tmp_path, text)
    assert err.key == key and err.source == str(f)


def test_profile_error_on_the_command_line(tmp_path, capsys):
    assert_cli_names(capsys, write(tmp_path, "[profiles.strict]\nactions = { rejekt = 8.0 }\n"), "profiles.strict.actions.rejekt")


# --------------------------------------------------------------- 13: nameservers are addresses

@pytest.mark.parametrize("entry", ["resolver.example", "127.0.0.1:53", "", "::1::"])
def test_nameserver_must_be_an_ip_address(tmp_path, entry):
    err, f = load_error(tmp_path, f'[dns]\nnameservers = ["127.0.0.1", {json.dumps(entry)}]\n')
    assert err.key == "dns.nameservers" and err.source == str(f) and repr(entry) in str(err)


def test_nameserver_addresses_are_accepted():
    cfg = Config.load(overrides={"dns": {"nameservers": ["127.0.0.1", "::1", "2001:db8::53"]}})
    assert cfg.dns.nameservers == ("127.0.0.1", "::1", "2001:db8::53")


def test_nameserver_name_on_the_command_line(tmp_path, capsys):
    assert_cli_names(capsys, write(tmp_path, '[dns]\nnameservers = ["resolver.example"]\n'), "dns.nameservers")


def test_the_largest_clue_count_scans():
    """``classifier.clues`` at its bound still lists clues: the bound is the kernels' own."""
    v = Engine(Config.load(overrides={"classifier": {"clues": 64}})).scan((SAMPLES / "spam-pharmacy.eml").read_bytes())
    assert "CHECK_ERROR" not in v.symbols and any(n.startswith("BAYES_") for n in v.symbols)
