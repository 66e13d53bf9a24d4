"""Rule engine: parser problems, regex translation, both matchers giving the same hits, the engine check."""

from __future__ import annotations

import pytest

from antispam.check import ScanContext
from antispam.config import Config
from antispam.engine import Engine
from antispam.message import Message
from antispam.errors import RuleError
from antispam.ruleset import compile_rules, load_rules
from antispam.ruleset.check import RuleHits, RulesCheck
from antispam.ruleset.matcher import hyperscan_available
from antispam.ruleset.parser import Parser
from antispam.ruleset.regex import backtracking_risk, translate

ENGINES = ["python", pytest.param("hyperscan", marks=pytest.mark.skipif(not hyperscan_available(), reason="hyperscan not installed"))]

RULES = r"""
header   T_SUBJ_FREE   Subject =~ /\bfree\b/i
describe T_SUBJ_FREE   Subject says free
score    T_SUBJ_FREE   1.5
header   __T_NO_DATE   Date !~ /./
meta     T_META        T_SUBJ_FREE && __T_NO_DATE
score    T_META        2
describe T_META        Free and no date
body     T_MONEY       /\$\d+/
tflags   T_MONEY       multiple maxhits=3
meta     T_MONEY3      T_MONEY >= 3
score    T_MONEY3      1
uri      T_URI_IP      /^https?:\/\/\d+\.\d+\.\d+\.\d+/
header   T_FROM_ADDR   From:addr =~ /\@example\.com$/
header   T_FROM_NAME   From:name =~ /^Bob$/
rawbody  T_LOOK        /(?!free)fr[e3]{2}dom/
header   T_UNSET       X-Nope =~ /^zz$/ [if-unset: zz]
header   T_EXISTS      exists:X-Mailer
header   T_EV_DATE     eval:header_absent('Date')
body     T_PARA_START  /^Pay\b/
score    T_ZERO        0
body     T_ZERO        /stuff/
ifplugin Some::Missing::Plugin
body     T_SKIPPED     /never/
endif
if (version >= 3.004000)
body     T_VERSIONED   /stuff/
endif
"""

MSG = (b"From: Bob <bob@example.com>\nSubject: FREE stuff\nX-Mailer: test\n\n"
       b"Hello.\n\nPay $100 and $2 and $5 and $7 now\nhttp://1.2.3.4/x freedom fr33dom\n")


@pytest.fixture()
def rules_file(tmp_path):
    p = tmp_path / "t.cf"
    p.write_text(RULES)
    return p


@pytest.mark.parametrize("engine", ENGINES)
def test_rules_hit_as_written(rules_file, engine):
    check = RulesCheck(load_rules([rules_file], engine=engine))
    v = Engine(checks=[check]).scan(MSG)
    assert set(v.symbols) == {"T_SUBJ_FREE", "T_META", "T_MONEY3", "T_URI_IP", "T_FROM_ADDR", "T_FROM_NAME",
                              "T_LOOK", "T_UNSET", "T_EXISTS", "T_EV_DATE", "T_PARA_START", "T_VERSIONED", "T_MONEY"}
    assert v.symbols["T_SUBJ_FREE"].score == 1.5
    assert v.symbols["T_SUBJ_FREE"].description == "Subject says free"
    assert v.symbols["T_SUBJ_FREE"].options == ("FREE",)
    assert v.symbols["T_URI_IP"].options == ("1.2.3.4",)
    assert v.symbols["T_LOOK"].options == ("fr33dom",)
    # sub-rules and zero-scored rules are evaluated (metas see them) but not emitted
    assert "__T_NO_DATE" not in v.symbols and "T_ZERO" not in v.symbols
    names = {s.name for s in check.symbols}
    assert "T_SUBJ_FREE" in names and "__T_NO_DATE" not in names and "T_ZERO" not in names


@pytest.mark.parametrize("engine", ENGINES)
def test_multiple_counts_and_negation(rules_file, engine):
    from antispam.check import ScanContext
    from antispam.config import Config
    from antispam.message import Message

    check = RulesCheck(load_rules([rules_file], engine=engine))
    msg = Message(MSG.replace(b"Subject:", b"Date: Mon, 1 Jan 2024 10:00:00 +0000\nSubject:"))
    ctx = ScanContext(msg.envelope, Config())
    hits = {h.symbol for h in check.run(msg, ctx)}
    counts = ctx.get(RuleHits).counts
    assert counts["T_MONEY"] == 3  # capped by maxhits
    assert "__T_NO_DATE" not in counts and "T_META" not in hits and "T_EV_DATE" not in hits


def test_lint_reports_every_error_with_file_and_line(tmp_path):
    p = tmp_path / "bad.cf"
    p.write_text("body OK /fine/\nbody BAD_RE /(unclosed/\nheader CAT Subject =~ /(a+)+b/\n"
                 "meta M1 M2 && OK\nmeta M2 M1\nmeta M3 NOPE || OK\nfrobnicate 1\nbody EV eval:no_such_eval()\n")
    parser = Parser()
    parser.read_file(p)
    c = compile_rules(parser.finish())
    errs = {(e.where.line, e.rule) for e in c.errors()}
    assert {(2, "BAD_RE"), (3, "CAT"), (4, "M1"), (6, "M3"), (8, "EV")} <= errs
    assert any("cycle" in e.message for e in c.errors())
    assert any(pr.severity == "ignored" and pr.where.line == 7 for pr in c.problems)
    assert [r.name for r in c.rules] == ["OK"]
    with pytest.raises(RuleError) as ei:
        load_rules([p])
    assert len(ei.value.problems) >= 5 and all(str(p) in s for s in ei.value.problems)
    loaded = load_rules([p], skip_bad=True)  # told to skip: the good rule still works
    assert [r.name for r in loaded.compiled.rules] == ["OK"]


@pytest.mark.parametrize("perl,flags,text,hit", [
    (r"foo\z", "", b"foo", True),
    (r"foo\z", "", b"foo\n", False),
    (r"foo\Z", "", b"foo\n", True),
    (r"[[:digit:]]{3}", "", b"a123", True),
    (r"a(?i)b|c", "", b"C", True),
    (r"a(?i)b|c", "", b"Ab", False),
    (r"x # comment", "x", b"x", True),
    (r"é+", "", "éé".encode(), True),
    (r"\x{e9}", "", "é".encode(), True),
    (r"[\w-]+\@", "", b"a-b@", True),
    (r"a{,3}", "", b"a{,3}", True),
    (r"\Qa.b\E", "", b"axb", False),
])
def test_translation_semantics(perl, flags, text, hit):
    import re

    t = translate(perl, flags)
    rx = re.compile(t.py, (re.I if t.caseless else 0) | (re.M if t.multiline else 0) | (re.S if t.dotall else 0))
    assert (rx.search(text) is not None) is hit
    if hyperscan_available() and t.hs is not None:
        import hyperscan

        db = hyperscan.Database()
        f = hyperscan.HS_FLAG_ALLOWEMPTY | (hyperscan.HS_FLAG_CASELESS if t.caseless else 0)
        db.compile(expressions=[t.hs], ids=[1], flags=[f])
        found = []
        db.scan(text, match_event_handler=lambda *a: found.append(1))
        assert bool(found) is hit


def test_backtracking_guard():
    assert backtracking_risk(rb"(a+)+b")
    assert backtracking_risk(rb"(?:\w+\s?)*!")
    assert backtracking_risk(rb"(?:\w+\s){0,3}x") is None
    assert backtracking_risk(rb"\w+@\w+\.com") is None


def test_default_rules_lint_clean_and_described():
    from antispam.resources import default_rules_dir

    parser = Parser()
    parser.read_dir(default_rules_dir())
    c = compile_rules(parser.finish())
    assert c.problems == []
    assert len(c.rules) >= 150
    for r in c.rules:
        assert r.name.startswith("__") or r.description, r.name


def test_engine_default_has_rules():
    e = Engine()
    assert "rules" in [c.name for c in e.checks]
    v = e.scan(b"From: a@b.example\nTo: c@d.example\nSubject: MAKE MONEY FAST!!!\n\n"
               b"Dear friend, earn $5,000 per week working from home. Act now! Risk-free.\n")
    fired = {n for n in v.symbols if n.startswith("AS_")}
    assert len(fired) >= 3 and v.score >= 5, (fired, v.score)
    assert e.scan(b"Subject: lunch\nDate: Mon, 1 Jan 2024 10:00:00 +0000\nMessage-Id: <1@a.example>\n"
                  b"From: a@a.example\nTo: b@a.example\n\nHi Bob,\n\nShall we meet at noon at the usual place? "
                  b"I will bring the notes from yesterday's meeting.\n\nCheers,\nAnn\n").score < 1


def test_config_section_selects_engine_and_dirs(rules_file, tmp_path):
    from antispam.config import Config

    cfg = Config.load(overrides={"rules": {"dirs": [str(rules_file)], "engine": "python", "cache_dir": str(tmp_path / "c")}})
    e = Engine(cfg)
    rc = [c for c in e.checks if c.name == "rules"][0]
    assert rc.matcher.name == "python"
    assert "T_SUBJ_FREE" in e.scan(MSG).symbols
    assert "rules" not in [c.name for c in Engine(Config.load(overrides={"rules": {"enabled": False}})).checks]


@pytest.mark.skipif(not hyperscan_available(), reason="hyperscan not installed")
def test_hyperscan_cache_round_trip(rules_file, tmp_path):
    cache = tmp_path / "cache"
    a = RulesCheck(load_rules([rules_file], engine="hyperscan", cache_dir=cache))
    files = list(cache.iterdir())
    assert len(files) == 1
    b = RulesCheck(load_rules([rules_file], engine="hyperscan", cache_dir=cache))  # loads from the cache
    va, vb = Engine(checks=[a]).scan(MSG), Engine(checks=[b]).scan(MSG)
    assert set(va.symbols) == set(vb.symbols) and "T_SUBJ_FREE" in vb.symbols
    files[0].write_bytes(b"garbage")  # a damaged cache is rebuilt, never trusted
    c = RulesCheck(load_rules([rules_file], engine="hyperscan", cache_dir=cache))
    assert "T_SUBJ_FREE" in Engine(checks=[c]).scan(MSG).symbols


@pytest.mark.skipif(not hyperscan_available(), reason="hyperscan not installed")
def test_rules_caches_unused_for_a_week_go_when_another_is_written(rules_file, tmp_path):
    """Each change of the rules writes a new cache (75 MB with SpamAssassin's): writing one removes those
    of the directory that no engine loaded for a week, and the unfinished writes; a load marks its own
    as used, so a rule set in use keeps its cache however old the file is."""
    import os
    import time

    cache = tmp_path / "cache"
    RulesCheck(load_rules([rules_file], engine="hyperscan", cache_dir=cache))
    (mine,) = cache.iterdir()
    week = 7 * 86400
    old = time.time() - week - 3600
    stale, recent, unfinished = cache / "rules-0a-hs0-v1.db", cache / "rules-0b-hs0-v1.db", cache / "rules-0c.tmp123"
    other = cache / "notes.txt"  # not ours
    for f in (stale, recent, unfinished, other):
        f.write_bytes(b"x")
    for f in (stale, unfinished, other, mine):
        os.utime(f, (old, old))
    RulesCheck(load_rules([rules_file], engine="hyperscan", cache_dir=cache))  # loads: touches its own file
    assert time.time() - mine.stat().st_mtime < 60
    rules_file.write_text(rules_file.read_text() + "\nbody T_NEW_RULE /brand new/\nscore T_NEW_RULE 1\n")
    RulesCheck(load_rules([rules_file], engine="hyperscan", cache_dir=cache))  # new rules: a new cache, and pruning
    names = {f.name for f in cache.iterdir()}
    assert stale.name not in names and unfinished.name not in names
    assert {recent.name, other.name, mine.name} <= names and len(names) == 4


@pytest.mark.parametrize("engine", ENGINES)
def test_replace_tags_and_lookaround(tmp_path, engine):
    p = tmp_path / "tags.cf"
    p.write_text(
        "replace_tag   O  (?:[oO0]|\\xc3\\xb6)\n"
        "replace_inter W1 \\W?\n"
        "body  T_FUZZY_MONEY /<inter W1>(?!money)m<O>ney/i\n"
        "replace_rules T_FUZZY_MONEY\n"
        "body  T_NOT_AFTER_NO /(?<!no )prescription/i\n"
    )
    check = RulesCheck(load_rules([p], engine=engine))
    run = lambda body: set(Engine(checks=[check]).scan(b"Subject: x\n\n" + body).symbols)  # noqa: E731
    assert run(b"Make m0ney fast") == {"T_FUZZY_MONEY"}
    assert run("Make möney fast".encode()) == {"T_FUZZY_MONEY"}
    assert run(b"Make money fast") == set()  # the look-ahead excludes the plain spelling
    assert run(b"buy without prescription") == {"T_NOT_AFTER_NO"}
    assert run(b"no prescription needed") == set()


def test_split_alternatives_pieces_match_where_the_pattern_does():
    """Every piece is short, and a text matches some piece exactly when it matches the whole pattern."""
    import random
    import re

    from antispam.ruleset.matcher import compact_escapes, split_alternatives

    words = [f"w{i:04d}" for i in range(1200)]
    pattern = (rb"(?:^|\s)(?:" + b"|".join(w.encode() for w in words) + rb")\s(?:alpha|beta)?\s?(?:x\xc3\xa9|y)"
               .replace(b"\xc3\xa9", rb"\xc3\xa9"))
    assert len(pattern) > 6000
    pieces = split_alternatives(compact_escapes(pattern), limit=2000)
    assert pieces and all(len(p) <= 2000 for p in pieces) and len(pieces) > 1
    whole = re.compile(pattern)
    parts = [re.compile(p) for p in pieces]
    rng = random.Random(7)
    for _ in range(400):
        text = " ".join(rng.choice([rng.choice(words), "alpha", "beta", "x\xe9", "y", "w99999", "zz"])
                        for _ in range(rng.randint(1, 6))).encode("utf-8")
        assert bool(whole.search(text)) == any(p.search(text) for p in parts), text
    # what cannot be split exactly is refused, not approximated
    assert split_alternatives(rb"(?:" + b"|".join(w.encode() for w in words) + rb")+x", limit=2000) is None
    assert split_alternatives(rb"(a)" + b"b" * 3000 + rb"\1", limit=2000) is None


@pytest.mark.skipif(not hyperscan_available(), reason="hyperscan not installed")
def test_rule_longer_than_hyperscan_allows_runs_in_pieces(tmp_path):
    words = [f"lotto{i:04d}" for i in range(2500)]
    p = tmp_path / "long.cf"
    p.write_text("body T_LONG /(?:^|\\s)(?:" + "|".join(words) + ")\\s(?:winner|prize)/i\n")
    hs = RulesCheck(load_rules([p], engine="hyperscan", cache_dir=tmp_path / "c"))
    py = RulesCheck(load_rules([p], engine="python"))
    assert hs.matcher._pieces and not hs.matcher._py  # Hyperscan runs it, in pieces
    for body, hit in ((b"you are lotto2499 WINNER now", True), (b"lotto0001 prize", True),
                      (b"lotto2499winner", False), (b"xlotto0007 prize", False)):
        for check in (hs, py):
            v = Engine(checks=[check]).scan(b"Subject: x\n\n" + body)
            assert ("T_LONG" in v.symbols) is hit, (check.matcher.name, body)


def test_scored_only_keeps_what_reported_rules_read():
    from antispam.ruleset import compile_rules
    from antispam.ruleset.compiler import scored_only
    from antispam.ruleset.parser import Parser

    p = Parser()
    p.read_text(r"""
body  T_DEAD      /dead/
score T_DEAD      0
body  T_FED       /fed/
score T_FED       0
body  __T_SUB     /sub/
body  __T_UNUSED  /unused/
meta  T_META      T_FED && __T_SUB
score T_META      2
body  T_PLAIN     /plain/
meta  T_SILENT    T_DEAD || T_PLAIN
score T_SILENT    0
header T_HDR      Subject =~ /x/
score T_HDR       0
""", "t.cf")
    full = compile_rules(p.finish())
    live = scored_only(full)
    kept = {full.rules[i].name for ids in live.groups.values() for i in ids} | {full.rules[i].name for i, _ in live.metas}
    assert kept == {"T_FED", "__T_SUB", "T_META", "T_PLAIN"}
    assert [r.name for r in live.rules] == [r.name for r in full.rules], "ids unchanged"
    assert not any(k.startswith("hdr:") for k in live.groups), "a header group with no rule left is dropped"
    assert live.digest != full.digest


@pytest.mark.parametrize("engine", ENGINES)
def test_uri_rules_match_each_link_alone(tmp_path, engine):
    """The uri buffer holds one link per line, but a match may not join two links: SpamAssassin
    matches each link alone, and ``[^/]+`` would otherwise run from one link into the next."""
    from antispam.check import ScanContext
    from antispam.config import Config
    from antispam.message import Message

    p = tmp_path / "u.cf"
    p.write_text("uri T_JOINED /example[^x]+second/\nscore T_JOINED 1\n"
                 "uri T_ALONE /^https?:\\/\\/[^\\/]+\\/[^?]*\\bpaypal\\b/\nscore T_ALONE 1\n"
                 "uri T_MANY /[^.]+\\.test/\ntflags T_MANY multiple\nscore T_MANY 1\n")
    check = RulesCheck(load_rules([p], engine=engine))

    def run(body: bytes):
        msg = Message(b"Subject: links\n\n" + body)
        ctx = ScanContext(msg.envelope, Config())
        hits = {h.symbol: h.options for h in check.run(msg, ctx)}
        return hits, ctx.get(RuleHits).counts

    # joined, the two links would match T_JOINED (and T_ALONE from the first link's host on); apart, neither
    hits, counts = run(b"see http://a.example/ and http://second.test/ and http://third.test/paypal.html\n")
    assert "T_JOINED" not in hits
    assert hits["T_ALONE"] == ("third.test",)  # the link that matches alone, not the first one
    assert counts["T_MANY"] == 2  # one count per link, not one run across both
    # a link's own line break (an HTML href) is dropped, as browsers drop it
    msg = Message(b"Subject: x\nContent-Type: text/html\n\n<a href=\"http://pay\npal.example/paypal\">x</a>\n")
    ctx = ScanContext(msg.envelope, Config())
    assert {h.symbol: h.options for h in check.run(msg, ctx)}.get("T_ALONE") == ("paypal.example",)


def test_an_engine_logs_what_its_rule_files_had_ignored(tmp_path, caplog):
    """A misspelt directive in a site's rules file is passed over (SpamAssassin does the same); the
    engine says so in its log, file and line, where a server's operator reads, not only in
    ``antispam rules lint``.  The embedded rules load without a word."""
    import logging

    from antispam import Config, Engine

    local = tmp_path / "local.cf"
    local.write_text("body LOCAL_WORD /zebrafish/\nscroe LOCAL_WORD 2.0\nscore LOCAL_NOWHERE 1.0\n")
    with caplog.at_level(logging.WARNING, logger="antispam.rules"):
        Engine().close()
        assert not caplog.records
        Engine(Config.load(overrides={"rules": {"extra_dirs": [str(local)]}})).close()
    said = "\n".join(r.getMessage() for r in caplog.records)
    assert f"{local}:2: ignored: unknown directive 'scroe'" in said, said
    assert f"{local}:3:" in said and "LOCAL_NOWHERE" in said, said


@pytest.mark.parametrize("engine", ["python", "hyperscan"])
def test_case_insensitive_rules_ending_in_words_find_any_case(tmp_path, engine):
    """A case-insensitive pattern that ends in letters, a blank and more letters is found in capitals
    too: the Python search stopped at the last exact occurrence of the pattern's final literal
    (``matcher.last_literal``), which kept " back guarantee" of ``/money back guarantee/i`` as
    written and so never searched a body that shouts it (SpamAssassin's MONEY_BACK and EXCUSE_4
    missed on the corpus)."""
    if engine == "hyperscan" and not hyperscan_available():
        pytest.skip("hyperscan not installed")
    (tmp_path / "r.cf").write_text("body MB /money back guarantee/i\nbody EX4 /To Be Removed,? Please/i\n"
                                   "body LOOK /(?<!no )money back guarantee/i\n")
    check = RulesCheck(load_rules([tmp_path], engine=engine, cache_dir=None))
    for body, want in [("30 DAY MONEY BACK GUARANTEE! yes", {"MB", "LOOK"}), ("To be removed please reply", {"EX4"})]:
        msg = Message(f"Subject: x\n\n{body}\n".encode())
        ctx = ScanContext(msg.envelope, Config())
        check.run(msg, ctx)
        assert set(ctx.get(RuleHits).counts) == want, body
