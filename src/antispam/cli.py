"""The ``antispam`` command.

``antispam scan PATH...`` is built in; other subcommands (``train``, ``eval``,
``rules``, ``serve``...) are registered by the modules listed in
:data:`COMMAND_MODULES`, each defining ``register(subparsers)``.  A module that
fails to import (an optional dependency missing) does not break the others.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time
from typing import Iterator, Sequence

from . import __version__

#: Modules that add subcommands: each defines ``register(subparsers)`` and sets
#: ``func=handler`` on its parsers (``handler(args) -> int``).
COMMAND_MODULES: tuple[str, ...] = (
    "antispam.classifier.cli",
    "antispam.ruleset.cli",
    "antispam.servers.cli",
    "antispam.auth.cli",
    "antispam.fit",
)


def _version_text() -> str:
    from .fastscore import IMPLEMENTATION

    return f"antispam {__version__} (core: {IMPLEMENTATION}; python {sys.version.split()[0]})"


#: the most worker processes ``scan -j`` starts: a number past what a C int holds crashed the process
#: pool with a traceback (OverflowError), and thousands of processes are a typo, not a plan
MAX_WORKERS = 1024


def _count(most: int | None):
    """An argparse type: a whole number from 0 to ``most`` (None: no upper bound).

    ``-j -1`` used to mean "one per core" silently and ``--top -5`` showed all but the last five
    symbols (a negative slice): a negative count is a usage error, as a non-number is.
    """
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if n < 0 or (most is not None and n > most):
            raise argparse.ArgumentTypeError(f"{text} is out of range: from 0 to {most}" if most is not None
                                             else f"{text} is negative")
        return n

    parse.__name__ = "count"
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="antispam", description="High-throughput e-mail anti-spam engine.")
    p.add_argument("--version", action="version", version=_version_text())
    p.add_argument("-c", "--config", metavar="FILE", help="TOML configuration file (defaults < file)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv for debug)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("scan", help="scan messages: files, directories, maildirs, mbox files, .tar.gz archives")
    s.add_argument("paths", nargs="+", metavar="PATH")
    s.add_argument("--json", action="store_true", help="one JSON object (rspamd /checkv2 shape) per line")
    s.add_argument("-j", "--workers", type=_count(MAX_WORKERS), default=1,
                   help=f"worker processes (default 1; 0 = one per core; at most {MAX_WORKERS})")
    s.add_argument("--top", type=_count(None), default=3, help="symbols shown per message (default 3)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar, even on a terminal")
    s.set_defaults(func=cmd_scan)

    v = sub.add_parser("checks", help="list the checks and symbols of the configured engine")
    v.set_defaults(func=cmd_checks)

    c = sub.add_parser("config", help="print the effective configuration as JSON")
    c.set_defaults(func=cmd_config)

    le = sub.add_parser("learn", help="teach the store (classifier statistics, reputation) from labelled mail, "
                                      "like sa-learn; needs a persistent [store] url")
    what = le.add_mutually_exclusive_group(required=True)
    what.add_argument("--spam", action="store_true", help="the messages are spam")
    what.add_argument("--ham", action="store_true", help="the messages are ham")
    what.add_argument("--forget", action="store_true", help="undo an earlier learn of these messages")
    le.add_argument("paths", nargs="+", metavar="PATH", help="files, directories, maildirs, mbox files, archives")
    le.set_defaults(func=cmd_learn)

    for name in COMMAND_MODULES:
        try:
            importlib.import_module(name).register(sub)
        except ImportError as exc:  # optional dependency missing: say so, keep the rest working
            logging.getLogger("antispam.cli").debug("subcommands of %s unavailable: %s", name, exc)
    return p


def _engine(args: argparse.Namespace):
    from .engine import Engine

    # ``is not None``: an empty -c '' (an unset shell variable) silently ran with the defaults
    return Engine.from_config(args.config) if args.config is not None else Engine()


class Progress:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, enabled: bool, total: int | None = None):
        self.enabled = enabled and sys.stderr.isatty()
        self.total = total
        self.n = 0
        self.t0 = time.monotonic()
        self._last = 0.0

    def step(self) -> None:
        self.n += 1
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < 0.1:
            return
        self._last = now
        rate = self.n / max(now - self.t0, 1e-9)
        if self.total:
            done = int(30 * self.n / self.total)
            bar = "#" * done + "." * (30 - done)
            sys.stderr.write(f"\r[{bar}] {self.n}/{self.total} {rate:,.0f} msgs/s")
        else:
            sys.stderr.write(f"\r{self.n} messages {rate:,.0f} msgs/s")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * 70 + "\r")
            sys.stderr.flush()


def _shown(text: str) -> str:
    """``text`` fit for any output: a file name that is not UTF-8 reaches Python as lone surrogates
    (``surrogateescape``), which a strict UTF-8 stdout refuses (a crash) and which JSON carries as
    invalid Unicode; its bytes are shown as ``\\xff`` escapes instead."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", "backslashreplace")


def cmd_scan(args: argparse.Namespace) -> int:
    """Scan every message under the paths, one output line per message or unreadable input.

    Streamed: messages are read as the scan goes (at most ``[limits] max_bytes + 1`` bytes each),
    not all before the first verdict, so memory does not grow with the corpus.  Exit status: 0 when
    at least one message was scanned or there was nothing to scan, 1 when every input was
    unreadable; ``main`` adds 2 for a configuration error and 130 for Ctrl-C.
    """
    from collections import deque

    from .corpus import iter_messages
    from .engine import Engine

    engine: Engine = _engine(args)
    workers = args.workers if args.workers > 0 else (os.cpu_count() or 1)
    #: what was read, in input order, waiting for its line: (source, error); error None for a message
    pending: deque[tuple[str, str | None]] = deque()

    def feed() -> Iterator[bytes]:
        for it in iter_messages(args.paths, max_bytes=engine.limits.max_bytes):
            pending.append((it.source, (it.error or "unreadable") if it.data is None else None))
            if it.data is not None:
                yield it.data

    progress = Progress(not args.no_progress)
    counts: dict[str, int] = {}
    errors = 0
    n = 0
    t0 = time.perf_counter()
    out = sys.stdout

    def flush_errors() -> int:
        k = 0
        while pending and pending[0][1] is not None:
            source, error = pending.popleft()
            if args.json:
                out.write(json.dumps({"file": _shown(source), "error": _shown(error or "")}) + "\n")
            else:
                out.write(f"{_shown(source)}\terror\t{_shown(error or '')}\n")
            progress.step()
            k += 1
        return k

    try:
        for v in engine.scan_many(feed(), workers=workers):
            errors += flush_errors()
            source, _ = pending.popleft()
            n += 1
            counts[v.action] = counts.get(v.action, 0) + 1
            if args.json:
                d = v.to_dict()
                d["file"] = _shown(source)
                out.write(json.dumps(d) + "\n")
            else:
                top = " ".join(f"{s.name}({s.score:g})" for s in v.top_symbols(args.top))
                out.write(f"{_shown(source)}\t{v.action}\t{v.score:.2f}\t{top}\n")
            progress.step()
        errors += flush_errors()
    finally:
        progress.close()
        engine.close()
    dt = time.perf_counter() - t0
    summary = ", ".join(f"{k}: {counts[k]}" for k in sorted(counts)) or "nothing scanned"
    sys.stderr.write(f"{n} message(s) scanned in {dt:.2f}s ({n / dt if dt else 0:,.0f} msgs/s); {summary}"
                     + (f"; {errors} unreadable" if errors else "") + "\n")
    return 1 if errors and not n else 0


def cmd_checks(args: argparse.Namespace) -> int:
    engine = _engine(args)
    for check in engine.checks:
        kind = "network" if check.network else "content"
        print(f"{check.name} ({kind})")
        for s in check.symbols:
            sd = engine.symbols[s.name]
            print(f"  {sd.name:32} {sd.score:8.2f}  [{sd.group}] {sd.description}")
    engine.close()
    return 0


def cmd_learn(args: argparse.Namespace) -> int:
    """Learn (or forget) every message under the paths; the same message twice counts once."""
    from .corpus import iter_messages

    engine = _engine(args)
    if engine.config.store.url.startswith("memory:"):
        sys.stderr.write("antispam learn: the store is memory:// (the default), so nothing learned would be kept; "
                         "set [store] url to sqlite:///... or redis://... in the configuration (-c FILE)\n")
        engine.close()
        return 2
    counts = {"learned": 0, "already known": 0, "unreadable": 0}
    for it in iter_messages(args.paths, max_bytes=engine.limits.max_bytes):
        if it.data is None:
            counts["unreadable"] += 1
            sys.stderr.write(f"{_shown(it.source)}: {_shown(it.error or '')}\n")
            continue
        done = engine.unlearn(it.data) if args.forget else engine.learn(it.data, spam=args.spam, source="cli")
        counts["learned" if any(done.values()) else "already known"] += 1
    engine.close()
    verb = "forgot" if args.forget else f"learned as {'spam' if args.spam else 'ham'}"
    print(f"{verb}: {counts['learned']}; unchanged: {counts['already known']}; unreadable: {counts['unreadable']}")
    return 1 if counts["unreadable"] and not counts["learned"] else 0


def cmd_config(args: argparse.Namespace) -> int:
    from .config import Config

    cfg = Config.load(args.config)
    print(json.dumps({"sources": list(cfg.sources), **cfg.to_dict()}, indent=2, default=list))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from .errors import AntispamError

    try:
        return int(args.func(args) or 0)
    except AntispamError as exc:
        sys.stderr.write(f"antispam: {exc}\n")
        return 2
    except BrokenPipeError:  # `antispam scan ... | head`
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
