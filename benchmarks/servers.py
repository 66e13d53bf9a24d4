"""Throughput of the servers over loopback, against the engine in-process.

    python benchmarks/servers.py [--messages 1000] [--servers spamd,milter,smtp,rspamd-http]
                                 [--workers 0,2] [--processes 1,2] [--clients 2,16] [--seconds 20]
                                 [--event-loop auto,asyncio] [--smtp-client data|bdat]
                                 [--next-hop-ext PIPELINING,8BITMIME,CHUNKING] [--rounds 1]

Each server runs as ``antispam serve KIND`` in its own process; the clients are
asyncio coroutines in this process, each sending messages back to back over
its own connection (spamd: one connection per message, as spamc does; milter,
SMTP and HTTP: one kept-alive connection per client, as MTAs do).  The SMTP
filter relays to a minimal SMTP sink in a third process, which announces what
Postfix's smtpd (the usual next hop) does: PIPELINING and CHUNKING
(``--next-hop-ext 8BITMIME`` for a next hop without them).  Messages are the
corpus TEST split (``load_labelled``; ``$ANTISPAM_CORPUS``, else
``../shared/corpora/spamassassin`` beside the checkout), or, when there is no
corpus, the repository's ``samples/*.eml`` (the first line says which).  A server
that does not start is one line and exit status 2.

The in-process figures are ``Engine.scan`` in a loop on one core and
``Engine.scan_many`` with a process pool of 2.  On a 2-core machine the clients
and the sink compete with the server for the same cores, so msgs/s are lower
bounds, and they move with whatever else the machine runs.  Every run is
bounded by ``--seconds`` and stops by itself.

CPU time holds still where msgs/s does not, so each row also gives, from /proc
(user + system):

``loop us/msg``   the server process's CPU per message: the protocol, plus the
                  scan itself when ``workers = 0``
``total us/msg``  the server and every process under it (the scan workers)
``vs in-proc``    total against ``Engine.scan``'s CPU per message in-process:
                  1.00x would mean the protocol costs nothing
``wakes/msg``     the server tree's voluntary context switches per message: each is a
                  sleep in the event loop's poll (or a worker's read) that a message's
                  bytes then end, so this counts the wake-ups a message costs: a figure
                  of the protocol and the number of clients (more clients, more work
                  found at each wake-up), not of the machine's speed
``capacity``      msgs/s the server would sustain on this machine's C cores with
                  the clients elsewhere: 1e6 / loop for ``workers = 0`` (one
                  process, one core); with N workers the least of the loop's
                  limit, N workers' and C cores' worth of CPU:
                  min(1e6 / loop, N x 1e6 / (total - loop), C x 1e6 / total);
                  with P prefork processes (``--processes``), each doing the
                  protocol and the scan, min(P, C) x 1e6 / total (``loop`` is
                  then the supervising parent's, which does nothing per message)

What a wake-up costs does move with the machine (a virtual machine pays for every
idle-to-busy switch of a vCPU): the first lines give this machine's CPU per loopback
TCP round trip between two processes, measured before the servers start, so that
``wakes/msg`` can be read as CPU.

"Sustains the engine's throughput" then reads: ``capacity`` against the
in-process msgs/s on one core (the last column).  With ``--rounds N`` every row is
measured N times, the in-process figures again before each round, and a last
table gives each figure's median (the ratios taken within each round).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import die, labelled  # noqa: E402

from antispam import Engine  # noqa: E402
from antispam.corpus import default_corpus_dir  # noqa: E402
from antispam.fastscore import IMPLEMENTATION  # noqa: E402


#: where :func:`load` took the messages from
SOURCE = ""


def load(n: int) -> list[bytes]:
    """``n`` messages: the corpus TEST split, or the samples when there is no corpus (a wrong
    ``$ANTISPAM_CORPUS`` is an error), repeated as needed."""
    global SOURCE
    if os.environ.get("ANTISPAM_CORPUS") or default_corpus_dir() is not None:
        msgs = [m.data for m in labelled(verify=False, split="test")]
        SOURCE = "corpus TEST split"
    else:
        msgs = [p.read_bytes() for p in sorted((ROOT / "samples").glob("*.eml"))]
        SOURCE = "no corpus: the repository's samples/*.eml"
        if not msgs:
            die("no corpus (set ANTISPAM_CORPUS) and no samples/*.eml in the checkout")
    if n < 1:
        die("--messages: at least 1")
    out = []
    while len(out) < n:
        out.extend(msgs[: n - len(out)])
    return out


# --------------------------------------------------------------------------- one client per protocol


async def spamd_client(port: int, msgs: list[bytes], deadline: float) -> int:
    done = 0
    for raw in msgs:
        if time.monotonic() > deadline:
            break
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"CHECK SPAMC/1.5\r\nContent-length: %d\r\n\r\n" % len(raw) + raw)
        w.write_eof()  # spamc shuts its sending side after the message (libspamc), and the server relies on it
        await w.drain()
        out = await r.read()
        assert out.startswith(b"SPAMD/1.1 0 EX_OK"), out[:100]
        w.close()
        done += 1
    return done


async def http_client(port: int, msgs: list[bytes], deadline: float) -> int:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    done = 0
    for raw in msgs:
        if time.monotonic() > deadline:
            break
        w.write(b"POST /checkv2 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(raw) + raw)
        await w.drain()
        head = await r.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head[:100]
        n = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        await r.readexactly(n)
        done += 1
    w.close()
    return done


def _pkt(cmd: bytes, data: bytes = b"") -> bytes:
    return struct.pack(">I", len(data) + 1) + cmd + data


async def milter_client(port: int, msgs: list[bytes], deadline: float) -> int:
    r, w = await asyncio.open_connection("127.0.0.1", port)

    async def recv() -> tuple[bytes, bytes]:
        (n,) = struct.unpack(">I", await r.readexactly(4))
        d = await r.readexactly(n)
        return d[:1], d[1:]

    w.write(_pkt(b"O", struct.pack(">III", 6, 0x1FF, 0x1FFFFF)))
    _, data = await recv()
    proto = struct.unpack(">III", data[:12])[2]
    nr = {b"C": 0x1000, b"H": 0x2000, b"M": 0x4000, b"R": 0x8000, b"L": 0x80, b"N": 0x40000, b"B": 0x80000, b"T": 0x10000}

    async def step(cmd: bytes, data: bytes) -> None:
        w.write(_pkt(cmd, data))
        if not proto & nr[cmd]:
            await recv()

    await step(b"C", b"client.test\x004" + struct.pack(">H", 4000) + b"192.0.2.1\0")
    await step(b"H", b"client.test\0")
    done = 0
    for raw in msgs:
        if time.monotonic() > deadline:
            break
        await step(b"M", b"<a@sender.test>\0")
        await step(b"R", b"<b@rcpt.test>\0")
        head, _, body = raw.replace(b"\r\n", b"\n").partition(b"\n\n")
        for line in head.split(b"\n"):
            if line and line[:1] not in (b" ", b"\t"):
                name, _, value = line.partition(b":")
                # SMFIP_HDR_LEADSPC agreed: the value as it follows the colon, as Postfix sends it
                await step(b"L", name + b"\0" + (value if proto & 0x100000 else value.strip()) + b"\0")
        await step(b"N", b"")
        body = body.replace(b"\n", b"\r\n")
        for i in range(0, len(body), 65535):
            await step(b"B", body[i:i + 65535])
        w.write(_pkt(b"E"))
        await w.drain()
        while (await recv())[0] not in (b"a", b"c", b"r", b"t", b"y", b"d"):
            pass
        done += 1
    w.write(_pkt(b"Q"))
    w.close()
    return done


#: how the SMTP benchmark client sends a message: "data" (DATA, as Postfix's SMTP client does) or
#: "bdat" (BDAT ... LAST pipelined with MAIL and RCPT, as Exim and Exchange do when offered CHUNKING)
SMTP_CLIENT_MODE = "data"


async def smtp_client(port: int, msgs: list[bytes], deadline: float) -> int:
    r, w = await asyncio.open_connection("127.0.0.1", port)

    async def reply() -> bytes:
        while True:
            line = await r.readline()
            if line[3:4] != b"-":
                return line

    await reply()
    w.write(b"EHLO bench.test\r\n")
    await reply()
    done = 0
    for raw in msgs:
        if time.monotonic() > deadline:
            break
        if SMTP_CLIENT_MODE == "bdat":
            data = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
            w.write(b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<b@rcpt.test>\r\nBDAT %d LAST\r\n" % len(data) + data)
            for _ in range(2):
                await reply()
        else:
            w.write(b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<b@rcpt.test>\r\nDATA\r\n")
            for _ in range(3):
                await reply()
            data = raw.replace(b"\r\n", b"\n").replace(b"\n.", b"\n..").replace(b"\n", b"\r\n")
            w.write(data + (b"" if data.endswith(b"\r\n") else b"\r\n") + b".\r\n")
        line = await reply()
        assert line.startswith(b"250"), line
        done += 1
    w.write(b"QUIT\r\n")
    w.close()
    return done


CLIENTS = {"spamd": spamd_client, "rspamd-http": http_client, "milter": milter_client, "smtp": smtp_client}


# --------------------------------------------------------------------------- a null next hop


async def sink_main(port: int, extensions: list[str]) -> None:
    """An SMTP server that takes every message and drops it, announcing ``extensions`` in its
    EHLO.  It serves pipelined commands as they come (it reads line by line), and BDAT."""
    ehlo = "".join(f"250-{e}\r\n" for e in ["sink", *extensions[:-1]]).encode() + \
        (f"250 {extensions[-1]}\r\n" if extensions else "").encode()

    async def session(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"220 sink\r\n")
        while line := await r.readline():
            cmd = line[:4].upper()
            if cmd == b"DATA":
                w.write(b"354 go\r\n")
                while (await r.readline()) not in (b".\r\n", b""):
                    pass
                w.write(b"250 ok\r\n")
            elif cmd == b"BDAT":
                await r.readexactly(int(line.split()[1]))
                w.write(b"250 ok\r\n")
            elif cmd == b"QUIT":
                w.write(b"221 bye\r\n")
                break
            elif cmd == b"EHLO":
                w.write(ehlo)
            else:
                w.write(b"250 ok\r\n")
        w.close()

    server = await asyncio.start_server(session, "127.0.0.1", port)
    await server.serve_forever()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def sink_process(next_hop_ext: str = "PIPELINING,8BITMIME,CHUNKING"):
    """The SMTP filter's next hop, in a process of its own for the time of the block: yields its port."""
    import socket

    port = free_port()
    sink = subprocess.Popen([sys.executable, __file__, "--sink", str(port), "--next-hop-ext", next_hop_ext])
    deadline = time.monotonic() + 30
    while True:  # taking connections before any server relays to it
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if sink.poll() is not None or time.monotonic() > deadline:
                sink.kill()
                die(f"the SMTP sink (next hop) did not start on 127.0.0.1:{port}"
                    + (f": it exited with status {sink.returncode}" if sink.returncode is not None else ""))
            time.sleep(0.05)
    try:
        yield port
    finally:
        sink.terminate()
        sink.wait(10)


def in_process(engine: Engine, msgs: list[bytes]) -> tuple[float, float]:
    """``Engine.scan`` in a loop after a warm-up: (msgs/s, CPU us per message), the figure servers are held to."""
    for raw in msgs[:50]:
        engine.scan(raw)  # warm caches and lazy imports
    t0, c0 = time.perf_counter(), time.process_time()
    for raw in msgs:
        engine.scan(raw)
    return len(msgs) / (time.perf_counter() - t0), (time.process_time() - c0) / len(msgs) * 1e6


def _start(args: list[str], env: dict, stderr, timeout: float) -> tuple[subprocess.Popen, str]:  # type: ignore[no-untyped-def]
    """Start ``args``; (process, its first stdout line, or "" when it said nothing within ``timeout``)."""
    import selectors

    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=stderr, env=env)
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        return proc, proc.stdout.readline().decode() if sel.select(timeout) else ""


def spawn_server(kind: str, workers: int, next_hop: int | None, event_loop: str = "auto",
                 processes: int = 1, timeout: float = 60.0) -> tuple[subprocess.Popen, int]:
    """``antispam serve KIND`` on a free loopback port: (process, port), once it says it listens.
    One that exits or says nothing within ``timeout`` seconds: one line and exit 2."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    args = [sys.executable, "-m", "antispam.cli", "serve", kind, "--port", "0", "--workers", str(workers),
            "--processes", str(processes), "--max-connections", "64", "--event-loop", event_loop]
    if next_hop:
        args += ["--next-hop", f"127.0.0.1:{next_hop}"]
    # stderr (a log line per message) to /dev/null, as measured; it is read only to say why a start failed
    proc, line = _start(args, env, subprocess.DEVNULL, timeout)
    port = line.strip().rsplit(":", 1)[-1]
    if "listening on" in line and port.isdigit():
        return proc, int(port)
    state = f"exited with status {proc.poll()}" if proc.poll() is not None else f"said nothing in {timeout:g} s"
    proc.kill()
    proc.wait()
    again, _ = _start(args, env, subprocess.PIPE, timeout)  # once more, for its error message
    again.kill()
    why = (again.communicate()[1].decode(errors="replace").strip().splitlines() or ["nothing on stderr"])[-1]
    die(f"antispam serve {kind} (workers {workers}, processes {processes}, event loop {event_loop}) did not "
        f"start: {state}: {why}")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process ``pid`` so far (Linux /proc), None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (the scan workers sit under a forkserver child)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def wakeups(pid: int) -> int:
    """Voluntary context switches so far of every thread of ``pid`` (Linux /proc), 0 elsewhere."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as fh:
                for line in fh:
                    if line.startswith("voluntary_ctxt_switches:"):
                        total += int(line.split()[1])
                        break
        except (OSError, ValueError):
            continue
    return total


def round_trip_cpu(rounds: int = 5000) -> float:
    """CPU us, both sides together, of one small request and reply over a loopback TCP connection
    between this process and a child: what one wake-up each way costs on this machine."""
    srv = socket.create_server(("127.0.0.1", 0))
    child = os.fork()
    if child == 0:  # echo until the parent hangs up
        conn, _ = srv.accept()
        while data := conn.recv(64):
            conn.sendall(data)
        os._exit(0)
    srv_port = srv.getsockname()[1]
    srv.close()
    with socket.create_connection(("127.0.0.1", srv_port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(b"x")
        s.recv(64)
        c0, k0 = time.process_time(), cpu_seconds(child) or 0.0
        for _ in range(rounds):
            s.sendall(b"x")
            s.recv(64)
        c1, k1 = time.process_time(), cpu_seconds(child) or 0.0
    os.waitpid(child, 0)
    return ((c1 - c0) + (k1 - k0)) / rounds * 1e6


def tree_cpu(pid: int) -> tuple[tuple[float, float] | None, int]:
    """((CPU seconds of the server process, of the server and every process under it), or None
    without /proc; and the :func:`wakeups` of them all), from one walk of the process tree."""
    tree = [pid, *descendants(pid)]
    woken = sum(wakeups(p) for p in tree)
    own = cpu_seconds(pid)
    if own is None:
        return None, woken
    return (own, own + sum(cpu_seconds(c) or 0.0 for c in tree[1:])), woken


async def drive(kind: str, port: int, msgs: list[bytes], clients: int, seconds: float) -> tuple[int, float]:
    deadline = time.monotonic() + seconds
    share = [msgs[i::clients] for i in range(clients)]
    t0 = time.perf_counter()
    counts = await asyncio.gather(*(CLIENTS[kind](port, s, deadline) for s in share))
    return sum(counts), time.perf_counter() - t0


HEADER = (f"{'server':12} {'loop':>7} {'workers':>7} {'procs':>5} {'clients':>7} {'msgs/s':>9} {'vs 1 core':>9} "
          f"{'loop us/msg':>11} {'total us/msg':>12} {'vs in-proc':>10} {'wakes/msg':>9} {'capacity':>9} "
          f"{'vs 1 core':>9}")


def measure(kind: str, proc: subprocess.Popen, port: int, msgs: list[bytes], clients: int, seconds: float,
            workers: int, processes: int, base: float, base_cpu: float) -> dict[str, float]:
    """One run of ``clients`` against a started server: its row's figures (the CPU ones absent when
    /proc is not there or too few messages went through for the clock tick, 10 ms)."""
    c0, w0 = tree_cpu(proc.pid)
    n, dt = asyncio.run(drive(kind, port, msgs, clients, seconds))
    c1, w1 = tree_cpu(proc.pid)
    row = {"rate": n / dt, "rate_vs": n / dt / base}
    if c0 is not None and c1 is not None and n and c1[1] > c0[1] and (processes > 1 or c1[0] > c0[0]):
        loop_us, total_us = (c1[0] - c0[0]) / n * 1e6, (c1[1] - c0[1]) / n * 1e6
        cores = os.cpu_count() or 1
        if processes > 1:  # every process does it all: the CPU of min(P, C) cores
            capacity = min(processes, cores) * 1e6 / total_us
        elif workers:
            capacity = min(1e6 / loop_us, workers * 1e6 / max(total_us - loop_us, 1.0), cores * 1e6 / total_us)
        else:
            capacity = 1e6 / loop_us
        row.update(loop=loop_us, total=total_us, total_vs=total_us / base_cpu, wakes=(w1 - w0) / n,
                   capacity=capacity, capacity_vs=capacity / base)
    return row


def format_row(key: tuple, row: dict[str, float]) -> str:
    kind, event_loop, workers, processes, clients = key
    out = f"{kind:12} {event_loop:>7} {workers:7} {processes:5} {clients:7} {row['rate']:9,.0f} {row['rate_vs']:8.2f}x"
    if "capacity" in row:
        out += (f" {row['loop']:11.0f} {row['total']:12.0f} {row['total_vs']:9.2f}x {row['wakes']:9.1f} "
                f"{row['capacity']:9,.0f} {row['capacity_vs']:8.2f}x")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--servers", default="spamd,milter,smtp,rspamd-http")
    ap.add_argument("--workers", default="0,2")
    ap.add_argument("--processes", default="1", help="prefork server processes to compare, comma-separated; "
                    "a count above 1 runs with workers = 0 (the two do not combine)")
    ap.add_argument("--clients", default="2,16")
    ap.add_argument("--seconds", type=float, default=20.0, help="time limit per run")
    ap.add_argument("--rounds", type=int, default=1, help="measure everything this many times, the in-process "
                    "figures again before each round, and end with each row's medians (a virtual machine's "
                    "speed drifts by tens of percent within minutes)")
    ap.add_argument("--next-hop-ext", default="PIPELINING,8BITMIME,CHUNKING",
                    help="what the SMTP filter's next hop announces in EHLO (default: what Postfix's "
                         "smtpd announces that matters here; '8BITMIME' alone for a plain next hop)")
    ap.add_argument("--event-loop", default="auto", help="the servers' event loops to compare, comma-separated "
                    "(auto, asyncio, uvloop; default: auto, which is uvloop when installed)")
    ap.add_argument("--smtp-client", choices=("data", "bdat"), default="data",
                    help="how the SMTP client sends: DATA (as Postfix) or BDAT pipelined with MAIL and RCPT "
                         "(as Exim and Exchange, when the filter offers CHUNKING)")
    ap.add_argument("--sink", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.sink:
        asyncio.run(sink_main(a.sink, [e for e in a.next_hop_ext.split(",") if e]))
        return 0
    global SMTP_CLIENT_MODE
    SMTP_CLIENT_MODE = a.smtp_client
    unknown = [k for k in a.servers.split(",") if k not in CLIENTS]
    if unknown:
        die(f"--servers: unknown {', '.join(unknown)} (known: {', '.join(CLIENTS)})")
    msgs = load(a.messages)
    print(f"core: {IMPLEMENTATION}; {len(msgs)} messages ({SOURCE}), "
          f"{sum(map(len, msgs)) / len(msgs) / 1024:.1f} KiB mean")
    engine = Engine()
    t0 = time.perf_counter()
    for _ in engine.scan_many(msgs, workers=2):
        pass
    pool = len(msgs) / (time.perf_counter() - t0)
    print(f"in-process: scan_many(workers=2) {pool:,.0f} msgs/s")
    print(f"this machine: a loopback TCP round trip between two processes costs {round_trip_cpu():.0f} us CPU")
    loops = a.event_loop.split(",")
    shapes = [(w, 1) for w in map(int, a.workers.split(","))]
    shapes += [(0, p) for p in map(int, a.processes.split(",")) if p > 1]
    runs = [(k, w, p, e) for k in a.servers.split(",") for w, p in shapes for e in loops]
    results: dict[tuple, list[dict[str, float]]] = {}
    with sink_process(a.next_hop_ext) as sink_port:
        for round_no in range(1, a.rounds + 1):
            base, base_cpu = in_process(engine, msgs)
            print(f"\n{'round %d: ' % round_no if a.rounds > 1 else ''}in-process Engine.scan {base:,.0f} msgs/s "
                  f"(1 core, {base_cpu:.0f} us CPU/msg)\n")
            print(HEADER)
            for kind, workers, processes, event_loop in runs:
                proc, port = spawn_server(kind, workers, sink_port if kind == "smtp" else None, event_loop, processes)
                try:
                    asyncio.run(drive(kind, port, msgs[:50], 2, a.seconds))  # warm-up
                    for clients in map(int, a.clients.split(",")):
                        row = measure(kind, proc, port, msgs, clients, a.seconds, workers, processes, base, base_cpu)
                        results.setdefault((kind, event_loop, workers, processes, clients), []).append(row)
                        print(format_row((kind, event_loop, workers, processes, clients), row), flush=True)
                finally:
                    proc.terminate()
                    proc.wait(30)
    if a.rounds > 1:
        print(f"\nmedian of {a.rounds} rounds, each row's ratios taken against its own round's in-process figures\n")
        print(HEADER)
        for key, rows in results.items():
            print(format_row(key, {f: statistics.median(r[f] for r in rows) for f in rows[0]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
