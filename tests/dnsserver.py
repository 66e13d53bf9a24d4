"""A real authoritative DNS server on loopback for tests, built on dnspython.

It answers over UDP and TCP on an ephemeral port from zone data given as a
dict ``{owner name: [(rdtype, value), ...]}``:

* ``A``/``AAAA``/``PTR``/``CNAME``/``NS``: text values; ``MX``: ``(preference, host)`` or ``"10 host"``;
  ``TXT``: a string, bytes, or a list of them (one record of several character-strings).
* pseudo types that change how the name is served: ``TIMEOUT`` (queries for types the name has no
  records of are dropped, so the client times out; the SPF suite's convention), ``SERVFAIL`` (answer with rcode SERVFAIL), ``TRUNCATE`` (UDP answers are sent empty with
  the TC bit, so the client must retry over TCP).

Names that exist only as ancestors of other names are empty non-terminals (NOERROR, no data), others
are NXDOMAIN, and CNAMEs inside the data are chased, as a real authoritative server would.  Every query
received is logged in ``queries`` as ``(qname, rdtype, "udp"|"tcp")``.
"""

from __future__ import annotations

import socket
import socketserver
import struct
import threading
import time
from typing import Any, Iterable, Mapping

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from antispam.dns import make_name, name_text
from dns.rdtypes.ANY.TXT import TXT

PSEUDO = ("TIMEOUT", "SERVFAIL", "TRUNCATE")
Zone = Mapping[str, Iterable[tuple[str, Any]]]


def _norm(name: str) -> str:
    return name.rstrip(".").lower()


def _rdata(rdtype: str, value: Any) -> dns.rdata.Rdata:
    if rdtype == "TXT":
        parts = value if isinstance(value, (list, tuple)) else [value]
        strings = [p if isinstance(p, bytes) else str(p).encode("utf-8") for p in parts]
        # An empty TXT record is one empty character-string; longer strings are split at 255 octets.
        chunks: list[bytes] = []
        for s in strings or [b""]:
            chunks.extend([s[i:i + 255] for i in range(0, len(s), 255)] or [b""])
        return TXT(dns.rdataclass.IN, dns.rdatatype.TXT, chunks)
    if rdtype == "MX" and isinstance(value, (list, tuple)):
        value = f"{int(value[0])} {value[1] or '.'}"
    if rdtype in ("PTR", "CNAME", "NS", "MX") and isinstance(value, str) and not value.endswith("."):
        value = value + "."
    return dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rdtype), str(value))


class DNSServer:
    """An authoritative test server on ``host`` (127.0.0.1 or ::1), UDP and TCP on one port."""

    def __init__(self, zone: Zone | None = None, host: str = "127.0.0.1", ttl: int = 300, delay: float = 0.0):
        self.host = host
        self.ttl = ttl
        #: seconds every answer is held back (each query is served on its own thread, so they overlap)
        self.delay = delay
        self.queries: list[tuple[str, str, str]] = []
        #: ``time.monotonic()`` at which each query of ``queries`` arrived
        self.arrivals: list[float] = []
        self.drop_all = False
        self._lock = threading.Lock()
        self.load(zone or {})
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server = self

        class UDPHandler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                reply = server.respond(data, "udp")
                if reply is not None:
                    sock.sendto(reply, self.client_address)

        class TCPHandler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                conn = self.request
                conn.settimeout(5)
                try:
                    while True:
                        head = _recv_exact(conn, 2)
                        if head is None:
                            return
                        data = _recv_exact(conn, struct.unpack("!H", head)[0])
                        if data is None:
                            return
                        reply = server.respond(data, "tcp")
                        if reply is None:
                            return
                        conn.sendall(struct.pack("!H", len(reply)) + reply)
                except OSError:
                    return

        class UDP(socketserver.ThreadingUDPServer):
            address_family = family
            daemon_threads = True

        class TCP(socketserver.ThreadingTCPServer):
            address_family = family
            daemon_threads = True
            allow_reuse_address = True

        # Bind UDP on an ephemeral port, then TCP on the same number (retry if taken).
        for _ in range(20):
            self._udp = UDP((host, 0), UDPHandler)
            self.port = self._udp.server_address[1]
            try:
                self._tcp = TCP((host, self.port), TCPHandler)
                break
            except OSError:
                self._udp.server_close()
        else:  # pragma: no cover
            raise OSError("could not bind UDP and TCP on one port")
        self._threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
                         for s in (self._udp, self._tcp)]
        for t in self._threads:
            t.start()

    # ------------------------------------------------------------------ data

    def load(self, zone: Zone) -> None:
        """Replace the zone data."""
        records: dict[str, list[tuple[str, Any]]] = {}
        for owner, rrs in zone.items():
            records.setdefault(_norm(owner), []).extend((t.upper(), v) for t, v in rrs)
        ancestors: set[str] = set()
        for owner in records:
            labels = owner.split(".")
            ancestors.update(".".join(labels[i:]) for i in range(1, len(labels)))
        with self._lock:
            self._records = records
            self._ancestors = ancestors

    def add(self, owner: str, rdtype: str, value: Any = None) -> None:
        zone = {k: list(v) for k, v in self._records.items()}
        zone.setdefault(_norm(owner), []).append((rdtype, value))
        self.load(zone)

    # ------------------------------------------------------------------ serving

    def respond(self, wire: bytes, proto: str) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except Exception:
            return None
        if not query.question:
            return None
        q = query.question[0]
        qname = _norm(name_text(q.name))
        rdtype = dns.rdatatype.to_text(q.rdtype)
        with self._lock:
            self.queries.append((qname, rdtype, proto))
            self.arrivals.append(time.monotonic())
            records = self._records
            ancestors = self._ancestors
        if self.drop_all:
            return None
        if self.delay:
            time.sleep(self.delay)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        name, chain = qname, 0
        while True:
            rrs = records.get(name)
            kinds = {t for t, _ in rrs} if rrs else set()
            if "TIMEOUT" in kinds and rdtype not in kinds and "CNAME" not in kinds:
                return None
            if "SERVFAIL" in kinds:
                response.set_rcode(dns.rcode.SERVFAIL)
                return response.to_wire()
            if "TRUNCATE" in kinds and proto == "udp":
                response.flags |= dns.flags.TC
                return response.to_wire()
            if rrs is None:
                if name not in ancestors and chain == 0:
                    response.set_rcode(dns.rcode.NXDOMAIN)
                break
            owner = make_name(name)
            matched = [v for t, v in rrs if t == rdtype]
            if matched:
                rrset = dns.rrset.RRset(owner, dns.rdataclass.IN, q.rdtype)
                for v in matched:
                    try:
                        rrset.add(_rdata(rdtype, v), self.ttl)
                    except Exception:
                        continue  # a value the suite wrote that is not valid rdata is simply not served
                if len(rrset):
                    response.answer.append(rrset)
                break
            cnames = [v for t, v in rrs if t == "CNAME"]
            if cnames and rdtype != "CNAME" and chain < 16:
                rrset = dns.rrset.RRset(owner, dns.rdataclass.IN, dns.rdatatype.CNAME)
                rrset.add(_rdata("CNAME", cnames[0]), self.ttl)
                response.answer.append(rrset)
                name, chain = _norm(cnames[0]), chain + 1
                continue
            break
        wire_out = response.to_wire(max_size=65535)
        limit = max(512, query.payload) if query.edns >= 0 else 512
        if proto == "udp" and len(wire_out) > limit:
            response.answer = []
            response.flags |= dns.flags.TC
            wire_out = response.to_wire(max_size=65535)
        return wire_out

    def asked(self, qname: str | None = None, rdtype: str | None = None, proto: str | None = None) -> int:
        """How many queries matched (None matches anything)."""
        with self._lock:
            return sum(1 for n, t, p in self.queries
                       if (qname is None or n == _norm(qname)) and (rdtype is None or t == rdtype)
                       and (proto is None or p == proto))

    def stop(self) -> None:
        for s in (self._udp, self._tcp):
            s.shutdown()
            s.server_close()

    def __enter__(self) -> "DNSServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf
