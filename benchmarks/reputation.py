"""Cost of DNS lists and local reputation per message, against a DNS server on loopback.

    python benchmarks/reputation.py [CORPUS] [--n 1000]

Serves every zone of the known lists (Spamhaus ZEN/DBL, SpamCop, Barracuda,
DNSWL, SURBL, URIBL) from the tests' authoritative server on 127.0.0.1, with
a few listings and NXDOMAIN for everything else, and scans corpus messages
with a client IP, sender and HELO, in three configurations: content only;
with every known list enabled (answers uncached: the cache is cleared before
each message; and cached: the same messages again); with local history on a
SQLite store.  Reports msgs/s, p50/p99 per message, and DNS questions per
message and per second.  Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from dnsserver import DNSServer  # noqa: E402

from antispam import Config, Engine, Envelope  # noqa: E402
from antispam.corpus import default_corpus_dir, load_labelled  # noqa: E402
from antispam.reputation.lists import KNOWN_LISTS  # noqa: E402


def zone() -> dict:
    z: dict = {}
    for spec in KNOWN_LISTS.values():
        zn = spec["zone"]
        if spec["kind"] == "ip":
            z[f"2.0.0.127.{zn}"] = [("A", "127.0.10.2" if spec.get("allow") else "127.0.0.2")]
        else:
            z[f"test.{zn}"] = [("A", "127.0.1.2" if "dbl" in zn else "127.0.0.2")]
    z["7.7.7.7.zen.spamhaus.org"] = [("A", "127.0.0.4")]
    return z


class UnboundServer:
    """The same zones served by Debian's unbound on a loopback port (fast, C): ``--server unbound``.

    Each list zone is a ``static`` local zone, so unbound answers from memory and never recurses;
    names without data are NXDOMAIN, as from the Python server.
    """

    def __init__(self, zone_data: dict, workdir: str):
        import shutil
        import socket
        import subprocess

        exe = shutil.which("unbound")
        if exe is None:
            raise SystemExit("unbound is not installed (apt-get install unbound)")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        zones = sorted({spec["zone"] for spec in KNOWN_LISTS.values()})
        lines = ["server:", "  interface: 127.0.0.1", f"  port: {self.port}", "  do-daemonize: no",
                 "  use-syslog: no", f"  directory: \"{workdir}\"", "  chroot: \"\"", "  username: \"\"",
                 "  pidfile: \"\"", "  num-threads: 1", "  access-control: 127.0.0.0/8 allow", "  do-ip6: no"]
        lines += [f'  local-zone: "{z}." static' for z in zones]
        for name, records in zone_data.items():
            for rdtype, value in records:
                lines.append(f'  local-data: "{name}. 300 IN {rdtype} {value}"')
        conf = f"{workdir}/unbound.conf"
        with open(conf, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        self.proc = subprocess.Popen([exe, "-d", "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)

    def __enter__(self) -> "UnboundServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(5)


def percentiles(lat: list[float]) -> str:
    q = statistics.quantiles(lat, n=100)
    return f"p50 {q[49] * 1000:6.2f} ms  p99 {q[98] * 1000:6.2f} ms"


def envelope(i: int) -> Envelope:
    return Envelope(client_ip="7.7.7.7" if i % 10 == 0 else f"8.{i % 250}.{i % 7}.9", helo="mail.example.net",
                    mail_from=f"user{i}@sender{i % 50}.example.org", rcpt_tos=("rcpt@ours.example",))


async def run(engine: Engine, msgs: list[bytes], clear_cache: bool) -> tuple[float, list[float]]:
    """One scan at a time: per-message latency."""
    lat = []
    t0 = time.perf_counter()
    for i, raw in enumerate(msgs):
        if clear_cache and engine.resolver is not None:
            engine.resolver.clear_cache()
        t = time.perf_counter()
        await engine.ascan(raw, envelope(i))
        lat.append(time.perf_counter() - t)
    return time.perf_counter() - t0, lat


async def run_concurrent(engine: Engine, msgs: list[bytes], in_flight: int) -> float:
    """``in_flight`` scans at once, as a server runs them: throughput."""
    sem = asyncio.Semaphore(in_flight)

    async def one(i: int, raw: bytes) -> None:
        async with sem:
            await engine.ascan(raw, envelope(i))

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i, raw) for i, raw in enumerate(msgs)))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", nargs="?")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--in-flight", type=int, default=32, help="concurrent scans for the throughput line")
    ap.add_argument("--server", choices=("python", "unbound"), default="python",
                    help="the loopback DNS server: the tests' Python server, or unbound (much faster)")
    a = ap.parse_args()
    corpus = a.corpus or default_corpus_dir()
    msgs = [m.data for m in load_labelled(corpus, verify=False)][: a.n]
    with tempfile.TemporaryDirectory() as tmp, (UnboundServer(zone(), tmp) if a.server == "unbound" else DNSServer(zone())) as srv:
        dns = {"nameservers": ["127.0.0.1"], "port": srv.port, "timeout": 1.0, "attempts": 1}
        configs = {
            "content only": Config.load(),
            "all known lists": Config.load(overrides={"dns": dns, "dnsbl": {"enable": list(KNOWN_LISTS)},
                                                      "auth": {"spf": False, "dkim": False, "dmarc": False, "arc": False}}),
            "lists + history (sqlite)": Config.load(overrides={
                "dns": dns, "dnsbl": {"enable": list(KNOWN_LISTS)}, "history": {"enabled": True},
                "store": {"url": f"sqlite:///{tmp}/state.db"},
                "auth": {"spf": False, "dkim": False, "dmarc": False, "arc": False}}),
        }
        print(f"{len(msgs)} messages; {a.server} DNS server on 127.0.0.1:{srv.port}")
        base = None
        for name, cfg in configs.items():
            engine = Engine(cfg)
            for clear in ((False,) if not engine.network_checks else (True, False)):
                if engine.network_checks and not clear:
                    asyncio.run(run(engine, msgs, False))  # warm the cache with every answer
                before = engine.resolver.sent if engine.resolver else 0
                wall, lat = asyncio.run(run(engine, msgs, clear))
                asked = (engine.resolver.sent if engine.resolver else 0) - before
                mean = wall / len(msgs)
                if base is None:
                    base = mean
                label = name + ("" if not engine.network_checks else (", uncached" if clear else ", cached"))
                print(f"{label:38} {len(msgs) / wall:8,.0f} msgs/s  {percentiles(lat)}  +{(mean - base) * 1000:5.2f} ms/msg"
                      + (f"  {asked / len(msgs):5.1f} queries/msg, {asked / wall:7,.0f} queries/s" if engine.network_checks else ""))
            if engine.network_checks:
                engine.resolver.clear_cache()
                before = engine.resolver.sent
                wall = asyncio.run(run_concurrent(engine, msgs, a.in_flight))
                asked = engine.resolver.sent - before
                print(f"{name + f', uncached, {a.in_flight} in flight':38} {len(msgs) / wall:8,.0f} msgs/s"
                      f"{'':36}{asked / wall:7,.0f} queries/s")
            engine.close()


if __name__ == "__main__":
    main()
