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
    # What the others learned moves this process's scores: the learned adjustment is positive.
    c = next(c for c in reader.checks if c.name == "classifier").classifier
    from antispam.message import Message
    assert c.classify(Message(message(3))).learned > 0
    # Learning again here is recognised as already learned.
    assert reader.learn(message(7), spam=True)["classifier"] is False
    reader.close()
