"""Score fitting: bounds, signs, scaling, and the scores.cf it writes."""

from __future__ import annotations

import numpy as np

from antispam.ruleset.fit import evaluate, fit_scores, write_scores
from antispam.ruleset.parser import Parser


def _data(seed=0):
    rng = np.random.default_rng(seed)
    n = 2000
    y = (rng.random(n) < 0.4).astype(float)
    X = np.zeros((n, 4))
    X[:, 0] = (rng.random(n) < np.where(y > 0, 0.6, 0.01))   # strong spam sign
    X[:, 1] = (rng.random(n) < np.where(y > 0, 0.3, 0.25))   # almost useless
    X[:, 2] = (rng.random(n) < np.where(y > 0, 0.02, 0.5))   # ham sign (a "nice" rule)
    X[:, 3] = (rng.random(n) < np.where(y > 0, 0.001, 0.0))  # too rare to fit
    return X, y


def test_fit_respects_signs_bounds_and_ranks():
    X, y = _data()
    names = ["SPAMMY", "NOISE", "NICE", "RARE"]
    res = fit_scores(X, y, names, nice={"NICE"}, max_score=4.0)
    s = dict(zip(res.names, res.scores))
    assert s["SPAMMY"] > 1.0 and s["SPAMMY"] <= 4.0
    assert 0.0 <= s["NOISE"] < s["SPAMMY"] / 3
    assert -4.0 <= s["NICE"] < 0
    assert s["RARE"] == 0.0
    kept = dict(zip(names, fit_scores(X, y, names, nice={"NICE"}, max_score=4.0, prior=[9.0, 1.0, -1.0, 2.5]).scores))
    assert kept["RARE"] == 2.5, "a rule too rare to fit keeps its hand-set score"
    assert {k: v for k, v in kept.items() if k != "RARE"} == {k: v for k, v in s.items() if k != "RARE"}
    assert fit_scores(X, y, names, nice={"NICE", "RARE"}, prior=[0, 0, 0, 2.5]).scores[3] == 0.0, "signs stand"
    e = evaluate(X, y, np.array(res.scores), threshold=5.0)
    assert e["spam_mean"] > e["ham_mean"]
    # a strong spam rule alone lands close to the threshold scale, not far past it
    assert s["SPAMMY"] < 5.0


def test_scores_cf_round_trip(tmp_path):
    X, y = _data(1)
    res = fit_scores(X, y, ["A", "B", "C", "D"], nice={"C"})
    out = tmp_path / "scores.cf"
    write_scores(res, out, "synthetic")
    rules = tmp_path / "r.cf"
    rules.write_text("body A /a/\nbody B /b/\nbody C /c/\ntflags C nice\nbody D /d/\n")
    p = Parser()
    p.read_file(rules)
    p.read_file(out)
    parsed = p.finish()
    assert [parsed.rules[n].score for n in "ABCD"] == [float(f"{v:g}") for v in res.scores]
    assert not parsed.errors()
