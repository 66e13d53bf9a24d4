"""Hit-for-hit identity of two source trees of the rule engine over the corpus.

Writes, for every corpus message, the ``RuleHits`` counts and the emitted hits with their
options, as JSON lines; run it once with the old tree and once with the new one and compare
the files (``cmp``).  Used to prove that a speed-up changes no hit.

    python benchmarks/rules_identity.py --src src --out new.jsonl [--sa /usr/share/spamassassin] [--engine python]
                                        [--every-rule] [--limit N]

``--src`` is the tree's ``src`` directory (default: this checkout's); the corpus is
``$ANTISPAM_CORPUS``, else ``../shared/corpora/spamassassin`` beside the checkout; ``--limit N``
takes N messages spread over it.
``--every-rule`` evaluates the rules scored 0 that no reported meta reads too (as ``rules stats``
does), so that their counts are compared as well.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import die, labelled, need_hyperscan  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--src", default=str(Path(__file__).resolve().parent.parent / "src"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--sa", default="")
    ap.add_argument("--engine", default="auto", choices=("auto", "hyperscan", "python"))
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--every-rule", action="store_true")
    a = ap.parse_args()
    if not (Path(a.src) / "antispam" / "__init__.py").is_file():
        die(f"--src {a.src}: not a source tree (no antispam/__init__.py in it)")
    if a.engine == "hyperscan":
        need_hyperscan("--engine hyperscan")
    if a.sa and not Path(a.sa).is_dir():
        die(f"--sa {a.sa}: no such directory")
    sys.path.insert(0, str(Path(a.src).resolve()))
    from antispam.check import ScanContext
    from antispam.config import Config
    from antispam.message import Message
    from antispam.resources import default_rules_dir
    from antispam.ruleset.check import RuleHits, RulesCheck, load_rules

    kw: dict = dict(sa_paths=[a.sa], sa_pre_dirs=["/etc/spamassassin"] if Path("/etc/spamassassin").is_dir() else []) if a.sa else {}
    if a.every_rule:
        kw["every_rule"] = True
    check = RulesCheck(load_rules([default_rules_dir()], engine=a.engine, cache_dir="/tmp/antispam-rules-cache", **kw))
    msgs = labelled()
    if a.limit:
        msgs = msgs[:: max(1, len(msgs) // a.limit)][: a.limit]
    cfg = Config()
    with open(a.out, "w") as fh:
        for m in msgs:
            msg = Message(m.data).parse_all()
            ctx = ScanContext(msg.envelope, cfg)
            hits = [[h.symbol, list(h.options)] for h in check.run(msg, ctx)]
            counts = dict(ctx.get(RuleHits).counts)
            fh.write(json.dumps({"id": m.sha256, "counts": counts, "hits": hits},
                                sort_keys=True) + "\n")
    print(f"{len(msgs)} messages -> {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
