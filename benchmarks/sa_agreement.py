"""Agreement of our hits with SpamAssassin's own on a corpus sample (the accepted SA rules only).

Needs a running spamd started with local tests only, on loopback, e.g.
``RES_NAMESERVERS=127.0.0.1 spamd -L --listen 127.0.0.1:PORT -u nobody --pidfile FILE``
(``-L``: no DNS at all; ``RES_NAMESERVERS`` keeps any Perl resolver on loopback all the same);
each sampled message goes through ``spamc -y`` (the names of the rules that hit) and through our
engine loaded with the same ``/usr/share/spamassassin`` rules.  A spamd that does not answer on
127.0.0.1:PORT is an error, not a run of empty answers.

Compared: every (message, rule) pair for rules that we accepted, that are
not ``__`` sub-rules and that have a non-zero score in the score set spamd
uses (spamd reports only those): set 0 without Bayes, set 2 when spamd's
configuration gives it a trained Bayes database (seen from the ``BAYES_*``
hits it reports; ``--score-set`` forces one).  Rules SpamAssassin runs but we
refused are left out and counted.  The corpus is ``$ANTISPAM_CORPUS``, else
``../shared/corpora/spamassassin`` beside the checkout.

    python benchmarks/sa_agreement.py --port PORT [--every 40] [--sa /usr/share/spamassassin] [--show 15]
                                      [--score-set auto|0|2]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import die, labelled  # noqa: E402

from antispam.check import ScanContext  # noqa: E402
from antispam.config import Config  # noqa: E402
from antispam.message import Message  # noqa: E402
from antispam.ruleset.check import RuleHits, RulesCheck, load_rules  # noqa: E402
from antispam.ruleset.parser import Parser  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--every", type=int, default=40)
    ap.add_argument("--sa", default="/usr/share/spamassassin")
    ap.add_argument("--show", type=int, default=15, help="rules with most disagreements to list")
    ap.add_argument("--score-set", default="auto", choices=("auto", "0", "2"),
                    help="SpamAssassin score set spamd -L uses: 0 (no Bayes), 2 (Bayes); "
                         "auto: 2 when it reports BAYES_*")
    a = ap.parse_args()
    if shutil.which("spamc") is None:
        die("spamc is not installed (apt-get install spamc)")
    if not Path(a.sa).is_dir():
        die(f"--sa {a.sa}: no such directory (SpamAssassin's rules: apt-get install spamassassin)")
    try:
        socket.create_connection(("127.0.0.1", a.port), timeout=5).close()
    except OSError as exc:
        die(f"no spamd on 127.0.0.1:{a.port} ({exc.strerror or exc}): start one, e.g. "
            f"RES_NAMESERVERS=127.0.0.1 spamd -L --listen 127.0.0.1:{a.port} -u nobody")
    if a.every < 1:
        die("--every: a positive number")
    msgs = labelled()[:: a.every]
    loaded = load_rules([], sa_paths=[a.sa], sa_pre_dirs=["/etc/spamassassin"], engine="python")
    check = RulesCheck(loaded)
    # spamd -L scores with set 0 without a trained Bayes database, set 2 with one: it reports the
    # rules whose score in that set is non-zero, so those are the ones compared.
    parser = Parser()
    for f in sorted(Path("/etc/spamassassin").glob("*.pre")):
        parser.read_file(f)
    parser.read_dir(a.sa)
    defs = parser.finish().rules
    def score(name: str, n: int) -> float:
        d = defs.get(name)
        if d is None:
            return 0.0
        if d.score_sets:
            return d.score_sets[n] if len(d.score_sets) == 4 else d.score_sets[0]
        return 0.0 if name.startswith("__") else 1.0
    # "approximate": metas reading unavailable rules as 0, and rules on our X-Spam-Relays-* approximation
    approx = {p.rule for p in loaded.compiled.problems if p.severity == "warning" and p.message.startswith("reads")}
    approx |= {r.name for r in check.compiled.rules if r.header and r.header[0].startswith("X-Spam-Relays")}
    for r in check.compiled.rules:  # metas inherit approximation from their inputs (rules are in dependency order)
        if r.kind == "meta" and any(check.compiled.rules[d].name in approx for d in r.deps):
            approx.add(r.name)
    # first every message through both (spamd's score set is known only from its answers) ...
    runs = []
    cfg = Config()
    for m in msgs:
        p = subprocess.run(["spamc", "-x", "-d", "127.0.0.1", "-p", str(a.port), "-y"], input=m.data,
                           capture_output=True, timeout=120)
        if p.returncode != 0:
            err = (p.stderr.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
            die(f"spamc to 127.0.0.1:{a.port} failed (status {p.returncode}) on {m.set}/{m.name}: {err}")
        sa = {s for s in p.stdout.decode().strip().split(",") if s}
        msg = Message(m.data)
        ctx = ScanContext(msg.envelope, cfg)
        check.run(msg, ctx)
        runs.append((sa, set(ctx.get(RuleHits).counts)))
    n_set = int(a.score_set) if a.score_set != "auto" else (
        2 if any(n.startswith("BAYES_") for sa, _ in runs for n in sa) else 0)
    ours_names = {r.name for r in check.compiled.rules if not r.name.startswith("__") and score(r.name, n_set) != 0}
    # ... then the comparison
    both = only_sa = only_us = 0
    exact = 0
    strict = Counter()
    refused_hits = Counter()
    disagree = Counter()
    for sa, hits in runs:
        us = {n for n in hits if n in ours_names}
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
    print(f"{len(msgs)} messages, {len(ours_names)} comparable SA rules "
          f"(accepted, scored in set {n_set}, not sub-rules)")
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
