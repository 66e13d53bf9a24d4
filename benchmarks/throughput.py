"""Throughput and latency of parsing and full scans on a corpus.

    python benchmarks/throughput.py [CORPUS_DIR_OR_PATHS...] [--repeat N] [--workers N]

Reports, per stage (``parse``: every Message view; ``scan``: the default
engine's full scan), msgs/s on one core, p50/p99 per-message latency, and then
msgs/s on all cores (a process pool of ``scan_many``), plus peak RSS.  The
messages are loaded into memory first, so disk and decompression are not
measured.  Run it on an idle machine; it prints the active core (cython/python).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from antispam import Engine  # noqa: E402
from _common import die, labelled  # noqa: E402

from antispam.corpus import iter_messages  # noqa: E402
from antispam.fastscore import IMPLEMENTATION  # noqa: E402
from antispam.message import Message  # noqa: E402


def load(paths: list[str]) -> list[bytes]:
    """A labelled corpus (no path: ``$ANTISPAM_CORPUS`` or ../shared), or the messages under ``paths``."""
    if not paths or (len(paths) == 1 and (Path(paths[0]) / "MANIFEST.tsv").exists()):
        return [m.data for m in labelled(paths[0] if paths else None, verify=False)]
    msgs, errors = [], []
    for it in iter_messages(paths):
        if it.data is not None:
            msgs.append(it.data)
        else:
            errors.append(f"{it.source}: {it.error}")
    if not msgs:
        die(f"no message read from {' '.join(paths)}" + (f" ({errors[0]})" if errors else ""))
    if errors:
        print(f"({len(errors)} unreadable source(s) skipped, e.g. {errors[0]})", file=sys.stderr)
    return msgs


def timed(fn, msgs: list[bytes], repeat: int) -> tuple[float, float, list[float]]:
    """Wall time, this process's CPU time, and per-message latencies of ``repeat`` rounds."""
    lat: list[float] = []
    pc = time.perf_counter
    c0 = time.process_time()
    t0 = pc()
    for _ in range(repeat):
        for raw in msgs:
            t = pc()
            fn(raw)
            lat.append(pc() - t)
    return pc() - t0, time.process_time() - c0, lat


def report(name: str, n: int, wall: float, cpu: float, lat: list[float]) -> None:
    # CPU time is what one core delivers when it is not shared: on a busy machine the
    # wall-time rate mostly measures the neighbours, so both are printed.
    q = statistics.quantiles(lat, n=100) if len(lat) > 1 else lat * 99
    print(f"{name:28} {n / wall:9,.0f} msgs/s   p50 {q[49] * 1e6:7.0f} us   p99 {q[98] * 1e6:7.0f} us"
          f"   (CPU time: {n / cpu:,.0f} msgs/s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="*")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    msgs = load(args.paths)
    n = len(msgs) * args.repeat
    print(f"{len(msgs)} messages x {args.repeat}; core: {IMPLEMENTATION}; python {sys.version.split()[0]}")
    engine = Engine()
    print(f"checks: {', '.join(c.name for c in engine.checks)}")
    # Warm up caches (regex compilation, lazy imports) so they are not timed.
    for raw in msgs[:200]:
        Message(raw).parse_all()
        engine.scan(raw)
    wall, cpu, lat = timed(lambda raw: Message(raw).parse_all(), msgs, args.repeat)
    report("parse (all views), 1 core", n, wall, cpu, lat)
    wall, cpu, lat = timed(engine.scan, msgs, args.repeat)
    report("full scan, 1 core", n, wall, cpu, lat)
    per_check: dict[str, float] = {}
    for raw in msgs:
        for k, v in engine.scan(raw).timings.items():
            per_check[k] = per_check.get(k, 0.0) + v
    total = per_check.pop("total", 0.0)
    print("  per check (share of scan time): " + ", ".join(
        f"{k} {v / total:.0%}" for k, v in sorted(per_check.items(), key=lambda kv: -kv[1])))
    if args.workers > 1:
        t0 = time.perf_counter()
        for _ in range(args.repeat):
            for _v in engine.scan_many(msgs, workers=args.workers, chunksize=64):
                pass
        wall = time.perf_counter() - t0
        print(f"{f'full scan, {args.workers} processes':28} {n / wall:9,.0f} msgs/s   (includes pool start-up and IPC)")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS (this process): {rss:.0f} MiB")


if __name__ == "__main__":
    main()
