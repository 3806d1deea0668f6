"""``indexer run --processes N``: N worker processes on one machine sharing one claim store.

The parent is worker 0: it starts N-1 children with multiprocessing, each running its share
of the job (chunked, its own metrics port) in its own session so that a Ctrl+C on the terminal
reaches only the parent, runs its own share, and forwards each stop signal it gets to every
child. Children are forked when that is safe (Linux, and no thread running yet), so they start
in milliseconds with everything already imported; otherwise they are spawned (a fresh
interpreter each, about 0.3 s). A child that dies is not restarted: the others take its chunk
over when its lease expires.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any, Literal

import msgspec
import structlog

from ..errors import failure_exit
from .config import Config

log = structlog.get_logger("indexer")

__all__ = ["child_config", "run_processes", "start_method"]

StartMethod = Literal["fork", "spawn"]


def start_method() -> StartMethod:
    """``fork`` on Linux while this process runs no other thread (forking copies only the
    calling thread, so a lock held by another one would stay locked forever), else ``spawn``."""
    if sys.platform == "linux" and threading.active_count() == 1:
        return "fork"
    return "spawn"


def child_config(config: Config, index: int) -> Config:
    """Child ``index``'s config: no progress bars, metrics on the parent's port + ``index``."""
    metrics = config.metrics
    if metrics.enabled:
        host, port = metrics.host_port
        metrics = msgspec.structs.replace(metrics, address=f"{host}:{port + index}")
    logging = msgspec.structs.replace(config.logging, progress=False)
    return msgspec.structs.replace(config, metrics=metrics, logging=logging)


def _child(run_child: Callable[[Config], str], config: Config, index: int) -> None:
    """A child's life: its own session, default signal handling, its share, an exit code."""
    os.setsid()
    # As in a fresh interpreter, until the executor installs its own handlers.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.environ["INDEXER_PROCESS_INDEX"] = str(index)
    try:
        print(run_child(config), flush=True)
    except Exception as exc:
        known = failure_exit(exc)
        if known is None:
            traceback.print_exc()
            sys.exit(1)
        print(f"indexer: error: {known[1]}", file=sys.stderr, flush=True)
        sys.exit(known[0])


def run_processes(
    config: Config,
    processes: int,
    run_share: Callable[[Callable[[int], None]], Any],
    run_child: Callable[[Config], str],
    method: StartMethod | None = None,
) -> int:
    """Start ``processes - 1`` children, each printing ``run_child(config)``'s summary
    (``config`` is one process's share of the chunked job); run this process's share with
    ``run_share(forward)``, where ``forward(signum)`` passes a stop signal on to the children;
    then wait for them. Returns how many children failed. ``run_child`` must be a module-level
    function (spawned children import it)."""
    context: Any = multiprocessing.get_context(method or start_method())
    children: list[multiprocessing.process.BaseProcess] = []

    def forward(signum: int) -> None:
        for child in children:
            if child.pid is not None and child.exitcode is None:
                os.kill(child.pid, signum)

    previous = {
        s: signal.signal(s, lambda signum, frame: forward(signum))
        for s in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        for index in range(1, processes):
            child = context.Process(
                target=_child,
                args=(run_child, child_config(config, index), index),
                name=f"indexer-{index}",
            )
            child.start()
            children.append(child)
        log.info(
            "started worker processes",
            processes=processes,
            pids=[c.pid for c in children],
            start_method=context.get_start_method(),
        )
        run_share(forward)
        for child in children:
            child.join()
    finally:
        for child in children:  # the parent itself failed: take the children down with it
            if child.exitcode is None and child.pid is not None:
                child.terminate()
                child.join()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    failed = [(c.pid, c.exitcode) for c in children if c.exitcode != 0]
    for pid, code in failed:
        log.error("worker process failed", pid=pid, exit_code=code)
    return len(failed)
