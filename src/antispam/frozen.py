"""Frozen, slotted result dataclasses that cost less to build.

A frozen dataclass's generated ``__init__`` stores each field with
``object.__setattr__(self, name, value)``: a generic call that looks the slot up
by name on every store, since the class's own ``__setattr__`` refuses writes.
A scan builds a few dozen such records (a ``Url`` per link, a ``Relay`` per
Received header, a ``Hit`` and a ``SymbolResult`` per symbol), and those stores
were a few per cent of a scan.  :func:`quick_init` gives a class an ``__init__``
that calls each slot's own descriptor instead: the same values in the same
slots, the class still frozen (assignment still raises
``FrozenInstanceError``), at about half the cost.

The ``__init__`` is generated from the dataclass's fields, as ``dataclasses``
generates its own, so the field list is written once.
"""

from __future__ import annotations

import dataclasses
from typing import TypeVar

T = TypeVar("T", bound=type)

_FACTORY = object()  # marks a parameter whose default comes from a default_factory


def quick_init(cls: T) -> T:
    """Replace the ``__init__`` of a ``@dataclass(frozen=True, slots=True)`` class (see the module docstring).

    Supported: positional-or-keyword and keyword-only fields with or without
    defaults or default factories.  Refused (``TypeError``): classes that are
    not frozen and slotted, ``__post_init__``, fields with ``init=False``, and
    ``InitVar``/``ClassVar`` pseudo-fields, which this simple form would get wrong.
    """
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__slots__" not in vars(cls):
        raise TypeError(f"{cls.__name__}: quick_init needs a frozen dataclass with slots=True")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__}: quick_init does not run __post_init__")
    fields = dataclasses.fields(cls)
    if len(fields) != len(vars(cls)["__dataclass_fields__"]):
        raise TypeError(f"{cls.__name__}: quick_init does not take InitVar or ClassVar pseudo-fields")
    ns: dict[str, object] = {"_FACTORY": _FACTORY}
    positional: list[str] = []
    keyword: list[str] = []
    body: list[str] = []
    for f in fields:
        if not f.init:
            raise TypeError(f"{cls.__name__}.{f.name}: quick_init does not take init=False fields")
        name = f.name
        ns[f"_set_{name}"] = getattr(cls, name).__set__  # the slot's member descriptor
        if f.default is not dataclasses.MISSING:
            ns[f"_default_{name}"] = f.default
            param = f"{name}=_default_{name}"
        elif f.default_factory is not dataclasses.MISSING:
            ns[f"_factory_{name}"] = f.default_factory
            param = f"{name}=_FACTORY"
            body.append(f"if {name} is _FACTORY: {name} = _factory_{name}()")
        else:
            param = name
        (keyword if f.kw_only else positional).append(param)
        body.append(f"_set_{name}(self, {name})")
    signature = ", ".join(["self", *positional, *(["*", *keyword] if keyword else [])])
    source = f"def __init__({signature}):\n" + "".join(f"    {line}\n" for line in body or ["pass"])
    exec(source, ns)  # noqa: S102  (generated from the class's own field names, as dataclasses does)
    init = ns["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"  # type: ignore[attr-defined]
    init.__module__ = cls.__module__
    cls.__init__ = init  # type: ignore[misc]
    return cls
