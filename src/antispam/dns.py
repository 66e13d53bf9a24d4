"""The one DNS client of the library.

Every DNS question any check asks (SPF, DKIM keys, DMARC policies, blocklists,
and the DNS hooks of pyspf and dkimpy) goes through a :class:`Resolver`, so one
cache, one set of timeouts and one concurrency bound govern all of them.

Why a resolver of our own rather than ``dns.resolver.Resolver``: the engine
asks every question of a scan at once (:meth:`Resolver.prefetch`) and then
lets checks read answers synchronously from the cache (:meth:`Resolver.cached`),
so a scan with SPF, DKIM, DMARC and blocklists waits about one round trip; and
a failure must stay distinguishable from "no record" all the way to the
verdict (a timeout is never a pass).  dnspython's stub resolver folds both
into exceptions and has no async read-through cache, so we use its message
and transport layers (``dns.message``, ``dns.asyncquery``) and keep the policy
here.

Answers are :class:`Answer` values with a ``status``: ``ok``, ``nodata``,
``nxdomain`` (definite, cached for their TTL / the SOA negative TTL),
``servfail``, ``timeout`` (temporary, cached briefly so that one scan does not
re-ask a dead server for every mechanism) or ``invalid`` (the name cannot be
asked at all, e.g. a label longer than 63 octets).
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype

from .domains import to_ascii

if TYPE_CHECKING:  # pragma: no cover
    from .check import Question
    from .config import Config

#: statuses that mean "we do not know": callers must turn them into a temperror / *_TEMPFAIL
TEMPORARY = frozenset({"servfail", "timeout"})
#: longest CNAME chain followed inside one response
MAX_CNAME_CHAIN = 16
#: ``Answer.detail`` of a question cut off by the caller's deadline.  Such answers are not cached:
#: one scan running out of time says nothing about the server, and must not fail the next scans.
DEADLINE = "deadline reached"
#: rcodes that answer the question; any other (SERVFAIL, REFUSED, NOTIMP...) sends us to the next nameserver
FINAL_RCODES = frozenset({dns.rcode.NOERROR, dns.rcode.NXDOMAIN})
#: EDNS(0) UDP payload size we advertise (the 2020 DNS flag day value): DKIM keys fit without TCP
EDNS_PAYLOAD = 1232


@dataclass(frozen=True, slots=True)
class Answer:
    """The outcome of one DNS question.

    ``records`` are dnspython rdata objects of ``rdtype`` found at the end of the
    CNAME chain (``cnames`` lists the ``(owner, target)`` steps followed).
    """

    qname: str
    rdtype: str
    status: str
    records: tuple[Any, ...] = ()
    cnames: tuple[tuple[str, str], ...] = ()
    ttl: float = 0.0
    detail: str = ""

    @property
    def temporary(self) -> bool:
        """True when the answer says nothing about the record (timeout, SERVFAIL)."""
        return self.status in TEMPORARY

    @property
    def exists(self) -> bool:
        """True when the name exists (NOERROR, with or without data)."""
        return self.status in ("ok", "nodata")

    def texts(self) -> list[bytes]:
        """TXT records, each one's character-strings joined (RFC 7208 3.3, RFC 6376 3.6.2.2)."""
        return [b"".join(r.strings) for r in self.records if hasattr(r, "strings")]

    def values(self) -> list[str]:
        """Records in presentation form (addresses for A/AAAA, names for PTR/NS...)."""
        return [r.to_text() for r in self.records]


def make_name(text: str) -> dns.name.Name:
    """A DNS name from its labels taken literally; an internationalised name as its A-labels.

    ``dns.name.from_text`` would read backslash escapes and choke on spaces, but
    names built by SPF macro expansion may hold any octet; they are sent as-is.
    A name in Unicode is asked as :func:`antispam.domains.to_ascii` gives it (UTS 46
    non-transitional, ``faß.de`` as ``xn--fa-hia.de``), the name every check compares and
    writes; a name that is no domain UTS 46 can encode (an SPF macro's expansion of a local
    part, say) is asked label by label, each label it cannot encode as its UTF-8 octets.
    Raises ``dns.name.LabelTooLong`` / ``EmptyLabel`` / ``NameTooLong`` for names
    that cannot be asked.
    """
    text = text.rstrip(".")
    if not text:
        return dns.name.root
    if not text.isascii():
        try:
            text = to_ascii(text).rstrip(".")
        except UnicodeError:
            pass
    return dns.name.Name([_label(label) for label in text.split(".")] + [b""])


def _label(label: str) -> bytes:
    """ASCII labels as they are; internationalized ones as A-labels (xn--), as zones publish them;
    what UTS 46 cannot encode as one label, as its UTF-8 octets."""
    if label.isascii():
        return label.encode("ascii")
    try:
        a_label = to_ascii(label)
    except UnicodeError:
        a_label = ""
    return a_label.encode("ascii") if a_label and "." not in a_label else label.encode("utf-8")


def name_text(name: dns.name.Name) -> str:
    """The inverse of :func:`make_name`: labels joined with dots, no escapes, no final dot."""
    return ".".join(label.decode("utf-8", "replace") for label in name.labels if label)


def _key(qname: str, rdtype: str) -> tuple[str, str]:
    return qname.rstrip(".").lower(), rdtype.upper()


class _Cache:
    """LRU of answers with per-entry expiry; thread-safe because ``resolve_sync`` may run in threads."""

    def __init__(self, size: int):
        self.size = size
        self._data: OrderedDict[tuple[str, str], tuple[float, Answer]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str]) -> Answer | None:
        with self._lock:
            item = self._data.get(key)
            if item is None:
                return None
            if item[0] <= time.monotonic():
                del self._data[key]
                return None
            self._data.move_to_end(key)
            return item[1]

    def put(self, key: tuple[str, str], answer: Answer, ttl: float) -> None:
        if ttl <= 0 or self.size == 0:
            return
        with self._lock:
            self._data[key] = (time.monotonic() + ttl, answer)
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


class _Flight:
    """One question being asked in one loop: the query task and how many callers wait for it.

    The query is a task of its own so that no caller's deadline or cancellation
    cuts it short for the others; when the last caller gives up it is dropped
    (see :meth:`Resolver.resolve`).
    """

    __slots__ = ("task", "waiters")

    def __init__(self, task: "asyncio.Task[Answer]"):
        self.task = task
        self.waiters = 0


class _LoopState:
    """What must not cross event loops: the semaphore and the in-flight table.

    ``Engine.scan()`` runs each scan in a fresh ``asyncio.run`` loop, while a
    server runs one long loop; keeping these per loop makes one Resolver safe
    for both.
    """

    __slots__ = ("sem", "inflight")

    def __init__(self, concurrency: int):
        self.sem = asyncio.Semaphore(concurrency)
        self.inflight: dict[tuple[str, str], _Flight] = {}


class _Failover:
    """Which nameserver to ask next for one question, and what the failures were.

    Shared by :meth:`Resolver._ask_async` and :meth:`Resolver.resolve_sync`, so
    the event loop and the blocking path fail over alike: the list is tried
    ``attempts`` times in order; a server answering with an rcode other than
    NOERROR or NXDOMAIN (SERVFAIL, REFUSED...) is not asked again for this
    question, as glibc and dnspython's Resolver do (one broken or refusing
    resolver in the list must not hide the others), and once every server has
    so answered there is nobody left to try.
    """

    __slots__ = ("nameservers", "attempts", "failed", "last")

    def __init__(self, nameservers: tuple[str, ...], attempts: int):
        self.nameservers = nameservers
        self.attempts = attempts
        #: servers that answered this question with an error rcode
        self.failed: set[str] = set()
        #: what went wrong last, for the failure's ``detail``
        self.last = "no attempt made"

    def servers(self) -> Iterator[str]:
        """The servers to ask, in turn, until one answers (the caller stops) or none is left."""
        for _ in range(self.attempts):
            for server in self.nameservers:
                if server not in self.failed:
                    yield server
            if self.failed.issuperset(self.nameservers):
                return

    def unanswered(self, server: str, exc: Exception) -> None:
        """``server`` timed out or could not be asked (network error, malformed reply): try the next."""
        if isinstance(exc, dns.exception.Timeout):
            self.last = f"timeout from {server}"
        else:
            self.last = f"{server}: {type(exc).__name__}: {exc}"

    def answered(self, server: str, response: dns.message.Message) -> bool:
        """True if ``response`` answers the question; else ``server`` is not asked again."""
        rcode = response.rcode()
        if rcode in FINAL_RCODES:
            return True
        self.failed.add(server)
        self.last = f"{dns.rcode.to_text(rcode)} from {server}"
        return False

    def failure(self, qname: str, rdtype: str) -> Answer:
        """No usable answer from any server: ``servfail`` if one answered with an error rcode, else ``timeout``."""
        return Answer(qname, rdtype, "servfail" if self.failed else "timeout", detail=self.last)


class Resolver:
    """Async stub resolver with a shared TTL cache and a blocking read-through.

    ``nameservers`` are IP addresses (IPv4 or IPv6); ``timeout`` bounds one
    attempt at one server; ``attempts`` is how many times the list of servers
    is tried before the answer is ``timeout``.  Truncated UDP answers are
    retried over TCP.
    """

    def __init__(self, nameservers: Iterable[str], port: int = 53, timeout: float = 2.0, attempts: int = 2,
                 cache_size: int = 10000, max_concurrency: int = 64, negative_ttl: float = 300.0,
                 failure_ttl: float = 5.0, min_ttl: float = 0.0, max_ttl: float = 86400.0):
        self.nameservers = tuple(nameservers)
        if not self.nameservers:
            raise ValueError("a Resolver needs at least one nameserver")
        self.port = port
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self.max_concurrency = max(1, max_concurrency)
        self.negative_ttl = negative_ttl
        self.failure_ttl = failure_ttl
        self.min_ttl = min_ttl
        self.max_ttl = max_ttl
        self._cache = _Cache(cache_size)
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = weakref.WeakKeyDictionary()
        self._sync_sem = threading.BoundedSemaphore(self.max_concurrency)
        #: counters for tests and benchmarks: questions sent to servers, answers served from cache
        self.sent = 0
        self.hits = 0

    # ------------------------------------------------------------------ cache

    def cached(self, qname: str, rdtype: str = "A") -> Answer | None:
        """The cached answer, or None when the question was not asked (or expired)."""
        answer = self._cache.get(_key(qname, rdtype))
        if answer is not None:
            self.hits += 1
        return answer

    def clear_cache(self) -> None:
        self._cache.clear()

    # ------------------------------------------------------------------ async

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is None:
            state = self._loops[loop] = _LoopState(self.max_concurrency)
        return state

    async def resolve(self, qname: str, rdtype: str = "A", deadline: float | None = None) -> Answer:
        """Answer ``qname``/``rdtype`` from the cache or the servers; never raises for DNS trouble.

        ``deadline`` is an absolute ``time.monotonic()`` past which this caller
        stops waiting (the answer is then ``timeout`` with detail
        :data:`DEADLINE`, never cached).  Concurrent identical questions share
        one query, which runs as a task bounded only by the resolver's own
        ``timeout``/``attempts``: each caller waits for it up to its own
        deadline, so a caller that joined with more time left still gets the
        answer after an earlier caller gave up or was cancelled.
        """
        key = _key(qname, rdtype)
        answer = self.cached(*key)
        if answer is not None:
            return answer
        state = self._state()
        flight = state.inflight.get(key)
        if flight is None:
            if self._attempt_timeout(deadline) is None:
                return Answer(key[0], key[1], "timeout", detail=DEADLINE)  # out of time: start no query
            task = asyncio.get_running_loop().create_task(self._query(state, key))
            flight = state.inflight[key] = _Flight(task)
        task = flight.task
        flight.waiters += 1
        try:
            if deadline is None:
                return await asyncio.shield(task)
            try:
                return await asyncio.wait_for(asyncio.shield(task), deadline - time.monotonic())
            except asyncio.TimeoutError:
                return Answer(key[0], key[1], "timeout", detail=DEADLINE)
        finally:
            flight.waiters -= 1
            if flight.waiters == 0 and not task.done():
                # Nobody wants the answer any more: drop the query rather than leave a task behind.  The
                # engine's synchronous scans reuse a loop that stops between scans; a task left there would
                # resume with its timers long expired (a false "timeout", cached) or be destroyed pending
                # when the loop closes.  Waiting for the cancellation closes its socket now.
                if state.inflight.get(key) is flight:
                    del state.inflight[key]
                task.cancel()
                await asyncio.wait((task,))

    async def _query(self, state: _LoopState, key: tuple[str, str]) -> Answer:
        """The shared query of :meth:`resolve`: ask, cache the answer, leave the in-flight table."""
        try:
            async with state.sem:
                answer = await self._ask_async(key[0], key[1])
            self._store(key, answer)
            return answer
        finally:
            flight = state.inflight.get(key)
            if flight is not None and flight.task is asyncio.current_task():
                del state.inflight[key]

    async def prefetch(self, questions: Iterable["Question"], deadline: float | None = None) -> list[Answer]:
        """Ask every question at once (duplicates once); returns the answers in first-seen order."""
        answers: dict[tuple[str, str], Answer | None] = {}
        for q in questions:
            key = _key(q.qname, q.rdtype)
            if key not in answers:
                answers[key] = self.cached(*key)
        # Cached answers are read in place; only the missing ones cost a task and a query.
        missing = [k for k, a in answers.items() if a is None]
        if missing:
            for key, answer in zip(missing, await asyncio.gather(*(self.resolve(n, t, deadline) for n, t in missing))):
                answers[key] = answer
        return list(answers.values())  # type: ignore[arg-type]

    async def _ask_async(self, qname: str, rdtype: str) -> Answer:
        """Try the nameservers in turn (:class:`_Failover`), each try bounded by ``timeout``.

        No caller's deadline applies here: the query may be shared (see
        :meth:`resolve`).
        """
        query = self._make_query(qname, rdtype)
        if isinstance(query, Answer):
            return query
        failover = _Failover(self.nameservers, self.attempts)
        for server in failover.servers():
            self.sent += 1
            try:
                response, _tcp = await dns.asyncquery.udp_with_fallback(
                    query, server, timeout=self.timeout, port=self.port)
            except (OSError, dns.exception.DNSException) as exc:
                failover.unanswered(server, exc)
                continue
            if failover.answered(server, response):
                return self._answer_from(qname, rdtype, response)
        return failover.failure(qname, rdtype)

    # ------------------------------------------------------------------ sync

    def resolve_sync(self, qname: str, rdtype: str = "A", timeout: float | None = None) -> Answer:
        """Blocking read-through of the same cache, for libraries that cannot await.

        Safe to call from worker threads (``asyncio.to_thread``); must not be
        called on an event loop's thread, where it would stall every scan.
        """
        key = _key(qname, rdtype)
        answer = self.cached(*key)
        if answer is not None:
            return answer
        deadline = None if timeout is None else time.monotonic() + timeout
        query = self._make_query(*key)
        if isinstance(query, Answer):
            return query
        failover = _Failover(self.nameservers, self.attempts)
        with self._sync_sem:
            for server in failover.servers():
                t = self._attempt_timeout(deadline)
                if t is None:
                    return Answer(key[0], key[1], "timeout", detail=DEADLINE)
                self.sent += 1
                try:
                    response, _tcp = dns.query.udp_with_fallback(query, server, timeout=t, port=self.port)
                except (OSError, dns.exception.DNSException) as exc:
                    if isinstance(exc, dns.exception.Timeout) and t < self.timeout:
                        return Answer(key[0], key[1], "timeout", detail=DEADLINE)  # the caller's time ran out
                    failover.unanswered(server, exc)
                    continue
                if failover.answered(server, response):
                    answer = self._answer_from(key[0], key[1], response)
                    self._store(key, answer)
                    return answer
        answer = failover.failure(key[0], key[1])
        self._store(key, answer)
        return answer

    # ------------------------------------------------------------------ shared

    def _attempt_timeout(self, deadline: float | None) -> float | None:
        if deadline is None:
            return self.timeout
        left = deadline - time.monotonic()
        return min(self.timeout, left) if left > 0.001 else None

    @staticmethod
    def _make_query(qname: str, rdtype: str) -> dns.message.Message | Answer:
        try:
            name = make_name(qname)
            rdt = dns.rdatatype.from_text(rdtype)
        except (dns.exception.DNSException, ValueError) as exc:
            return Answer(qname, rdtype, "invalid", detail=f"{type(exc).__name__}: {exc}")
        return dns.message.make_query(name, rdt, use_edns=0, payload=EDNS_PAYLOAD)

    def _answer_from(self, qname: str, rdtype: str, response: dns.message.Message) -> Answer:
        rcode = response.rcode()
        if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            return Answer(qname, rdtype, "servfail", detail=dns.rcode.to_text(rcode))
        rdt = dns.rdatatype.from_text(rdtype)
        # Follow the CNAME chain inside the answer section.
        name = make_name(qname)
        cnames: list[tuple[str, str]] = []
        ttl = self.max_ttl
        for _ in range(MAX_CNAME_CHAIN + 1):
            rrset = _find(response.answer, name, rdt)
            if rrset is not None:
                ttl = min(ttl, rrset.ttl)
                return Answer(qname, rdtype, "ok", tuple(rrset), tuple(cnames), self._clamp(ttl))
            cname = _find(response.answer, name, dns.rdatatype.CNAME) if rdt != dns.rdatatype.CNAME else None
            if cname is None:
                break
            ttl = min(ttl, cname.ttl)
            target = cname[0].target
            cnames.append((name_text(name), name_text(target)))
            name = target
        status = "nxdomain" if rcode == dns.rcode.NXDOMAIN and not cnames else "nodata"
        return Answer(qname, rdtype, status, (), tuple(cnames), self._clamp(self._negative_ttl(response)))

    def _negative_ttl(self, response: dns.message.Message) -> float:
        """RFC 2308 section 5: min(SOA TTL, SOA MINIMUM) from the authority section, else our default."""
        for rrset in response.authority:
            if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
                return float(min(rrset.ttl, rrset[0].minimum))
        return self.negative_ttl

    def _clamp(self, ttl: float) -> float:
        return max(self.min_ttl, min(self.max_ttl, float(ttl)))

    def _store(self, key: tuple[str, str], answer: Answer) -> None:
        if answer.status == "invalid" or answer.detail == DEADLINE:
            return
        ttl = self.failure_ttl if answer.temporary else answer.ttl
        self._cache.put(key, answer, ttl)

    def close(self) -> None:
        """Drop the cache.  (Queries use one socket each, so there is nothing else to release.)"""
        self._cache.clear()


def _find(section: list[Any], name: dns.name.Name, rdtype: int) -> Any:
    for rrset in section:
        if rrset.rdtype == rdtype and rrset.name == name:
            return rrset
    return None


def resolver_from_config(config: "Config") -> Resolver | None:
    """The engine's resolver, or None when ``[dns] nameservers`` is empty (network checks off)."""
    c = getattr(config, "dns", None)
    if c is None or not c.nameservers:
        return None
    return Resolver(c.nameservers, port=c.port, timeout=c.timeout, attempts=c.attempts, cache_size=c.cache_size,
                    max_concurrency=c.max_concurrency, negative_ttl=c.negative_ttl, failure_ttl=c.failure_ttl,
                    min_ttl=c.min_ttl, max_ttl=c.max_ttl)
