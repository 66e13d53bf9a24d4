"""Exceptions raised by antispam.

Scanning never raises for bad *mail*: malformed messages become defects and
symbols.  These exceptions are for bad *configuration* and bad *artifacts*
(rules, models), where failing loudly at load time is what an operator wants.
"""

from __future__ import annotations


class AntispamError(Exception):
    """Base class of every error antispam raises on purpose."""


class ConfigError(AntispamError):
    """A configuration value is unknown, mistyped or out of range.

    The message always names the key (dotted, e.g. ``actions.reject``) and,
    when it came from a file, the file.
    """

    def __init__(self, message: str, *, key: str | None = None, source: str | None = None):
        #: the message without the key and file (to raise it again naming the file)
        self.detail = message
        self.key = key
        self.source = source
        where = []
        if key:
            where.append(f"key {key!r}")
        if source:
            where.append(f"in {source}")
        super().__init__(f"{message} ({', '.join(where)})" if where else message)


class ModelError(AntispamError):
    """A classifier model is missing, tampered with, or does not match the tokenizer."""


class RuleError(AntispamError):
    """One or more rules failed to parse or compile; ``problems`` lists them all."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        head = f"{len(self.problems)} rule problem(s)"
        super().__init__(head + ":\n  " + "\n  ".join(self.problems))
