"""A real TCP proxy in front of PostgreSQL that loses the reply to a COMMIT: the fault of a
network cut, or a server crash, right after the server committed.

It forwards the wire protocol message by message. When a transaction that copied rows
(``COPY ... FROM STDIN``, as PostgresSink writes) is committed for the ``nth`` time, it lets
the COMMIT through, then closes that connection instead of forwarding the server's reply:
the rows are in the database, and the client sees its connection lost in the middle of the
COMMIT. Clients must connect with ``sslmode=disable`` (the proxy reads the messages).
"""

from __future__ import annotations

import asyncio
import struct
import threading
from types import TracebackType

__all__ = ["CommitReplyDropper"]

_SSL_REQUEST = 80877103
_CANCEL_REQUEST = 80877102


class CommitReplyDropper:
    """Run as ``with CommitReplyDropper("127.0.0.1", 5432, nth=3) as proxy:``; clients connect
    to ``127.0.0.1:proxy.port``. ``dropped`` counts the replies it lost (at most one)."""

    def __init__(self, host: str, port: int, nth: int) -> None:
        self.target = (host, port)
        self.nth = nth
        self.data_commits = 0
        self.dropped = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def __enter__(self) -> CommitReplyDropper:
        self._thread.start()
        started = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        self.port = started.result(timeout=10)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.close()
            return
        self._writers.update((client_w, server_w))
        lose_reply = asyncio.Event()  # the client has sent the COMMIT whose reply is lost
        upstream = asyncio.create_task(self._client_to_server(client_r, server_w, lose_reply))
        downstream = asyncio.create_task(self._server_to_client(server_r, client_w, lose_reply))
        await asyncio.wait([upstream, downstream], return_when=asyncio.FIRST_COMPLETED)
        for task in (upstream, downstream):
            task.cancel()
        for writer in (client_w, server_w):
            writer.close()
            self._writers.discard(writer)

    async def _client_to_server(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, lose: asyncio.Event
    ) -> None:
        try:
            length = struct.unpack("!i", await reader.readexactly(4))[0]
            body = await reader.readexactly(length - 4)
            writer.write(struct.pack("!i", length) + body)
            code = struct.unpack("!i", body[:4])[0]
            if code in (_SSL_REQUEST, _CANCEL_REQUEST):
                return  # not a session this proxy reads (SSL: connect with sslmode=disable)
            copied = False
            while True:
                kind = await reader.readexactly(1)
                length = struct.unpack("!i", await reader.readexactly(4))[0]
                body = await reader.readexactly(length - 4)
                if kind == b"d":  # CopyData: this transaction writes rows
                    copied = True
                elif kind == b"Q":
                    query = body.rstrip(b"\0").strip().rstrip(b";").upper()
                    if query == b"COMMIT" and copied:
                        self.data_commits += 1
                        if self.data_commits == self.nth:
                            lose.set()
                    if query in (b"COMMIT", b"ROLLBACK"):
                        copied = False
                writer.write(kind + struct.pack("!i", length) + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return

    async def _server_to_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, lose: asyncio.Event
    ) -> None:
        try:
            while True:
                kind = await reader.readexactly(1)
                length = struct.unpack("!i", await reader.readexactly(4))[0]
                body = await reader.readexactly(length - 4)
                if lose.is_set() and kind == b"C" and body.startswith(b"COMMIT"):
                    self.dropped += 1
                    return  # committed on the server; the client never hears of it
                writer.write(kind + struct.pack("!i", length) + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
