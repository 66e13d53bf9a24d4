"""Prometheus metrics for the servers (``prometheus-client``), on their own registry and port.

Exposed (label ``server`` is spamd, milter, smtp or rspamd_http)::

    antispam_messages_total{server}              messages scanned
    antispam_actions_total{server,action}        verdicts by action
    antispam_scan_seconds{server}                scan latency histogram
    antispam_errors_total{server,kind}           timeout, protocol, scan, next_hop, not_allowed, ...
    antispam_connections{server}                 connections open now
"""

from __future__ import annotations

from typing import Any

from ..config import ServerConfig

# Scans take from tens of microseconds (content only) to seconds (network checks near their deadline).
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """One registry per process; shared by the servers that run in it."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.messages = Counter("antispam_messages", "Messages scanned", ["server"], registry=self.registry)
        self.actions = Counter("antispam_actions", "Verdicts by action", ["server", "action"], registry=self.registry)
        self.latency = Histogram("antispam_scan_seconds", "Scan latency in seconds", ["server"],
                                 buckets=BUCKETS, registry=self.registry)
        self.errors = Counter("antispam_errors", "Errors by kind", ["server", "kind"], registry=self.registry)
        self.connections = Gauge("antispam_connections", "Open client connections", ["server"], registry=self.registry)
        self._http: Any = None

    def observe(self, server: str, action: str, seconds: float) -> None:
        self.messages.labels(server).inc()
        self.actions.labels(server, action).inc()
        self.latency.labels(server).observe(seconds)

    def start_http(self, settings: ServerConfig) -> None:
        """Serve /metrics when the server's settings ask for it (``metrics_port`` > 0)."""
        if settings.metrics_port and self._http is None:
            from prometheus_client import start_http_server

            self._http = start_http_server(settings.metrics_port, settings.metrics_host, registry=self.registry)

    def close(self) -> None:
        if self._http is not None:
            self._http[0].shutdown()
            self._http[0].server_close()
            self._http = None

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
