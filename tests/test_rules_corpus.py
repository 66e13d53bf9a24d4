"""Both matchers give exactly the same rule hits on real mail (the default ruleset on a corpus sample)."""

from __future__ import annotations

import pytest

from antispam.check import ScanContext
from antispam.config import Config
from antispam.message import Message
from antispam.resources import default_rules_dir
from antispam.ruleset import load_rules
from antispam.ruleset.check import RuleHits, RulesCheck
from antispam.ruleset.matcher import hyperscan_available


def _hits(check, data):
    msg = Message(data)
    ctx = ScanContext(msg.envelope, Config())
    hits = check.run(msg, ctx)
    return dict(ctx.get(RuleHits).counts), {h.symbol: h.options for h in hits}


@pytest.mark.skipif(not hyperscan_available(), reason="hyperscan not installed")
def test_engines_agree_on_corpus(corpus):
    sample = corpus[::6]
    py = RulesCheck(load_rules([default_rules_dir()], engine="python"))
    hs = RulesCheck(load_rules([default_rules_dir()], engine="hyperscan"))
    fired = 0
    for m in sample:
        a, b = _hits(py, m.data), _hits(hs, m.data)
        assert a == b, m.name
        fired += len(a[0])
    assert fired > len(sample)  # the rules do fire on real mail


def test_default_rules_rarely_fire_strongly_on_ham(corpus_train):
    check = RulesCheck(load_rules([default_rules_dir()]))
    scores = {s.name: s.score for s in check.symbols}
    ham = [m for m in corpus_train if not m.is_spam][::3]
    spam = [m for m in corpus_train if m.is_spam][::3]
    def total(m):
        return sum(scores.get(k, 0) for k in _hits(check, m.data)[1])
    ham_high = sum(total(m) >= 5 for m in ham) / len(ham)
    spam_mean = sum(total(m) for m in spam) / len(spam)
    ham_mean = sum(total(m) for m in ham) / len(ham)
    assert ham_high < 0.01
    assert spam_mean > ham_mean + 2


def test_rules_scored_0_are_left_out_without_changing_a_hit(corpus):
    """Rules that report nothing and feed no reported meta are not evaluated; every reported hit stays."""
    every = RulesCheck(load_rules([default_rules_dir()], every_rule=True))
    scored = RulesCheck(load_rules([default_rules_dir()]))
    c = scored.compiled
    evaluated = {i for ids in c.groups.values() for i in ids} | set(c.evals) | set(c.exists) | {i for i, _ in c.metas}
    assert 0 < len(evaluated) < len(c.rules), "the shipped scores leave some rules out"
    assert c.digest != every.compiled.digest, "the two sets of databases are cached apart"
    for i in evaluated:
        r = c.rules[i]
        assert r.emitted or any(i in c.rules[m].deps for m in evaluated), r.name
    seen = 0
    for m in corpus[::10]:
        (all_counts, all_hits), (counts, hits) = _hits(every, m.data), _hits(scored, m.data)
        assert hits == all_hits, m.name
        assert counts.items() <= all_counts.items(), m.name
        seen += len(all_counts) - len(counts)
    assert seen > 0, "some left-out rules would have hit: the saving is real work"
