"""Accuracy on the SpamAssassin corpus: classifier alone and whole default engine, beside the peers.

    python benchmarks/accuracy.py [--model default|train|DIR] [--online] [--peers DIR] [--out benchmarks/RESULTS.md]

Split protocol: the model is trained on TRAIN only (``--model train`` fits a
fresh one, ``default`` takes the shipped one, which was fitted on TRAIN the
same way) and every TEST message is scored once.  ``--online`` adds the
TREC-style run (classify, then learn the gold label, in sha256 order, from an
empty model).  The peers' figures are quoted from
``../shared/peers/RESULTS.md`` (same corpus, same split, trained on the same
TRAIN); they are not rerun by this script.  ``--peers DIR`` adds the table of a
side-by-side run: DIR holds the peers' trained TSVs from
``../shared/peers/run_all.sh`` (``OUT=DIR``) and ``antispam_default.tsv`` from
``benchmarks/run_antispam.py /tmp/peers-corpus/test DIR/antispam_default.tsv
--workers 2``, all scored by the peers' own ``eval.py``: ``benchmarks/peers.sh`` writes both
into ``/tmp/peers-out``.  The shipped ``benchmarks/RESULTS.md`` is
``--model default --online --peers /tmp/peers-out``.
Writes a markdown table to ``--out`` (default: ``benchmarks/RESULTS.md``, which it replaces) and the
JSON report (``.json`` beside it) and ROC plot (``roc.png`` in the same directory).
The corpus is ``$ANTISPAM_CORPUS``, else ``../shared/corpora/spamassassin`` beside the checkout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import die, labelled  # noqa: E402

from antispam.classifier import eval as ev  # noqa: E402
from antispam.classifier.check import default_model  # noqa: E402
from antispam.classifier.model import load_model  # noqa: E402
from antispam.config import Config  # noqa: E402
from antispam.engine import default_checks  # noqa: E402
from antispam.errors import ModelError  # noqa: E402
from antispam.store.memory import MemoryStore  # noqa: E402

#: From ../shared/peers/RESULTS.md, TEST split, trained on TRAIN (run 2026-11-22; not rerun here).
DEFAULT_OUT = Path(__file__).resolve().parent / "RESULTS.md"

PEERS = (
    ("SpamAssassin -L + Bayes (trained)", 0.9819, 0.9560, 0.0067, 0.9842, 0.9699, 0.9981, "435/7/20/1033"),
    ("SpamAssassin net (NXDOMAIN) + Bayes", 0.9759, 0.9560, 0.0154, 0.9645, 0.9603, 0.9973, "435/16/20/1024"),
    ("Rspamd 3.4 + Bayes (Redis)", 0.9512, 0.8681, 0.0125, 0.9681, 0.9154, 0.9939, "395/13/60/1027"),
    ("bogofilter (trained)", 0.9545, 0.8505, 0.0000, 1.0000, 0.9192, 0.9992, "387/0/68/1040"),
)


def _row(name: str, r: dict) -> str:
    acc = (r["tp"] + r["tn"]) / (r["tp"] + r["tn"] + r["fp"] + r["fn"])
    return (f"| {name} | {acc:.4f} | {r['spam_recall']:.4f} | {r['ham_fpr']:.4f} | {r['precision']:.4f} | "
            f"{r['f1']:.4f} | {r['roc_auc']:.5f} | {r['tp']}/{r['fp']}/{r['fn']}/{r['tn']} |")


PEER_TSVS = ("spamassassin_local_trained", "spamassassin_net_trained", "rspamd_trained", "bogofilter_trained")


def _peers_inputs(d: Path) -> tuple[Path, list[str]]:
    """The peers' eval.py and the TSVs of ``--peers DIR``, checked before anything is measured or written."""
    here = Path(__file__).resolve()
    evaluator = next((up / "shared" / "peers" / "eval.py" for up in here.parents
                      if (up / "shared" / "peers" / "eval.py").exists()), None)
    if evaluator is None:
        die("--peers: the peers' eval.py was not found (shared/peers/eval.py in a directory above this checkout)")
    if not d.is_dir():
        die(f"--peers {d}: no such directory (run benchmarks/peers.sh first; it writes /tmp/peers-out)")
    if not (d / "antispam_default.tsv").is_file():
        die(f"--peers {d}: no antispam_default.tsv there (benchmarks/peers.sh writes it, or "
            f"benchmarks/run_antispam.py /tmp/peers-corpus/test {d}/antispam_default.tsv --workers 2)")
    peers = [n for n in PEER_TSVS if (d / f"{n}.tsv").is_file()]
    if not peers:
        die(f"--peers {d}: none of the peers' results ({', '.join(n + '.tsv' for n in PEER_TSVS)}) is there "
            f"(run benchmarks/peers.sh first)")
    missing = [n for n in PEER_TSVS if n not in peers]
    if missing:
        print(f"note: --peers {d} has no {', '.join(n + '.tsv' for n in missing)}; the table leaves them out",
              file=sys.stderr)
    return evaluator, [str(d / f"{n}.tsv") for n in (*peers, "antispam_default")]


def _peers_table(evaluator: Path, tsvs: list[str]) -> list[str]:
    import subprocess

    run = subprocess.run([sys.executable, str(evaluator), "--markdown", *tsvs], capture_output=True, text=True)
    if run.returncode != 0 or not run.stdout.strip():
        err = (run.stderr.strip().splitlines() or ["no output"])[-1]
        die(f"the peers' eval.py failed on {' '.join(tsvs)} (status {run.returncode}): {err}")
    out = run.stdout
    when = ", ".join(f"{Path(t).stem} {time.strftime('%Y-%m-%d %H:%M', time.gmtime(Path(t).stat().st_mtime))} UTC"
                     for t in tsvs)
    return [
        "The peers' `run_all.sh` (each trained on TRAIN, scored on TEST) and `benchmarks/run_antispam.py` (the "
        "default engine, 2 worker processes) on `/tmp/peers-corpus/test`, all scored by the peers' `eval.py`. "
        "`benchmarks/peers.sh` runs everything; `benchmarks/peers.sh --ours-only` reuses the slow SpamAssassin "
        "and Rspamd results and reruns bogofilter right before antispam, so the two fastest engines are timed "
        "under the same machine state. Throughput is with 2 concurrent workers on 2 cores (antispam's includes "
        f"its process-pool start-up). When each result was written: {when}.",
        "",
        *out.strip().splitlines(),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--online", action="store_true")
    ap.add_argument("--peers", metavar="DIR", help="include the side-by-side run whose TSVs are in DIR")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    args = ap.parse_args()
    peers = _peers_inputs(Path(args.peers)) if args.peers else None
    model = None
    if args.model not in ("default", "train"):
        try:
            model = load_model(args.model)
        except ModelError as exc:
            die(f"--model {args.model}: {exc}")
    msgs = labelled()
    train = [m for m in msgs if m.split == "train"]
    test = [m for m in msgs if m.split == "test"]
    if args.model == "default":
        model = default_model()
    elif args.model == "train":
        from antispam.classifier.train import Example, train as fit

        model = fit([Example(m.data, m.is_spam) for m in train], progress=lambda s: print(s, file=sys.stderr))
    checks = [c.name for c in default_checks(Config(), MemoryStore())]
    t0 = time.monotonic()
    scored, required = ev.run_split(model, test)
    secs = time.monotonic() - t0
    rep = ev.report(scored, model.threshold, required, target_fpr=0.001, protocol="split", model=args.model)
    out = Path(args.out)
    command = " ".join(["python benchmarks/accuracy.py", f"--model {args.model}",
                        *(["--online"] if args.online else []), *([f"--peers {args.peers}"] if args.peers else []),
                        *([f"--out {args.out}"] if out.resolve() != DEFAULT_OUT else [])])
    peer_lines = _peers_table(*peers) if peers else []  # before anything is written: eval.py may fail
    notes = ev.write_outputs(rep, scored, out.with_suffix(".json"), out.with_name("roc.png"))
    c, e = rep["classifier"], rep["engine"]
    lines = [
        "# Accuracy on the SpamAssassin corpus (TEST split, trained on TRAIN)",
        "",
        f"Produced by `{command}`. TEST = {rep['messages']} messages "
        f"({rep['spam']} spam, {rep['ham']} ham); spam is the positive class. Confusion counts are TP/FP/FN/TN.",
        f"Classifier threshold: the model's own (p >= {model.threshold:.4f}, chosen by cross-validation on TRAIN "
        f"for a 0.2% ham FPR). Engine threshold: the default required score {required:g}.",
        "",
        "| engine | accuracy | spam recall | ham FPR | precision | F1 | ROC AUC | TP/FP/FN/TN |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
        _row("**antispam classifier alone**", c),
        _row(f"**antispam default engine** ({', '.join(checks)})", e),
    ]
    for name, acc, rec, fpr, prec, f1, auc, conf in PEERS:
        lines.append(f"| {name} | {acc:.4f} | {rec:.4f} | {fpr:.4f} | {prec:.4f} | {f1:.4f} | {auc:.4f} | {conf} |")
    lines += [
        "",
        "Peer rows are quoted from `../shared/peers/RESULTS.md` (run 2026-11-22 on this machine, same split, "
        "each trained on TRAIN)" + ("; the side-by-side section below reran them with ours in one run."
                                   if args.peers else "; they were not rerun with this table."),
        "",
        f"- classifier (1-AUC) = {c['one_minus_auc_pct']:.4f}%; for ham FPR <= 0.1% its threshold would be "
        f"p >= {c['at_target_fpr']['threshold']:.4f} (recall {c['at_target_fpr']['spam_recall']:.4f}).",
        f"- engine (1-AUC) = {e['one_minus_auc_pct']:.4f}%.",
        f"- scoring TEST through both paths took {secs:.1f} s (one core).",
    ]
    if args.online:
        t0 = time.monotonic()
        online = ev.run_online(ev.empty_model(model), msgs)
        orep = ev.report(online, 0.5, None, target_fpr=0.001, protocol="online")
        o = orep["classifier"]
        lines += [
            "",
            "## Online (TREC style)",
            "",
            f"All {orep['messages']} messages in sha256 order, starting from an empty model: classify, then learn "
            f"the gold label (`engine.learn` statistics, learning rate 0.3). ROC AUC {o['roc_auc']:.5f} "
            f"((1-AUC) {o['one_minus_auc_pct']:.3f}%); at p >= 0.5: ham FPR {o['ham_fpr']:.4f}, spam recall "
            f"{o['spam_recall']:.4f}, TP/FP/FN/TN {o['tp']}/{o['fp']}/{o['fn']}/{o['tn']} "
            f"({time.monotonic() - t0:.1f} s).",
        ]
        rep["online"] = orep
        out.with_suffix(".json").write_text(json.dumps(rep, indent=1, sort_keys=True, default=float) + "\n")
    if args.peers:
        lines += ["", "## Side by side, one run", "", *peer_lines]
    lines += [f"- {n}" for n in notes]
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
