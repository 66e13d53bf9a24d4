"""Evaluation: metrics against brute force, the CLI on the corpus, the online protocol, train CLI."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from antispam.classifier.metrics import binary_metrics, roc_auc, roc_curve, threshold_for_fpr
from antispam.cli import main


def _auc_brute(s, y):
    pos = [a for a, t in zip(s, y) if t]
    neg = [a for a, t in zip(s, y) if not t]
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg) / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(10))
def test_auc_matches_brute_force_with_ties(seed):
    rng = random.Random(seed)
    s = [rng.choice([0.0, 0.25, 0.5, 0.75, 1.0, rng.random()]) for _ in range(60)]
    y = [rng.random() < 0.4 for _ in range(60)]
    y[0], y[1] = True, False
    assert roc_auc(np.array(s), np.array(y)) == pytest.approx(_auc_brute(s, y), abs=1e-12)


def test_confusion_and_threshold_for_fpr():
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.2, 0.95])
    y = np.array([1, 1, 0, 1, 0, 0, 0, 1], dtype=bool)
    m = binary_metrics(s, y, 0.5)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (4, 1, 0, 3)
    assert m["ham_fpr"] == 0.25 and m["spam_recall"] == 1.0 and m["precision"] == 0.8
    t = threshold_for_fpr(s, y, 0.0)
    assert 0.7 < t <= 0.8 and binary_metrics(s, y, t)["fp"] == 0
    fpr, tpr = roc_curve(s, y)
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)


def test_eval_split_on_the_corpus(corpus_dir, tmp_path, capsys):
    """The shipped model on TEST, alone and inside the default engine (one run, well under a minute)."""
    out = tmp_path / "report.json"
    roc = tmp_path / "roc.png"
    rc = main(["eval", "--corpus", str(corpus_dir), "--model", "default", "--json", str(out), "--roc", str(roc),
               "--no-progress"])
    assert rc == 0
    rep = json.loads(out.read_text())
    assert rep["messages"] == 1495 and rep["spam"] == 455 and rep["ham"] == 1040
    c, e = rep["classifier"], rep["engine"]
    assert c["roc_auc"] >= 0.998
    assert c["tp"] + c["fp"] + c["fn"] + c["tn"] == 1495
    assert c["ham_fpr"] <= 0.005 and c["spam_recall"] >= 0.95
    assert e["threshold"] == 5.0 and e["ham_fpr"] <= 0.005 and e["spam_recall"] >= 0.95
    side = {k: sum(v[k] for n, v in rep["symbols"].items() if n.startswith(f"BAYES_{k.upper()}_")) for k in ("spam", "ham")}
    assert side["spam"] > 0.9 and side["ham"] > 0.9  # hit rates of each side's grades add up
    printed = capsys.readouterr().out
    assert "classifier AUC" in printed and "engine" in printed
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not roc.exists()
    else:
        assert roc.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_online_learns_from_nothing(corpus):
    """TREC-style online from an empty model: later messages must be classified far better than chance."""
    from antispam.classifier.eval import empty_model, report, run_online

    subset = sorted(corpus, key=lambda m: m.sha256)[:800]
    scored = run_online(empty_model(), subset)
    assert [s.name for s in scored] == [f"{m.set}/{m.name}" for m in subset]
    assert scored[0].probability == 0.5  # nothing learned yet
    rep = report(scored[400:], 0.5, None)
    assert rep["classifier"]["roc_auc"] > 0.95


def test_train_cli_from_directories(tmp_path, capsys):
    pytest.importorskip("sklearn")
    from test_classifier import HAM, SPAM

    for name, msgs in (("spam", SPAM), ("ham", HAM)):
        d = tmp_path / name
        d.mkdir()
        for i, raw in enumerate(msgs):
            (d / f"{i}.eml").write_bytes(raw)
    out = tmp_path / "model"
    assert main(["train", "--spam", str(tmp_path / "spam"), "--ham", str(tmp_path / "ham"), "-o", str(out), "--bits", "16"]) == 0
    from antispam.classifier import load_model

    m = load_model(out)
    assert m.meta["trained_on"] == {"spam": len(SPAM), "ham": len(HAM), "digest": m.meta["trained_on"]["digest"]}
    assert main(["train", "--spam", str(tmp_path / "spam"), "-o", str(out)]) == 2
