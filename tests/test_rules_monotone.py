"""Meta polarity (``ruleset.monotone``): a polarity of +1 or -1 must hold for every count vector,
since the scan skips a meta when no count it reads moved the way that could move it."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest

from antispam.ruleset.compiler import _meta_python, _tokenize_meta, compile_rules
from antispam.ruleset.monotone import meta_polarity
from antispam.ruleset.parser import Parser

SA_DIR = Path("/usr/share/spamassassin")

EXPRS = {
    "A && !B": {0: 1, 1: -1},
    "A || B > 1": {0: 1, 1: 1},
    "A + B + C >= 2 && !D": {0: 1, 1: 1, 2: 1, 3: -1},
    "A < 3 && !B": {0: -1, 1: -1},
    "(A - B) > 0": {0: 1, 1: -1},
    "A - B": {0: 0, 1: 0},  # may be negative: its truth is not monotone
    "A == 1": {0: 0},
    "A > B": {0: 1, 1: -1},
    "(A || B) + C > 1": {0: 0, 1: 0, 2: 1},  # `or` used as a number
    "A && !A": {0: 0},
    "2 * A > 1 && !(B * C)": {0: 1, 1: -1, 2: -1},
    "A / 2 > B": {0: 0, 1: -1},
    "!!A": {0: 1},
    "1 < A < 3": {0: 0},
}


def _python(expr: str) -> tuple[str, list[str]]:
    toks = _tokenize_meta(expr)
    names = sorted({v for k, v in toks if k == "name"})
    return "(" + _meta_python(toks, lambda n: f"h[{names.index(n)}]") + ")", names


@pytest.mark.parametrize("expr,want", EXPRS.items())
def test_polarity_of_meta_shapes(expr, want):
    src, _ = _python(expr)
    assert meta_polarity(src) == want


def _check_claims(src: str, n: int, rng: random.Random, trials: int = 200) -> None:
    """Every +1 / -1 claim holds: raising that count alone never moves the truth the other way."""
    fn = eval("lambda h: " + src, {"__builtins__": {}})  # noqa: S307
    pol = meta_polarity(src)

    def truth(h):
        try:
            return bool(fn(h))
        except (ZeroDivisionError, TypeError):
            return False

    for _ in range(trials):
        h = [rng.choice((0, 0, 1, 1, 2, 3, 5)) for _ in range(n)]
        for i, sign in pol.items():
            if sign == 0:
                continue
            up = h.copy()
            up[i] += rng.choice((1, 2, 4))
            before, after = truth(h), truth(up)
            assert (after >= before) if sign > 0 else (after <= before), (src, h, i)


@pytest.mark.parametrize("expr", EXPRS)
def test_polarity_claims_hold(expr):
    src, names = _python(expr)
    _check_claims(src, len(names), random.Random(1))


def test_polarity_claims_hold_for_spamassassin_metas():
    if not (SA_DIR / "50_scores.cf").exists():
        pytest.skip("SpamAssassin rules not installed (apt-get install spamassassin)")
    parser = Parser()
    parser.read_dir(SA_DIR)
    parsed = parser.finish()
    rng = random.Random(2)
    checked = 0
    for rule in itertools.islice((r for r in parsed.rules.values() if r.kind == "meta" and r.expr), 1500):
        try:
            src, names = _python(rule.expr)
        except Exception:
            continue  # refused by the compiler too
        _check_claims(src, len(names), rng, trials=20)
        checked += 1
    assert checked > 500
    compiled = compile_rules(parsed, lenient_meta=True)
    signs = [s for rid, _ in compiled.metas for _, s in compiled.rules[rid].polarity]
    assert signs.count(0) < 0.05 * len(signs)  # nearly every meta is analysed
