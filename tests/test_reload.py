"""SIGHUP reloads a server's configuration and rules in place (``Server.reload``).

Run as operators run it: ``antispam serve`` with a configuration file naming a local rules file,
the file changed, ``kill -HUP``.  What must hold: the new rules score the next message, a broken
file changes nothing (the server goes on with what it had, and says why), no message in flight is
lost or refused, what was learned stays, and with scan workers or prefork processes every one of
them moves to the new rules.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from antispam import Check, Config, Engine, Hit, SymbolDef
from antispam.servers.common import Scanner
from antispam.store.memory import MemoryStore

from server_helpers import ham
from servers import request

SRC = str(Path(__file__).resolve().parents[1] / "src")

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="SIGHUP is POSIX")

RULE = """body LOCAL_RELOAD_MARK /reloadmarker/
describe LOCAL_RELOAD_MARK The test's marker word
score LOCAL_RELOAD_MARK {score}
"""
MARKED = ham(subject="Minutes", body="The reloadmarker word is in this line.\n")


class Served:
    """``antispam serve KIND`` on a loopback port, with a config file and a local rules file."""

    def __init__(self, tmp_path: Path, kind: str = "spamd", server_toml: str = "", *flags: str, score: float = 0.5):
        self.rules = tmp_path / "local.cf"
        self.rules.write_text(RULE.format(score=score))
        self.config = tmp_path / "antispam.toml"
        self.cache = tmp_path / "cache"
        self.write_config(server_toml)
        self.log_path = tmp_path / "server.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "antispam.cli", "serve", kind, "--config", str(self.config),
                                      "--port", "0", *flags], stdout=subprocess.PIPE, stderr=self._log,
                                     env={**os.environ, "PYTHONPATH": SRC})
        line = self.proc.stdout.readline().decode()
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if not m:
            self.proc.kill()
            raise AssertionError((line, self.log()[-3000:]))
        self.port = int(m.group(1))

    def write_config(self, server_toml: str = "") -> None:
        self.config.write_text(f'[rules]\nextra_dirs = ["{self.rules}"]\ncache_dir = "{self.cache}"\n{server_toml}')

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def hup_and_wait(self, what: str = "reloaded", count: int = 1, timeout: float = 60.0) -> str:
        """SIGHUP, then wait until the log has ``count`` more lines saying ``what``."""
        before = self.log().count(f": {what}")
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log()
            if text.count(f": {what}") >= before + count:
                return text
            assert self.proc.poll() is None, text[-3000:]
            time.sleep(0.05)
        raise AssertionError(f"no {what!r} in the log: {self.log()[-3000:]}")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            assert self.proc.wait(60) == 0, self.log()[-3000:]
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._log.close()
        return self.log()


def symbols(port: int, raw: bytes = MARKED, method: bytes = b"SYMBOLS") -> tuple[float, list[str]]:
    """One spamd SYMBOLS request: (score, symbols)."""
    reply = request(port, method + b" SPAMC/1.5\r\nContent-length: %d\r\n\r\n" % len(raw) + raw, 60)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"SPAMD/1.1 0 EX_OK"), reply
    m = re.search(rb"Spam: \w+ ; (-?[\d.]+) /", head)
    assert m, reply
    return float(m.group(1)), body.decode().strip().split(",")


def tell(port: int, raw: bytes, learn: bytes = b"spam") -> bytes:
    """spamc -L spam|ham|forget: TELL with Message-class and Set: local, or Remove: local; the reply."""
    what = b"Remove: local" if learn == b"forget" else b"Message-class: %s\r\nSet: local" % learn
    return request(port, b"TELL SPAMC/1.5\r\n%s\r\nContent-length: %d\r\n\r\n" % (what, len(raw)) + raw, 60)


def test_sighup_reloads_the_rules_and_a_broken_file_changes_nothing(tmp_path):
    srv = Served(tmp_path)
    try:
        low, syms = symbols(srv.port)
        assert "LOCAL_RELOAD_MARK" in syms
        srv.rules.write_text(RULE.format(score=7.5))
        srv.hup_and_wait()
        high, syms = symbols(srv.port)
        assert "LOCAL_RELOAD_MARK" in syms and high == pytest.approx(low + 7.0, abs=0.011)
        # A rule that does not compile: the reload fails, saying where, and the rules before stay.
        srv.rules.write_text(RULE.format(score=1.0) + "body LOCAL_BROKEN /unclosed(/\n")
        text = srv.hup_and_wait("reload failed")
        assert "LOCAL_BROKEN" in text.rsplit("reload failed", 1)[1].splitlines()[0]
        assert symbols(srv.port)[0] == pytest.approx(high, abs=0.011)
        # A configuration file that is not TOML: the same.
        srv.config.write_text("[rules\n")
        srv.hup_and_wait("reload failed")
        assert symbols(srv.port)[0] == pytest.approx(high, abs=0.011)
        # Mended: the next SIGHUP takes it, and the rule removed is gone.
        srv.rules.write_text("# nothing\n")
        srv.write_config()
        srv.hup_and_wait()
        gone, syms = symbols(srv.port)
        assert "LOCAL_RELOAD_MARK" not in syms and gone == pytest.approx(high - 7.5, abs=0.011)
    finally:
        log = srv.stop()
    assert "Traceback" not in log, log


def test_a_reload_keeps_what_was_learned_in_a_memory_store(tmp_path):
    """The default store is in memory: a reload hands it to the new engine (a new store would
    forget every TELL since the start)."""
    srv = Served(tmp_path)
    try:
        raw = ham(subject="Quarterly figures", body="Please find the quarterly figures below.\n")
        assert b"DidSet: local" in tell(srv.port, raw)
        assert b"DidSet" not in tell(srv.port, raw)  # learned once: the ledger says so
        srv.rules.write_text(RULE.format(score=2.0))
        srv.hup_and_wait()
        assert b"DidSet" not in tell(srv.port, raw)  # the same ledger after the reload
        assert b"DidRemove: local" in tell(srv.port, raw, b"forget")  # ... and the same counts
    finally:
        srv.stop()


def test_server_settings_changed_take_a_restart_and_say_so(tmp_path):
    srv = Served(tmp_path)
    long = ham(subject="Long", body="reloadmarker " + "x" * 3000 + "\n")
    try:
        base = symbols(srv.port, long)[0]
        srv.rules.write_text(RULE.format(score=3.0))
        srv.write_config("[servers.spamd]\nmax_size = 1000\n")
        text = srv.hup_and_wait()
        assert "the [servers] settings changed: they take a restart" in text
        # the rules were reloaded, and the size limit is still the one the server started with
        assert symbols(srv.port, long)[0] == pytest.approx(base + 2.5, abs=0.011)
    finally:
        srv.stop()


def test_with_scan_workers_no_message_is_lost_across_reloads(tmp_path):
    """Clients send without a pause while the server reloads three times: every message gets a
    verdict, each from the rules before or after, and the old workers go away."""
    srv = Served(tmp_path, "spamd", "", "--workers", "2")
    stop = threading.Event()
    seen: list[float] = []
    errors: list[BaseException] = []

    def client() -> None:
        while not stop.is_set():
            try:
                seen.append(symbols(srv.port)[0])
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
                return

    try:
        base = symbols(srv.port)[0]
        before = _descendants(srv.proc.pid)  # the forkserver and the two workers
        threads = [threading.Thread(target=client) for _ in range(3)]
        for t in threads:
            t.start()
        for score in (2.5, 4.5, 6.5):
            srv.rules.write_text(RULE.format(score=score))
            srv.hup_and_wait()
        time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join(60)
        assert not errors, errors
        expected = {round(base + d, 2) for d in (0.0, 2.0, 4.0, 6.0)}
        assert seen and {round(s, 2) for s in seen} <= expected, (sorted(set(seen)), expected)
        assert symbols(srv.port)[0] == pytest.approx(base + 6.0, abs=0.011)
        # the first workers, and those of the reloads between, have exited (each pool closed once
        # its last message was done): two workers again, not the first two
        deadline = time.monotonic() + 20
        while len(now := _descendants(srv.proc.pid)) != len(before) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(now) == len(before) and len(before - now) == 2, (before, now)
    finally:
        stop.set()
        log = srv.stop()
    assert "Traceback" not in log, log


def test_prefork_passes_sighup_to_every_process(tmp_path):
    srv = Served(tmp_path, "spamd", "", "--processes", "2")
    try:
        base = symbols(srv.port)[0]
        srv.rules.write_text(RULE.format(score=9.5))
        text = srv.hup_and_wait("reloaded", count=2)
        pids = set(re.findall(r"antispam\.servers\.spamd\[(\d+)\]: reloaded ", text))
        assert len(pids) == 2, text[-3000:]
        # every process scores with the new rule (connections go to both: least connections)
        scores = {symbols(srv.port)[0] for _ in range(20)}
        assert all(abs(s - (base + 9.0)) < 0.011 for s in scores), (base, scores)
    finally:
        log = srv.stop()
    assert "server process exited" not in log, log


class _Store(MemoryStore):
    closed = False

    def close(self) -> None:
        self.closed = True
        super().close()


class _Held(Check):
    """A network check that holds its scan until told to go on, and records that it was closed."""

    name = "held"
    network = True
    symbols = (SymbolDef("HELD", 1.0, "test", "test"),)

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.started = asyncio.Event()
        self.closed = False

    async def arun(self, msg, ctx):  # type: ignore[no-untyped-def]
        self.started.set()
        await self.go.wait()
        return [Hit("HELD")]

    def close(self) -> None:
        self.closed = True


def test_the_old_engine_finishes_its_message_and_is_closed_after():
    """``Scanner.replace`` between messages: a scan in flight ends on the engine it began on, which
    is closed only then; the next scan uses the new engine; a store handed on stays open."""

    async def main() -> None:
        held = _Held()
        store = _Store()
        old = Engine(checks=[held], store=store)
        scanner = Scanner(old)
        first = asyncio.ensure_future(scanner.scan(MARKED))
        await held.started.wait()
        new = Engine(Config.default(), store=old.store)
        scanner.replace(new, None)
        assert scanner.engine is new and not held.closed
        assert "HELD" not in (await scanner.scan(MARKED)).symbols  # the next message: the new engine
        held.go.set()
        assert "HELD" in (await first).symbols  # the one in flight: the old engine, whole
        assert held.closed
        assert new.store is store and not store.closed  # handed on: closed with the new engine only
        scanner.close()
        new.close()
        assert store.closed

    asyncio.run(main())


def _descendants(pid: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    parents[int(entry)] = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    out: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - out
        out |= frontier
    return out
