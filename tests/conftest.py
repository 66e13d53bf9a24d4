"""Shared fixtures.

The SpamAssassin corpus is read from ``../shared/corpora/spamassassin`` (or
``$ANTISPAM_CORPUS``).  Tests that need it skip with a visible reason when it
is absent, except under CI (``CI`` set), where its absence is a failure.
"""

from __future__ import annotations

import os
import shutil
import sys

import pytest

# Helper modules beside the tests (servers.py, ...) import both as tests.x and as x.
sys.path.insert(0, os.path.dirname(__file__))

from antispam.corpus import default_corpus_dir, load_labelled


def _corpus_dir():
    d = default_corpus_dir()
    if d is None or not (d / "MANIFEST.tsv").exists():
        if os.environ.get("CI"):
            pytest.fail("the SpamAssassin corpus is required under CI (../shared/corpora/spamassassin)")
        pytest.skip("SpamAssassin corpus not found (set ANTISPAM_CORPUS or place ../shared beside the checkout)")
    return d


@pytest.fixture(scope="session")
def corpus_dir():
    return _corpus_dir()


@pytest.fixture(scope="session")
def corpus(corpus_dir):
    """Every labelled message of the corpus (6,046), sha256-verified."""
    return load_labelled(corpus_dir)


@pytest.fixture(scope="session")
def corpus_train(corpus):
    return [m for m in corpus if m.split == "train"]


@pytest.fixture(scope="session")
def corpus_test(corpus):
    return [m for m in corpus if m.split == "test"]


# ----------------------------------------------------------------- shared state (store backends)

needs_redis = pytest.mark.skipif(not shutil.which("redis-server") and not os.environ.get("CI"),
                                 reason="redis-server not installed (apt-get install redis-server)")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One private redis-server on a loopback port for the whole session."""
    from servers import RedisServer

    srv = RedisServer(tmp_path_factory.mktemp("redis"))
    yield srv
    srv.stop()


def store_url_for(kind: str, request, tmp_path) -> str:
    """A fresh store URL of ``kind`` (memory, sqlite, redis: flushed first)."""
    if kind == "memory":
        return "memory://"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path}/state.db"
    srv = request.getfixturevalue("redis_server")
    import redis

    redis.Redis.from_url(srv.url).flushall()
    return srv.url


@pytest.fixture(params=["memory", "sqlite", pytest.param("redis", marks=needs_redis)])
def store_url(request, tmp_path):
    """Each test using it runs once per store backend."""
    return store_url_for(request.param, request, tmp_path)


@pytest.fixture
def any_store(store_url):
    """An open store of each backend in turn (the same behaviour must hold on all three)."""
    from antispam.store import open_store

    s = open_store(store_url)
    yield s
    s.close()


@pytest.fixture
def digest_calls(monkeypatch):
    """Counts the computations of a message's ledger digests (``message.ledger_digests``, where
    the message module and the classifier's learner call it): the list of the bytes hashed."""
    import antispam.classifier.learn as learn_mod
    import antispam.message as message_mod

    real = message_mod.ledger_digests
    calls: list[bytes] = []

    def counted(raw: bytes) -> tuple[str, ...]:
        calls.append(raw)
        return real(raw)

    monkeypatch.setattr(message_mod, "ledger_digests", counted)
    monkeypatch.setattr(learn_mod, "ledger_digests", counted)
    return calls
