"""Prometheus metrics for the servers (``prometheus-client``), on their own registry and port.

Exposed (label ``server`` is spamd, milter, smtp or rspamd_http)::

    antispam_messages_total{server}              messages scanned
    antispam_actions_total{server,action}        verdicts by action
    antispam_scan_seconds{server}                scan latency histogram
    antispam_errors_total{server,kind}           timeout, protocol, scan, next_hop, not_allowed, ...
    antispam_connections{server}                 connections open now

and, for an engine handed to :meth:`Metrics.watch_engine` (``antispam serve`` does), the DNS
lists' counters since start-up, read at scrape time::

    antispam_dnsbl_queries_total{list}           queries asked
    antispam_dnsbl_listed_total{list}            answers that listed something
    antispam_dnsbl_errors_total{list}            timeouts and server failures
    antispam_dnsbl_seconds_total{list}           time spent waiting for answers
    antispam_dnsbl_healthy{list}                 1, or 0 while the list is disabled by its health check

With scan worker processes (``workers > 0``) the lists are asked in the workers: the server asks
each worker for its counters once a second (:meth:`Metrics.watch_pool`, a request queued behind its
scans), and a scrape reads the sums of the last answers (those of a worker that died included).

With server processes (``processes > 1``, prefork) each process records into prometheus-client's
multiprocess files (``PROMETHEUS_MULTIPROC_DIR``, a private directory the parent creates) and the
parent alone serves ``/metrics``, summed over the processes (:func:`serve_multiprocess`); the
connection gauge is the sum over live processes.  The parent cannot read a process's DNS-list
counters at scrape time, so each process copies them into its multiprocess files once a second
(:meth:`Metrics.sync_lists_forever`, a task on its event loop, and once more as it stops): the
counters are summed over the processes, and ``healthy`` is the least over the live ones (0 while
any process has the list disabled).
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any, Callable, Mapping

from ..config import ServerConfig
from ..errors import ConfigError

# Scans take from tens of microseconds (content only) to seconds (network checks near their deadline).
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """One registry per process; shared by the servers that run in it."""

    def __init__(self, multiprocess: bool = False) -> None:
        """``multiprocess``: this is one of several prefork processes; the parent serves /metrics."""
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.multiprocess = multiprocess
        self.registry = CollectorRegistry()
        self.messages = Counter("antispam_messages", "Messages scanned", ["server"], registry=self.registry)
        self.actions = Counter("antispam_actions", "Verdicts by action", ["server", "action"], registry=self.registry)
        self.latency = Histogram("antispam_scan_seconds", "Scan latency in seconds", ["server"],
                                 buckets=BUCKETS, registry=self.registry)
        self.errors = Counter("antispam_errors", "Errors by kind", ["server", "kind"], registry=self.registry)
        self.connections = Gauge("antispam_connections", "Open client connections", ["server"], registry=self.registry,
                                 multiprocess_mode="livesum")
        self._http: Any = None
        #: prefork: the DNS lists' counters copied into multiprocess files (see sync_lists_forever)
        self._lists: _ListCopies | None = None
        #: where a scrape reads the DNS lists' counters (one process): engines' stats, a pool's sums
        self._list_sources: list[Callable[[], Mapping[str, Any]]] = []
        #: those of them that read the engine's own counters (replaced when the engine is)
        self._engine_sources: list[Callable[[], Mapping[str, Any]]] = []
        self._collecting = False

    def watch_engine(self, engine: Any) -> None:
        """Export the counters of the engine's DNS-list check (if it has one): read at each scrape,
        or with ``multiprocess``, copied by :meth:`sync_lists_forever`.  Called again with the
        engine that replaces it at a reload (whose counters go on from the old one's), it reads
        that one instead."""
        stats = [c.stats for c in getattr(engine, "checks", ()) if isinstance(getattr(c, "stats", None), dict)]
        if self._lists is not None:
            self._lists.stats = stats
        elif self.multiprocess:
            if stats:
                self._lists = _ListCopies(stats, self.registry)
        else:
            sources = [functools.partial(dict.copy, st) for st in stats]
            self._list_sources[:] = [s for s in self._list_sources if s not in self._engine_sources]
            self._engine_sources = sources
            if sources:
                self._read_lists(*sources)

    def watch_pool(self, pool: Any) -> None:
        """Export the DNS lists' counters of a scan worker pool (or of the server's ``Scanner``, which
        reads the pool scanning now), summed over its workers (the server must run its
        ``poll_lists_forever()`` for them to move)."""
        self._read_lists(pool.list_totals)

    def _read_lists(self, *sources: Callable[[], Mapping[str, Any]]) -> None:
        if not self._collecting:
            self.registry.register(_ListCollector(self._list_sources))
            self._collecting = True
        self._list_sources.extend(sources)

    @property
    def watches_lists(self) -> bool:
        """Whether :meth:`sync_lists_forever` has counters to copy (a prefork process with DNS lists)."""
        return self._lists is not None

    async def sync_lists_forever(self, every: float = 1.0) -> None:
        """Prefork: add what the DNS lists counted since the last copy to this process's files, every
        ``every`` seconds until cancelled (then once more)."""
        lists = self._lists
        if lists is None:
            return
        try:
            while True:
                lists.sync()
                await asyncio.sleep(every)
        finally:
            lists.sync()

    def observe(self, server: str, action: str, seconds: float) -> None:
        self.messages.labels(server).inc()
        self.actions.labels(server, action).inc()
        self.latency.labels(server).observe(seconds)

    def start_http(self, settings: ServerConfig) -> None:
        """Serve /metrics when the server's settings ask for it (``metrics_port`` > 0).  Called
        before the server's own port is bound (``antispam serve`` calls it before it builds the
        server): a port in use is a ConfigError saying so, and nothing has accepted a client."""
        if settings.metrics_port and self._http is None and not self.multiprocess:
            self._http = _start_http(settings, self.registry)

    def close(self) -> None:
        if self._http is not None:
            self._http[0].shutdown()
            self._http[0].server_close()
            self._http = None

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


def serve_multiprocess(settings: ServerConfig) -> Any:
    """The prefork parent's /metrics: the sum of what every process wrote under
    ``PROMETHEUS_MULTIPROC_DIR``.  Returns the (server, thread) pair to shut down."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    return _start_http(settings, registry)


def _start_http(settings: ServerConfig, registry: Any) -> Any:
    """prometheus-client's /metrics server on ``metrics_host:metrics_port``; a port that cannot
    be bound is a ConfigError of one line (``antispam serve`` prints it and exits 2)."""
    from prometheus_client import start_http_server

    try:
        return start_http_server(settings.metrics_port, settings.metrics_host, registry=registry)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {settings.metrics_host}:{settings.metrics_port}: "
                          f"{exc.strerror or exc}") from None


_LIST_COUNTERS = (("queries", "antispam_dnsbl_queries", "DNS list queries asked"),
                  ("listed", "antispam_dnsbl_listed", "DNS list answers that listed something"),
                  ("errors", "antispam_dnsbl_errors", "DNS list timeouts and server failures"),
                  ("seconds", "antispam_dnsbl_seconds", "Seconds spent waiting for DNS list answers"))
_HEALTHY_HELP = "1 unless the list is disabled by its health check"
#: the counters of a DNS list (``reputation.dnsbl.ListStats``), in the order of the metrics above;
#: scan workers report them in this order too (``workers.list_snapshot``)
LIST_COUNTER_KEYS = tuple(key for key, _, _ in _LIST_COUNTERS)


class _ListCopies:
    """A prefork process's copy of ``DnsblCheck.stats`` in prometheus-client metrics, which write
    to the multiprocess files: counters grown by what each list counted since the last copy."""

    def __init__(self, stats: list[dict[str, Any]], registry: Any):
        from prometheus_client import Counter, Gauge

        self.stats = stats
        self.counters = [(key, Counter(name, doc, ["list"], registry=registry)) for key, name, doc in _LIST_COUNTERS]
        self.healthy = Gauge("antispam_dnsbl_healthy", _HEALTHY_HELP, ["list"], registry=registry,
                             multiprocess_mode="livemin")
        #: (list, counter key) -> the value already added
        self.copied: dict[tuple[str, str], float] = {}

    def sync(self) -> None:
        for stats in self.stats:
            for name, st in list(stats.items()):
                for key, counter in self.counters:
                    now = float(getattr(st, key))
                    before = self.copied.get((name, key))
                    if before is None or now > before:  # a list's first copy shows its zeros too
                        counter.labels(name).inc(now - (before or 0.0))
                        self.copied[name, key] = now
                self.healthy.labels(name).set(1.0 if st.healthy else 0.0)


class _ListCollector:
    """Reads the DNS lists' counters (list name -> an object with the counters and ``healthy``,
    as ``ListStats``) when Prometheus scrapes: summed over the sources, healthy in all of them."""

    def __init__(self, sources: list[Callable[[], Mapping[str, Any]]]):
        self.sources = sources

    def describe(self) -> list[Any]:
        return []  # unchecked collector: the list names are only known at scrape time

    def collect(self):  # type: ignore[no-untyped-def]
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        merged: dict[str, list[float]] = {}
        for source in self.sources:
            for name, st in source().items():
                values = [float(getattr(st, key)) for key in LIST_COUNTER_KEYS] + [1.0 if st.healthy else 0.0]
                seen = merged.get(name)
                merged[name] = values if seen is None else [a + b for a, b in zip(seen[:-1], values)] + [min(seen[-1], values[-1])]
        families = [CounterMetricFamily(name, doc, labels=["list"]) for _, name, doc in _LIST_COUNTERS]
        healthy = GaugeMetricFamily("antispam_dnsbl_healthy", _HEALTHY_HELP, labels=["list"])
        for name, values in merged.items():
            for fam, v in zip(families, values):
                fam.add_metric([name], v)
            healthy.add_metric([name], values[-1])
        yield from families
        yield healthy
