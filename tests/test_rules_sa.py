"""SpamAssassin compatibility: the Debian ``spamassassin`` rules load, and both engines agree on them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from antispam.check import ScanContext
from antispam.config import Config
from antispam.message import Message
from antispam.ruleset.check import RuleHits, RulesCheck, load_rules
from antispam.ruleset.cli import SA_KINDS
from antispam.ruleset.compiler import compile_rules
from antispam.ruleset.matcher import hyperscan_available
from antispam.ruleset.parser import Parser

SA_DIR = Path("/usr/share/spamassassin")
SA_PRE = Path("/etc/spamassassin")


@pytest.fixture(scope="module")
def sa_dir():
    if not (SA_DIR / "50_scores.cf").exists():
        if os.environ.get("CI"):
            pytest.fail("the spamassassin package is required under CI (.ci/apt-rules.txt)")
        pytest.skip("SpamAssassin rules not installed (apt-get install spamassassin)")
    return SA_DIR


def test_sa_ruleset_mostly_accepted(sa_dir):
    parser = Parser()
    for f in sorted(SA_PRE.glob("*.pre")):
        parser.read_file(f)
    parser.read_dir(sa_dir)
    compiled = compile_rules(parser.finish(), lenient_meta=True)
    r = compiled.report
    usable = sum(r.accepted[k] + r.translated[k] for k in SA_KINDS)
    total = usable + sum(r.refused[k] for k in SA_KINDS)
    assert total > 2000
    assert usable / total >= 0.90, r
    # every refusal is explained with file:line
    for p in compiled.errors():
        assert p.where is not None and p.where.line > 0 and p.message


@pytest.mark.skipif(not hyperscan_available(), reason="hyperscan not installed")
def test_engines_agree_on_sa_rules(sa_dir, corpus, tmp_path):
    files = [sa_dir / n for n in ("20_body_tests.cf", "20_head_tests.cf", "20_uri_tests.cf", "20_html_tests.cf",
                                  "20_ratware.cf")]
    pre = [SA_PRE] if SA_PRE.is_dir() else []
    checks = [RulesCheck(load_rules([], sa_paths=files, sa_pre_dirs=pre, engine=e, cache_dir=tmp_path))
              for e in ("python", "hyperscan")]
    assert len(checks[0].compiled.rules) > 300
    fired = 0
    for m in corpus[::40]:
        seen = []
        for check in checks:
            msg = Message(m.data)
            ctx = ScanContext(msg.envelope, Config())
            hits = check.run(msg, ctx)
            seen.append((dict(ctx.get(RuleHits).counts), {h.symbol: h.options for h in hits}))
        assert seen[0] == seen[1], m.name
        fired += len(seen[0][0])
    assert fired > 100


@pytest.mark.parametrize("engine", ["python", "hyperscan"])
def test_foreign_rules_on_the_python_matcher_are_warned_about(tmp_path, caplog, engine):
    """SpamAssassin's rules are loaded as written, and some take the square of a field's length under
    ``re`` (8 KB of line breaks: up to 2 s a scan): the operator is told to run Hyperscan with them."""
    from antispam.ruleset.check import load_rules

    if engine == "hyperscan" and not hyperscan_available():
        pytest.skip("hyperscan not installed")
    (tmp_path / "local.cf").write_text("body LOCAL_X /xyzzy/\nscore LOCAL_X 1.0\n")
    with caplog.at_level("WARNING", logger="antispam.rules"):
        load_rules([], sa_paths=[tmp_path], engine=engine, cache_dir=None)
    warned = [r for r in caplog.records if "install hyperscan" in r.getMessage()]
    assert len(warned) == (engine == "python")
