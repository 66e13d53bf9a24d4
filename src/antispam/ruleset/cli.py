"""``antispam rules ...``: lint, load-sa, stats, fit.

* ``lint DIR...``: every problem at once, with file:line; exit 1 on errors.
* ``load-sa DIR``: load a SpamAssassin rules directory and report how many
  rules were accepted unchanged, accepted after translation, and refused, by
  kind and by reason.
* ``stats [CORPUS]``: per-rule hit rates on ham and spam, S/O ratio and rank,
  like SpamAssassin's mass-check ``hit-frequencies`` report.
* ``fit``: fit the rules' scores alone on the TRAIN split (``--out`` writes ``scores.cf``).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from ..config import RULES_ENGINES
from ..resources import default_rules_dir
from .compiler import compile_rules
from .parser import parse_paths

#: The rule kinds counted by the SpamAssassin compatibility figure.
SA_KINDS = ("header", "body", "uri", "meta")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rules", help="rule files: lint, load-sa, stats, fit")
    rs = p.add_subparsers(dest="rules_command", metavar="SUBCOMMAND")
    lint = rs.add_parser("lint", help="report every problem in rule files, with file:line")
    lint.add_argument("paths", nargs="*", metavar="DIR", help="rule directories or files (default: the embedded rules)")
    lint.add_argument("--all", action="store_true", help="also list ignored lines")
    lint.set_defaults(func=cmd_lint)
    sa = rs.add_parser("load-sa", help="load a SpamAssassin rules directory and report what was accepted")
    sa.add_argument("path", nargs="?", default="/usr/share/spamassassin", metavar="DIR",
                    help="SpamAssassin rules directory (default /usr/share/spamassassin)")
    sa.add_argument("--pre", default="/etc/spamassassin", metavar="DIR", help="directory of *.pre files (loadplugin; default /etc/spamassassin)")
    sa.add_argument("-v", "--verbose", action="store_true", help="list every refused rule")
    sa.set_defaults(func=cmd_load_sa)
    st = rs.add_parser("stats", help="per-rule hit rates on a labelled corpus (mass-check style)")
    st.add_argument("corpus", nargs="?", help="labelled corpus directory (default: the shared SpamAssassin corpus)")
    st.add_argument("--split", choices=("train", "test", "all"), default="train", help="corpus split (default train)")
    st.add_argument("--rules", action="append", default=[], metavar="DIR", help="rule directories (default: embedded)")
    st.add_argument("--engine", default="auto", choices=RULES_ENGINES,
                    help="matcher (default auto: Hyperscan when installed)")
    st.set_defaults(func=cmd_stats)
    fit = rs.add_parser("fit", help="fit rule scores on the TRAIN split and write scores.cf")
    fit.add_argument("--corpus", default=None, help="labelled corpus directory (default: the shared SpamAssassin corpus)")
    fit.add_argument("--rules", action="append", default=[], metavar="DIR", help="rule directories (default: embedded)")
    fit.add_argument("--out", default=None, help="where to write scores.cf (default: print only)")
    fit.add_argument("--lam", type=float, default=1.0, help="L2 regularisation strength (default 1.0)")
    fit.add_argument("--max-score", type=float, default=4.0, help="cap on the absolute value of a written score (default 4.0)")
    fit.add_argument("--ham-weight", type=float, default=20.0, help="weight of a ham error relative to a spam error (default 20)")
    fit.set_defaults(func=cmd_fit)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def cmd_lint(args: argparse.Namespace) -> int:
    paths = args.paths or [str(default_rules_dir())]
    compiled = compile_rules(parse_paths(paths))
    shown = [p for p in compiled.problems if args.all or p.severity != "ignored"]
    for p in shown:
        print(p)
    errors = len(compiled.errors())
    ignored = sum(p.severity == "ignored" for p in compiled.problems)
    print(f"{len(compiled.rules)} rules usable, {errors} error(s), {ignored} ignored line(s)")
    return 1 if errors else 0


def cmd_load_sa(args: argparse.Namespace) -> int:
    src = Path(args.path)
    if not src.exists():  # a report of "0 files" and exit 0 read like an empty but sound ruleset
        sys.stderr.write(f"antispam rules load-sa: {args.path}: no such file or directory\n")
        return 2
    parsed = parse_paths([args.path], pre_dirs=[args.pre] if args.pre else [])
    ours = [f for f in parsed.files if Path(f) == src or src in Path(f).parents]
    if not ours:
        sys.stderr.write(f"antispam rules load-sa: no rule files (*.cf) in {args.path}\n")
        return 2
    compiled = compile_rules(parsed, lenient_meta=True)
    r = compiled.report
    print(f"SpamAssassin rules from {args.path}: {len(ours)} files" + (f" (and {len(parsed.files) - len(ours)} from --pre)"
                                                                   if len(parsed.files) > len(ours) else ""))
    print(f"{'kind':10s} {'accepted':>9s} {'translated':>11s} {'refused':>8s} {'usable %':>9s}")
    tot = [0, 0, 0]
    for kind in ("header", "body", "rawbody", "uri", "full", "mimeheader", "meta"):
        a, t, x = r.accepted[kind], r.translated[kind], r.refused[kind]
        if kind in SA_KINDS:
            tot = [tot[0] + a, tot[1] + t, tot[2] + x]
        n = a + t + x
        print(f"{kind:10s} {a:9d} {t:11d} {x:8d} {100 * (a + t) / n if n else 0:8.1f}%")
    n = sum(tot)
    print(f"{'header+body+uri+meta':22s}: {tot[0] + tot[1]}/{n} usable = {100 * (tot[0] + tot[1]) / max(n, 1):.1f}%"
          f" ({r.python_only.total()} regex rules run through Python re)")
    # SpamAssassin's own score sets 0 and 2 leave network tests out; show that figure too.
    net = {r.name for r in parsed.rules.values() if "net" in r.tflags and r.kind in SA_KINDS}
    net_refused = sum(1 for p in compiled.errors() if p.rule in net and not p.message.startswith("reads"))
    n_local = n - len(net)
    usable_local = tot[0] + tot[1] - (len(net) - net_refused)
    print(f"{'without network tests':22s}: {usable_local}/{n_local} usable = {100 * usable_local / max(n_local, 1):.1f}%"
          f" ({len(net)} rules have tflags net)")
    print("refusals by reason:")
    for reason, k in r.reasons.most_common(15):
        print(f"  {k:5d}  {reason}")
    ignored = Counter(p.message.split(":")[0] for p in compiled.problems if p.severity == "ignored")
    print(f"ignored lines: {sum(ignored.values())} (" + ", ".join(f"{k} {v}" for k, v in ignored.most_common(6)) + ", ...)")
    if args.verbose:
        for p in compiled.problems:
            if p.severity == "error":
                print(p)
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from ..corpus import default_corpus_dir, load_labelled
    from .check import RulesCheck, iter_rule_hits, load_rules

    corpus = args.corpus or default_corpus_dir()
    if corpus is None:
        print("no corpus given and the shared SpamAssassin corpus was not found")
        return 2
    msgs = load_labelled(corpus, split=None if args.split == "all" else args.split)
    check = RulesCheck(load_rules(args.rules or [str(default_rules_dir())], engine=args.engine, every_rule=True))
    n = Counter(m.label for m in msgs)
    hits = {"ham": Counter(), "spam": Counter()}
    for m, counts in zip(msgs, iter_rule_hits(check, (m.data for m in msgs))):
        hits[m.label].update(counts.keys())
    rows = []
    for r in check.compiled.rules:
        s = hits["spam"][r.name] / max(n["spam"], 1)
        h = hits["ham"][r.name] / max(n["ham"], 1)
        so = s / (s + h) if s + h else 0.0
        # mass-check's rank: S/O ratio weighted by how often the rule hits at all.
        rows.append((r.name, s, h, so, r.score))
    rows.sort(key=lambda x: (-x[3], -x[1]))
    print(f"{n['spam']} spam, {n['ham']} ham ({args.split})")
    print(f"{'OVERALL':>3s}  {'SPAM%':>7s} {'HAM%':>7s} {'S/O':>6s} {'RANK':>5s} {'SCORE':>6s}  NAME")
    for i, (name, s, h, so, score) in enumerate(rows):
        if s == 0 and h == 0:
            continue
        rank = 1.0 - i / max(len(rows) - 1, 1)
        print(f"{100 * (s * n['spam'] + h * n['ham']) / max(sum(n.values()), 1):7.3f}  {100 * s:7.3f} {100 * h:7.3f} {so:6.3f} {rank:5.2f} {score:6.2f}  {name}")
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    import numpy as np

    from ..corpus import default_corpus_dir, load_labelled
    from .check import RulesCheck, load_rules
    from .fit import evaluate, fit_scores, hit_matrix, write_scores

    corpus = args.corpus or default_corpus_dir()
    if corpus is None:
        print("no corpus given and the shared SpamAssassin corpus was not found")
        return 2
    dirs = args.rules or [str(default_rules_dir())]
    # Fit from the rule files without a previous scores.cf, so old fitted scores do not leak in.
    paths = []
    for d in dirs:
        pd = Path(d)
        paths += [f for f in sorted(pd.glob("*.cf")) if f.name != "scores.cf"] if pd.is_dir() else [pd]
    # The corpus first: a wrong --corpus is an error at once (CorpusError, exit 2), not after the rules load.
    train = load_labelled(corpus, split="train")
    test = load_labelled(corpus, split="test")
    check = RulesCheck(load_rules(paths, every_rule=True))
    Xtr, names = hit_matrix(check, [m.data for m in train])
    ytr = np.array([m.is_spam for m in train], dtype=float)
    Xte, _ = hit_matrix(check, [m.data for m in test])
    yte = np.array([m.is_spam for m in test], dtype=float)
    by_name = check.compiled.by_name
    nice = {n for n in names if "nice" in by_name[n].tflags or by_name[n].score < 0}
    hand = np.array([by_name[n].score for n in names])
    res = fit_scores(Xtr, ytr, names, nice, lam=args.lam, max_score=args.max_score, ham_weight=args.ham_weight,
                     prior=hand)
    fitted = np.array(res.scores)
    print(f"fitted {sum(s != 0 for s in res.scores)}/{len(names)} rules on TRAIN ({res.n_ham} ham, {res.n_spam} spam)")
    print(f"{'':18s} {'ham FPR':>9s} {'recall':>8s} {'ham mean':>9s} {'spam mean':>10s}   (rules alone, threshold 5)")
    for label, X, y in (("TRAIN", Xtr, ytr), ("TEST", Xte, yte)):
        for which, sc in (("hand", hand), ("fitted", fitted)):
            e = evaluate(X, y, sc)
            print(f"{label + ' ' + which:18s} {100 * e['ham_fpr']:8.2f}% {100 * e['spam_recall']:7.2f}% "
                  f"{e['ham_mean']:9.2f} {e['spam_mean']:10.2f}")
    if args.out:
        write_scores(res, args.out, Path(corpus).name)
        print(f"wrote {args.out}")
    return 0
