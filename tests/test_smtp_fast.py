"""The SMTP filter's faster DATA reader and address shortcut answer exactly as aiosmtpd does.

Both servers (stock ``aiosmtpd.smtp.SMTP`` and ``FastSMTP``) get the same byte streams over
loopback, cut into pieces at random places and sent with pauses so that the servers read them
in different chunks: pipelined transactions, dot-stuffed lines, a lone dot as the first line,
bare LFs, lines over the line limit, messages at and over the size limit, and addresses the
shortcut takes and the ones it leaves to the full parser.  The replies and what reached the
handler must be identical.
"""

from __future__ import annotations

import asyncio
import random

from aiosmtpd.smtp import SMTP

from antispam.servers.smtp import FastSMTP

LINE_LIMIT = 120
SIZE_LIMIT = 900

ADDRESSES = ["<a@b.test>", "<first.last+tag@sub.example.test>", "<a..b@c.test>", '<"two words"@c.test>',
             "<a@[127.0.0.1]>", "plain@b.test", "<a@b.test> SIZE=100", "<a@b.test> BODY=8BITMIME",
             "<bad@>", "<@route:a@b.test>", "<x@y.test>trailing", "< a@b.test>", "<a@b-.test>",
             "<a@b.test>  SIZE=1", "<a@b.test>\tSIZE=1", "<a@b.test> (comment) SIZE=1", "<a@b.test>(c)"]


class Recorder:
    def __init__(self) -> None:
        self.got: list[tuple] = []

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        self.got.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 OK"


def address(rng: random.Random, first: bool) -> str:
    """The first address of a transaction is one every parser takes (a refused MAIL or RCPT would
    refuse DATA, and the message's lines would then arrive as bogus commands); later recipients
    are any of them, taken by the shortcut, left to the full parser, or refused."""
    return rng.choice(ADDRESSES[:2]) if first or rng.random() < 0.5 else rng.choice(ADDRESSES)


def body(rng: random.Random) -> bytes:
    """A message body as the client sends it (already dot-stuffed where it wants to be)."""
    kinds = [b"plain text line", b".starts with a dot", b"..two dots", b".", b"", b"a.b", b"bare\nLF inside",
             b"x" * (LINE_LIMIT - 2), b"y" * (LINE_LIMIT - 1), b"z" * (LINE_LIMIT + 40), b"\r", b"end.\r"]
    weights = [40, 5, 3, 1, 6, 4, 2, 1, 1, 1, 1, 1]
    n = rng.choice([0, 1, 2, 5, 12, 30, 60])
    lines = rng.choices(kinds, weights, k=n)
    if lines and lines[0] == b"." and rng.random() < 0.5:
        lines = lines[1:]
    return b"".join(line + b"\r\n" for line in lines if line != b".") if rng.random() < 0.7 else \
        b"".join(line + b"\r\n" for line in lines)


def session_stream(rng: random.Random) -> bytes:
    out = [b"EHLO client.test\r\n"]
    for _ in range(rng.randint(1, 4)):
        out.append(f"MAIL FROM:{address(rng, True)}\r\n".encode())
        for k in range(rng.randint(1, 3)):
            out.append(f"RCPT TO:{address(rng, k == 0)}\r\n".encode())
        out.append(b"DATA\r\n")
        data = body(rng)
        if rng.random() < 0.15:
            data = b"" if rng.random() < 0.5 else data  # a lone dot right after DATA
        out.append(data + b".\r\n")
        if rng.random() < 0.2:
            out.append(b"RSET\r\n")
    out.append(b"QUIT\r\n")
    return b"".join(out)


async def run(cls: type, stream: bytes, cuts: list[int]) -> tuple[bytes, list[tuple]]:
    recorder = Recorder()

    class Server(cls):  # type: ignore[misc, valid-type]
        line_length_limit = LINE_LIMIT

    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Server(recorder, data_size_limit=SIZE_LIMIT, decode_data=False,
                                                     enable_SMTPUTF8=True, hostname="mx.test"),
                                      "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        pos = 0
        for cut in cuts + [len(stream)]:
            try:
                writer.write(stream[pos:cut])
                await writer.drain()
            except OSError:  # the server hung up on bogus commands (message lines after a refused DATA)
                break
            await asyncio.sleep(0.002)
            pos = cut
        replies = b""
        try:
            while chunk := await asyncio.wait_for(reader.read(65536), 10):
                replies += chunk
        except ConnectionError:
            pass
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
    return replies, recorder.got


def test_same_replies_and_messages_as_aiosmtpd() -> None:
    async def sessions() -> list[tuple[bytes, list[tuple]]]:
        seen = []
        for seed in range(60):
            rng = random.Random(seed)
            stream = session_stream(rng)
            cuts = sorted(rng.sample(range(1, len(stream)), min(len(stream) - 1, rng.randint(0, 12))))
            stock = await run(SMTP, stream, cuts)
            fast = await run(FastSMTP, stream, cuts)
            assert fast[0].decode() == stock[0].decode(), seed
            assert fast[1] == stock[1], seed
            seen.append(stock)
        return seen

    seen = asyncio.run(sessions())
    # the streams did reach every case: messages taken (empty ones too), too big, lines too long
    messages = [content for _, got in seen for _, _, content in got]
    assert len(messages) > 40 and b"" in messages and any(b"\n.." in m or m.startswith(b".") for m in messages)
    replies = b"".join(r for r, _ in seen)
    assert b"552 Error: Too much mail data" in replies and b"500 Line too long" in replies


def test_size_limit_is_exact() -> None:
    """A message of exactly the limit (stuffed bytes, CRLFs included) is taken; one byte more is 552."""
    def stream(n: int) -> bytes:
        k, rem = divmod(n, 90)  # lines of 90 bytes, the last one longer by the remainder
        data = (b"a" * 88 + b"\r\n") * (k - 1) + b"b" * (88 + rem) + b"\r\n"
        assert len(data) == n
        return b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n" + data + b".\r\nQUIT\r\n"

    async def go() -> None:
        for n, accepted in ((SIZE_LIMIT, True), (SIZE_LIMIT + 1, False)):
            for cls in (SMTP, FastSMTP):
                end = len(stream(n)) - len(b".\r\nQUIT\r\n")  # reads that stop inside the final dot line
                replies, got = await run(cls, stream(n), [end + 1, end + 2])
                assert (len(got) == 1) is accepted, (cls, n)
                assert (b"552 Error: Too much mail data" in replies) is not accepted

    asyncio.run(go())
