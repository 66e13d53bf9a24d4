"""Sender-authentication throughput: SPF + DKIM + DMARC per scan against a loopback DNS server.

    python benchmarks/auth.py [--n 400] [--concurrency 16]

The DNS server (tests/dnsserver.py) runs in its own process, so it does not
share the scanner's interpreter lock.  Reported:

* ``cached``: every answer in the resolver cache (the steady state of a busy
  filter: the same senders' records over and over);
* ``uncached``: every scan from a different sender domain (its own SPF,
  DKIM key and DMARC records), so every scan waits for its DNS round trip(s)
  on loopback; only names shared by all (``_dmarc.example``) are cached;
* each both as sequential ``Engine.scan()`` calls (latency p50/p99) and as
  ``--concurrency`` concurrent ``ascan()`` calls in one event loop (msgs/s);
* the SPF driver choice (see ``antispam.auth.spf``): replay on the event loop
  versus pyspf in a worker thread with the blocking read-through, on a record
  with three nested includes.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests"), str(ROOT / "benchmarks")]

from _common import die  # noqa: E402

from antispam import Envelope  # noqa: E402
from antispam.auth.spf import check_host, check_host_sync  # noqa: E402
from antispam.config import Config  # noqa: E402
from antispam.dns import Resolver  # noqa: E402
from authkeys import auth_engine, message, rsa_key, sign  # noqa: E402


def _serve(zone, conn) -> None:
    from dnsserver import DNSServer

    try:
        server = DNSServer(zone)
    except OSError as exc:
        conn.send(f"{type(exc).__name__}: {exc}")
        return
    conn.send(server.port)
    conn.recv()  # wait for "stop"
    server.stop()


def zone(n: int) -> dict:
    z = {}
    for i in range(n):
        d = f"d{i}.example"
        z[d] = [("TXT", "v=spf1 ip4:192.0.2.0/24 -all")]
        z[f"_dmarc.{d}"] = [("TXT", "v=DMARC1; p=reject")]
        z[f"rsa._domainkey.{d}"] = [("TXT", rsa_key().record)]
    return {
        **z,
        "example.org": [("TXT", "v=spf1 ip4:192.0.2.0/24 include:_spf1.example.org -all")],
        "_spf1.example.org": [("TXT", "v=spf1 include:_spf2.example.org ~all")],
        "_spf2.example.org": [("TXT", "v=spf1 include:_spf3.example.org ~all")],
        "_spf3.example.org": [("TXT", "v=spf1 ip4:198.51.100.0/24 ~all")],
        "_dmarc.example.org": [("TXT", "v=DMARC1; p=reject")],
        "rsa._domainkey.example.org": [("TXT", rsa_key().record)],
    }


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def expect(v, need: set[str]) -> None:
    """The scan got every ``need`` symbol, or one line and exit 2 (a DNS server that stopped answering)."""
    if not need <= set(v.symbols):
        die(f"a scan lacks {', '.join(sorted(need - set(v.symbols)))} (got {', '.join(sorted(v.symbols))}): "
            f"is the loopback DNS server answering?")


def spf_pass(out) -> None:
    if out.result != "pass":
        die(f"SPF check_host gave {out.result}, not pass: is the loopback DNS server answering?")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()

    parent, child = mp.Pipe()
    proc = mp.Process(target=_serve, args=(zone(args.n), child), daemon=True)
    proc.start()
    child.close()  # the child's end: a child that dies before answering is EOF here, not a wait forever
    try:
        port = parent.recv() if parent.poll(30) else "no answer in 30 s"
    except EOFError:
        proc.join(5)
        port = f"it exited with status {proc.exitcode}"
    if not isinstance(port, int):
        proc.kill()
        die(f"the loopback DNS server (tests/dnsserver.py, own process) did not start: {port}")
    try:
        cfg = Config().merged({"dns": {"nameservers": ["127.0.0.1"], "port": port, "timeout": 2.0},
                               "engine": {"authserv_id": "mx.bench"}})
        # the authentication checks only: rules and classifier are measured by benchmarks/throughput.py
        engine = auth_engine(cfg)
        names = sorted(c.name for c in engine.checks if c.network)
        # one message per sender domain, signed by that domain
        mails = []
        for i in range(args.n):
            d = f"d{i}.example"
            mails.append((sign(message(f"alice@{d}"), d, "rsa", rsa_key()),
                          Envelope(client_ip="192.0.2.10", helo=f"mx.{d}", mail_from=f"alice@{d}")))
        need = {"R_SPF_ALLOW", "R_DKIM_ALLOW", "DMARC_POLICY_ALLOW"}
        print(f"network checks: {', '.join(names)}; {args.n} scans per row; DNS server on 127.0.0.1:{port}")
        print(f"{'mode':<34}{'msgs/s':>10}{'p50 ms':>10}{'p99 ms':>10}")

        for label, fresh in (("sequential scan(), cached", False), ("sequential scan(), uncached", True)):
            engine.resolver.clear_cache()
            engine.scan(*mails[0])  # warm: the cached row scans mails[0] only
            lat = []
            t0 = time.perf_counter()
            for i in range(args.n):
                raw, env = mails[i if fresh else 0]
                t = time.perf_counter()
                v = engine.scan(raw, env)
                lat.append(time.perf_counter() - t)
                expect(v, need)
            total = time.perf_counter() - t0
            print(f"{label:<34}{args.n / total:>10.0f}{statistics.median(lat) * 1e3:>10.2f}{pct(lat, 99) * 1e3:>10.2f}")

        async def concurrent(fresh: bool) -> tuple[float, list[float]]:
            sem = asyncio.Semaphore(args.concurrency)
            lat: list[float] = []

            async def one(i: int) -> None:
                async with sem:
                    raw, env = mails[i if fresh else 0]
                    t = time.perf_counter()
                    v = await engine.ascan(raw, env)
                    lat.append(time.perf_counter() - t)
                    expect(v, need)

            t0 = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(args.n)))
            return time.perf_counter() - t0, lat

        for label, fresh in ((f"ascan() x{args.concurrency}, cached", False), (f"ascan() x{args.concurrency}, uncached", True)):
            engine.resolver.clear_cache()
            engine.scan(*mails[0])
            total, lat = asyncio.run(concurrent(fresh))
            print(f"{label:<34}{args.n / total:>10.0f}{statistics.median(lat) * 1e3:>10.2f}{pct(lat, 99) * 1e3:>10.2f}")

        # SPF driver: replay on the loop vs pyspf in a thread with the blocking read-through.
        r = Resolver(["127.0.0.1"], port=port, timeout=2.0)
        ip = "198.51.100.9"  # matched only by the innermost include: 4 TXT lookups

        async def replay(clear: bool) -> list[float]:
            lat = []
            for _ in range(args.n):
                if clear:
                    r.clear_cache()
                t = time.perf_counter()
                out = await check_host(r, ip, "a@example.org", None)
                lat.append(time.perf_counter() - t)
                spf_pass(out)
            return lat

        async def threaded(clear: bool) -> list[float]:
            lat = []
            for _ in range(args.n):
                if clear:
                    r.clear_cache()
                t = time.perf_counter()
                out = await asyncio.to_thread(check_host_sync, r, ip, "a@example.org", None)
                lat.append(time.perf_counter() - t)
                spf_pass(out)
            return lat

        print("\nSPF driver, record with 3 nested includes (per check_host)")
        for label, fn, clear in (("replay on the loop, cached", replay, False), ("pyspf in a thread, cached", threaded, False),
                                 ("replay on the loop, uncached", replay, True), ("pyspf in a thread, uncached", threaded, True)):
            lat = asyncio.run(fn(clear))
            print(f"{label:<34}{len(lat) / sum(lat):>10.0f}{statistics.median(lat) * 1e3:>10.3f}{pct(lat, 99) * 1e3:>10.3f}")
    finally:
        parent.send("stop")
        proc.join(5)


if __name__ == "__main__":
    main()
