"""The compiled kernels and the pure-Python twin agree exactly: ids, sums, clues, probabilities."""

from __future__ import annotations

import random

import numpy as np
import pytest

from antispam import _fastscore_py as twin
from antispam.classifier import Classifier, default_model
from antispam.message import Message

compiled = pytest.importorskip("antispam._fastscore", reason="compiled core not built (python setup.py build_ext --inplace)")

ALPHABET = ("abcdefghijklmnopqrstuvwxyzABC0123456789 $'.-_!?,;:/@<>\n\t\"" + "äöüßéñçøåÆİıſﬁ" + "日本語中文한국어"
            + "\u0660\u0661\u00b2\u2460\u2167" + "😀𝔘𝟘" + "\ud800\udfff\u200b\xa0")


def _random_text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(n))


@pytest.mark.parametrize("seed", range(40))
def test_features_random_strings(seed):
    rng = random.Random(seed)
    subject = _random_text(rng, rng.randint(0, 60))
    text = _random_text(rng, rng.randint(0, 3000))
    meta = [_random_text(rng, rng.randint(0, 20)) for _ in range(rng.randint(0, 10))]
    for bits in (8, 20, 31):
        for bigrams in (False, True):
            s = rng.getrandbits(64)
            a = compiled.features(subject, text, meta, s, bits, bigrams)
            b = twin.features(subject, text, meta, s, bits, bigrams)
            assert a.dtype == b.dtype and a.tolist() == b.tolist()


def test_every_code_point_is_classified_alike():
    """Word characters: one run of 'x<c>x' is one token exactly when <c> is a word character, in both."""
    for cp in list(range(0, 0x3000)) + list(range(0xD7F0, 0xE010)) + list(range(0x1F000, 0x1F700)):
        text = "x" + chr(cp) + "x"
        assert compiled.features("", text, [], 0, 20, False).tolist() == twin.features("", text, [], 0, 20, False).tolist(), hex(cp)


@pytest.mark.parametrize("data", [b"", b"a", bytes(range(256)), "ünïcödé".encode(), b"\x00" * 100])
def test_hash_bytes(data):
    for seed in (0, 1, 2**63, 2**64 - 1):
        assert compiled.hash_bytes(data, seed) == twin.hash_bytes(data, seed)


@pytest.mark.parametrize("seed", range(20))
def test_score_sums_and_clues(seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(1 << 12).astype(np.float32)
    w[rng.integers(0, 1 << 12, 500)] = 0.0
    w[:64] = 0.25  # ties: equal |weight| must break on the smaller id
    w[64:128] = -0.25
    ids = np.unique(rng.integers(0, 1 << 12, rng.integers(0, 600))).astype(np.uint32)
    if seed % 3 == 0:
        ids = np.unique(np.r_[ids, np.arange(0, 128)]).astype(np.uint32)
    for nclues in (0, 1, 5, 64):
        a = compiled.score(ids, w, 0.123, nclues)
        b = twin.score(ids, w, 0.123, nclues)
        assert a[0] == b[0]  # exact float equality
        assert a[1] == b[1]


def test_score_rejects_ids_outside_the_model():
    w = np.zeros(16, dtype=np.float32)
    for k in (compiled, twin):
        with pytest.raises(ValueError):
            k.score(np.array([3, 16], dtype=np.uint32), w, 0.0, 3)
        with pytest.raises(ValueError):
            k.score(np.array([3], dtype=np.uint32), w, 0.0, 65)


def test_identical_on_the_corpus(corpus):
    """Every message of the SpamAssassin corpus: same ids, same margin, same probability, same clues."""
    clf = Classifier(default_model())
    for m in corpus:
        msg = Message(m.data)
        fa, fb = clf.features(msg, compiled), clf.features(msg, twin)
        assert fa.tolist() == fb.tolist(), m.name
        a, b = clf.classify(msg, compiled), clf.classify(msg, twin)
        assert a == b, m.name
