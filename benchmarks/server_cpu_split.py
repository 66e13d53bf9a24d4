"""Where a server's CPU goes per message: the scan, and everything else (the protocol).

    python benchmarks/server_cpu_split.py [--servers spamd,milter,smtp,rspamd-http]
                                          [--clients 2,16] [--seconds 6] [--messages 2000]

``benchmarks/servers.py`` compares a server's CPU per message with ``Engine.scan``
in a tight loop; the difference mixes two things: the protocol's own work, and
the scan itself running slower inside a server than in a loop of nothing but
scans (its caches are shared with the protocol code, and the clients run on the
other core).  This script tells them apart.  It runs the server (``workers =
0``) in this process with its scanner timed by the thread's CPU clock, drives it
with the same clients as ``servers.py`` from a child process, and prints per
message: the event-loop thread's CPU, the CPU inside the scans, and the rest,
next to ``Engine.scan``'s CPU per message measured here first.  Messages as in
``servers.py``: the corpus TEST split, or the repository's samples without a corpus.
A server that does not start, or a client driver that fails, is one line and exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import servers as bench  # noqa: E402
from _common import die  # noqa: E402

from antispam import Engine  # noqa: E402
from antispam.config import Config  # noqa: E402
from antispam.errors import AntispamError  # noqa: E402
from antispam.servers.cli import build  # noqa: E402
from antispam.servers.common import setup_logging  # noqa: E402

DRIVER = """
import asyncio, sys
sys.path.insert(0, sys.argv[5])
import servers as bench
kind, port, clients, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
msgs = bench.load(int(sys.argv[6]))
asyncio.run(bench.drive(kind, port, msgs[:100], 2, 10))
print("warm", flush=True)
sys.stdin.readline()
n, dt = asyncio.run(bench.drive(kind, port, msgs, clients, seconds))
print(n, dt, flush=True)
"""


async def measure(kind: str, clients: int, seconds: float, messages: int, sink_port: int) -> tuple[float, float, float, int]:
    """(loop CPU, scan CPU, msgs/s) per message for one server and client count."""
    section = kind.replace("-", "_")
    overrides: dict = {"servers": {section: {"port": 0, "workers": 0, "max_connections": 64}}}
    if kind == "smtp":
        overrides["servers"]["smtp"]["next_hop"] = f"127.0.0.1:{sink_port}"
    try:
        server = build(kind, Config.load(None, overrides))
    except AntispamError as exc:
        die(f"{kind}: the server could not be built: {exc}")
    spent = [0.0]
    scan = server.scanner.scan

    async def timed_scan(*args, **kw):  # type: ignore[no-untyped-def]
        t = time.thread_time()
        try:
            return await scan(*args, **kw)
        finally:
            spent[0] += time.thread_time() - t

    server.scanner.scan = timed_scan  # type: ignore[method-assign]
    try:
        await server.start()
    except OSError as exc:
        die(f"{kind}: the server did not start on loopback: {exc}")
    child = None
    try:
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", DRIVER, kind, str(server.port), str(clients), str(seconds),
            str(ROOT / "benchmarks"), str(messages), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert child.stdin is not None and child.stdout is not None
        if await child.stdout.readline() != b"warm\n":
            die(f"{kind}: the client driver failed during the warm-up (status {await child.wait()}; its error above)")
        spent[0] = 0.0
        t0 = time.thread_time()
        child.stdin.write(b"go\n")
        await child.stdin.drain()
        result = (await child.stdout.readline()).split()
        loop_cpu = time.thread_time() - t0
        if len(result) != 2:
            die(f"{kind}: the client driver failed (status {await child.wait()}; its error above)")
        n_s, dt_s = result
        await child.wait()
    finally:
        if child is not None and child.returncode is None:
            child.kill()
            await child.wait()
        await server.stop()
    n = int(n_s)
    if n == 0:
        die(f"{kind}: no message went through in {seconds:g} s")
    return loop_cpu / n * 1e6, spent[0] / n * 1e6, n / float(dt_s), n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--servers", default="spamd,milter,smtp,rspamd-http")
    ap.add_argument("--clients", default="2,16")
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--messages", type=int, default=2000)
    a = ap.parse_args()
    unknown = [k for k in a.servers.split(",") if k not in bench.CLIENTS]
    if unknown:
        die(f"--servers: unknown {', '.join(unknown)} (known: {', '.join(bench.CLIENTS)})")
    setup_logging(logging.INFO, False)  # as `antispam serve` logs: the line per message is part of the cost
    logging.getLogger().handlers[0].setStream(open(os.devnull, "w"))
    msgs = bench.load(a.messages)
    _, base = bench.in_process(Engine(), msgs)
    print(f"in-process Engine.scan: {base:.0f} us CPU/msg\n")
    print(f"{'server':12} {'clients':>7} {'msgs/s':>7} {'loop us/msg':>11} {'scan us/msg':>11} {'scan vs in-proc':>15} "
          f"{'protocol us/msg':>15}")
    with bench.sink_process() as sink_port:
        for kind in a.servers.split(","):
            for clients in map(int, a.clients.split(",")):
                loop_us, scan_us, rate, _ = asyncio.run(measure(kind, clients, a.seconds, a.messages, sink_port))
                print(f"{kind:12} {clients:7} {rate:7,.0f} {loop_us:11.0f} {scan_us:11.0f} {scan_us / base:14.2f}x "
                      f"{loop_us - scan_us:15.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
