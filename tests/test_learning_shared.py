"""Several scanner processes learning into one store act as one: exact, de-duplicated counts."""

from __future__ import annotations

import multiprocessing as mp

import pytest

from antispam import Config, Engine

from .conftest import needs_redis, store_url_for


def message(i: int) -> bytes:
    return (f"From: promo{i}@offers.example\nTo: someone@corp.example\nSubject: offer number {i}\n"
            f"Message-ID: <{i}@offers.example>\n\nLimited offer {i}: buy cheap watches today, click now.\n").encode()


def _learner(url: str, indices: list[int]) -> None:
    engine = Engine(Config.load(overrides={"store": {"url": url}}))
    for i in indices:
        engine.learn(message(i), spam=True)
    engine.close()


def classifier_stats(engine: Engine):
    check = next(c for c in engine.checks if c.name == "classifier")
    return check.classifier.stats


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=needs_redis)])
def shared_url(request, tmp_path):
    return store_url_for(request.param, request, tmp_path)


def test_processes_learn_together(shared_url):
    # Three processes, overlapping ranges: 0-14, 10-24, 20-34 -> 35 distinct messages.
    ranges = [list(range(s, s + 15)) for s in (0, 10, 20)]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_learner, args=(shared_url, r)) for r in ranges]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
        assert p.exitcode == 0
    reader = Engine(Config.load(overrides={"store": {"url": shared_url}}))
    assert classifier_stats(reader).totals() == (35.0, 0.0)
    # What the others learned moves this process's scores once ham is learned too (one class alone
    # is no evidence): the learned adjustment of one of their messages is positive.
    c = next(c for c in reader.checks if c.name == "classifier").classifier
    from antispam.message import Message
    assert c.classify(Message(message(3))).learned == 0
    reader.learn(b"From: ana@example.org\nSubject: minutes\n\nThe minutes of the meeting are attached.\n", spam=False)
    assert c.classify(Message(message(3))).learned > 0
    # Learning again here is recognised as already learned.
    assert reader.learn(message(7), spam=True)["classifier"] is False
    reader.close()


# ----------------------------------------------------------------- relearning with the other label, racing


class RacingStore:
    """A store whose first read of a learning ledger entry lets another process relearn the message first.

    That is the window between reading the old label and moving the counts, in
    which two processes correcting the same message both used to move them.
    (Reads that find no entry, such as the look-up of a key from before line
    ends were normalised, do not open the window.)
    """

    def __init__(self, store, race):
        self._store = store
        self._race = race

    def get(self, key):
        value = self._store.get(key)
        if value is not None and key.startswith("learn:cls:"):
            race, self._race = self._race, None
            if race is not None:
                race()                                    # changes the ledger after we read it
        return value

    def __getattr__(self, name):
        return getattr(self._store, name)


def test_relearn_racing_another_process_moves_counts_once(any_store):
    import numpy as np

    from antispam.classifier.learn import TokenStats
    from antispam.classifier.tokenizer import TokenizerSpec

    raw, ids = message(1), np.array([3, 5, 8])
    other = TokenStats(any_store, TokenizerSpec(), 0.3)
    mine = TokenStats(RacingStore(any_store, lambda: other.learn(raw, ids, spam=False, source="b")),
                      TokenizerSpec(), 0.3)
    assert other.learn(raw, ids, spam=True) is True
    assert mine.learn(raw, ids, spam=False, source="a") is False     # the other process moved them already
    assert other.totals() == (0.0, 1.0)
    keys = other._keys([3, 5, 8], "s:") + other._keys([3, 5, 8], "h:")
    assert any_store.get_counts(keys) == [0.0] * 3 + [1.0] * 3
    # unlearn racing a relearn takes out the label that is really counted
    mine = TokenStats(RacingStore(any_store, lambda: other.learn(raw, ids, spam=True)), TokenizerSpec(), 0.3)
    assert mine.unlearn(raw, ids) is True
    assert other.totals() == (0.0, 0.0) and any_store.get_counts(keys) == [0.0] * 6


def test_relearn_of_an_entry_from_before_normalisation_racing_moves_counts_once(any_store):
    """A ledger entry keyed by the raw CRLF bytes (written before line ends were normalised) is claimed in place."""
    import hashlib

    import numpy as np

    from antispam.classifier.learn import TokenStats
    from antispam.classifier.tokenizer import TokenizerSpec

    raw, ids = message(2), np.array([3, 5, 8])
    crlf = raw.replace(b"\n", b"\r\n")
    other = TokenStats(any_store, TokenizerSpec(), 0.3)
    other._add(ids, True, 1.0)                                           # learned through spamd, before
    any_store.set("learn:cls:" + hashlib.sha256(crlf).hexdigest(), b"spam spamd")
    mine = TokenStats(RacingStore(any_store, lambda: other.learn(crlf, ids, spam=False, source="b")),
                      TokenizerSpec(), 0.3)
    assert mine.learn(raw, ids, spam=False, source="a") is False     # the other process moved them already
    assert other.totals() == (0.0, 1.0)
    keys = other._keys([3, 5, 8], "s:") + other._keys([3, 5, 8], "h:")
    assert any_store.get_counts(keys) == [0.0] * 3 + [1.0] * 3
    mine = TokenStats(RacingStore(any_store, lambda: other.learn(raw, ids, spam=True)), TokenizerSpec(), 0.3)
    assert mine.unlearn(crlf, ids) is True
    assert other.totals() == (0.0, 0.0) and any_store.get_counts(keys) == [0.0] * 6
    assert other.unlearn(raw, ids) is False


ROUNDS = 20


def _relearner(url: str, barrier, indices: list[int]) -> None:
    engine = Engine(Config.load(overrides={"store": {"url": url}}))
    for i in indices:
        barrier.wait()
        engine.learn(message(1000 + i), spam=False)     # both processes correct the same message to ham
        barrier.wait()
    engine.close()


def test_processes_relearning_one_message_move_its_counts_once(shared_url):
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(3)
    procs = [ctx.Process(target=_relearner, args=(shared_url, barrier, list(range(ROUNDS)))) for _ in range(2)]
    for p in procs:
        p.start()
    engine = Engine(Config.load(overrides={"store": {"url": shared_url}}))
    try:
        for i in range(ROUNDS):
            engine.learn(message(1000 + i), spam=True)
            barrier.wait(timeout=120)
            barrier.wait(timeout=120)
    finally:
        for p in procs:
            p.join(120)
    assert all(p.exitcode == 0 for p in procs)
    assert classifier_stats(engine).totals() == (0.0, float(ROUNDS))
    engine.close()
