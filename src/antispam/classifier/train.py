"""Fitting a model: the only module that imports scikit-learn.

The model is a linear SVM (``LinearSVC``) on L2-normalised binary features:
each distinct hashed token of a message has value ``1/sqrt(n)``.  This was
chosen by 5-fold cross-validation on the TRAIN split of the SpamAssassin
corpus, against logistic regression (raw and normalised, C 0.3-300) and with
or without word bigrams (figures in ``docs/classifier.md``): the SVM without
bigrams had the best ROC AUC (0.9995) and the best spam recall at a low ham
false-positive rate.  Bigrams made every variant slightly worse here, so they
are off by default (the tokenizer still supports them).

The hyperparameter C is chosen by cross-validation on the training data only.
The out-of-fold margins of that run are then used twice:

* Platt scaling: a one-dimensional logistic regression of the label on the
  margin gives ``a`` and ``b`` in ``p = sigmoid(a * margin + b)``, so the
  output is a calibrated probability rather than a raw distance.
* The default threshold: the smallest probability at which the out-of-fold
  ham false-positive rate is at most ``target_fpr``.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

from .. import fastscore
from ..message import Message
from .metrics import binary_metrics, roc_auc, threshold_for_fpr
from .model import Model
from .tokenizer import TokenizerSpec, features, views

#: C values tried by cross-validation.
C_GRID = (3.0, 10.0, 30.0)
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
    """CSR matrix of L2-normalised binary features (one row per message)."""
    import scipy.sparse as sp

    rows = [features(m, spec) for m in msgs]
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(r) for r in rows])
    idx = np.concatenate(rows) if rows else np.zeros(0, dtype=np.uint32)
    vals = np.concatenate([np.full(len(r), 1.0 / math.sqrt(len(r)) if len(r) else 0.0) for r in rows]) if rows else np.zeros(0)
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


def train(examples: Sequence[Example], spec: TokenizerSpec | None = None, *, c_grid: Iterable[float] = C_GRID,
          folds: int = 5, target_fpr: float = 0.002, seed: int = 0,
          progress: Callable[[str], None] | None = None) -> Model:
    """Fit a model on labelled messages (cross-validation for C, Platt scaling, threshold)."""
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.svm import LinearSVC

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
    cv = StratifiedKFold(k, shuffle=True, random_state=seed)
    best = None
    for c in c_grid:
        m = cross_val_predict(LinearSVC(C=c, max_iter=20000, random_state=seed), X, y, cv=cv, method="decision_function")
        auc = roc_auc(m, y)
        say(f"C={c:g}: cross-validated ROC AUC {auc:.5f}")
        if best is None or auc > best[0]:
            best = (auc, c, m)
    assert best is not None
    cv_auc, c, margins = best
    a, b = _platt(margins, y)
    p = 1.0 / (1.0 + np.exp(-(a * margins + b)))
    # the smallest p whose out-of-fold ham FPR is <= target_fpr, never below 0.5
    threshold = max(0.5, threshold_for_fpr(p, y, target_fpr))
    cv_metrics = binary_metrics(p, y, threshold)
    cv_metrics["roc_auc"] = cv_auc
    clf = LinearSVC(C=c, max_iter=20000, random_state=seed).fit(X, y)
    w = clf.coef_[0].astype(np.float32)
    strongest = np.argsort(-np.abs(w))[:VOCAB_SIZE]
    wanted = {int(i) for i in strongest if w[i] != 0.0}
    vocab = _vocab(msgs, spec, wanted)
    say(f"trained C={c:g} in {time.monotonic() - t0:.1f}s; threshold p>={threshold:.4f}")
    meta = {
        "algorithm": "LinearSVC on L2-normalised binary hashed features, Platt-calibrated",
        "C": c,
        "trained_on": {"spam": n_spam, "ham": n_ham, "digest": training_digest(examples)},
        "cross_validation": {"folds": k, "target_fpr": target_fpr, **cv_metrics},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return Model(spec=spec, weights=w, bias=float(clf.intercept_[0]), calib_a=a, calib_b=b,
                 threshold=threshold, vocab=vocab, meta=meta)
