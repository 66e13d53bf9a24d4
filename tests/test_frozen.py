"""quick_init builds frozen records exactly as the dataclass-generated __init__ does, only cheaper."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import FrozenInstanceError, dataclass, field

import pytest

from antispam.check import Hit
from antispam.classifier.check import Classification
from antispam.frozen import quick_init
from antispam.message import Relay, Url
from antispam.verdict import SymbolResult, Verdict


def _record(quick: bool):
    @dataclass(frozen=True, slots=True)
    class Record:
        a: str
        b: int = 2
        c: list = field(default_factory=list)
        d: tuple = field(default=(), kw_only=True)

    return quick_init(Record) if quick else Record


def test_same_fields_signature_and_behaviour_as_the_dataclass_init():
    quick, plain = _record(True), _record(False)
    assert inspect.signature(quick.__init__).parameters.keys() == inspect.signature(plain.__init__).parameters.keys()
    for args, kw in [(("x",), {}), (("x", 5), {}), (("x",), {"c": [1], "d": (2,)}), ((), {"a": "y", "b": 0})]:
        q, p = quick(*args, **kw), plain(*args, **kw)
        assert dataclasses.astuple(q) == dataclasses.astuple(p)
        assert repr(q).split("(", 1)[1] == repr(p).split("(", 1)[1]
    r = quick("x")
    assert r == quick("x") and r != quick("x", 3)
    assert quick("x").c is not quick("x").c, "a default factory runs for each record"
    with pytest.raises(FrozenInstanceError):
        r.a = "z"  # type: ignore[misc]
    with pytest.raises(TypeError):
        quick()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        quick("x", 1, [], ())  # type: ignore[misc]  (d is keyword-only)
    assert dataclasses.replace(r, b=9) == quick("x", 9)
    assert quick.__init__.__qualname__.endswith("Record.__init__")


def test_refuses_what_it_would_get_wrong():
    @dataclass(slots=True)
    class NotFrozen:
        a: int

    @dataclass(frozen=True)
    class NoSlots:
        a: int

    @dataclass(frozen=True, slots=True)
    class PostInit:
        a: int

        def __post_init__(self) -> None:
            pass

    @dataclass(frozen=True, slots=True)
    class Hidden:
        a: int
        b: int = field(default=0, init=False)

    for cls in (NotFrozen, NoSlots, PostInit, Hidden):
        with pytest.raises(TypeError):
            quick_init(cls)


@pytest.mark.parametrize("cls, values", [
    (Url, {"url": "http://x.example/", "host": "x.example", "source": "html", "text": "here"}),
    (Relay, {"ip": "192.0.2.1", "rdns": "a.example", "helo": "a", "by": "mx.example", "raw": "from a"}),
    (Hit, {"symbol": "T", "weight": 0.5, "options": ("o",), "action": None}),
    (SymbolResult, {"name": "T", "score": 1.5, "weight": 1.0, "options": (), "description": "d", "group": "g"}),
    (Classification, {"probability": 0.9, "margin": 2.0, "clues": (("a", 1.0),), "n_features": 3, "learned": 0.0,
                      "log_odds": 2.2}),
])
def test_the_scan_records_use_it_and_keep_their_values(cls, values):
    assert any(n.startswith("_set_") for n in cls.__init__.__code__.co_names), "quick_init's __init__"
    r = cls(**values)
    assert {f.name: getattr(r, f.name) for f in dataclasses.fields(cls)} == values
    assert cls(*values.values()) == r
    with pytest.raises(FrozenInstanceError):
        setattr(r, next(iter(values)), None)


def test_verdict_default_factory():
    v = Verdict(score=1.0, required_score=5.0, action="no action", symbols={}, thresholds={})
    w = Verdict(score=1.0, required_score=5.0, action="no action", symbols={}, thresholds={})
    assert v.timings == {} and v.timings is not w.timings
