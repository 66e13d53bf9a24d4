"""Hostile or odd rule files: both matchers give the same hits, loading never crashes, the cache is never stale."""

from __future__ import annotations

import hashlib
import json
import struct

import pytest

from antispam.engine import Engine
from antispam.errors import RuleError
from antispam.ruleset import compile_rules, load_rules
from antispam.ruleset.check import RulesCheck
from antispam.ruleset.matcher import _MAGIC, HyperscanMatcher, hyperscan_available
from antispam.ruleset.parser import Parser
from antispam.ruleset.regex import backtracking_risk

needs_hs = pytest.mark.skipif(not hyperscan_available(), reason="hyperscan not installed")
ENGINES = ["python", pytest.param("hyperscan", marks=needs_hs)]


def _load(tmp_path, text: str, engine: str, cache=None, name: str = "r.cf"):
    f = tmp_path / name
    f.write_text(text, encoding="utf-8", errors="surrogatepass")
    return load_rules([f], engine=engine, cache_dir=cache, every_rule=True)


def _symbols(lr, msg: bytes) -> list[str]:
    return sorted(Engine(checks=[RulesCheck(lr)]).scan(msg).symbols)


# --- 1: ^ after a final newline, \B on an empty buffer (Perl's and Hyperscan's reading)

ENGINE_CASES = [
    ("rawbody T_EMPTY_LINE /^$/m\nbody T_BLANK /^\\s*$/m\n", b"Subject: x\n\nhello\n", []),
    ("rawbody T_EMPTY_LINE /^$/m\n", b"Subject: x\n\nhello\n\nworld\n", ["T_EMPTY_LINE"]),
    ("uri T_URI_EMPTY /^$/\n", b'Subject: x\nContent-Type: text/html\n\n<a href="http://x.test/">x</a>\n', []),
    ("header T_NB Subject =~ /^\\B$/\n", b"Subject: \nFrom: a@b\n\nx\n", ["T_NB"]),
    ("body T_NUL /free\x00money/\n", b"Subject: x\n\nfree stuff\n", []),
]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("rules,msg,want", ENGINE_CASES, ids=["final-nl", "blank-line", "uri-final-nl", "nb-empty", "nul"])
def test_engine_edge_cases(tmp_path, engine, rules, msg, want):
    assert _symbols(_load(tmp_path, rules, engine), msg) == want


@needs_hs
def test_raw_control_bytes_reach_hyperscan_whole(tmp_path):
    for engine in ("python", "hyperscan"):
        lr = _load(tmp_path, "rawbody T_NUL /a\x00b/\nrawbody T_DEL /c\x7fd/\n", engine)
        assert _symbols(lr, b"Subject: x\n\na\x00b c\x7fd\n") == ["T_DEL", "T_NUL"]
        assert _symbols(lr, b"Subject: x\n\na c\n") == []


# --- 3: a uri rule matching the empty string, on a message without links

@pytest.mark.parametrize("engine", ENGINES)
def test_empty_uri_match_without_links(tmp_path, engine):
    lr = _load(tmp_path, "uri T_URI_NOT_HTTPS /^(?!https:)/\nbody T_OTHER /hello/\n", engine)
    assert _symbols(lr, b"Subject: x\n\nhello, no links here\n") == ["T_OTHER", "T_URI_NOT_HTTPS"]


# --- 4: polynomial backtracking refused, with file:line

@pytest.mark.parametrize("pattern", ["(?:.*?,){30}P", "(?:a{1,32}){1,32}b", ".*.*.*.*.*=", ".*,.*,.*,.*,x"])
def test_polynomial_backtracking_refused(tmp_path, pattern):
    with pytest.raises(RuleError, match=r"r\.cf:2: .*T_SLOW: regex refused"):
        _load(tmp_path, f"body T_OK /ok/\nbody T_SLOW /{pattern}/\n", "python")


@pytest.mark.parametrize("pattern", [rb"(?:\w+\s){0,3}", rb".*.*.*=", rb"(?:.*?,){3}P", rb"(?:&\#\d{1,3}\s{0,64};){10}",
                                     rb"\s*\S*\s*\S*\s*\S*", rb"(?:[a-z0-9-]+\.)+"])
def test_cheap_repeats_still_accepted(pattern):
    assert backtracking_risk(pattern) is None


# --- 5: loading crashes become problems with file:line

@pytest.mark.parametrize("text,line", [
    ("body H /a{4294967296}/\n", 1),
    ("body Q /\\x{110000}/\n", 1),
    ("body Q /\\x{d800}/\n", 1),
    ("body D /" + "(?:" * 1200 + "a" + ")" * 1200 + "/\n", 1),
    ("body A /a/\nmeta M " + "!" * 3000 + "A\n", 2),
    ("body A /a/\nmeta M " + " + ".join(["A"] * 60000) + " > 1\n", 2),
    ("body A /a/\nbody B /b/\nmeta M (A)(B)\n", 3),
    ("body A /a/\nmeta M A > 1 0\n", 2),
], ids=["repeat-2**32", "x110000", "surrogate", "1200-groups", "3000-not", "60000-terms", "call", "two-numbers"])
@pytest.mark.parametrize("engine", ENGINES)
def test_load_errors_reported(tmp_path, engine, text, line):
    with pytest.raises(RuleError, match=rf"r\.cf:{line}: "):
        _load(tmp_path, text, engine)


@pytest.mark.parametrize("engine", ENGINES)
def test_deep_but_reasonable_rules_load(tmp_path, engine):
    text = ("body A /a/\nmeta M " + " + ".join(["(!A)"] * 100) + " > 1\n"
            "body B /" + "(?:" * 60 + "b" + ")" * 60 + "/\n")
    lr = _load(tmp_path, text, engine)
    assert _symbols(lr, b"Subject: x\n\nb\n") == ["B", "M"]


# --- 6 and 7: the Hyperscan cache

@needs_hs
def test_cache_key_covers_tflags(tmp_path):
    cache = tmp_path / "cache"
    base = "header T_LA Subject =~ /a(?=b)/\n"
    msg = b"Subject: ac ab\n\nhello\n"
    assert _symbols(_load(tmp_path, base + "tflags T_LA multiple\n", "hyperscan", cache), msg) == ["T_LA"]
    assert _symbols(_load(tmp_path, base, "hyperscan", cache), msg) == ["T_LA"]


@needs_hs
@pytest.mark.parametrize("damage", ["bodx", "truncate", "blob"])
def test_damaged_cache_rebuilt(tmp_path, damage):
    cache = tmp_path / "cache"
    rules = "body B1 /foo\\d+bar/\nheader H1 Subject =~ /free/i\n"
    msg = b"Subject: free\n\nfoo12bar\n"
    assert _symbols(_load(tmp_path, rules, "hyperscan", cache), msg) == ["B1", "H1"]
    db = next(cache.glob("*.db"))
    data = bytearray(db.read_bytes())
    if damage == "bodx":
        data[data.index(b'"body"') + 4] ^= 0x01
    elif damage == "truncate":
        del data[-100:]
    else:
        data[-50] ^= 0x10
    db.write_bytes(bytes(data))
    lr = _load(tmp_path, rules, "hyperscan", cache)
    assert _symbols(lr, msg) == ["B1", "H1"]
    assert _symbols(lr, b"Subject: x\n\nnothing\n") == []


def _matcher_state(m) -> tuple:
    """What a Hyperscan matcher's cache sets: which rules run how, and the databases it has."""
    return (sorted(m._as_prefilter), sorted(m._counters), sorted(m._confirm), sorted(m._near), sorted(m._starts),
            dict(m._unanchored), {k: [r.id for r in v] for k, v in m._py.items()}, sorted(m.dbs))


def _rewrite_cache_index(db, change) -> None:
    """Change the JSON index of a rules cache file and sign it again: damage the checksum does not catch."""
    data = db.read_bytes()
    p = len(_MAGIC) + 32
    (n,) = struct.unpack(">I", data[p : p + 4])
    meta = json.loads(data[p + 4 : p + 4 + n])
    change(meta)
    index = json.dumps(meta).encode()
    rest = struct.pack(">I", len(index)) + index + data[p + 4 + n :]
    db.write_bytes(_MAGIC + hashlib.sha256(rest).digest() + rest)


@needs_hs
@pytest.mark.parametrize("stale", ["py", "prefilter", "unanchored", "no-database"])
def test_cache_that_does_not_fit_the_rules_leaves_no_trace(tmp_path, stale):
    """A signed cache whose index names rules these rules do not have (or not as it says) is compiled
    anew, and nothing of it is kept: not even the part of the index read before the misfit."""
    parser = Parser()
    parser.read_text("body B1 /foo\\d+bar/\nbody B2 /a(?=b)c?/\nheader H1 Subject =~ /free/i\n", "t.cf")
    compiled = compile_rules(parser.finish())
    cache = tmp_path / "cache"
    fresh = _matcher_state(HyperscanMatcher(compiled, cache))
    assert _matcher_state(HyperscanMatcher(compiled, cache)) == fresh, "a sound cache gives the same state"
    db = next(cache.glob("*.db"))
    first = min(compiled.groups["body"])
    changes = {
        "py": lambda m: m["py"].__setitem__("body", [10**6]),
        "prefilter": lambda m: m["prefilter"].append(10**6),
        "unanchored": lambda m: m.__setitem__("unanchored", [first]),  # B1 has no anchor to drop
        "no-database": lambda m: m["dbs"].pop("body"),
    }

    def change(meta):
        meta["prefilter"] = [first]  # read before the misfit, in the order the index is read
        changes[stale](meta)

    _rewrite_cache_index(db, change)
    assert _matcher_state(HyperscanMatcher(compiled, cache)) == fresh
    assert _matcher_state(HyperscanMatcher(compiled, cache)) == fresh, "the cache written again is sound"


# --- header values past [rules] max_header_bytes

def _engine_with(tmp_path, text: str, engine: str, **rules):
    from antispam.config import Config

    (tmp_path / "r.cf").write_text(text)
    return Engine(Config.load(overrides={"rules": {"dirs": [str(tmp_path / "r.cf")], "engine": engine,
                                                   "cache_dir": "", **rules}}))


@pytest.mark.parametrize("engine", ENGINES)
def test_header_rules_read_max_header_bytes_of_a_value(tmp_path, engine):
    """Header rules read the first ``[rules] max_header_bytes`` of a value (default 32 KiB; 0: all)."""
    rules = "header T_TAIL To =~ /tail\\@example/\nscore T_TAIL 1\nheader T_HEAD To =~ /^head\\@/\nscore T_HEAD 1\n"
    raw = b"To: head@example.com, " + b"a" * 40000 + b" tail@example.com\nSubject: x\n\nx\n"

    def hits(**kw) -> list[str]:
        return sorted(n for n in _engine_with(tmp_path, rules, engine, **kw).scan(raw).symbols if n.startswith("T_"))

    assert hits() == ["T_HEAD"]
    assert hits(max_header_bytes=0) == ["T_HEAD", "T_TAIL"]
    assert hits(max_header_bytes=60000) == ["T_HEAD", "T_TAIL"]


def test_a_rules_check_built_directly_reads_a_header_as_a_scan_does(tmp_path):
    """``rules stats`` and ``rules fit`` build a RulesCheck directly: its default cap is the configured
    default, so their counts are those of the scans they are meant to predict."""
    raw = b"To: head@example.com, " + b"a" * 40000 + b" tail@example.com\nSubject: x\n\nx\n"
    configured = _engine_with(tmp_path, "header T_TAIL To =~ /tail\\@example/\nscore T_TAIL 1\n", "python")
    direct = RulesCheck(load_rules([tmp_path / "r.cf"], engine="python"))
    assert "T_TAIL" not in configured.scan(raw).symbols
    assert "T_TAIL" not in Engine(checks=[direct]).scan(raw).symbols
    assert "T_TAIL" in Engine(checks=[RulesCheck(direct.loaded, max_header_bytes=0)]).scan(raw).symbols


@pytest.mark.parametrize("engine", ENGINES)
def test_a_back_reference_rule_on_a_huge_header_is_bounded(tmp_path, engine):
    """A back-reference after a repeat (as in some of SpamAssassin's rules) takes the square of the value's
    length under ``re``: this one 57 ms at 20 KB and 0.9 s at 80 KB, minutes for the 1 MB To that Exim lets
    through.  The rules read 32 KiB of it: a fraction of a second."""
    import time

    e = _engine_with(tmp_path, "header T_ECHO To =~ /^([^,]+) \\1,/\nscore T_ECHO 1\n", engine)
    raw = b"To: " + b"@ " * 500_000 + b",\nSubject: x\n\nx\n"
    t = time.perf_counter()
    v = e.scan(raw)
    assert time.perf_counter() - t < 2.0
    assert "T_ECHO" not in v.symbols and "CHECK_ERROR" not in v.symbols
