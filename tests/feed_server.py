"""A feed directory served over HTTP on 127.0.0.1, in a thread of the test process, with faults
injected per checkpoint: what the remote-feed tests run ``indexer run`` (or an ``HttpSource``)
against. Every request is recorded, so a test waits for what the server saw, never for a
guessed time."""

from __future__ import annotations

import os
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple

import pytest

#: A file name's checkpoint number.
_NUMBER = re.compile(r"(\d+)\.")

#: What the server can do instead of serving a file, once per listed request of it:
#: "500", "503", "403", "404", "408": answer that status; "429": 429 with ``Retry-After: 1``;
#: "slow": answer after ``slow_seconds`` (past the client's timeout); "late": after
#: ``late_seconds`` (slow, within the timeout); "reset": half the body, then a TCP reset;
#: "truncate": half the body of a longer Content-Length, then the connection closed;
#: "garbage": a body of the right length that does not decode.
FAULTS = ("500", "503", "403", "404", "408", "429", "slow", "late", "reset", "truncate", "garbage")


class Request(NamedTuple):
    method: str
    number: int | None
    status: int  # what was answered (0: the connection was cut)
    at: float  # time.monotonic() when it arrived
    authorization: str | None


class FeedServer:
    """Serves the files of ``directory`` at ``{url}/{name}``; ``faults[n]`` lists what the
    successive GETs of checkpoint ``n``'s file get instead of it (then the file)."""

    def __init__(
        self,
        directory: Path,
        faults: dict[int, Iterable[str]] | None = None,
        *,
        slow_seconds: float = 2.0,
        late_seconds: float = 0.5,
    ) -> None:
        self.directory = directory
        self.faults = {n: list(actions) for n, actions in (faults or {}).items()}
        for actions in self.faults.values():
            assert set(actions) <= set(FAULTS), actions
        self.slow_seconds = slow_seconds
        self.late_seconds = late_seconds
        #: A status every request gets instead (credentials revoked, say), when set.
        self.refuse_all: int | None = None
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, userinfo: str = "") -> str:
        """The feed's URL (``userinfo``: ``user:password@`` to put in it)."""
        return f"http://{userinfo}127.0.0.1:{self.port}/feed"

    def __enter__(self) -> FeedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def next_fault(self, n: int | None) -> str | None:
        with self._lock:
            actions = self.faults.get(n) if n is not None else None
            return actions.pop(0) if actions else None

    def record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def gets(self, n: int | None = None) -> list[Request]:
        """The GETs so far (of checkpoint ``n``'s file, if given)."""
        with self._lock:
            return [r for r in self.requests if r.method == "GET" and (n is None or r.number == n)]

    def wait_until(self, what: str, condition: Callable[[], Any], timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while not (value := condition()):
            if time.monotonic() > deadline:
                pytest.fail(f"the feed server saw no {what} within {timeout}s")
            time.sleep(0.01)
        return value


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # a client opens its whole window of connections at once

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (timed out) or a connection cut on purpose: no traceback."""


def _handler(feed: FeedServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            """Log nothing."""

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _serve(self, body: bool) -> None:
            arrived = time.monotonic()
            prefix, _, name = self.path.partition("/feed/")
            match = _NUMBER.match(name)
            n = int(match[1]) if match and not prefix else None
            fault = feed.next_fault(n) if body else None
            if feed.refuse_all is not None:
                fault = str(feed.refuse_all)
            path = feed.directory / name
            status = self._answer(fault, path if n is not None and path.is_file() else None, body)
            feed.record(
                Request(self.command, n, status, arrived, self.headers.get("Authorization"))
            )

        def _answer(self, fault: str | None, path: Path | None, body: bool) -> int:
            if fault is not None and fault.isdigit():
                retry = {"Retry-After": "1"} if fault == "429" else {}
                return self._status(int(fault), retry)
            if fault in ("slow", "late"):
                time.sleep(feed.slow_seconds if fault == "slow" else feed.late_seconds)
            if path is None:
                return self._status(404)
            data = path.read_bytes()
            if fault == "garbage":
                data = b"\xc1" * len(data)  # a byte msgpack never uses
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if not body:
                return 200
            if fault in ("reset", "truncate"):
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                if fault == "reset":  # RST, not FIN: closed at once with no lingering
                    self.request.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    os.close(self.request.detach())
                return 0
            try:
                self.wfile.write(data)
            except OSError:  # the client gave up (a "slow" answer past its timeout)
                return 0
            return 200

        def _status(self, status: int, headers: dict[str, str] | None = None) -> int:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return status

    return Handler
