"""Where a message's time goes in ``RulesCheck.run``: buffer groups, evals, metas, Python confirmations.

    python benchmarks/rules_profile.py [--corpus DIR] [--sa /usr/share/spamassassin] [--limit 1500] [--top 30]
                                       [--engine auto|hyperscan|python] [--floor]

``--corpus`` defaults to ``$ANTISPAM_CORPUS``, else ``../shared/corpora/spamassassin`` beside the
checkout; without ``--sa`` only the default rules are profiled.

First the plain figure (process CPU time of ``RulesCheck.run``, best of 3, as benchmarks/rules.py
measures it), then one instrumented pass that wraps, message by message:

* every buffer group's scan (Hyperscan and the Python work after it), the header readers,
  the body/rawbody/uri text builders, each eval by rule name, the meta stage and the options;
* each Hyperscan database's own ``scan`` call, and each Python confirmation, count or Python-only
  search by rule name (``confirm``, ``count``, ``near``, ``python``).

The wrappers cost time of their own (each a clock read, wall time), so the instrumented total
exceeds the plain one and small entries are inflated most: read the figures to rank the parts,
and measure a change by timing the part alone before and after in one process.

With ``--floor``, last, the Hyperscan floor: every database scan that one pass made (which
database, which bytes) is replayed alone, with a callback that does nothing, in a tight loop
(CPU time, best of 3).  No rule engine built on those databases can take less per message:
Python confirmations, counts, evals and metas all come on top of it.
"""

from __future__ import annotations

import argparse
import collections
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import antispam.ruleset.check as chk  # noqa: E402
import antispam.ruleset.matcher as mat  # noqa: E402
from antispam.check import ScanContext  # noqa: E402
from antispam.config import Config  # noqa: E402
from antispam.resources import default_rules_dir  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import die, labelled, need_hyperscan  # noqa: E402
from rules import prepared  # noqa: E402

ACC: collections.Counter[str] = collections.Counter()


def timed(fn, label):  # type: ignore[no-untyped-def]
    """``fn`` adding its wall time to ``ACC[label(args)]`` (label: a string, or a function of the arguments)."""
    clock = time.perf_counter

    def wrapper(*args, **kw):  # type: ignore[no-untyped-def]
        t = clock()
        try:
            return fn(*args, **kw)
        finally:
            ACC[label if isinstance(label, str) else label(*args)] += clock() - t

    return wrapper


class _TimedDb:
    """A Hyperscan database whose ``scan`` is timed under the database's key."""

    def __init__(self, db, key: str):  # type: ignore[no-untyped-def]
        self._db, self.scan = db, timed(db.scan, "hyperscan " + key)


def instrument(check: chk.RulesCheck) -> None:
    m = check.matcher
    names = check._names
    m.scan = timed(m.scan, lambda group, *_: "group " + group)
    if isinstance(m, mat.HyperscanMatcher):
        m.dbs = {k: _TimedDb(db, k) for k, db in m.dbs.items()}
        m._local = threading.local()  # direct scanners and scratch rebuilt over the timed databases
        for k, (f, s) in list(m.direct_scanners().items()):
            m.direct_scanners()[k] = (timed(f, "group " + k), s)
        rules = [(d, tag) for d, tag in ((m._near, "near"), (m._confirm, "confirm"), (m._counters, "count"))]
        rules += [({r.id: r for r in v}, "python") for v in m._py.values()]
    else:
        rules = [({r.id: r for r in v}, "python") for v in m.groups.values()]
    seen: set[int] = set()
    for d, tag in rules:
        for r in d.values():
            if id(r) not in seen:
                seen.add(id(r))
                r.search = timed(r.search, f"{tag} {names[r.id]}")
                r.match = timed(r.match, f"{tag} {names[r.id]}")
    mat._count = timed(mat._count, lambda r, *_: f"count {names[r.id]}")
    check._evals = [(rid, timed(fn, "eval " + name), args, name) for rid, fn, args, name in check._evals]
    check._metas = timed(check._metas, "metas")
    check._options = timed(check._options, "options")
    check._header_scan = [(e[0], timed(e[1], "read " + e[0]) if e[1] else None, *e[2:]) for e in check._header_scan]
    for fn in ("body_text", "rawbody_text", "uri_text"):
        setattr(chk, fn, timed(getattr(chk, fn), "build " + fn))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", default=None)
    ap.add_argument("--sa", default="", help="a SpamAssassin rules directory to add to the default rules")
    ap.add_argument("--engine", default="auto", choices=("auto", "hyperscan", "python"))
    ap.add_argument("--limit", type=int, default=1500)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--cache", default="/tmp/antispam-rules-cache")
    ap.add_argument("--floor", action="store_true", help="also replay the Hyperscan scans alone (the floor)")
    a = ap.parse_args()
    if a.engine == "hyperscan" or a.floor:
        if a.engine == "python":
            die("--floor replays Hyperscan's scans: it needs --engine auto or hyperscan, not python")
        need_hyperscan("--engine hyperscan" if a.engine == "hyperscan" else "--floor")
    if a.sa and not Path(a.sa).is_dir():
        die(f"--sa {a.sa}: no such directory")
    msgs = labelled(a.corpus)
    if a.limit:
        msgs = msgs[:: max(1, len(msgs) // a.limit)][: a.limit]
    pm = prepared(msgs)
    kw: dict = dict(sa_paths=[a.sa], sa_pre_dirs=["/etc/spamassassin"] if Path("/etc/spamassassin").is_dir() else []) if a.sa else {}
    check = chk.RulesCheck(chk.load_rules([default_rules_dir()], engine=a.engine, cache_dir=a.cache, **kw))
    cfg = Config()

    def one_pass() -> float:
        t = time.process_time()
        for msg in pm:
            check.run(msg, ScanContext(msg.envelope, cfg))
        return (time.process_time() - t) / len(pm) * 1e6

    print(f"RulesCheck.run: {min(one_pass() for _ in range(3)):.0f} us a message (CPU, best of 3, {len(pm)} messages)")
    floor = hyperscan_floor(check, pm, cfg) if a.floor else None
    instrument(check)
    t = time.perf_counter()
    for msg in pm:
        check.run(msg, ScanContext(msg.envelope, cfg))
    total = (time.perf_counter() - t) / len(pm) * 1e6
    print(f"instrumented pass: {total:.0f} us a message (wall); parts, us a message:")
    sums = collections.Counter()
    for k, v in ACC.items():
        sums[k.split(" ")[0]] += v
    print("  " + ", ".join(f"{k} {v / len(pm) * 1e6:.0f}" for k, v in sums.most_common()))
    for k, v in ACC.most_common(a.top):
        print(f"{v / len(pm) * 1e6:8.1f}  {k}")
    if floor is not None:
        print(f"Hyperscan floor: {floor[0]:.0f} us a message ({floor[1]:.1f} scans a message, replayed alone, "
              f"CPU, best of 3)")
    return 0


class _RecordingDb:
    """A Hyperscan database that records each scan's bytes and scratch, then scans as asked."""

    def __init__(self, db, calls: list):  # type: ignore[no-untyped-def]
        self._db, self._calls = db, calls

    def scan(self, data, callback, flags, context, scratch):  # type: ignore[no-untyped-def]
        self._calls.append((self._db, data, scratch))
        return self._db.scan(data, callback, flags, context, scratch)


def hyperscan_floor(check: chk.RulesCheck, pm: list, cfg: Config) -> tuple[float, float] | None:
    """(us a message, scans a message) of the Hyperscan scans one pass makes, replayed alone."""
    m = check.matcher
    if not isinstance(m, mat.HyperscanMatcher):
        return None
    calls: list = []
    saved, saved_local = m.dbs, m._local
    m.dbs = {k: _RecordingDb(db, calls) for k, db in m.dbs.items()}
    m._local = threading.local()  # direct scanners rebuilt over the recording databases
    for msg in pm:
        check.run(msg, ScanContext(msg.envelope, cfg))
    m.dbs, m._local = saved, saved_local

    def nothing(*_):  # type: ignore[no-untyped-def]
        return None

    best = float("inf")
    for _ in range(3):
        t = time.process_time()
        for db, data, scratch in calls:
            db.scan(data, nothing, 0, None, scratch)
        best = min(best, time.process_time() - t)
    return best / len(pm) * 1e6, len(calls) / len(pm)


if __name__ == "__main__":
    raise SystemExit(main())
