"""Shared fixtures.

The SpamAssassin corpus is read from ``../shared/corpora/spamassassin`` (or
``$ANTISPAM_CORPUS``).  Tests that need it skip with a visible reason when it
is absent, except under CI (``CI`` set), where its absence is a failure.
"""

from __future__ import annotations

import os
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
