"""The MTA side of the milter protocol, small and blocking: enough to drive the server in tests."""

from __future__ import annotations

import socket
import struct

FINAL = {b"a", b"c", b"r", b"t", b"y", b"d"}
ALL_ACTIONS = 0x1FF
#: every step sent, every no-reply flag offered, as Postfix 3.x offers them
POSTFIX_PROTOCOL = 0x1FFFFF
#: SMFIP_HDR_LEADSPC: header values as they follow the colon, leading space included
LEADSPC = 0x100000


class MilterClient:
    def __init__(self, port: int, timeout: float = 10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.protocol = 0
        self.actions = 0

    def close(self) -> None:
        self.sock.close()

    def send(self, cmd: bytes, data: bytes = b"") -> None:
        self.sock.sendall(struct.pack(">I", len(data) + 1) + cmd + data)

    def recv(self) -> tuple[bytes, bytes]:
        head = self._exact(4)
        (n,) = struct.unpack(">I", head)
        body = self._exact(n)
        return body[:1], body[1:]

    def _exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("milter closed the connection")
            buf += chunk
        return buf

    def negotiate(self, actions: int = ALL_ACTIONS, protocol: int = POSTFIX_PROTOCOL) -> tuple[int, int, int]:
        self.send(b"O", struct.pack(">III", 6, actions, protocol))
        cmd, data = self.recv()
        assert cmd == b"O"
        version, self.actions, self.protocol = struct.unpack(">III", data[:12])
        return version, self.actions, self.protocol

    def step(self, cmd: bytes, data: bytes, nr_flag: int) -> tuple[bytes, bytes] | None:
        self.send(cmd, data)
        if self.protocol & nr_flag:
            return None
        return self.recv()

    def session(self, client_ip: str = "192.0.2.10", hostname: str = "mail.sender.test", helo: str = "mail.sender.test",
                family: bytes = b"4") -> None:
        self.send(b"D", b"C" + b"j\0mx.rcpt.test\0{daemon_name}\0test-mta\0")
        self.step(b"C", hostname.encode() + b"\0" + family + struct.pack(">H", 40000) + client_ip.encode() + b"\0", 0x1000)
        self.step(b"H", helo.encode() + b"\0", 0x2000)

    def message(self, raw: bytes, mail_from: str = "ana@sender.test", rcpts: tuple[str, ...] = ("bo@rcpt.test",),
                macros: dict[str, str] | None = None, abort_after_headers: bool = False) -> list[tuple[bytes, bytes]]:
        """Send one message; return every reply to end-of-message, the final one last."""
        m = {"i": "4ABCD123", **(macros or {})}
        self.send(b"D", b"M" + b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in m.items()))
        self.step(b"M", f"<{mail_from}>\0SIZE={len(raw)}\0".encode(), 0x4000)
        for r in rcpts:
            self.step(b"R", f"<{r}>\0".encode(), 0x8000)
        self.step(b"T", b"", 0x10000)
        head, _, body = raw.replace(b"\r\n", b"\n").partition(b"\n\n")
        # As Postfix (milter8.c): a value exactly as it follows the colon when the milter agreed to
        # SMFIP_HDR_LEADSPC, else without the one space after the colon; folded lines joined by LF.
        verbatim = bool(self.protocol & LEADSPC)
        headers: list[list[bytes]] = []
        for line in head.split(b"\n"):
            if line[:1] in (b" ", b"\t") and headers:
                headers[-1][1] += b"\n" + line
            else:
                name, _, value = line.partition(b":")
                headers.append([name, value if verbatim or value[:1] != b" " else value[1:]])
        for name, value in headers:
            self.step(b"L", name + b"\0" + value + b"\0", 0x80)
        if abort_after_headers:
            self.send(b"A")
            return []
        self.step(b"N", b"", 0x40000)
        body = body.replace(b"\n", b"\r\n")
        for i in range(0, len(body), 65535):
            self.step(b"B", body[i:i + 65535], 0x80000)
        self.send(b"E")
        replies = []
        while True:
            cmd, data = self.recv()
            replies.append((cmd, data))
            if cmd in FINAL:
                return replies

    def quit(self) -> None:
        self.send(b"Q")
