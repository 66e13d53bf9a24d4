"""Does the engine's 0.2% operating point hold on unseen mail?  Nested cross-validation on TRAIN only.

    python benchmarks/nested_fit.py [--clf-cuts 0 1 2] [--outer-cuts 0 1 2] [--target-fpr 0.002] [--search]
                                    [--extra chi2 none fisher-i ...]

Why nested: ``antispam fit`` picks lambda and the ham weight, and the threshold, by cross-validation
on the very messages it reports on, so its own figure is optimistic.  Here the *whole* fit
(``antispam.fit.select_fit``: its cross-validated threshold included; with ``--search`` also the
old grid search of lambda and the ham weight that fixed values replaced) is repeated inside each outer training part
(4/5 of TRAIN) and its threshold applied to the outer held-out fifth, which no part of it saw.

Two sources of variance are sampled, because 0.2% of TRAIN's 3,110 ham is six messages:

* ``--clf-cuts``: the 5-fold cut used for the classifier's out-of-fold log-odds (each seed is
  another set of five models; the shipped model's recipe and calibration);
* ``--outer-cuts``: the outer 5-fold cut of the fit (seed ``100 + c``).

Printed per classifier cut, pooled over the outer cuts: held-out ham FPR and spam recall at the
fitted threshold (what a site sees at the required score), then, threshold-free, the recall at
0.1 / 0.15 / 0.2 / 0.3% ham FPR of the held-out decision values (mean over outer cuts) and ROC AUC.
The last row is the mean.  TEST is never read.  About 20 s per classifier cut on one core.  The corpus
is ``$ANTISPAM_CORPUS``, else ``../shared/corpora/spamassassin`` beside the checkout.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import labelled  # noqa: E402

from antispam.classifier.metrics import roc_auc  # noqa: E402
from antispam.config import Config  # noqa: E402
from antispam.fit import LAMBDAS, _recall_at_fpr, design_matrix, oof_log_odds, select_fit, symbol_rows  # noqa: E402

CURVE = (0.001, 0.0015, 0.002, 0.003)
#: second-signal variants compared by ``--extra`` (docs/classifier.md, "Version 7 candidates"):
#: ``none`` is the shipped recipe (tokenizer v6 alone); the others each append a pair of sign-bounded
#: columns (spam side, ham side) to it, computed out of fold on the classifier's own folds: Fisher
#: chi-square combining of Robinson's f(w) with SpamBayes' settings as the indicator (``fisher-i``) or
#: clipped log form (``fisher-lo``), with bogofilter's settings and SpamBayes' 150-clue cap
#: (``fisher-bogo``), without the cap (``fisher-bogo-all``), in log form (``fisher-bogo-lo``), and an
#: NBSVM on character n-grams of the Subject and From display name (``charng``)
EXTRAS = ("none", "fisher-i", "fisher-lo", "fisher-bogo", "fisher-bogo-all", "fisher-bogo-lo", "charng")


def fisher_oof(X, y: np.ndarray, folds: int, seed: int, strength: float = 0.45, x: float = 0.5, min_dev: float = 0.1,
               max_clues: int = 150) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold Fisher chi-square combining (Robinson's f(w)) over the classifier's hashed features.

    The same folds as the NBSVM's out-of-fold log-odds (``StratifiedKFold(folds, seed)``).  Per
    training part: ``p(w) = (s/NS) / (s/NS + h/NH)`` from the number of spam / ham containing w,
    shrunk toward x by ``f(w) = (strength * x + n p(w)) / (strength + n)`` (n = s + h).  Per
    message the ``max_clues`` features with ``|f - 0.5| >= min_dev`` farthest from 0.5 are combined:
    ``S = -ln Q(-2 sum ln(1 - f), 2k)``, ``H = -ln Q(-2 sum ln f, 2k)`` with ``Q`` the chi-square
    survival function: how improbable the spam (ham) evidence is as a sum of uniform noise.  Returns
    (I, L): SpamBayes' indicator ``I = (1 + (1 - e^-S) - (1 - e^-H)) / 2`` and the log form ``L = S - H``.
    """
    from scipy.stats import chi2
    from sklearn.model_selection import StratifiedKFold

    present = X.copy().tocsr()
    present.data[:] = 1.0
    I, L = np.full(len(y), 0.5), np.zeros(len(y))
    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y):
        s = np.asarray(present[tr][y[tr] == 1].sum(axis=0)).ravel()
        h = np.asarray(present[tr][y[tr] == 0].sum(axis=0)).ravel()
        ns, nh = max(1, int((y[tr] == 1).sum())), max(1, int((y[tr] == 0).sum()))
        n = s + h
        with np.errstate(invalid="ignore", divide="ignore"):
            p = np.where(n > 0, (s / ns) / (s / ns + h / nh), 0.5)
        f = (strength * x + n * p) / (strength + n)
        for i in te:
            fi = f[present.indices[present.indptr[i]:present.indptr[i + 1]]]
            dev = np.abs(fi - 0.5)
            fi = fi[dev >= min_dev]
            if len(fi) > max_clues:
                fi = fi[np.argsort(-np.abs(fi - 0.5), kind="stable")[:max_clues]]
            k = len(fi)
            if k == 0:
                continue
            S = -float(chi2.logsf(-2.0 * np.log1p(-fi).sum(), 2 * k))
            H = -float(chi2.logsf(-2.0 * np.log(fi).sum(), 2 * k))
            I[i] = (1.0 + (1.0 - np.exp(-S)) - (1.0 - np.exp(-H))) / 2.0
            L[i] = S - H
    return I, L


def charng_oof(train, y: np.ndarray, folds: int, seed: int, alpha: float = 0.5, c: float = 1.0) -> np.ndarray:
    """Out-of-fold NBSVM margins on character 2-4-grams of the Subject and the From display name.

    A different inductive bias from the word model: spelling games (``V1agra``, ``F R E E``), shouting and
    sender names that words miss.  Binary, L2-normalised, 2^18 hashed features; the NB ratios and the SVM
    are refitted inside each fold (the same folds as the word model's out-of-fold log-odds).
    """
    import scipy.sparse as sp
    from sklearn.feature_extraction.text import HashingVectorizer
    from sklearn.model_selection import StratifiedKFold
    from sklearn.svm import LinearSVC

    from antispam.classifier.train import nb_ratios
    from antispam.message import Message

    docs = []
    for m in train:
        msg = Message(m.data)
        docs.append("\x01" + msg.subject.lower() + "\x02" + msg.from_name.lower() + "\x03")
    hv = HashingVectorizer(analyzer="char", ngram_range=(2, 4), n_features=2 ** 18, binary=True,
                           lowercase=False, alternate_sign=False, norm="l2")
    X = hv.transform(docs).tocsr()
    out = np.zeros(len(y))
    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y):
        r = nb_ratios(X[tr], y[tr], alpha)
        clf = LinearSVC(C=c, max_iter=20000, random_state=0).fit(X[tr] @ sp.diags(r), y[tr])
        out[te] = (X[te] @ sp.diags(r)) @ clf.coef_[0] + clf.intercept_[0]
    return out


def extra_columns(kind: str, I: np.ndarray, L: np.ndarray, cap: float = 20.0):
    """The extra (spam side, ham side) columns of one variant, with their sign bounds."""
    if kind == "charng":
        v = L
    elif kind in ("fisher-i", "fisher-bogo"):
        v = 2.0 * I - 1.0
    elif kind == "fisher-lo":
        v = np.clip(L, -cap, cap) / cap
    else:
        return np.zeros((len(I), 0)), []
    return np.column_stack([np.maximum(v, 0.0), np.maximum(-v, 0.0)]), [(0.0, None), (None, 0.0)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clf-cuts", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--outer-cuts", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--target-fpr", type=float, default=0.002)
    ap.add_argument("--extra", nargs="+", choices=EXTRAS, default=["none"],
                    help="extra classifier columns to compare (a second, count-based model over the same tokens)")
    ap.add_argument("--search", action="store_true",
                    help="choose lambda and the ham weight on a grid by inner CV (the recipe before the fixed values)")
    args = ap.parse_args()
    from sklearn.model_selection import StratifiedKFold

    t0 = time.monotonic()
    train = labelled(split="train")
    y = np.array([m.is_spam for m in train], dtype=np.float64)
    config = Config()
    grid = {"lams": LAMBDAS, "ham_weights": (1.0, 3.0, 10.0)} if args.search else {}
    rows = symbol_rows(train, config)
    print(f"TRAIN {len(train)} messages ({int(y.sum())} spam); target ham FPR {args.target_fpr:.2%}; "
          f"outer cuts {args.outer_cuts}; {'grid search' if args.search else 'fixed lambda and ham weight'}\n")
    Xf = None
    if any(e != "none" for e in args.extra):
        from antispam.classifier.check import default_model
        from antispam.classifier.train import feature_matrix
        from antispam.message import Message

        Xf = feature_matrix([Message(m.data) for m in train], default_model().spec)
    print("| extra | classifier cut | held-out ham FPR | held-out spam recall | recall at 0.1 / 0.15 / 0.2 / 0.3% | AUC |")
    print("|---|---|---:|---:|---:|---:|")
    totals = {e: np.zeros(4) for e in args.extra}  # fp, ham, tp, spam
    curves: dict[str, list] = {e: [] for e in args.extra}
    aucs: dict[str, list] = {e: [] for e in args.extra}
    for s in args.clf_cuts:
        X0, _, bounds0 = design_matrix(rows, oof_log_odds(train, 5, s), config)
        yi = y.astype(np.int8)
        I, L = fisher_oof(Xf, yi, 5, s) if Xf is not None else (np.full(len(y), 0.5), np.zeros(len(y)))
        for e in args.extra:
            if e.startswith("fisher-bogo"):  # bogofilter's defaults: robs 0.0178, robx 0.52, min_dev 0.375
                Ib, Lb = fisher_oof(Xf, yi, 5, s, strength=0.0178, x=0.52, min_dev=0.375,
                                    max_clues=10**9 if e == "fisher-bogo-all" else 150)
                cols, cb = extra_columns("fisher-lo" if e == "fisher-bogo-lo" else "fisher-i", Ib, Lb)
            elif e == "charng":
                cols, cb = extra_columns(e, I, charng_oof(train, yi, 5, s))
            else:
                cols, cb = extra_columns(e, I, L)
            X, bounds = np.hstack([X0, cols]), bounds0 + cb
            fp = nh = tp = ns = 0
            cut_curves, cut_aucs = [], []
            for c in args.outer_cuts:
                d = np.zeros(len(y))
                for tr, te in StratifiedKFold(5, shuffle=True, random_state=100 + c).split(X, y):
                    sel = select_fit(X[tr], y[tr], bounds, target_fpr=args.target_fpr, **grid)
                    d[te] = X[te] @ sel.w + sel.b - sel.threshold
                fp += int(((d >= 0) & (y == 0)).sum())
                nh += int((y == 0).sum())
                tp += int(((d >= 0) & (y == 1)).sum())
                ns += int((y == 1).sum())
                cut_curves.append([_recall_at_fpr(d, y, f)[1] for f in CURVE])
                cut_aucs.append(float(roc_auc(d, y)))
            curve, auc = np.mean(cut_curves, axis=0), float(np.mean(cut_aucs))
            curves[e].append(curve)
            aucs[e].append(auc)
            totals[e] += (fp, nh, tp, ns)
            print(f"| {e} | {s} | {fp / nh:.3%} ({fp}/{nh}) | {tp / ns:.4f} ({ns - tp} missed) | "
                  + " / ".join(f"{v:.4f}" for v in curve) + f" | {auc:.5f} |", flush=True)
    for e in args.extra:
        fp, nh, tp, ns = (int(v) for v in totals[e])
        print(f"| **{e}** | **all** | {fp / nh:.3%} ({fp}/{nh}) | {tp / ns:.4f} ({ns - tp} missed) | "
              + " / ".join(f"{v:.4f}" for v in np.mean(curves[e], axis=0)) + f" | {np.mean(aucs[e]):.5f} |")
    print(f"\n{time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
