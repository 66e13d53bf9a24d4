"""``antispam eval``: how well the classifier, and the whole engine, separate spam from ham.

Two protocols:

* ``split``: train on TRAIN (or take a given model), score every TEST message.
  The project split puts a message in TEST when the first hex digit of its
  sha256 is c-f.
* ``online`` (TREC style): go through the messages in a fixed order (by
  sha256, a deterministic shuffle), classify each one, then learn its gold
  label through :meth:`Classifier.learn`, so every message is scored by a
  filter that has seen only the messages before it.  The starting model is
  ``empty`` (all weights zero: learning alone) or a trained one.

Reported, with spam as the positive class: ham false-positive rate, spam
recall, precision, F1 and the confusion matrix at the operating threshold
(the model's threshold for the classifier, the engine's required score for
the engine), ROC AUC and (1-AUC)%, the threshold that meets a target FPR and
what recall it gives, and each symbol's hit rate on ham and on spam.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..corpus import LabelledMessage
from ..message import Message
from ..store.memory import MemoryStore
from .check import Classifier, ClassifierCheck
from .metrics import binary_metrics, roc_auc, roc_curve, threshold_for_fpr
from .model import Model


@dataclass(frozen=True, slots=True)
class Scored:
    """Scores of one evaluated message."""

    name: str
    spam: bool
    probability: float
    engine_score: float | None = None
    symbols: tuple[str, ...] = ()


def _summary(scores: np.ndarray, y: np.ndarray, threshold: float, target_fpr: float) -> dict[str, Any]:
    auc = roc_auc(scores, y)
    out = binary_metrics(scores, y, threshold)
    out["roc_auc"] = auc
    out["one_minus_auc_pct"] = (1.0 - auc) * 100.0 if not math.isnan(auc) else float("nan")
    t = threshold_for_fpr(scores, y, target_fpr)
    at = binary_metrics(scores, y, t)
    out["at_target_fpr"] = {"target_fpr": target_fpr, "threshold": t, "ham_fpr": at["ham_fpr"],
                            "spam_recall": at["spam_recall"]}
    return out


def report(scored: Sequence[Scored], classifier_threshold: float, required_score: float | None,
           target_fpr: float = 0.001, **info: Any) -> dict[str, Any]:
    """The JSON report of an evaluation run."""
    y = np.array([s.spam for s in scored], dtype=bool)
    out: dict[str, Any] = {**info, "messages": len(scored), "spam": int(y.sum()), "ham": int((~y).sum())}
    p = np.array([s.probability for s in scored])
    out["classifier"] = _summary(p, y, classifier_threshold, target_fpr)
    if required_score is not None and scored and scored[0].engine_score is not None:
        e = np.array([s.engine_score for s in scored], dtype=np.float64)
        out["engine"] = _summary(e, y, required_score, target_fpr)
        hits: dict[str, list[int]] = {}
        for s in scored:
            for sym in s.symbols:
                hits.setdefault(sym, [0, 0])[1 if s.spam else 0] += 1
        nh, ns = max(1, int((~y).sum())), max(1, int(y.sum()))
        out["symbols"] = {k: {"ham": v[0] / nh, "spam": v[1] / ns, "ham_hits": v[0], "spam_hits": v[1]}
                          for k, v in sorted(hits.items(), key=lambda kv: -(kv[1][0] + kv[1][1]))}
    return out


def run_split(model: Model, test: Sequence[LabelledMessage], *, engine: bool = True,
              step: Callable[[], None] | None = None) -> tuple[list[Scored], float | None]:
    """Score TEST messages with ``model`` alone and inside the default engine (rules + this model)."""
    from ..config import Config
    from ..engine import Engine, default_checks

    clf = Classifier(model)
    eng = None
    if engine:
        config = Config.default()
        store = MemoryStore()
        checks = [c for c in default_checks(config, store) if c.name != "classifier"] + [ClassifierCheck(clf)]
        eng = Engine(config, checks, store=store)
    out = []
    for m in test:
        c = clf.classify(Message(m.data))
        if eng is not None:
            v = eng.scan(m.data)
            out.append(Scored(f"{m.set}/{m.name}", m.is_spam, c.probability, v.score, tuple(v.symbols)))
        else:
            out.append(Scored(f"{m.set}/{m.name}", m.is_spam, c.probability))
        if step:
            step()
    return out, (eng.policy.required_score if eng is not None else None)


def run_online(model: Model, messages: Sequence[LabelledMessage], *, learn_rate: float = 0.3,
               step: Callable[[], None] | None = None) -> list[Scored]:
    """TREC-style: classify each message in sha256 order, then learn its gold label."""
    clf = Classifier(model, MemoryStore(), learn_rate=learn_rate)
    out = []
    for m in sorted(messages, key=lambda m: m.sha256):
        msg = Message(m.data)
        c = clf.classify(msg)
        out.append(Scored(f"{m.set}/{m.name}", m.is_spam, c.probability))
        clf.learn(msg, m.is_spam, source="eval")
        if step:
            step()
    return out


def empty_model(like: Model | None = None) -> Model:
    """All weights zero, identity calibration: the online protocol's learning-only starting point."""
    from .tokenizer import TokenizerSpec

    spec = like.spec if like is not None else TokenizerSpec()
    return Model(spec=spec, weights=np.zeros(spec.n_features, dtype=np.float32), bias=0.0,
                 meta={"algorithm": "empty (learning only)"})


def write_outputs(rep: dict[str, Any], scored: Sequence[Scored], json_path: Path | None,
                  roc_path: Path | None) -> list[str]:
    """Write the JSON report and the ROC plot; returns notes about what could not be written."""
    notes = []
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(rep, indent=1, sort_keys=True, default=float) + "\n", encoding="utf-8")
    if roc_path is not None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            notes.append("ROC plot not written: matplotlib is not installed (pip install matplotlib)")
            return notes
        y = np.array([s.spam for s in scored], dtype=bool)
        fig, ax = plt.subplots(figsize=(5, 5))
        curves = [("classifier", np.array([s.probability for s in scored]))]
        if scored and scored[0].engine_score is not None:
            curves.append(("engine", np.array([s.engine_score for s in scored], dtype=float)))
        for label, sc in curves:
            fpr, tpr = roc_curve(sc, y)
            ax.plot(np.maximum(fpr, 1e-4), tpr, label=f"{label} (AUC {roc_auc(sc, y):.5f})")
        ax.set_xscale("log")
        ax.set_xlim(1e-4, 1)
        ax.set_ylim(0.8, 1.0)
        ax.set_xlabel("ham false-positive rate (log)")
        ax.set_ylabel("spam recall")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right")
        roc_path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(roc_path, dpi=100, bbox_inches="tight")
        plt.close(fig)
    return notes


def format_report(rep: dict[str, Any]) -> str:
    """A human-readable summary of a report."""
    lines = [f"{rep.get('protocol', '')}: {rep['messages']} messages ({rep['spam']} spam, {rep['ham']} ham)"]
    for part in ("classifier", "engine"):
        r = rep.get(part)
        if not r:
            continue
        t = r["at_target_fpr"]
        lines.append(
            f"{part:10s} AUC {r['roc_auc']:.5f} (1-AUC {r['one_minus_auc_pct']:.3f}%)  at threshold {r['threshold']:g}: "
            f"ham FPR {r['ham_fpr']:.4f}, spam recall {r['spam_recall']:.4f}, precision {r['precision']:.4f}, "
            f"F1 {r['f1']:.4f}  TP/FP/FN/TN {r['tp']}/{r['fp']}/{r['fn']}/{r['tn']}")
        lines.append(f"{'':10s} for ham FPR <= {t['target_fpr']:g}: threshold {t['threshold']:.6g} gives "
                     f"FPR {t['ham_fpr']:.4f}, recall {t['spam_recall']:.4f}")
    syms = rep.get("symbols")
    if syms:
        lines.append("symbol hit rates (ham / spam):")
        for k, v in list(syms.items())[:25]:
            lines.append(f"  {k:28s} {v['ham']:7.2%} {v['spam']:7.2%}")
    return "\n".join(lines)

