"""The rules kernels (letter and blank counting for rule evals): compiled and twin agree exactly."""

from __future__ import annotations

import random

import pytest

from antispam import _fastscore_py as twin

compiled = pytest.importorskip("antispam._fastscore", reason="compiled core not built (python setup.py build_ext --inplace)")

# Every Latin-1 code point, a few beyond it (Greek and Cyrillic capitals, CJK, astral, surrogates).
ALPHABET = [chr(c) for c in range(256)] + list("ΩΣДЖ日本\u0130\u1e9e😀𝔘\ud800\u2028")


@pytest.mark.parametrize("seed", range(30))
def test_counts_agree_on_random_text(seed):
    rng = random.Random(seed)
    text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 5000)))
    for limit in (0, 1, 17, 20000, len(text)):
        assert compiled.letter_counts(text, limit) == twin.letter_counts(text, limit)
    assert compiled.visible_count(text) == twin.visible_count(text)


def test_counts_by_definition():
    assert twin.letter_counts("Hello WORLD àÉ ß Ω 42", 100) == (13, 7)  # Ω is not Latin-1: not counted
    assert twin.letter_counts("ABCdef", 4) == (4, 3)
    assert twin.visible_count(" a\tb\n\r\xa0c ") == 3
    for impl in (twin, compiled):
        with pytest.raises(ValueError):
            impl.letter_counts("abc", -1)


def test_counts_agree_on_the_corpus(corpus):
    from antispam.message import Message

    for m in corpus[::7]:
        text = Message(m.data).text
        assert compiled.letter_counts(text, 20000) == twin.letter_counts(text, 20000), m.name
        assert compiled.visible_count(text) == twin.visible_count(text), m.name
