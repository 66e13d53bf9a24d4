"""Fitting rule scores on labelled mail, as SpamAssassin's mass-check + perceptron does.

Model: logistic regression on binary rule-hit features,
``P(spam | x) = sigmoid(b + w . x)``, fitted by minimising the log-loss plus an
L2 penalty ``lam * |w|^2`` with box bounds on every weight (L-BFGS-B):

* ``nice`` rules (meant to lower the score) are bounded to ``[-max, 0]``,
  every other rule to ``[0, max]``: a rule's sign is the author's decision,
  the data only says how much it is worth;
* ham errors weigh ``ham_weight`` times more than spam errors, because a lost
  ham costs more than a missed spam (SpamAssassin tunes for ~0.1% false
  positives in the same way).

The fitted log-odds are turned into additive scores on the engine's scale: a
message whose log-odds are 0 (even odds) must score ``threshold``, so each
weight is multiplied by ``k = threshold / -b`` (b < 0: mail is ham unless rules
fire).  Scores are rounded to 0.001 and capped at ``max_score``.

A rule seen fewer than ``min_hits`` times in training has nothing to teach: it
takes no part in the regression, and its hand-set score (``prior``, the score in
its rule file) is written unchanged, as SpamAssassin keeps the scores its
mass-check cannot rate.  Writing 0 instead would silence it: an executable
attachment or a password form is rare in a 2002 corpus, not harmless.

Only TRAIN messages are used to fit; :func:`evaluate` reports false-positive
rate and recall on any split, so the change can be read on TEST.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..fit import MIN_HITS
from .check import RulesCheck, iter_rule_hits


@dataclass(frozen=True)
class FitResult:
    names: tuple[str, ...]
    scores: tuple[float, ...]
    intercept: float
    scale: float
    n_ham: int
    n_spam: int


def hit_matrix(check: RulesCheck, messages: Sequence[bytes]) -> tuple[np.ndarray, list[str]]:
    """Binary matrix messages x scored rules (``__`` sub-rules left out: they have no score)."""
    names = [r.name for r in check.compiled.rules if not r.name.startswith("__")]
    col = {n: i for i, n in enumerate(names)}
    X = np.zeros((len(messages), len(names)), dtype=np.float64)
    for row, counts in enumerate(iter_rule_hits(check, messages)):
        for name in counts:
            j = col.get(name)
            if j is not None:
                X[row, j] = 1.0
    return X, names


def fit_scores(X: np.ndarray, y: np.ndarray, names: Sequence[str], nice: set[str], *, lam: float = 1.0,
               max_score: float = 4.0, threshold: float = 5.0, ham_weight: float = 20.0,
               min_hits: int = MIN_HITS, prior: Sequence[float] | None = None) -> FitResult:
    """Bounded, L2-regularised logistic regression; see the module docstring.

    ``prior``: the hand-set score of each rule, kept for the rules seen fewer than
    ``min_hits`` times (0 for all of them when not given).
    """
    from ..fit import bounded_logistic

    sw = np.where(y > 0, 1.0, ham_weight)
    hits = X.sum(axis=0)
    # A rule seen fewer than min_hits times in training has nothing to teach: out of the regression.
    frozen = hits < min_hits
    limit = 3.0  # on the log-odds scale; scaled to max_score below
    bounds: list[tuple[float | None, float | None]] = []
    for j, name in enumerate(names):
        if frozen[j]:
            bounds.append((0.0, 0.0))
        elif name in nice:
            bounds.append((-limit, 0.0))
        else:
            bounds.append((0.0, limit))
    b0 = float(np.log(max(y.mean(), 1e-6) / max(1 - y.mean(), 1e-6)))
    w, b = bounded_logistic(X, y, sw, lam, bounds, normalize=False, b0=b0, maxiter=500)
    k = threshold / -b if b < -1e-6 else threshold
    scores = np.clip(np.round(w * k, 3), -max_score, max_score)
    if prior is not None:
        kept = np.clip(np.asarray(prior, dtype=np.float64), -max_score, max_score)
        # the author's sign stands: a nice rule may not add, any other may not subtract
        kept = np.where([n in nice for n in names], np.minimum(kept, 0.0), np.maximum(kept, 0.0))
        scores = np.where(frozen, kept, scores)
    return FitResult(tuple(names), tuple(float(s) for s in scores), b, k, int((y == 0).sum()), int((y == 1).sum()))


def evaluate(X: np.ndarray, y: np.ndarray, scores: np.ndarray, threshold: float = 5.0) -> dict[str, float]:
    """Rules alone: ham false-positive rate and spam recall at ``threshold``."""
    total = X @ scores
    flagged = total >= threshold
    ham, spam = y == 0, y == 1
    return {
        "ham_fpr": float(flagged[ham].mean()) if ham.any() else 0.0,
        "spam_recall": float(flagged[spam].mean()) if spam.any() else 0.0,
        "ham_mean": float(total[ham].mean()) if ham.any() else 0.0,
        "spam_mean": float(total[spam].mean()) if spam.any() else 0.0,
    }


def write_scores(result: FitResult, path: str | Path, corpus: str) -> None:
    """``scores.cf``: one ``score`` line per rule; loaded after the rule files, it overrides their scores."""
    lines = [
        "# Fitted rule scores (antispam rules fit): bounded L2 logistic regression on the TRAIN split",
        f"# of {corpus} ({result.n_ham} ham, {result.n_spam} spam); scale {result.scale:.3f} per log-odds unit.",
        "# Regenerate with: antispam rules fit --out rules/scores.cf",
        "",
    ]
    for name, s in sorted(zip(result.names, result.scores)):
        lines.append(f"score {name} {s:g}")
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
