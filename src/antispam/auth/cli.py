"""``antispam auth``: check one message's SPF, DKIM, DMARC (and ARC) from the command line.

For an operator asking "why did this message fail DMARC?": give the message
file and what the MTA saw (client IP, HELO, MAIL FROM); the command prints the
Authentication-Results we would add and each authentication symbol with its
options.  Nameservers come from the configuration or ``--nameserver``.
"""

from __future__ import annotations

import argparse
import json
import sys

GROUPS = ("spf", "dkim", "dmarc", "arc", "auth")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("auth", help="SPF, DKIM, DMARC and ARC results of one message (needs DNS)")
    p.add_argument("message", metavar="FILE", help="the message (RFC 5322), '-' for standard input")
    p.add_argument("--ip", help="the connecting client's IP address (SPF needs it)")
    p.add_argument("--helo", help="the HELO/EHLO name")
    p.add_argument("--mail-from", help="the envelope sender (empty for a bounce)")
    p.add_argument("--nameserver", action="append", default=[], metavar="IP[#PORT]",
                   help="resolver to ask (repeatable); overrides [dns] nameservers")
    p.add_argument("--dmarc-mode", choices=("rfc9989", "rfc7489"), help="overrides [auth] dmarc_mode")
    p.add_argument("--arc", action="store_true", help="also verify the ARC chain")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_auth)


def cmd_auth(args: argparse.Namespace) -> int:
    from ..config import Config
    from ..engine import Engine
    from ..errors import ConfigError
    from ..message import Envelope

    overrides: dict = {"dns": {}, "auth": {}}
    if args.nameserver:
        servers, ports = [], set()
        for spec in args.nameserver:
            host, _, port = spec.partition("#")
            servers.append(host)
            if port:
                if not (port.isascii() and port.isdigit()):
                    raise ConfigError(f"--nameserver {spec}: the port after '#' must be a number")
                ports.add(int(port))
        if len(ports) > 1:
            raise ConfigError("--nameserver: all servers must use one port")
        overrides["dns"]["nameservers"] = servers
        if ports:
            overrides["dns"]["port"] = ports.pop()
    if args.dmarc_mode:
        overrides["auth"]["dmarc_mode"] = args.dmarc_mode
    if args.arc:
        overrides["auth"]["arc"] = True
    config = Config.load(args.config, overrides)
    if not config.dns.nameservers:
        raise ConfigError("no nameserver: set [dns] nameservers or pass --nameserver")
    # At most [limits] max_bytes + 1 bytes, as `antispam scan` reads (the scan reads no further and
    # sees from the extra byte that the message was cut): `antispam auth /dev/zero` read until
    # memory ran out (MemoryError, a traceback).
    from ..corpus import read_message  # in chunks: a huge max_bytes must not be allocated up front

    cap = config.limits.max_bytes + 1
    try:
        if args.message == "-":
            raw = read_message(sys.stdin.buffer, cap)
        else:
            with open(args.message, "rb") as fh:
                raw = read_message(fh, cap)
    except OSError as exc:  # the usage's mistake: one line and status 2, as for every other
        raise ConfigError(f"cannot read {args.message}: {exc.strerror or exc}") from None
    env = Envelope(client_ip=args.ip, helo=args.helo, mail_from=args.mail_from)
    with Engine(config) as engine:
        v = engine.scan(raw, env)
    symbols = {n: list(s.options) for n, s in v.symbols.items() if s.group in GROUPS or n.startswith("CHECK_")}
    if args.json:
        print(json.dumps({"authentication_results": v.authentication_results, "symbols": symbols}))
    else:
        if v.authentication_results:
            print("Authentication-Results: " + v.authentication_results)
        for name in sorted(symbols):
            print(f"{name:<26} {', '.join(symbols[name])}")
    return 0
