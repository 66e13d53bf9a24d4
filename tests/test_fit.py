"""Joint score fitting: bounded logistic fit, operating point, the embedded default layer."""

from __future__ import annotations

import numpy as np
import pytest

from antispam import Config, Engine
from antispam.fit import bounded_logistic, _recall_at_fpr, fit_scores, smoothed_threshold, write_default_toml


def test_bounded_logistic_respects_signs_and_separates():
    rng = np.random.default_rng(0)
    n = 600
    y = rng.integers(0, 2, n).astype(float)
    spammy = (rng.random(n) < np.where(y == 1, 0.8, 0.05)).astype(float)
    hammy = (rng.random(n) < np.where(y == 1, 0.05, 0.7)).astype(float)
    # A "spam rule" that actually fires more on ham must not get a negative weight.
    liar = (rng.random(n) < np.where(y == 1, 0.1, 0.4)).astype(float)
    X = np.column_stack([spammy, hammy, liar])
    w, b = bounded_logistic(X, y, np.ones(n), 1e-4, [(0.0, None), (None, 0.0), (0.0, None)])
    assert w[0] > 1.0 and w[1] < -1.0 and w[2] == pytest.approx(0.0, abs=1e-6)


def test_operating_point():
    z = np.array([0.1, 0.2, 0.3, 0.9, 0.5, 0.6, 0.95, 0.99])
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    t, recall, fpr = _recall_at_fpr(z, y, 0.0)      # no ham may pass: threshold just above 0.9
    assert t > 0.9 and recall == 0.5 and fpr == 0.0
    t, recall, fpr = _recall_at_fpr(z, y, 0.25)     # one ham in four may pass
    assert recall == 1.0 and fpr == 0.25


def test_smoothed_threshold_is_the_quantile_at_any_sample_size():
    rng = np.random.default_rng(1)
    # ham decision values from a logistic distribution: its 99.8% quantile is ln(0.998 / 0.002)
    exact = float(np.log(0.998 / 0.002))
    for n in (2_500, 3_100, 40_000):
        estimates = [smoothed_threshold(rng.logistic(size=n), 0.002) for _ in range(40)]
        assert abs(np.mean(estimates) - exact) < 0.25, n
    # it weighs the top few values smoothly: between the order statistics around the quantile,
    # and moving with each of them (the plain order statistic sees only one)
    ham = np.arange(1000, dtype=float)
    t = smoothed_threshold(ham, 0.01)
    assert 985.0 < t < 994.0
    bumped = ham.copy()
    bumped[-5] += 10.0
    assert smoothed_threshold(bumped, 0.01) > t
    assert _recall_at_fpr(np.concatenate([bumped, [2000.0]]), np.r_[np.zeros(1000), 1], 0.01)[0] == \
        _recall_at_fpr(np.concatenate([ham, [2000.0]]), np.r_[np.zeros(1000), 1], 0.01)[0]


def test_fit_on_a_corpus_sample_writes_a_loadable_layer(corpus_train, tmp_path, monkeypatch):
    sample = corpus_train[::12]                      # ~380 messages, both classes
    res = fit_scores(sample, Config(), folds=3, lams=(1e-3,), ham_weights=(3.0,))
    assert res.n_train == len(sample) and 0.0 < res.cv_recall <= 1.0 and res.cv_auc > 0.9
    declared = {n: sd.score for n, sd in Engine(Config()).symbols.items()}
    for name, score in res.scores.items():
        assert (score >= 0) == (declared[name] > 0) or score == 0.0, name
    assert res.scores["BAYES_SPAM_99"] > 0 > res.scores["BAYES_HAM_99"]
    assert res.scores["BAYES_SPAM_60"] == res.scores["BAYES_SPAM_99"]  # one slope per side, every grade
    out = write_default_toml(res, tmp_path / "default.toml")
    import antispam.config as cfgmod
    monkeypatch.setattr(cfgmod, "_DEFAULT_TOML", out)
    monkeypatch.setattr(cfgmod, "_DEFAULT", None)
    cfg = Config.default()
    assert cfg.scores["BAYES_SPAM_95"] == res.scores["BAYES_SPAM_95"]
    site = tmp_path / "site.toml"
    site.write_text("[scores]\nBAYES_SPAM_95 = 1.5\n")
    assert Config.load(site).scores["BAYES_SPAM_95"] == 1.5     # a site file overrides the fitted layer
    monkeypatch.setattr(cfgmod, "_DEFAULT", None)


def test_shipped_default_layer_is_used_by_engine():
    cfg = Config.default()
    assert "BAYES_SPAM_99" in cfg.scores
    e = Engine()
    assert e.policy.scores["BAYES_SPAM_99"] == cfg.scores["BAYES_SPAM_99"]
