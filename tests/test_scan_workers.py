"""The servers' scan worker processes (``workers = N``): verdicts, errors, queueing, deaths."""

from __future__ import annotations

import asyncio
import os
import signal

from antispam import Engine
from antispam.config import Config
from antispam.servers.workers import DEPTH, WorkerError, WorkerPool, pack_verdict, unpack_verdict

from server_helpers import ham, spam


def test_packed_verdict_carries_what_the_protocols_show() -> None:
    engine = Engine()
    for raw in (spam(), ham(), ham(subject="Re: the =?utf-8?q?caf=C3=A9?= menu")):
        v = engine.scan(raw)
        back = unpack_verdict(pack_verdict(v))
        assert back.to_dict() == v.to_dict()
        assert back.headers() == v.headers()
        assert (back.action, back.is_spam, back.rewritten_subject()) == (v.action, v.is_spam, v.rewritten_subject())
        assert back.symbols == v.symbols


def test_envelope_reaches_the_worker_whole() -> None:
    """The request carries the envelope as a tuple of its fields; every field comes back."""
    import pickle

    from antispam.message import Envelope
    from antispam.servers.workers import _ENVELOPE_FIELDS

    env = Envelope(client_ip="192.0.2.7", helo="mx.sender.test", hostname="mx.sender.test", mail_from="a@sender.test",
                   rcpt_tos=("b@rcpt.test", "c@rcpt.test"), user="alice", queue_id="4XyZ1")
    fields = pickle.loads(pickle.dumps(tuple(getattr(env, f) for f in _ENVELOPE_FIELDS)))
    assert Envelope(*fields) == env


def test_pool_scans_queues_reports_errors_and_survives_a_kill() -> None:
    engine = Engine()
    messages = [spam(subject=f"Prize {i}") if i % 3 == 0 else ham(subject=f"Lunch {i}") for i in range(4 * DEPTH + 3)]
    expected = [engine.scan(m).action for m in messages]

    async def run() -> None:
        pool = WorkerPool(Config.default(), 1)
        try:
            # more requests than the worker takes at once: the rest wait their turn, none is lost
            got = await asyncio.gather(*(pool.scan(m, None, None) for m in messages))
            assert [v.action for v in got] == expected

            # a scan that raises in the worker comes back as WorkerError; the worker lives on
            try:
                await pool.scan(spam(), None, "no-such-profile")
            except WorkerError as exc:
                assert "ConfigError" in str(exc)
            else:
                raise AssertionError("an unknown profile must fail the scan")
            (pid,) = pool.pids()
            assert (await pool.scan(spam(), None, None)).action == expected[0]
            assert pool.pids() == [pid]

            # kill -9 with requests in flight and queued: a new worker takes them all over
            pending = [asyncio.ensure_future(pool.scan(m, None, None)) for m in messages]
            await asyncio.sleep(0)
            os.kill(pid, signal.SIGKILL)
            got = await asyncio.wait_for(asyncio.gather(*pending), 60)
            assert [v.action for v in got] == expected
            (new_pid,) = pool.pids()
            assert new_pid != pid
        finally:
            pool.close()
        assert all(not w.process.is_alive() for w in pool._workers)

    asyncio.run(run())
