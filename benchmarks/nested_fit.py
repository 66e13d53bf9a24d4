"""Does the engine's 0.2% operating point hold on unseen mail?  Nested cross-validation on TRAIN only.

    python benchmarks/nested_fit.py [--clf-cuts 0 1 2] [--outer-cuts 0 1 2] [--target-fpr 0.002] [--search]

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
The last row is the mean.  TEST is never read.  About 20 s per classifier cut on one core.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from antispam.classifier.metrics import roc_auc  # noqa: E402
from antispam.config import Config  # noqa: E402
from antispam.corpus import default_corpus_dir, load_labelled  # noqa: E402
from antispam.fit import LAMBDAS, _recall_at_fpr, design_matrix, oof_log_odds, select_fit, symbol_rows  # noqa: E402

CURVE = (0.001, 0.0015, 0.002, 0.003)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clf-cuts", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--outer-cuts", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--target-fpr", type=float, default=0.002)
    ap.add_argument("--search", action="store_true",
                    help="choose lambda and the ham weight on a grid by inner CV (the recipe before the fixed values)")
    args = ap.parse_args()
    from sklearn.model_selection import StratifiedKFold

    corpus = default_corpus_dir()
    if corpus is None:
        print("SpamAssassin corpus not found", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    train = load_labelled(corpus, split="train")
    y = np.array([m.is_spam for m in train], dtype=np.float64)
    config = Config()
    grid = {"lams": LAMBDAS, "ham_weights": (1.0, 3.0, 10.0)} if args.search else {}
    rows = symbol_rows(train, config)
    print(f"TRAIN {len(train)} messages ({int(y.sum())} spam); target ham FPR {args.target_fpr:.2%}; "
          f"outer cuts {args.outer_cuts}; {'grid search' if args.search else 'fixed lambda and ham weight'}\n")
    print("| classifier cut | held-out ham FPR | held-out spam recall | recall at 0.1 / 0.15 / 0.2 / 0.3% | AUC |")
    print("|---|---:|---:|---:|---:|")
    totals = np.zeros(4)  # fp, ham, tp, spam
    curves, aucs = [], []
    for s in args.clf_cuts:
        X, _, bounds = design_matrix(rows, oof_log_odds(train, 5, s), config)
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
        curves.append(curve)
        aucs.append(auc)
        totals += (fp, nh, tp, ns)
        print(f"| {s} | {fp / nh:.3%} ({fp}/{nh}) | {tp / ns:.4f} ({ns - tp} missed) | "
              + " / ".join(f"{v:.4f}" for v in curve) + f" | {auc:.5f} |", flush=True)
    fp, nh, tp, ns = (int(v) for v in totals)
    print(f"| **all** | {fp / nh:.3%} ({fp}/{nh}) | {tp / ns:.4f} ({ns - tp} missed) | "
          + " / ".join(f"{v:.4f}" for v in np.mean(curves, axis=0)) + f" | {np.mean(aucs):.5f} |")
    print(f"\n{time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
