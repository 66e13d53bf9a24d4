"""Scan a directory with antispam and write a result TSV in the peers' format.

    python benchmarks/run_antispam.py DIR OUT.tsv [--workers 2] [--config FILE] [--label NAME]

The format is the one ``../shared/peers/eval.py`` reads (see ``peerlib.py``
there): a ``# key=value`` metadata line (wall_s, concurrency, peak RSS), a
header, then ``file, score, verdict, latency_ms, symbols`` per message, with
``file`` relative to DIR (``<set>/<file>``).  Verdict is ``spam`` when the
engine's action is a spam action (score >= required_score), so the comparison
uses our out-of-the-box threshold just as the peers use theirs.

Wall time covers reading the files and scanning them with ``workers``
processes (2 = the peers' concurrency on this 2-core machine), including pool
start-up.  ``latency_ms`` is the in-process scan time of each message.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import die  # noqa: E402

from antispam import Engine  # noqa: E402
from antispam.errors import AntispamError  # noqa: E402
from antispam.fastscore import IMPLEMENTATION  # noqa: E402


def list_messages(root: Path) -> list[str]:
    out = []
    for d, dirs, files in os.walk(root, followlinks=True):
        dirs.sort()
        for f in files:
            p = os.path.join(d, f)
            if os.path.isfile(p) and not f.startswith("."):
                out.append(os.path.relpath(p, root))
    return sorted(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir")
    ap.add_argument("out_tsv")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--config")
    ap.add_argument("--label", default="default")
    a = ap.parse_args()
    root = Path(a.dir).resolve()
    if not root.is_dir():
        die(f"{a.dir}: no such directory (the peers' TEST directory is /tmp/peers-corpus/test, laid out by "
            f"../shared/peers/prepare_corpus.py)")
    files = list_messages(root)
    if not files:
        die(f"{a.dir}: no message files under it")
    if not Path(a.out_tsv).resolve().parent.is_dir():
        die(f"{a.out_tsv}: its directory does not exist")
    try:
        engine = Engine.from_config(a.config) if a.config else Engine()
    except AntispamError as exc:
        die(str(exc))
    t0 = time.perf_counter()
    verdicts = list(engine.scan_many([str(root / f) for f in files], workers=a.workers, chunksize=32))
    wall = time.perf_counter() - t0
    rows = []
    for f, v in zip(files, verdicts):
        rows.append((f, v.score, "spam" if v.is_spam else "ham", v.timings.get("total", 0.0) * 1000,
                     ",".join(sorted(v.symbols))))
    lat = sorted(r[3] for r in rows)
    meta = {
        "peer": "antispam", "label": a.label, "n": len(rows), "wall_s": round(wall, 3),
        "concurrency": a.workers, "msgs_per_s": round(len(rows) / wall, 1),
        "median_latency_ms": round(lat[len(lat) // 2], 3), "p95_latency_ms": round(lat[int(len(lat) * 0.95)], 3),
        "p99_latency_ms": round(lat[int(len(lat) * 0.99)], 3), "core": IMPLEMENTATION.split()[0],
        "client_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "workers_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
    }
    with open(a.out_tsv, "w") as fh:
        fh.write("# " + " ".join(f"{k}={str(v).replace(' ', '_')}" for k, v in meta.items()) + "\n")
        fh.write("file\tscore\tverdict\tlatency_ms\tsymbols\n")
        for r in rows:
            fh.write(f"{r[0]}\t{r[1]:.4f}\t{r[2]}\t{r[3]:.3f}\t{r[4]}\n")
    print(f"[antispam] {len(rows)} messages, wall {wall:.2f} s, {meta['msgs_per_s']} msg/s, "
          f"median {meta['median_latency_ms']} ms -> {a.out_tsv}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
