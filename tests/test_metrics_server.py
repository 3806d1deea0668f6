"""The metrics server of ``indexer run``: served while the job runs, gone once it is stopped."""

from __future__ import annotations

import socket
import threading
import urllib.request

import pytest

from indexer.metrics import serve_metrics, stop_metrics
from indexer.stats import JobView


def test_the_server_answers_a_scrape_then_stops_and_frees_its_port() -> None:
    threads = set(threading.enumerate())
    server = serve_metrics(JobView(), "127.0.0.1", 0)
    host, port = server.server_address[:2]
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as reply:
        assert b"indexer_feed_bytes" in reply.read()
    stop_metrics(server)
    with pytest.raises(OSError):  # nothing listens there any more
        socket.create_connection((host, port), timeout=2).close()
    serving = [t for t in threading.enumerate() if t not in threads and t.is_alive()]
    for thread in serving:  # the serving thread ended (a scrape's handler may still finish)
        thread.join(timeout=10)
    assert not [t for t in serving if t.is_alive()]
