"""The check protocol: how every layer plugs into a scan.

A *check* declares the symbols it can emit (name, default score, description,
group) and produces :class:`Hit` objects for one message.  Scores are policy,
not code: a check never decides how much a hit is worth, it only says *that* it
fired, how strongly (``weight``) and *why* (``options``).  The policy multiplies
the configured score by the weight.

Two speeds, one convention:

* Content checks override :meth:`Check.run`.  They are synchronous, CPU-bound
  and never touch an event loop, so a batch scan pays no asyncio cost per check.
* Network checks set ``network = True``.  Before any of them runs, the engine
  asks each for :meth:`Check.questions` (the DNS questions it will need), sends
  all of them at once through the one resolver, and then awaits
  :meth:`Check.arun` of all network checks concurrently under one deadline.
  A check whose questions were prefetched reads the answers from the cache, so
  a scan costs about one DNS round trip however many lists are enabled.

Checks keep no per-scan state on ``self``: one instance serves every scan,
concurrently.  Facts a later check needs (the SPF outcome for DMARC, say) are
frozen dataclasses passed through the :class:`ScanContext` by type.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, TypeVar

from .frozen import quick_init

if TYPE_CHECKING:  # pragma: no cover
    from .config import Config
    from .message import Envelope, Message

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SymbolDef:
    """A symbol a check may emit, with its default score (configuration overrides it)."""

    name: str
    score: float
    description: str
    group: str = "misc"


@quick_init
@dataclass(frozen=True, slots=True)
class Hit:
    """One symbol fired on one message.

    ``weight`` scales the configured score (1.0 for a plain hit; a graded check
    may use e.g. a probability); ``options`` are short strings that explain the
    hit (a matched host, a DNS answer, the clue tokens of the classifier).
    """

    symbol: str
    weight: float = 1.0
    options: tuple[str, ...] = ()
    #: the least severe action the verdict may have because of this hit (greylisting asks for
    #: ``soft reject``, a rate limit for what its configuration says); None leaves it to the score
    action: str | None = None


@dataclass(frozen=True, slots=True)
class Question:
    """A DNS question a network check will ask (``rdtype`` as text: ``"A"``, ``"TXT"``...)."""

    qname: str
    rdtype: str = "A"


class ScanContext:
    """Per-scan state shared by the checks of one scan.

    Facts are published and read by their type, never by string keys, so a
    typo is an AttributeError at import time rather than a silent miss::

        ctx.publish(SpfOutcome(result="pass", ...))
        spf = ctx.get(SpfOutcome)   # None when SPF did not run
    """

    __slots__ = ("envelope", "config", "deadline", "resolver", "_facts", "_auth")

    def __init__(self, envelope: "Envelope", config: "Config", deadline: float | None = None,
                 resolver: Any = None):
        self.envelope = envelope
        self.config = config
        #: absolute ``time.monotonic()`` after which network work must stop
        self.deadline = deadline
        #: the engine's :class:`antispam.dns.Resolver`, or None when no network is configured
        self.resolver = resolver
        self._facts: dict[type, Any] = {}
        self._auth: list[str] = []

    def publish(self, fact: Any) -> None:
        """Make ``fact`` available to later checks under its own type."""
        self._facts[type(fact)] = fact

    def get(self, kind: type[T]) -> T | None:
        """The fact of type ``kind`` published earlier in this scan, or None."""
        return self._facts.get(kind)

    def add_auth_result(self, resinfo: str) -> None:
        """Add one RFC 8601 ``resinfo`` (e.g. ``"spf=pass smtp.mailfrom=a@b.example"``)."""
        self._auth.append(resinfo)

    def authentication_results(self) -> str | None:
        """The Authentication-Results value after the authserv-id, or None when no auth check ran."""
        return ";\n\t".join(self._auth) if self._auth else None

    def remaining(self) -> float | None:
        """Seconds left before the scan deadline (None when there is no deadline)."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())


class Check:
    """Base class of checks.  Subclasses set ``name`` and ``symbols`` and override a run method.

    ``requires`` names checks whose published facts this one reads; the engine
    runs those first (and skips nothing: a missing fact is simply ``None``).
    """

    name: ClassVar[str] = "check"
    symbols: ClassVar[tuple[SymbolDef, ...]] = ()
    requires: ClassVar[tuple[str, ...]] = ()
    network: ClassVar[bool] = False

    def run(self, msg: "Message", ctx: ScanContext) -> Iterable[Hit]:
        """Content checks: return the hits for ``msg``.  Must not block on I/O."""
        raise NotImplementedError

    def questions(self, msg: "Message", ctx: ScanContext) -> Iterable[Question]:
        """Network checks: the DNS questions to prefetch for ``msg`` (default: none)."""
        return ()

    async def arun(self, msg: "Message", ctx: ScanContext) -> Iterable[Hit]:
        """Network checks: return the hits, reading prefetched answers from ``ctx.resolver``."""
        return self.run(msg, ctx)

    def record(self, msg: "Message", ctx: ScanContext, verdict: Any) -> None:
        """Optional: see the final verdict (reputation history).  Runs after the policy decided."""

    def close(self) -> None:
        """Release resources (sockets, files).  Called by :meth:`Engine.close`."""
