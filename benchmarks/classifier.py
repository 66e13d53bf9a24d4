"""Classifier speed: tokenize + score of already-parsed messages, compiled kernel vs Python twin.

    python benchmarks/classifier.py [--split test] [--repeat 3]

Every message of the chosen corpus split is parsed first and all its views
are computed (``Message.parse_all()``), so the timing covers exactly what the
classifier adds to a scan: gathering its views (subject, text, meta tokens),
the tokenizer+hash kernel, and the scoring kernel.  One core, best of
``--repeat`` runs.  The two paths are also checked to agree exactly.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import die, labelled  # noqa: E402

from antispam import _fastscore_py  # noqa: E402
from antispam.classifier import Classifier, default_model  # noqa: E402
from antispam.classifier.tokenizer import views  # noqa: E402
from antispam.message import Message  # noqa: E402


def best_of(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", default="test", choices=("train", "test", "all"))
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    try:
        from antispam import _fastscore as compiled
    except ImportError:
        die("compiled core not built: python setup.py build_ext --inplace (or pip install -e .)")
    msgs = [Message(m.data) for m in labelled(split=None if args.split == "all" else args.split)]
    for m in msgs:
        m.parse_all()
    clf = Classifier(default_model())
    spec = clf.model.spec
    n = len(msgs)

    t_views = best_of(lambda: [views(m) for m in msgs], args.repeat)
    vs = [views(m) for m in msgs]
    w = clf.model.weights

    def kernels(k):
        def run():
            for s, t, meta in vs:
                k.score(k.features(s, t, meta, spec.seed, spec.bits, spec.bigrams), w, 0.0, clf.clues)
        return run

    t_kc = best_of(kernels(compiled), args.repeat)
    t_kp = best_of(kernels(_fastscore_py), max(1, args.repeat // 2))
    t_full_c = best_of(lambda: [clf.classify(m, compiled) for m in msgs], args.repeat)
    t_full_p = best_of(lambda: [clf.classify(m, _fastscore_py) for m in msgs], max(1, args.repeat // 2))
    same = all(clf.classify(m, compiled) == clf.classify(m, _fastscore_py) for m in msgs)

    def row(name: str, secs: float) -> str:
        return f"| {name} | {secs / n * 1e6:8.1f} us | {n / secs:10,.0f} msgs/s |"

    print(f"{n} parsed messages ({args.split} split), one core, best of {args.repeat}")
    print("| stage | per message | throughput |\n|---|---:|---:|")
    print(row("views (subject, text, meta tokens; Python)", t_views))
    print(row("kernels only, compiled (tokenize+hash+score)", t_kc))
    print(row("kernels only, Python twin", t_kp))
    print(row("classify(), compiled (views + kernels + calibration + clues)", t_full_c))
    print(row("classify(), Python twin", t_full_p))
    print(f"\nkernel speed-up compiled/twin: {t_kp / t_kc:.1f}x; classify() speed-up: {t_full_p / t_full_c:.1f}x; "
          f"identical results: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
