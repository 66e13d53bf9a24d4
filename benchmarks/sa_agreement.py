"""Agreement of our hits with SpamAssassin's own on a corpus sample (the accepted SA rules only).

Needs a running spamd started with local tests only, e.g.
``spamd -L --listen 127.0.0.1:PORT -u nobody``; each sampled message goes
through ``spamc -y`` (the names of the rules that hit) and through our engine
loaded with the same ``/usr/share/spamassassin`` rules.

Compared: every (message, rule) pair for rules that we accepted, that are
not ``__`` sub-rules and that have a non-zero score (spamd reports only
those).  Rules SpamAssassin runs but we refused are left out and counted.

    python benchmarks/sa_agreement.py --port PORT [--every 40]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from antispam.check import ScanContext  # noqa: E402
from antispam.config import Config  # noqa: E402
from antispam.corpus import default_corpus_dir, load_labelled  # noqa: E402
from antispam.message import Message  # noqa: E402
from antispam.ruleset.check import RuleHits, RulesCheck, load_rules  # noqa: E402
from antispam.ruleset.parser import Parser  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--every", type=int, default=40)
    ap.add_argument("--sa", default="/usr/share/spamassassin")
    ap.add_argument("--show", type=int, default=15, help="rules with most disagreements to list")
    a = ap.parse_args()
    loaded = load_rules([], sa_paths=[a.sa], sa_pre_dirs=["/etc/spamassassin"], engine="python")
    check = RulesCheck(loaded)
    # spamd -L without a trained Bayes database scores with set 0: it reports the rules
    # whose set-0 score is non-zero, so those are the ones compared.
    parser = Parser()
    for f in sorted(Path("/etc/spamassassin").glob("*.pre")):
        parser.read_file(f)
    parser.read_dir(a.sa)
    defs = parser.finish().rules
    def set0(name: str) -> float:
        d = defs.get(name)
        if d is None:
            return 0.0
        if d.score_sets:
            return d.score_sets[0]
        return 0.0 if name.startswith("__") else 1.0
    # "approximate": metas reading unavailable rules as 0, and rules on our X-Spam-Relays-* approximation
    approx = {p.rule for p in loaded.compiled.problems if p.severity == "warning" and p.message.startswith("reads")}
    approx |= {r.name for r in check.compiled.rules if r.header and r.header[0].startswith("X-Spam-Relays")}
    for r in check.compiled.rules:  # metas inherit approximation from their inputs (rules are in dependency order)
        if r.kind == "meta" and any(check.compiled.rules[d].name in approx for d in r.deps):
            approx.add(r.name)
    ours_names = {r.name for r in check.compiled.rules if not r.name.startswith("__") and set0(r.name) != 0}
    msgs = load_labelled(default_corpus_dir())[:: a.every]
    both = only_sa = only_us = 0
    exact = 0
    strict = Counter()
    refused_hits = Counter()
    disagree = Counter()
    cfg = Config()
    for m in msgs:
        out = subprocess.run(["spamc", "-d", "127.0.0.1", "-p", str(a.port), "-y"], input=m.data,
                             capture_output=True, timeout=120).stdout.decode().strip()
        sa = {s for s in out.split(",") if s}
        msg = Message(m.data)
        ctx = ScanContext(msg.envelope, cfg)
        check.run(msg, ctx)
        us = {n for n in ctx.get(RuleHits).counts if n in ours_names}
        for n in sa - ours_names:
            refused_hits[n] += 1
        sa_c = sa & ours_names
        both += len(sa_c & us)
        only_sa += len(sa_c - us)
        only_us += len(us - sa_c)
        for n in sa_c - us:
            disagree[(n, "SA only")] += 1
        for n in us - sa_c:
            disagree[(n, "ours only")] += 1
        for n in ours_names - approx:
            k = (n in sa_c, n in us)
            if k != (False, False):
                strict[k] += 1
        exact += sa_c == us
    pairs = both + only_sa + only_us
    print(f"{len(msgs)} messages, {len(ours_names)} comparable SA rules (accepted, scored, not sub-rules)")
    print(f"rule hits: both {both}, SpamAssassin only {only_sa}, ours only {only_us}; "
          f"agreement {100 * both / max(pairs, 1):.1f}% of hit pairs; identical hit sets on {exact}/{len(msgs)} messages")
    print(f"hits of rules we refused (left out): {sum(refused_hits.values())} over {len(refused_hits)} rules")
    sb, so, su = strict[(True, True)], strict[(True, False)], strict[(False, True)]
    print(f"exactly-accepted rules only (no approximated input): both {sb}, SpamAssassin only {so}, ours only {su}; "
          f"agreement {100 * sb / max(sb + so + su, 1):.1f}%")
    for (n, side), k in disagree.most_common(a.show):
        print(f"  {k:4d}  {n:32s} {side}{'  (approximated)' if n in approx else ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
