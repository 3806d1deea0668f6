"""A feed directory served over HTTP/1.1 on 127.0.0.1 for the ``remote`` benchmark, in a process
of its own: ``python -m indexer.cli.bench._http_feed_server DIRECTORY COUNT DELAY`` prints its
port, then answers ``GET /feed/{n}.chk`` from memory, ``DELAY`` seconds after each request.

A bare asyncio protocol on uvloop (when installed): the server should cost the client side as
little CPU as it can on a shared 2-core machine, and both sides of the benchmark meet the same.
"""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path
from typing import cast

_REQUEST = re.compile(rb"(GET|HEAD) /feed/(\d+)\.chk HTTP/1\.[01]\r\n")


class FeedProtocol(asyncio.Protocol):
    """Keep-alive HTTP/1.1: one request at a time per connection, as clients send them."""

    def __init__(self, files: list[bytes], delay: float) -> None:
        self.files = files
        self.delay = delay
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
            answer = self.answer(head + b"\r\n")
            if self.delay:
                asyncio.get_running_loop().call_later(self.delay, self.send, answer)
            else:
                self.send(answer)

    def answer(self, head: bytes) -> bytes:
        match = _REQUEST.match(head)
        n = int(match[2]) if match else -1
        if not 0 <= n < len(self.files):
            return b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
        body = self.files[n]
        status = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
        assert match is not None
        return status + body if match[1] == b"GET" else status

    def send(self, answer: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(answer)


async def serve(directory: Path, count: int, delay: float) -> None:
    files = [(directory / f"{n}.chk").read_bytes() for n in range(count)]
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: FeedProtocol(files, delay), "127.0.0.1", 0, backlog=1024
    )
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until stdin closes
    server.close()


def main() -> None:
    directory, count, delay = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    try:
        import uvloop

        uvloop.run(serve(directory, count, delay))
    except ImportError:
        asyncio.run(serve(directory, count, delay))


if __name__ == "__main__":
    main()
