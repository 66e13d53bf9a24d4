"""Cost of DNS lists and local reputation per message, against a DNS server on loopback.

    python benchmarks/reputation.py [CORPUS] [--n 1000] [--in-flight 32] [--server python|unbound]

Serves every zone of the known lists (Spamhaus ZEN/DBL, SpamCop, Barracuda,
DNSWL, SURBL, URIBL) from the tests' authoritative server on 127.0.0.1, with
a few listings and NXDOMAIN for everything else, and scans corpus messages
with a client IP, sender and HELO, in three configurations: content only;
with every known list enabled (answers uncached: the cache is cleared before
each message; and cached: the same messages again); with local history on a
SQLite store.  Reports msgs/s, p50/p99 per message, and DNS questions per
message and per second.  Nothing leaves 127.0.0.1.  CORPUS defaults to ``$ANTISPAM_CORPUS``, else
``../shared/corpora/spamassassin`` beside the checkout.
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
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import die, labelled  # noqa: E402

from dnsserver import DNSServer  # noqa: E402

from antispam import Config, Engine, Envelope  # noqa: E402
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
    names without data are NXDOMAIN, as from the Python server.  The root is a ``static`` zone too:
    a name outside the lists is NXDOMAIN at once, never a query to the Internet's servers.
    """

    def __init__(self, zone_data: dict, workdir: str):
        import shutil
        import socket
        import subprocess

        exe = shutil.which("unbound")
        if exe is None:
            die("--server unbound: unbound is not installed (apt-get install unbound)")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        zones = sorted({spec["zone"] for spec in KNOWN_LISTS.values()})
        lines = ["server:", "  interface: 127.0.0.1", f"  port: {self.port}", "  do-daemonize: no",
                 "  use-syslog: no", f"  directory: \"{workdir}\"", "  chroot: \"\"", "  username: \"\"",
                 "  pidfile: \"\"", "  num-threads: 1", "  access-control: 127.0.0.0/8 allow", "  do-ip6: no",
                 '  local-zone: "." static']
        lines += [f'  local-zone: "{z}." static' for z in zones]
        for name, records in zone_data.items():
            for rdtype, value in records:
                lines.append(f'  local-data: "{name}. 300 IN {rdtype} {value}"')
        conf = f"{workdir}/unbound.conf"
        with open(conf, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        self.log = log = open(f"{workdir}/unbound.log", "w+")
        self.proc = subprocess.Popen([exe, "-d", "-c", conf], stdout=log, stderr=subprocess.STDOUT)
        # ready when it answers a listed name; a failed start is one line, not a run of timeouts
        import dns.exception
        import dns.message
        import dns.query

        probe = dns.message.make_query(next(iter(zone_data)), "A")
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                log.seek(0)
                why = (log.read().strip().splitlines() or ["no output"])[-1]
                die(f"--server unbound: unbound exited with status {self.proc.returncode} at start: {why}")
            try:
                dns.query.udp(probe, "127.0.0.1", port=self.port, timeout=0.2)
                break
            except (OSError, dns.exception.DNSException):
                if time.monotonic() > deadline:
                    self.proc.kill()
                    die(f"--server unbound: unbound did not answer on 127.0.0.1:{self.port} within 10 s")

    def __enter__(self) -> "UnboundServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(5)
        self.log.close()


def dns_server(kind: str, workdir: str):  # type: ignore[no-untyped-def]
    """The loopback DNS server serving :func:`zone`; one that cannot start is one line and exit 2."""
    try:
        return UnboundServer(zone(), workdir) if kind == "unbound" else DNSServer(zone())
    except OSError as exc:
        die(f"the {kind} DNS server did not start on 127.0.0.1: {exc}")


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
    if a.n < 2:
        die("--n: at least 2 messages (the percentiles need two)")
    msgs = [m.data for m in labelled(a.corpus, verify=False)][: a.n]
    with tempfile.TemporaryDirectory() as tmp, dns_server(a.server, tmp) as srv:
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
