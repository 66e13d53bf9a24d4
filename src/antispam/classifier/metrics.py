"""Evaluation metrics, in numpy only (spam is the positive class).

ROC AUC is the Mann-Whitney statistic: the probability that a random spam
scores above a random ham, ties counting one half, computed from average
ranks.  That is the same definition the peers' ``eval.py`` uses, so the
figures compare directly.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties getting the mean of the ranks they span."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    ranks = np.empty(len(x), dtype=np.float64)
    i = 0
    n = len(x)
    while i < n:
        j = i
        while j + 1 < n and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def roc_auc(scores: np.ndarray, y: np.ndarray) -> float:
    """Area under the ROC curve; NaN when one class is absent."""
    scores = np.asarray(scores, dtype=np.float64)
    y = np.asarray(y).astype(bool)
    npos, nneg = int(y.sum()), int((~y).sum())
    if npos == 0 or nneg == 0:
        return float("nan")
    r = _average_ranks(scores)
    return float((r[y].sum() - npos * (npos + 1) / 2.0) / (npos * nneg))


def roc_curve(scores: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rates, true-positive rates) at every distinct threshold, from (0,0) to (1,1)."""
    scores = np.asarray(scores, dtype=np.float64)
    y = np.asarray(y).astype(bool)
    order = np.argsort(-scores, kind="mergesort")
    s, yy = scores[order], y[order]
    tps = np.cumsum(yy)
    fps = np.cumsum(~yy)
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1] if len(s) else np.zeros(0, dtype=int)
    P, N = max(1, int(y.sum())), max(1, int((~y).sum()))
    return np.r_[0.0, fps[last] / N], np.r_[0.0, tps[last] / P]


def threshold_for_fpr(scores: np.ndarray, y: np.ndarray, target_fpr: float) -> float:
    """The smallest threshold t (score >= t is spam) whose ham false-positive rate is <= target_fpr."""
    scores = np.asarray(scores, dtype=np.float64)
    y = np.asarray(y).astype(bool)
    ham = np.sort(scores[~y])[::-1]
    allowed = int(math.floor(target_fpr * len(ham)))
    if len(ham) == 0 or allowed >= len(ham):
        return float(scores.min()) if len(scores) else 0.0
    return float(np.nextafter(ham[allowed], np.inf))


def binary_metrics(scores: np.ndarray, y: np.ndarray, threshold: float) -> dict[str, Any]:
    """Confusion matrix and rates at ``score >= threshold``."""
    scores = np.asarray(scores, dtype=np.float64)
    y = np.asarray(y).astype(bool)
    pred = scores >= threshold
    tp = int((pred & y).sum())
    fp = int((pred & ~y).sum())
    fn = int((~pred & y).sum())
    tn = int((~pred & ~y).sum())
    recall = tp / (tp + fn) if tp + fn else float("nan")
    precision = tp / (tp + fp) if tp + fp else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
    return {
        "threshold": float(threshold),
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        "ham_fpr": fp / (fp + tn) if fp + tn else float("nan"),
        "spam_recall": recall,
        "precision": precision,
        "f1": f1,
        "accuracy": (tp + tn) / len(y) if len(y) else float("nan"),
    }
