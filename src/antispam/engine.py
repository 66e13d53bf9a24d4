"""The engine: one scan, from raw bytes to a verdict.

Flow (see ARCHITECTURE.md)::

    raw + Envelope -> Message (lazy views)
      -> network checks: DNS questions prefetched at once, then arun() concurrently, one deadline
      -> content checks: run() synchronously, in dependency order
      -> Policy -> Verdict

Content-only engines (the default ``Engine()``) never create an event loop:
``scan()`` is a plain function call per check.  Engines with network checks
run the network phase in asyncio; ``ascan()`` is the entry point inside a
running loop (servers), and ``scan()`` drives a private loop for callers that
are not async.
"""

from __future__ import annotations

import asyncio
import importlib
import itertools
import logging
import multiprocessing
import os
import selectors
import threading
import time
import weakref
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from .check import Check, Hit, ScanContext, SymbolDef
from .config import Config
from .errors import ConfigError
from .logthrottle import THROTTLE
from .message import Envelope, Message
from .policy import Policy
from .store import Store, StoreUnavailable, open_store
from .store.memory import MemoryStore
from .verdict import Verdict

log = logging.getLogger("antispam.engine")

#: Factories of the default checks, ``module:function``.  Each is called as
#: ``factory(config, store)`` and returns a Check, or None when that check is
#: not enabled or not available.  Order here is only a tie-break: ``requires``
#: decides.
DEFAULT_CHECK_FACTORIES: tuple[str, ...] = (
    "antispam.builtin:gtube_check",
    "antispam.builtin:mime_defects_check",
    "antispam.ruleset.check:rules_check",
    "antispam.reputation.greylist:greylist_check",
    "antispam.reputation.ratelimit:ratelimit_check",
    "antispam.reputation.history:history_check",
    "antispam.reputation.dnsbl:dnsbl_check",
    "antispam.auth.spf:factory",
    "antispam.classifier.check:classifier_check",
    "antispam.auth.dkim:factory",
    "antispam.auth.arc:factory",
    "antispam.auth.dmarc:factory",
    "antispam.auth.authres:authres_check",
)

ENGINE_SYMBOLS = (
    SymbolDef("CHECK_ERROR", 0.0, "A check failed on this message; the scan went on without it", "engine"),
    SymbolDef("CHECK_TIMEOUT", 0.0, "A network check did not finish before the scan deadline", "engine"),
    SymbolDef("SCAN_LIMIT", 0.0, "Part of the message was not scanned because a size limit was reached", "engine"),
    SymbolDef("INPUT_ERROR", 0.0, "The input could not be read; nothing was scanned", "engine"),
    SymbolDef("STORE_UNAVAILABLE", 0.0, "The shared store could not be reached; a check ran without it", "engine"),
)


def _check_error(name: str, exc: BaseException) -> Hit:
    """The ``CHECK_ERROR`` hit for a check (or the DNS prefetch) that raised: the scan goes on without
    it, and the option says which one failed and why, cut to 200 characters (an exception's text can
    be as long as the message it quotes)."""
    return Hit("CHECK_ERROR", 1.0, (f"{name}: {type(exc).__name__}: {exc}"[:200],))


def _load_factory(spec: str):
    module, _, func = spec.partition(":")
    return getattr(importlib.import_module(module), func)


def default_checks(config: Config, store: Store) -> list[Check]:
    """Instantiate the default checks that this configuration enables."""
    checks = []
    for spec in DEFAULT_CHECK_FACTORIES:
        check = _load_factory(spec)(config, store)
        if check is not None:
            checks.append(check)
    return checks


def builtin_check_names() -> frozenset[str]:
    """The ``name`` of every check a default factory can build, enabled or not.

    Read off the Check classes defined in the factories' modules rather than
    kept as a second list, so a new factory is known here without an edit;
    a check that is off (greylist by default) may still be named in
    ``[engine] disabled_checks``, so building the checks would not do.
    """
    names: set[str] = set()
    for spec in DEFAULT_CHECK_FACTORIES:
        module = importlib.import_module(spec.partition(":")[0])
        names.update(obj.name for obj in vars(module).values()
                     if isinstance(obj, type) and issubclass(obj, Check) and obj is not Check
                     and obj.__module__ == module.__name__)
    return frozenset(names)


def _check_disabled(config: Config, checks: Sequence[Check] | None) -> None:
    """``[engine] disabled_checks`` may name built-in checks and the custom ``checks`` given; a typo
    (``claasifier``) would otherwise leave the check running without a word.  Checked here, not at
    config load, because only the engine knows its custom checks."""
    disabled = set(config.engine.disabled_checks)
    unknown = disabled - {c.name for c in checks or ()}
    if unknown:
        valid = builtin_check_names() | {c.name for c in checks or ()}
        unknown -= valid
    if unknown:
        raise ConfigError(f"unknown check(s) {', '.join(repr(n) for n in sorted(unknown))} "
                          f"(known: {', '.join(sorted(valid))})",
                          key="engine.disabled_checks", source=config.source_of("engine.disabled_checks"))


def _order(checks: Sequence[Check]) -> list[Check]:
    """Topological order by ``requires`` (stable); unknown requirements are ignored."""
    by_name = {c.name: c for c in checks}
    done: set[str] = set()
    out: list[Check] = []
    visiting: set[str] = set()

    def visit(c: Check) -> None:
        if c.name in done:
            return
        if c.name in visiting:
            raise ValueError(f"checks require each other in a cycle: {c.name}")
        visiting.add(c.name)
        for r in c.requires:
            if r in by_name:
                visit(by_name[r])
        visiting.discard(c.name)
        done.add(c.name)
        out.append(c)

    for c in checks:
        visit(c)
    return out


def _stages(checks: Sequence[Check]) -> list[list[Check]]:
    """Group network checks into stages; a check runs in the stage after all it requires."""
    names = {c.name for c in checks}
    level: dict[str, int] = {}
    for c in checks:  # already topologically ordered
        level[c.name] = 1 + max((level[r] for r in c.requires if r in names), default=-1)
    stages: list[list[Check]] = []
    for c in checks:
        while len(stages) <= level[c.name]:
            stages.append([])
        stages[level[c.name]].append(c)
    return stages


class Engine:
    """Scans messages.  Build once, scan many times; safe to share between threads and tasks.

    >>> from antispam import Engine
    >>> v = Engine().scan(b"Subject: hi\\n\\nhello")
    >>> v.action
    'no action'
    """

    def __init__(self, config: Config | None = None, checks: Sequence[Check] | None = None, *,
                 resolver: Any = None, store: Store | None = None):
        if config is not None and not isinstance(config, Config):
            # A mapping or a path here used to fail deep inside (``'dict' object has no attribute 'engine'``),
            # and an empty mapping silently meant the defaults.
            raise TypeError(f"Engine needs an antispam.Config or None, not {type(config).__name__}: use "
                            "Engine(Config.load(path, overrides={...})) or Engine.from_config(path, overrides)")
        self.config = config if config is not None else Config.default()
        _check_disabled(self.config, checks)
        #: shared state (learning, reputation, greylisting); see ``[store]``
        self.store = store if store is not None else open_store(self.config.store.url, timeout=self.config.store.timeout)
        chosen = list(checks) if checks is not None else default_checks(self.config, self.store)
        disabled = set(self.config.engine.disabled_checks)
        chosen = [c for c in chosen if c.name not in disabled]
        self.checks = _order(chosen)
        self._custom_checks = checks is not None
        self.network_checks = [c for c in self.checks if c.network]
        self.content_checks = [c for c in self.checks if not c.network]
        #: checks that want to see the final verdict (their ``record`` is overridden)
        self.recorders = [c for c in self.checks if type(c).record is not Check.record]
        self._stages = _stages(self.network_checks)
        self.resolver = resolver
        #: set by :meth:`close`; scanning or learning after it is an error (:meth:`_check_open`)
        self._closed = False
        self._loops = threading.local()
        self._loops_lock = threading.Lock()
        self._all_loops: weakref.WeakSet[_ThreadLoop] = weakref.WeakSet()
        if self.resolver is None and self.network_checks:
            self.resolver = self._default_resolver()
        self.limits = self.config.limits
        symbols: list[SymbolDef] = list(ENGINE_SYMBOLS)
        for c in self.checks:
            symbols.extend(c.symbols)
        self.policy = Policy(self.config, symbols)
        #: one policy per configured profile (per-user / per-recipient settings)
        self.policies = {name: Policy(self.config.for_profile(name), symbols) for name in self.config.profiles}
        #: the authserv-id of our Authentication-Results (RFC 8601): ``[engine] authserv_id`` or the host name
        self.authserv_id = self.config.engine.authserv_id or _hostname()

    def _default_resolver(self) -> Any:
        try:
            dns = importlib.import_module("antispam.dns")
        except ImportError:  # pragma: no cover - layer not installed
            return None
        factory = getattr(dns, "resolver_from_config", None)
        return factory(self.config) if factory else None

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_config(cls, path: str | os.PathLike[str] | None = None, overrides: Mapping[str, Any] | None = None) -> "Engine":
        """An engine configured by the TOML file at ``path`` (and ``overrides`` on top)."""
        return cls(Config.load(path, overrides))

    @property
    def symbols(self) -> dict[str, SymbolDef]:
        """Every symbol this engine can emit, with its effective score."""
        return {n: SymbolDef(n, self.policy.scores[n], self.policy.descriptions[n], self.policy.groups[n])
                for n in self.policy.defs}

    # ------------------------------------------------------------------ scanning

    def scan(self, raw: bytes, envelope: Envelope | None = None, *, profile: str | None = None) -> Verdict:
        """Scan one message and return its verdict.  Never raises for bad mail.

        ``profile`` picks a configured policy profile (per-user settings);
        an unknown profile is a :class:`ConfigError`.  With network checks enabled this
        runs a private event loop; inside a running loop use :meth:`ascan`.
        """
        self._check_profile(profile)
        return self._scan_sync(raw, envelope, (profile,))[0]

    def scan_per_recipient(self, raw: bytes, envelope: Envelope | None = None) -> dict[str, Verdict]:
        """Run the checks once and decide once per recipient, under each one's profile (``[recipients]``).

        Without recipients (or an envelope) there is one verdict, under the key ``""``.
        """
        rcpts = (envelope.rcpt_tos if envelope is not None else ()) or ("",)
        verdicts = self._scan_sync(raw, envelope, tuple(self.config.profile_for(r) for r in rcpts))
        return dict(zip(rcpts, verdicts))

    async def ascan_per_recipient(self, raw: bytes, envelope: Envelope | None = None) -> dict[str, Verdict]:
        """:meth:`scan_per_recipient` inside an event loop."""
        rcpts = (envelope.rcpt_tos if envelope is not None else ()) or ("",)
        verdicts = await self._ascan(raw, envelope, tuple(self.config.profile_for(r) for r in rcpts))
        return dict(zip(rcpts, verdicts))

    def _check_open(self, method: str) -> None:
        """A closed engine scans and learns no more: its resolver's cache is dropped, its store closed
        and its loops closed.  A scan after close() used to go on regardless, on a new private loop that
        nothing would close again (three descriptors per thread), and on a store reopened behind the
        caller's back; now it is a clear error."""
        if self._closed:
            raise RuntimeError(f"Engine.{method}() after Engine.close(): this engine is closed; build a new one")

    def _scan_sync(self, raw: bytes, envelope: Envelope | None, profiles: tuple[str | None, ...]) -> list[Verdict]:
        self._check_open("scan")
        if self.network_checks:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                return self._private_loop().run_until_complete(self._ascan(raw, envelope, profiles))
            raise RuntimeError("Engine.scan() called inside a running event loop with network checks; use 'await engine.ascan()'")
        t0 = time.perf_counter()
        msg = Message(raw, envelope, self.limits)
        ctx = ScanContext(msg.envelope, self.config)
        hits: list[Hit] = []
        timings: dict[str, float] = {}
        self._run_content(msg, ctx, hits, timings)
        return self._finish(msg, ctx, hits, timings, t0, profiles)

    def _check_profile(self, profile: str | None) -> None:
        if profile is not None and profile not in self.policies:
            raise ConfigError(f"unknown profile (defined: {', '.join(sorted(self.policies)) or 'none'})",
                              key=f"profiles.{profile}")

    async def ascan(self, raw: bytes, envelope: Envelope | None = None, *, profile: str | None = None) -> Verdict:
        """Scan one message inside an event loop; network checks run concurrently."""
        self._check_profile(profile)
        return (await self._ascan(raw, envelope, (profile,)))[0]

    async def _ascan(self, raw: bytes, envelope: Envelope | None, profiles: tuple[str | None, ...]) -> list[Verdict]:
        self._check_open("ascan")
        t0 = time.perf_counter()
        msg = Message(raw, envelope, self.limits)
        ctx = ScanContext(msg.envelope, self.config, deadline=time.monotonic() + self.config.engine.scan_deadline,
                          resolver=self.resolver)
        hits: list[Hit] = []
        timings: dict[str, float] = {}
        if self.network_checks:
            await self._run_network(msg, ctx, hits, timings)
        self._run_content(msg, ctx, hits, timings)
        return self._finish(msg, ctx, hits, timings, t0, profiles)

    def _run_content(self, msg: Message, ctx: ScanContext, hits: list[Hit], timings: dict[str, float]) -> None:
        pc = time.perf_counter
        for check in self.content_checks:
            t = pc()
            try:
                found = check.run(msg, ctx)
                if found:
                    hits.extend(found)
            except Exception as exc:  # isolation: one broken check never loses the verdict
                log.exception("check %s failed", check.name)
                hits.append(_check_error(check.name, exc))
            timings[check.name] = pc() - t

    async def _run_network(self, msg: Message, ctx: ScanContext, hits: list[Hit], timings: dict[str, float]) -> None:
        questions = []
        for check in self.network_checks:
            try:
                questions.extend(check.questions(msg, ctx))
            except Exception as exc:
                log.exception("check %s failed to list its questions", check.name)
                hits.append(_check_error(check.name, exc))
        if questions and self.resolver is not None and hasattr(self.resolver, "prefetch"):
            t = time.perf_counter()
            try:
                await asyncio.wait_for(self.resolver.prefetch(questions), timeout=ctx.remaining())
            except (asyncio.TimeoutError, TimeoutError):
                pass  # each check sees the missing answers and reports its own TEMPFAIL
            except Exception as exc:  # a broken resolver (a bad nameserver...) must not lose the verdict
                log.exception("DNS prefetch for the network checks failed")
                hits.append(_check_error("dns_prefetch", exc))
            timings["dns_prefetch"] = time.perf_counter() - t
        for stage in self._stages:
            results = await asyncio.gather(*(self._one_network(c, msg, ctx) for c in stage))
            for check, (found, seconds) in zip(stage, results):
                hits.extend(found)
                timings[check.name] = seconds

    async def _one_network(self, check: Check, msg: Message, ctx: ScanContext) -> tuple[list[Hit], float]:
        t = time.perf_counter()
        try:
            found = await asyncio.wait_for(check.arun(msg, ctx), timeout=ctx.remaining())
            out = list(found) if found else []
        except (asyncio.TimeoutError, TimeoutError):
            out = [Hit("CHECK_TIMEOUT", 1.0, (check.name,))]
        except Exception as exc:
            log.exception("check %s failed", check.name)
            out = [_check_error(check.name, exc)]
        return out, time.perf_counter() - t

    def _finish(self, msg: Message, ctx: ScanContext, hits: list[Hit], timings: dict[str, float], t0: float,
                profiles: tuple[str | None, ...]) -> list[Verdict]:
        skipped = msg.skipped
        if skipped:
            hits.append(Hit("SCAN_LIMIT", 1.0, skipped))
        timings["total"] = time.perf_counter() - t0
        ar = ctx.authentication_results()
        verdicts = [
            (self.policies[p] if p is not None else self.policy).decide(
                hits, timings=timings, skipped=skipped, message_id=msg.message_id,
                authentication_results=f"{self.authserv_id}; {ar}" if ar else None,
                subject=msg.subject, authserv_id=self.authserv_id,
            )
            for p in profiles
        ]
        for check in self.recorders:
            try:
                check.record(msg, ctx, verdicts[0])
            except StoreUnavailable as exc:
                # A store outage, which the checks report as STORE_UNAVAILABLE: one line, not a
                # traceback.  Logged as an error with its traceback, every scan of an outage wrote
                # some 1,200 bytes of log (a Redis down for a minute, at 100 messages a second: 7 MB).
                THROTTLE.warning(log, f"record-{check.name}", "check %s could not record the verdict: %s", check.name, exc)
            except Exception:  # recording is best effort: the verdict stands
                log.exception("check %s failed to record the verdict", check.name)
        return verdicts

    # ------------------------------------------------------------------ batches

    def scan_many(self, items: Iterable[bytes | str | os.PathLike[str] | tuple[bytes, Envelope]],
                  workers: int = 1, chunksize: int = 16) -> Iterator[Verdict]:
        """Scan many messages, yielding verdicts in input order.

        ``items`` are raw bytes, paths of message files, or ``(bytes, Envelope)``
        pairs.  With ``workers > 1`` a process pool is used.  Where the platform
        forks (Linux) and this engine can cross a fork (:meth:`_forkable`), each
        worker starts as a copy of this engine, with what it has learnt: no
        start-up, where building an engine takes ~0.3 s, most of a small batch.
        Otherwise each worker builds its engine once from this engine's
        configuration (so custom check objects must be picklable).  An
        unreadable path yields a verdict with the ``INPUT_ERROR`` symbol rather
        than stopping the batch.

        ``items`` is read as the scan goes, a few chunks ahead of the verdicts
        (not all at once, as ``ProcessPoolExecutor.map`` would), so a long stream
        of messages needs memory for a few chunks only.  A worker that dies (a
        crash in a C kernel, the OOM killer) breaks the pool; the messages that
        got no verdict are then scanned again one at a time in a fresh worker,
        and one that kills that worker too gets a verdict with ``CHECK_ERROR``:
        every item gets a verdict, in order, whatever happens to a worker.
        """
        self._check_open("scan_many")
        if workers <= 1:
            for item in items:
                yield _scan_item(self, item)
            return
        forked = self._forkable()
        if forked:
            # One key per batch, not per engine: two batches of one engine at once (two threads, two
            # generators) must not take each other's entry away, or the end of one would leave the
            # other unable to start a worker in place of one that died.
            key = next(_FORK_KEYS)
            _FORKED[key] = self
            start: dict[str, Any] = dict(mp_context=multiprocessing.get_context("fork"), initializer=_worker_inherit,
                                         initargs=(key,))
        else:
            start = dict(initializer=_worker_init, initargs=(self.config, self.checks if self._custom_checks else None))
        try:
            yield from self._scan_pooled(_chunks(items, max(1, chunksize)), workers, start)
        finally:
            if forked:
                _FORKED.pop(key, None)

    def _scan_pooled(self, chunks: Iterator[list[Any]], workers: int, start: dict[str, Any]) -> Iterator[Verdict]:
        """The pool behind :meth:`scan_many`: at most ``_WINDOW * workers`` chunks in flight, results in order.

        One future per chunk, as ``ProcessPoolExecutor.map`` does, so a batch in which no worker dies
        costs what ``map`` did.  When the pool breaks, the chunks finished before keep their verdicts,
        the others are scanned again one at a time (:class:`_Isolated`), and the rest of the stream
        gets a fresh pool.
        """
        window: deque[tuple[list[Any], Future[list[Verdict]] | None]] = deque()
        pool = ProcessPoolExecutor(max_workers=workers, **start)
        try:
            while True:
                while len(window) < _WINDOW * workers:
                    chunk = next(chunks, None)
                    if chunk is None:
                        break
                    try:
                        window.append((chunk, pool.submit(_worker_scan_chunk, chunk)))
                    except BrokenProcessPool:
                        window.append((chunk, None))
                        break
                if not window:
                    return
                chunk, fut = window[0]
                if fut is not None:
                    try:
                        results = fut.result()
                    except BrokenProcessPool:
                        pass
                    else:
                        window.popleft()
                        yield from results
                        continue
                # A worker died: every chunk still in the window that has no result is scanned again.
                log.warning("a scan worker died; scanning again, one at a time, the messages it left without a verdict")
                pool.shutdown(wait=True, cancel_futures=True)
                pending = list(window)
                window.clear()
                retry = _Isolated(self, start)
                try:
                    for chunk, fut in pending:
                        done = (fut is not None and fut.done() and not fut.cancelled()
                                and fut.exception() is None)
                        if done:
                            yield from fut.result()  # type: ignore[union-attr]
                        else:
                            for item in chunk:
                                yield retry.scan(item)
                finally:
                    retry.close()
                pool = ProcessPoolExecutor(max_workers=workers, **start)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _forkable(self) -> bool:
        """Whether pool workers may start as fork()ed copies of this engine: the platform forks,
        and nothing the engine holds is shared with the outside, which a copy would then share
        too: no network checks (a resolver's sockets, event loops), an in-memory store (SQLite and
        Redis connections must not cross a fork), and the built-in checks (a custom check's
        state is not ours to judge)."""
        return ("fork" in multiprocessing.get_all_start_methods() and not self.network_checks
                and not self._custom_checks and isinstance(self.store, MemoryStore))

    # ------------------------------------------------------------------ learning

    def learn(self, raw: bytes, spam: bool, envelope: Envelope | None = None, source: str = "api") -> dict[str, bool]:
        """Feed a labelled message to every check that learns (classifier, reputation).

        Returns ``{check name: learned}``; learning the same message twice counts once.
        ``spam`` is a bool: a label such as ``"ham"`` (a true value) is a ``TypeError``, not spam.
        """
        if spam is None or isinstance(spam, (str, bytes, bytearray)):
            raise TypeError(f"learn(raw, spam): spam must be True (spam) or False (ham), not {spam!r}")
        self._check_open("learn")
        msg = Message(raw, envelope, self.limits)
        out = {}
        for check in self.checks:
            fn = getattr(check, "learn", None)
            if fn is not None:
                out[check.name] = bool(fn(msg, spam, source=source))
        return out

    def unlearn(self, raw: bytes, envelope: Envelope | None = None) -> dict[str, bool]:
        """Undo an earlier :meth:`learn` of the same message (its bytes, CRLF or LF line ends alike)."""
        self._check_open("unlearn")
        msg = Message(raw, envelope, self.limits)
        out = {}
        for check in self.checks:
            fn = getattr(check, "unlearn", None)
            if fn is not None:
                out[check.name] = bool(fn(msg))
        return out

    def _private_loop(self) -> asyncio.AbstractEventLoop:
        """This thread's event loop for synchronous scans with network checks.

        Reused from scan to scan: ``asyncio.run`` per message cost ~80 us of loop
        set-up and tear-down (a reused loop: ~7 us), and the resolver shares
        in-flight questions per loop.  One per thread, so ``scan`` stays thread-safe,
        and closed when its thread ends (:class:`_ThreadLoop`).
        """
        held = getattr(self._loops, "held", None)
        if held is None or held.loop.is_closed() or held.pid != os.getpid():
            held = self._loops.held = _ThreadLoop()
            with self._loops_lock:
                self._all_loops.add(held)
        return held.loop

    def close(self, *, keep_store: bool = False) -> None:
        """Close the engine's loops, checks, resolver and store (``keep_store``: not the store, which
        another engine goes on using: a server's engine replaced at a reload hands its store on).
        Closing twice is harmless; scanning or learning after it is a ``RuntimeError``."""
        self._closed = True
        with self._loops_lock:
            held, self._all_loops = list(self._all_loops), weakref.WeakSet()
        for h in held:
            _close_loop(h.loop)
        for c in self.checks:
            c.close()
        if self.resolver is not None and hasattr(self.resolver, "close"):
            self.resolver.close()
        if not keep_store:
            self.store.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _ThreadLoop:
    """One thread's private event loop for :meth:`Engine.scan`, closed when the thread ends.

    The engine's thread-local slot is the only strong reference to it: when the thread ends its
    thread-locals go, and the finalizer closes the loop.  Kept open for the engine's life instead,
    each loop held an epoll descriptor and a socket pair, so a milter that runs a thread per
    connection (pymilter) ran out of file descriptors after some hundred connections.

    A loop does not cross a fork (:func:`_detach_inherited_loops`): a child process gets loops of
    its own.  The loop is built on a selector of ours so that the child can reach its epoll
    descriptor.
    """

    __slots__ = ("loop", "selector", "pid", "__weakref__")

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.loop = asyncio.SelectorEventLoop(self.selector)
        #: the process that made the loop: one made before a fork is the parent's
        self.pid = os.getpid()
        weakref.finalize(self, _close_loop, self.loop)
        _LIVE_LOOPS.add(self)

    def detach(self) -> None:
        """In a forked child: give this copy of the parent's loop an epoll instance of its own, then
        close it, so that the child neither uses it nor, closing it, harms the parent's.

        The kernel's epoll instance and the loop's wake-up socket pair are shared with the parent
        after a fork.  Used in the child, the copy's default executor has no threads (a thread
        hand-off never returns: every scan ran to its deadline), and closed there (by
        ``Engine.close()``, or at the child's exit) it took the wake-up socket out of the shared
        epoll set, so that the parent's loop, waiting on a thread, slept until its next timer: the
        scan deadline.  Pointing the descriptor at a fresh, empty epoll instance makes the close
        the child's own business.
        """
        if self.loop.is_closed():  # closed by its engine before the fork: its selector is gone already
            return
        fileno = getattr(self.selector, "fileno", None)
        if fileno is not None:
            fresh = type(self.selector)()
            try:
                os.dup2(fresh.fileno(), fileno(), inheritable=False)
            finally:
                fresh.close()
        _close_loop(self.loop)


#: every private loop alive in this process, for :func:`_detach_inherited_loops`
_LIVE_LOOPS: weakref.WeakSet[_ThreadLoop] = weakref.WeakSet()


def _detach_inherited_loops() -> None:
    """After ``os.fork()``, in the child: detach every private loop the parent had (see
    :meth:`_ThreadLoop.detach`); a scan in the child then makes a loop of its own."""
    for held in list(_LIVE_LOOPS):
        held.detach()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_detach_inherited_loops)


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    if not loop.is_closed() and not loop.is_running():
        loop.close()


def _hostname() -> str:
    """The default authserv-id: this host's name as the OS knows it.

    ``socket.gethostname()`` rather than ``getfqdn()``: the latter may ask DNS
    (a reverse lookup through the system resolver), and an engine must make no
    network lookup unless configured to.  Set ``[engine] authserv_id`` to the
    name your MTA announces.
    """
    import socket

    return socket.gethostname() or "localhost"


def _scan_item(engine: Engine, item: Any) -> Verdict:
    """One :meth:`Engine.scan_many` item's verdict.  An item of no kind it takes is the caller's error,
    a ``TypeError`` that says so (an unreadable path is the input's: an ``INPUT_ERROR`` verdict)."""
    if isinstance(item, tuple):
        if len(item) != 2 or not isinstance(item[0], (bytes, bytearray, memoryview)) \
                or not (item[1] is None or isinstance(item[1], Envelope)):
            raise TypeError("scan_many: a tuple item must be a (bytes, Envelope) pair, not "
                            f"({', '.join(type(x).__name__ for x in item)})")
        return engine.scan(item[0], item[1])
    if isinstance(item, (bytes, bytearray, memoryview)):
        return engine.scan(bytes(item))
    if not isinstance(item, (str, os.PathLike)):
        raise TypeError(f"scan_many items are raw bytes, paths or (bytes, Envelope) pairs, not {type(item).__name__}")
    try:
        data = Path(item).read_bytes()
    except OSError as exc:
        return engine.policy.decide([Hit("INPUT_ERROR", 1.0, (f"{item}: {exc.strerror or exc}",))])
    return engine.scan(data)


_WORKER_ENGINE: Engine | None = None
#: the engines of the scan_many batches whose pool is running, by batch: what a forked worker starts from
_FORKED: dict[int, Engine] = {}
_FORK_KEYS = itertools.count()


def _worker_init(config: Config, checks: Sequence[Check] | None) -> None:
    global _WORKER_ENGINE
    _WORKER_ENGINE = Engine(config, checks)


def _worker_inherit(key: int) -> None:
    """A forked worker's engine: the copy of its parent's, which the fork made."""
    global _WORKER_ENGINE
    _WORKER_ENGINE = _FORKED[key]


def _worker_scan(item: Any) -> Verdict:
    assert _WORKER_ENGINE is not None
    return _scan_item(_WORKER_ENGINE, item)


def _worker_scan_chunk(chunk: list[Any]) -> list[Verdict]:
    """One pool task: a chunk of items, to pay the inter-process round trip once per chunk."""
    assert _WORKER_ENGINE is not None
    return [_scan_item(_WORKER_ENGINE, item) for item in chunk]


#: a chunk of a scan_many batch is cut early past this many bytes of messages, so the chunks in
#: flight (``_WINDOW * workers`` of them) hold a bounded amount of mail however large the messages are
_CHUNK_BYTES = 4 * 1024 * 1024
#: chunks in flight per worker: one running, the others queued so that no worker waits for work
_WINDOW = 4


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """``items`` in lists of at most ``size`` (or about ``_CHUNK_BYTES`` of raw bytes), read lazily."""
    chunk: list[Any] = []
    nbytes = 0
    for item in items:
        chunk.append(item)
        if isinstance(item, (bytes, bytearray)):
            nbytes += len(item)
        elif isinstance(item, tuple) and item and isinstance(item[0], (bytes, bytearray)):
            nbytes += len(item[0])
        if len(chunk) >= size or nbytes >= _CHUNK_BYTES:
            yield chunk
            chunk, nbytes = [], 0
    if chunk:
        yield chunk


class _Isolated:
    """Scans items one at a time in a single-worker pool, after a worker died in a batch.

    One item in flight in one worker: if that worker dies too, this item killed it (the second time,
    as it was in the batch the first death broke), so it gets a ``CHECK_ERROR`` verdict instead of a
    third try, and the next item gets a fresh worker.  Not in this process: what killed a worker would
    kill the caller.
    """

    def __init__(self, engine: Engine, start: dict[str, Any]):
        self.engine = engine
        self.start = start
        self.pool: ProcessPoolExecutor | None = None

    def scan(self, item: Any) -> Verdict:
        if self.pool is None:
            self.pool = ProcessPoolExecutor(max_workers=1, **self.start)
        try:
            return self.pool.submit(_worker_scan, item).result()
        except BrokenProcessPool:
            self.pool.shutdown(wait=True)
            self.pool = None
            log.error("a scan worker died twice on the same message; it gets a CHECK_ERROR verdict")
            return self.engine.policy.decide(
                [Hit("CHECK_ERROR", 1.0, ("scan: the worker process died scanning this message, twice",))])

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None
