"""Fitting a model: the only module that imports scikit-learn.

The model is NBSVM (Wang & Manning 2012): a linear SVM (``LinearSVC``) on
binary hashed features that are first scaled by their naive-Bayes log-count
ratio, and L2-normalised per message (each present feature is worth
``1/sqrt(max(n, 50))``, see :func:`~antispam.classifier.model.feature_scale`)::

    p_i = alpha + (spam messages containing feature i)      P = sum_i p_i
    q_i = alpha + (ham messages containing feature i)       Q = sum_i q_i
    r_i = ln((p_i / P) / (q_i / Q))                         naive Bayes evidence of feature i
    x_i = r_i * [feature i present] * scale(n)              what the SVM sees
    margin = b + sum_i v_i * x_i = b + sum_present (v_i * r_i) * scale(n)

So the exported weight of feature i is ``w_i = v_i * r_i`` and scoring stays a
plain sum of weights (the kernels know nothing of NB).  A feature never seen
in training has ``v_i = 0`` and so ``w_i = 0``: the model stays sparse.

Why this model: 5-fold cross-validation on the TRAIN split of the SpamAssassin
corpus (numbers in ``docs/classifier.md``) compared logistic regression (raw
and normalised features, C 0.3-300), a plain linear SVM (C 0.3-30), NBSVM
(alpha 0.5-2, C 1-100), with and without word bigrams.  NBSVM without bigrams
was best on ROC AUC (0.99971) and on spam recall at 0.2-0.3% ham FPR; bigrams
made every variant slightly worse here, so they are off by default (the
tokenizer still supports them).

``alpha`` and ``C`` are chosen by cross-validation on the training data only
(the NB ratios are recomputed inside each fold).  The out-of-fold margins of
the chosen setting are then used twice:

* Platt scaling: a one-dimensional logistic regression of the label on the
  margin gives ``a`` and ``b`` in ``p = sigmoid(a * margin + b)``, so the
  output is a calibrated probability rather than a raw distance (then pulled
  toward 0.5 for messages with little evidence, see :mod:`.model`).
* The default threshold: the smallest probability at which the out-of-fold
  ham false-positive rate is at most ``target_fpr``.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

from .. import fastscore
from ..message import Message
from .metrics import binary_metrics, roc_auc, threshold_for_fpr
from .model import MIN_NORM_FEATURES, Model, feature_scale
from .tokenizer import TokenizerSpec, features, views

#: C values tried by cross-validation.
C_GRID = (10.0, 30.0, 100.0)
#: NB smoothing values tried by cross-validation.
ALPHA_GRID = (0.5, 1.0)
#: strongest features whose example token strings are kept for readable clues
VOCAB_SIZE = 30_000


@dataclass(frozen=True, slots=True)
class Example:
    """One labelled training message."""

    data: bytes
    spam: bool


def training_digest(examples: Sequence[Example]) -> str:
    """sha256 over the sorted ``label sha256(message)`` lines: names the training set, not its order."""
    lines = sorted(f"{'spam' if e.spam else 'ham'} {hashlib.sha256(e.data).hexdigest()}" for e in examples)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def feature_matrix(msgs: Sequence[Message], spec: TokenizerSpec):
    """CSR matrix of L2-normalised binary features (one row per message; see :func:`feature_scale`)."""
    import scipy.sparse as sp

    rows = [features(m, spec) for m in msgs]
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(r) for r in rows])
    idx = np.concatenate(rows) if rows else np.zeros(0, dtype=np.uint32)
    vals = np.concatenate([np.full(len(r), feature_scale(len(r))) for r in rows]) if rows else np.zeros(0)
    return sp.csr_matrix((vals, idx.astype(np.int32), indptr), shape=(len(rows), spec.n_features))


def _vocab(msgs: Sequence[Message], spec: TokenizerSpec, wanted: set[int]) -> dict[int, str]:
    """For each wanted feature id, its most frequent token string in the training messages."""
    fid = fastscore.impl.feature_id
    py = fastscore.python_impl
    counts: dict[int, Counter[str]] = {}
    for m in msgs:
        subject, text, meta = views(m)
        for tok in set(py.tokens(subject, text, meta, spec.bigrams)):
            i = fid(tok, spec.seed, spec.bits)
            if i in wanted:
                counts.setdefault(i, Counter())[tok] += 1
    return {i: c.most_common(1)[0][0] for i, c in counts.items()}


def _platt(margins: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=1e6, max_iter=1000)
    lr.fit(margins.reshape(-1, 1), y)
    return float(lr.coef_[0, 0]), float(lr.intercept_[0])


def nb_ratios(X, y: np.ndarray, alpha: float) -> np.ndarray:
    """``r_i`` of the module docstring, from the presence pattern of ``X`` (CSR) and labels ``y``."""
    present = X.copy()
    present.data[:] = 1.0
    p = alpha + np.asarray(present[y == 1].sum(axis=0)).ravel()
    q = alpha + np.asarray(present[y == 0].sum(axis=0)).ravel()
    return np.log((p / p.sum()) / (q / q.sum()))


def _fit(X, y: np.ndarray, alpha: float, c: float, seed: int) -> tuple[np.ndarray, float]:
    """NBSVM on (X, y): the exported weights ``v * r`` (float64) and the bias."""
    import scipy.sparse as sp
    from sklearn.svm import LinearSVC

    r = nb_ratios(X, y, alpha)
    clf = LinearSVC(C=c, max_iter=20000, random_state=seed).fit(X @ sp.diags(r), y)
    return clf.coef_[0] * r, float(clf.intercept_[0])


def _cv_margins(X, y: np.ndarray, folds, alpha: float, c: float, seed: int) -> np.ndarray:
    out = np.zeros(len(y))
    for tr, te in folds:
        w, b = _fit(X[tr], y[tr], alpha, c, seed)
        out[te] = X[te] @ w + b
    return out


def oof_log_odds(messages: Sequence[bytes], spam: Sequence[bool], model: Model, folds: int = 5,
                 seed: int = 0) -> np.ndarray:
    """Out-of-fold calibrated log-odds of spam of ``model``'s recipe (tokenizer, alpha, C, calibration).

    Each message is scored by a model fitted without it, then calibrated as the
    shipped model would calibrate it.  What ``antispam fit`` needs: the shipped
    model has seen every TRAIN message, so its own in-sample log-odds are
    overconfident.
    """
    from sklearn.model_selection import StratifiedKFold

    y = np.array(spam, dtype=np.int8)
    X = feature_matrix([Message(m) for m in messages], model.spec)
    cv = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))
    margins = _cv_margins(X, y, cv, float(model.meta["alpha"]), float(model.meta["C"]), seed)
    n = np.diff(X.indptr)  # distinct features per message (rows of a CSR matrix)
    return np.array([model.log_odds(float(m), int(k)) for m, k in zip(margins, n)])


def train(examples: Sequence[Example], spec: TokenizerSpec | None = None, *, c_grid: Iterable[float] = C_GRID,
          alpha_grid: Iterable[float] = ALPHA_GRID, folds: int = 5, target_fpr: float = 0.002, seed: int = 0,
          progress: Callable[[str], None] | None = None) -> Model:
    """Fit a model on labelled messages (cross-validation for alpha and C, Platt scaling, threshold)."""
    from sklearn.model_selection import StratifiedKFold

    say = progress or (lambda s: None)
    spec = spec or TokenizerSpec()
    y = np.array([e.spam for e in examples], dtype=np.int8)
    n_spam, n_ham = int(y.sum()), int(len(y) - y.sum())
    if n_spam < 2 or n_ham < 2:
        raise ValueError(f"need at least 2 spam and 2 ham messages to train (got {n_spam} spam, {n_ham} ham)")
    t0 = time.monotonic()
    msgs = [Message(e.data) for e in examples]
    X = feature_matrix(msgs, spec)
    say(f"tokenized {len(msgs)} messages ({n_spam} spam, {n_ham} ham) in {time.monotonic() - t0:.1f}s")
    k = max(2, min(folds, n_spam, n_ham))
    cv = list(StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))
    best = None
    for alpha in alpha_grid:
        for c in c_grid:
            m = _cv_margins(X, y, cv, alpha, c, seed)
            auc = roc_auc(m, y)
            say(f"alpha={alpha:g} C={c:g}: cross-validated ROC AUC {auc:.5f}")
            if best is None or auc > best[0]:
                best = (auc, alpha, c, m)
    assert best is not None
    cv_auc, alpha, c, margins = best
    a, b = _platt(margins, y)
    n = np.diff(X.indptr)
    p = 1.0 / (1.0 + np.exp(-(a * margins + b) * np.minimum(1.0, n / MIN_NORM_FEATURES)))
    # the smallest p whose out-of-fold ham FPR is <= target_fpr, never below 0.5
    threshold = max(0.5, threshold_for_fpr(p, y, target_fpr))
    cv_metrics = binary_metrics(p, y, threshold)
    cv_metrics["roc_auc"] = cv_auc
    w64, bias = _fit(X, y, alpha, c, seed)
    w = w64.astype(np.float32)
    strongest = np.argsort(-np.abs(w))[:VOCAB_SIZE]
    wanted = {int(i) for i in strongest if w[i] != 0.0}
    vocab = _vocab(msgs, spec, wanted)
    say(f"trained alpha={alpha:g} C={c:g} in {time.monotonic() - t0:.1f}s; threshold p>={threshold:.4f}")
    meta = {
        "algorithm": "NBSVM: LinearSVC on NB-log-ratio-scaled, L2-normalised binary hashed features; Platt-calibrated",
        "C": c,
        "alpha": alpha,
        "trained_on": {"spam": n_spam, "ham": n_ham, "digest": training_digest(examples)},
        "cross_validation": {"folds": k, "target_fpr": target_fpr, **cv_metrics},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return Model(spec=spec, weights=w, bias=bias, calib_a=a, calib_b=b,
                 threshold=threshold, vocab=vocab, meta=meta)
