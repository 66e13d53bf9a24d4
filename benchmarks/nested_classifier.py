"""Does the classifier's own threshold hold on unseen mail?  Nested cross-validation on TRAIN only.

    python benchmarks/nested_classifier.py [--outer-cuts 0 1 2] [--target-fpr 0.002 ...]

Issue 3 holds the classifier alone, at its default threshold, to ham FPR <= 0.3% with spam recall
>= 97%.  ``antispam train`` sets that threshold from the same messages it reports on (the smallest
p whose out-of-fold ham FPR is at most ``--target-fpr``), so its own figure is optimistic.  Here the
whole of ``antispam.classifier.train.train`` (its alpha and C grid, Platt scaling and threshold
included) runs on each outer training part (4/5 of TRAIN), and the model it returns scores the
outer held-out fifth at its own threshold, as a site would see it (``Classifier.classify``: the
scan's own path).  ``--outer-cuts``: the outer
5-fold cuts (seed ``100 + c``); 0.2% of TRAIN's 3,110 ham is six messages, so several cuts are
pooled.

Printed per target: held-out ham FPR and spam recall at the model's threshold, pooled over every
outer fold of every cut, and the mean held-out ROC AUC.  TEST is never read.  About a minute per
outer cut on one core.  The corpus is ``$ANTISPAM_CORPUS``, else ``../shared/corpora/spamassassin``
beside the checkout.
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

from antispam.classifier.check import Classifier  # noqa: E402
from antispam.classifier.metrics import roc_auc  # noqa: E402
from antispam.classifier.train import Example, train  # noqa: E402
from antispam.message import Message  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--outer-cuts", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--target-fpr", type=float, nargs="+", default=[0.002],
                    help="train's --target-fpr values to compare (default: its default, 0.002)")
    a = ap.parse_args()
    from sklearn.model_selection import StratifiedKFold

    examples = [Example(m.data, m.is_spam) for m in labelled(verify=False, split="train")]
    y = np.array([e.spam for e in examples], dtype=np.int8)
    print(f"TRAIN: {int(y.sum())} spam, {int(len(y) - y.sum())} ham; outer cuts {a.outer_cuts}; "
          f"targets {a.target_fpr}", flush=True)
    # per target: false positives, ham, spam caught, spam; and the AUC of each held-out fold
    pooled = {t: [0, 0, 0, 0] for t in a.target_fpr}
    aucs: list[float] = []
    t0 = time.monotonic()
    for cut in a.outer_cuts:
        folds = StratifiedKFold(5, shuffle=True, random_state=100 + cut).split(np.zeros(len(y)), y)
        for k, (part, held) in enumerate(folds):
            held_msgs = [Message(examples[i].data) for i in held]
            yt = y[held]
            for target in a.target_fpr:
                model = train([examples[i] for i in part], target_fpr=target)
                clf = Classifier(model)
                p = np.array([clf.classify(m).probability for m in held_msgs])
                if target == a.target_fpr[0]:
                    aucs.append(roc_auc(p, yt))
                caught = p >= model.threshold
                row = pooled[target]
                row[0] += int((caught & (yt == 0)).sum())
                row[1] += int((yt == 0).sum())
                row[2] += int((caught & (yt == 1)).sum())
                row[3] += int((yt == 1).sum())
            print(f"  cut {cut} fold {k}: {time.monotonic() - t0:.0f} s", flush=True)
    print(f"\nheld out, pooled over {len(aucs)} folds (mean ROC AUC {np.mean(aucs):.5f}):")
    for target, (fp, ham, tp, spam) in pooled.items():
        print(f"  target {target * 100:.2f}%: ham FPR {fp / ham * 100:.3f}% ({fp} of {ham}), "
              f"spam recall {tp / spam * 100:.2f}% ({spam - tp} of {spam} missed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
