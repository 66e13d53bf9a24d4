"""``antispam serve spamd|milter|smtp|rspamd-http``: run one server until SIGTERM/SIGINT.

Settings come from ``[servers.NAME]`` in the configuration file; the flags here
override the most common ones for a quick start (and ``--event-loop`` the ``[servers]`` choice).  SIGTERM drains: the server
stops accepting, finishes the messages it is scanning, then exits.  SIGHUP reloads: the
configuration file and the rules are read again and the new engine scans from the next message
on (a configuration or rule error is logged and the server goes on as it was).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import signal
from typing import Any, Callable

SERVERS = {
    "spamd": ("antispam.servers.spamd:SpamdServer", "spamd"),
    "milter": ("antispam.servers.milter:MilterServer", "milter"),
    "smtp": ("antispam.servers.smtp:SmtpFilterServer", "smtp"),
    "rspamd-http": ("antispam.servers.rspamd_http:RspamdHttpServer", "rspamd_http"),
}


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("serve", help="run an MTA integration server (spamd, milter, smtp, rspamd-http)")
    p.add_argument("kind", choices=sorted(SERVERS), help="protocol to serve")
    p.add_argument("--config", dest="serve_config", metavar="FILE", help="TOML configuration file (or antispam -c FILE serve ...)")
    p.add_argument("--host", help="address to bind (default from [servers.NAME], 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to bind (0: any free port, printed at start)")
    p.add_argument("--socket", metavar="PATH", help="listen on this Unix-domain socket instead of host:port")
    p.add_argument("--allow", action="append", metavar="CIDR", help="client network allowed (repeatable; replaces the configured allow list)")
    p.add_argument("--workers", type=int, help="scan worker processes (0: scan in the server process)")
    p.add_argument("--processes", type=int,
                   help="server processes sharing the listening socket (prefork; 1: this process alone)")
    p.add_argument("--max-connections", type=int, help="connections served at once (default from [servers.NAME], 64); more are refused")
    p.add_argument("--max-size", type=int, metavar="BYTES", help="largest message accepted (default from [servers.NAME], 33554432)")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port (0: off; needs prometheus-client)")
    p.add_argument("--next-hop", metavar="HOST:PORT", help="smtp only: where scanned mail is re-injected")
    p.add_argument("--mode", choices=("after-queue", "before-queue"), help="smtp only: content_filter (after-queue, the default) or smtpd_proxy_filter (before-queue)")
    p.add_argument("--event-loop", choices=("auto", "asyncio", "uvloop"),
                   help="the event loop (default from [servers] event_loop: auto, uvloop when installed)")
    p.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    p.set_defaults(func=cmd_serve)


def build(kind: str, config: Any, engine: Any = None, metrics: Any = None) -> Any:
    """The server object for ``kind``, configured by ``config`` (an antispam Config)."""
    from ..engine import Engine

    spec, section = SERVERS[kind]
    module, _, cls = spec.partition(":")
    server_cls = getattr(importlib.import_module(module), cls)
    settings = getattr(config.servers, section)
    return server_cls(engine or Engine(config), settings, metrics=metrics)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    section: dict[str, Any] = {}
    for flag, key in (("host", "host"), ("port", "port"), ("socket", "socket"), ("allow", "allow"), ("workers", "workers"),
                      ("processes", "processes"),
                      ("max_connections", "max_connections"), ("max_size", "max_size"),
                      ("metrics_port", "metrics_port"), ("next_hop", "next_hop"), ("mode", "mode")):
        value = getattr(args, flag, None)
        if value is not None:
            section[key] = value
    out: dict[str, Any] = {SERVERS[args.kind][1]: section} if section else {}
    if getattr(args, "event_loop", None):
        out["event_loop"] = args.event_loop
    return {"servers": out} if out else {}


def cmd_serve(args: argparse.Namespace) -> int:
    from ..config import Config
    from .common import event_loop_factory, setup_logging
    from .prefork import Supervisor, check_settings

    ignore_hangup()
    level = [logging.INFO, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    setup_logging(level, args.log_json)
    path = args.serve_config or args.config
    overrides = _overrides(args)
    config = Config.load(path, overrides)
    event_loop_factory(config.servers.event_loop)  # an unknown or missing event loop is an error now, not in a child
    section = SERVERS[args.kind][1]
    settings = getattr(config.servers, section)
    check_settings(settings, section)
    if settings.processes > 1:
        return Supervisor(args.kind, path, overrides, settings, level, args.log_json).run()
    # The bound port on stdout, one line, for scripts that start us on port 0.
    run_server(args.kind, config,
               listening=lambda server: print(f"antispam {args.kind} listening on {server.address}", flush=True),
               load=lambda: Config.load(path, overrides))
    return 0


def ignore_hangup() -> None:
    """SIGHUP ignored until the server's loop takes it as "reload": its default would end the
    process, and one sent while an engine builds would end a server that was starting."""
    with contextlib.suppress(AttributeError, ValueError):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)


def run_server(kind: str, config: Any, listening: Callable[[Any], None], listener: Any = None,
               load: Callable[[], Any] | None = None) -> None:
    """Build the server of ``kind`` and run it on the configured event loop until SIGTERM or SIGINT
    (then it drains).  ``listening(server)`` is called once it takes connections; ``listener``: a
    prefork process's side of the shared socket (``prefork.SharedListener``) instead of its own.
    ``load``: what reads the configuration again, for a reload on SIGHUP (none without it)."""
    from .common import event_loop_factory
    from .workers import list_snapshot

    metrics = None
    settings = getattr(config.servers, SERVERS[kind][1])
    if settings.metrics_port:
        from .metrics import Metrics

        metrics = Metrics(multiprocess=listener is not None)
        # before the server is built and binds its port (and before any scan worker starts): a
        # metrics port in use ends the start with one line and exit status 2, nothing accepted
        # (a prefork process serves none: its parent serves them, and checked the port first)
        metrics.start_http(settings)
    try:
        server = build(kind, config, metrics=metrics)
    except BaseException:
        if metrics is not None:
            metrics.close()
        raise
    polled = None
    if metrics is not None:
        metrics.watch_engine(server.engine)
        # the workers build the same engine: ask them only when it has DNS lists (and a reload that
        # adds lists takes a restart to export them)
        polled = server.scanner if server.scanner.pool is not None and list_snapshot(server.engine) else None
        if polled is not None:
            metrics.watch_pool(polled)
    section = SERVERS[kind][1]

    def reload_config() -> Any:
        assert load is not None
        new = load()
        if getattr(new.servers, section) != settings or new.servers.event_loop != config.servers.event_loop:
            logging.getLogger("antispam.servers").warning(
                "the [servers] settings changed: they take a restart (the rest is reloaded)",
                extra={"fields": {"server": kind}})
        return new

    async def run() -> None:
        try:
            await server.start(listener=listener)
        except BaseException:
            if metrics is not None:
                metrics.close()
            raise
        # the DNS lists' counters: copied to the shared files (prefork) or asked of the scan workers
        copier = None
        if metrics is not None and metrics.watches_lists:
            copier = asyncio.create_task(metrics.sync_lists_forever())
        elif polled is not None:
            copier = asyncio.create_task(polled.poll_lists_forever())
        try:
            # said to be listening only once SIGTERM would drain it (the handlers are set first)
            await server.wait_for_signal(reload_config if load is not None else None, ready=lambda: listening(server))
        finally:
            if copier is not None:
                copier.cancel()
                await asyncio.gather(copier, return_exceptions=True)

    with asyncio.Runner(loop_factory=event_loop_factory(config.servers.event_loop)) as runner:
        runner.run(run())
