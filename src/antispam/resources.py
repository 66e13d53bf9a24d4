"""Where the embedded default rules, models and sample messages are.

In an installed package they are in ``antispam/data/`` (copied there by the
build); in a source checkout they are the top-level ``rules/``, ``models/``
and ``samples/`` directories, used in place so that editing a rule needs no
reinstall.
"""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent
_CHECKOUT = _PKG.parent.parent  # src/antispam -> repository root


def data_dir(name: str) -> Path:
    """``rules``, ``models`` or ``samples``: the embedded copy, else the checkout's."""
    installed = _PKG / "data" / name
    if installed.is_dir():
        return installed
    return _CHECKOUT / name


def default_rules_dir() -> Path:
    return data_dir("rules")


def default_models_dir() -> Path:
    return data_dir("models")


def samples_dir() -> Path:
    return data_dir("samples")
