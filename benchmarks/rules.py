"""Rule matching throughput: the default ruleset, then default + a SpamAssassin ruleset.

Measures ``RulesCheck.run`` alone (process CPU time, best of ``--repeat``) on messages whose views (headers, MIME
tree, text, HTML rendering, URLs) were computed beforehand, so the figure is
the rule engine's cost, not the parser's.  One process, one core.

    python benchmarks/rules.py [--corpus DIR] [--sa /usr/share/spamassassin] [--engine auto|hyperscan|python] [--limit N]
                               [--repeat 3] [--synthetic 2000] [--cache /tmp/antispam-rules-cache]

``--corpus`` defaults to ``$ANTISPAM_CORPUS``, else ``../shared/corpora/spamassassin`` beside the
checkout.  ``--sa`` defaults to /usr/share/spamassassin when it is there; ``--sa ""`` leaves
SpamAssassin's rules out.  Compiled Hyperscan databases are cached in ``--cache``: the first run
with SpamAssassin's rules compiles them (minutes), later ones load them.

``--synthetic N`` also times the default ruleset plus N generated rules of the kinds a content
ruleset is mostly made of (70% body phrases, 20% Subject/From words, 10% URI host words, each
scored, drawn with a fixed seed from words of the corpus's TRAIN split so that few of them hit):
how the matching itself scales with the number of rules, apart from what a particular ruleset's
evals, metas and Python-only patterns cost (SpamAssassin's, above).
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import die, labelled, need_hyperscan  # noqa: E402

from antispam.check import ScanContext  # noqa: E402
from antispam.config import Config  # noqa: E402
from antispam.message import Message  # noqa: E402
from antispam.resources import default_rules_dir  # noqa: E402
from antispam.ruleset.check import RulesCheck, body_text, load_rules, rawbody_text, uri_text  # noqa: E402


def prepared(msgs):
    out = []
    for m in msgs:
        msg = Message(m.data).parse_all()
        body_text(msg), rawbody_text(msg), uri_text(msg)  # noqa: B018  (warm the lazy views)
        out.append(msg)
    return out


def evaluated(check: RulesCheck) -> int:
    """How many rules a scan evaluates (pattern, eval, exists and meta rules)."""
    c = check.compiled
    return sum(len(ids) for ids in c.groups.values()) + len(c.evals) + len(c.exists) + len(c.metas)


def run(check: RulesCheck, msgs, repeat: int) -> float:
    cfg = Config()
    best = float("inf")
    for _ in range(repeat):
        # CPU time of this process: on a shared machine, wall time mostly measures the neighbours.
        t = time.process_time()
        for msg in msgs:
            check.run(msg, ScanContext(msg.envelope, cfg))
        best = min(best, time.process_time() - t)
    return len(msgs) / best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", default=None)
    ap.add_argument("--sa", default=None, help="SpamAssassin rules to add (default: /usr/share/spamassassin "
                    "when present; '' for none)")
    ap.add_argument("--engine", default="auto", choices=("auto", "hyperscan", "python"))
    ap.add_argument("--limit", type=int, default=0, help="messages (default: all)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cache", default="/tmp/antispam-rules-cache")
    ap.add_argument("--synthetic", type=int, default=0, help="also time N generated rules added to the default set")
    a = ap.parse_args()
    if a.engine == "hyperscan":
        need_hyperscan("--engine hyperscan")
    if a.sa is None:
        a.sa = "/usr/share/spamassassin" if Path("/usr/share/spamassassin").is_dir() else ""
        if not a.sa:
            print("(no SpamAssassin rules in /usr/share/spamassassin: the default + SA row is left out)",
                  file=sys.stderr)
    elif a.sa and not Path(a.sa).is_dir():
        die(f"--sa {a.sa}: no such directory")
    msgs = labelled(a.corpus)
    if a.limit:
        msgs = msgs[:: max(1, len(msgs) // a.limit)][: a.limit]
    pm = prepared(msgs)
    default = RulesCheck(load_rules([default_rules_dir()], engine=a.engine, cache_dir=a.cache))
    n_def = len(default.compiled.rules)
    r_def = run(default, pm, a.repeat)
    print(f"default ruleset   {n_def:5d} rules  {r_def:9.0f} msgs/s  ({default.matcher.name}, {len(pm)} messages, "
          f"{evaluated(default)} evaluated: the others are scored 0 and read by no reported meta)")
    every = RulesCheck(load_rules([default_rules_dir()], engine=a.engine, cache_dir=a.cache, every_rule=True))
    print(f"  every rule      {n_def:5d} rules  {run(every, pm, a.repeat):9.0f} msgs/s  (as rules stats and rules fit run them)")
    if a.sa:
        t = time.perf_counter()
        big = RulesCheck(load_rules([default_rules_dir()], sa_paths=[a.sa], engine=a.engine, cache_dir=a.cache,
                                    sa_pre_dirs=["/etc/spamassassin"] if Path("/etc/spamassassin").is_dir() else []))
        load_s = time.perf_counter() - t
        r_big = run(big, pm, a.repeat)
        print(f"default + SA      {len(big.compiled.rules):5d} rules  {r_big:9.0f} msgs/s  "
              f"(slowdown x{r_def / r_big:.2f}; {evaluated(big)} evaluated; load {load_s:.1f}s)")
    if a.synthetic:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "synthetic.cf"
            path.write_text(synthetic_rules([m for m in msgs if m.split == "train"], a.synthetic))
            t = time.perf_counter()
            syn = RulesCheck(load_rules([default_rules_dir(), tmp], engine=a.engine, cache_dir=a.cache))
            load_s = time.perf_counter() - t
            r_syn = run(syn, pm, a.repeat)
            print(f"default + {a.synthetic} generated {len(syn.compiled.rules):5d} rules  {r_syn:9.0f} msgs/s  "
                  f"(slowdown x{r_def / r_syn:.2f}; {evaluated(syn)} evaluated; load {load_s:.1f}s)")
    return 0


def synthetic_rules(train, n: int, seed: int = 1) -> str:
    """``n`` rules in our syntax over words of mid frequency in ``train`` (a fixed seed)."""
    counts: Counter[str] = Counter()
    for m in train[:1500]:
        counts.update(set(re.findall(rb"[a-z]{5,12}", m.data.lower())))
    words = [w.decode() for w, c in counts.most_common() if 3 <= c <= 60][:3000]
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        kind = rng.random()
        name = f"SYN_{i:05d}"
        if kind < 0.7:
            lines.append(f"body     {name} /\\b{rng.choice(words)}\\s+{rng.choice(words)}\\b/i")
        elif kind < 0.9:
            lines.append(f"header   {name} {rng.choice(('Subject', 'From'))} =~ /\\b{rng.choice(words)}\\b/i")
        else:
            lines.append(f"uri      {name} /{rng.choice(words)}\\.(?:com|net|org|biz|info)\\b/i")
        lines.append(f"describe {name} generated rule {i}")
        lines.append(f"score    {name} 0.01")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
