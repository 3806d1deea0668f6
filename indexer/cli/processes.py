"""``indexer run --processes N``: N worker processes on one machine sharing one claim store.

The parent is worker 0: it starts N-1 children with multiprocessing, each running its share
of the job (chunked) in its own session so that a Ctrl+C on the terminal
reaches only the parent, runs its own share, and forwards each stop signal it gets to every
child. Children are forked when that is safe (Linux, and no thread running yet), so they start
in milliseconds with everything already imported; otherwise they are spawned (a fresh
interpreter each, about 0.3 s).

The parent runs its share only once every child has said it started; a child that fails
before that stops the whole command at once with its error. A child that dies later is not
restarted: the others take its chunk over when its lease expires. Children serve no metrics:
each sends its numbers (a ``JobSnapshot``) to the parent every second through the pipe it
started on, and the parent's metrics, ``/readyz``, progress bars and closing summary show the
whole job (``ChildSnapshots``). A child stops gracefully
when the parent dies, however it dies (on Linux at once, by the parent-death signal;
elsewhere within half a second, by watching its parent's pid).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any, Literal

import msgspec
import structlog

from ..errors import IndexerError, failure_exit
from ..snapshot import JobSnapshot, take_snapshot
from ..stats import JobView
from .config import Config

log = structlog.get_logger("indexer")

__all__ = [
    "ChildFailed",
    "ChildSnapshots",
    "Publish",
    "child_config",
    "run_processes",
    "start_method",
]

StartMethod = Literal["fork", "spawn"]


class ChildFailed(IndexerError):
    """A worker process failed before it started; ``code`` is the exit code it gave."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def start_method() -> StartMethod:
    """``fork`` on Linux while this process runs no other thread (forking copies only the
    calling thread, so a lock held by another one would stay locked forever), else ``spawn``."""
    if sys.platform == "linux" and threading.active_count() == 1:
        return "fork"
    return "spawn"


def child_config(config: Config, index: int) -> Config:
    """Child ``index``'s config: no progress bars (the parent draws the job's)."""
    logging = msgspec.structs.replace(config.logging, progress=False)
    return msgspec.structs.replace(config, logging=logging)


#: What a child reports to its parent: ("started", 0, b""), ("failed", exit code, message)
#: or ("snapshot", 0, its JobSnapshot as msgpack).
Report = tuple[str, int, str | bytes]
#: How a child's run sends its numbers to the parent: called on the child's event loop.
Publish = Callable[[JobView], None]
#: Seconds between two snapshots a child sends.
PUBLISH_INTERVAL = 1.0
#: How long the parent waits for a child to say it started.
START_TIMEOUT = 120.0
_PR_SET_PDEATHSIG = 1


def _stop_with_parent(parent: int) -> None:
    """Have this process get SIGTERM (a graceful stop) once when ``parent`` ends, however it
    ends. On Linux the kernel's parent-death signal wakes a thread at once: it is SIGUSR2,
    not SIGTERM, because it also comes each time the dying parent's threads hand this
    process on to one another, and only the last time is the parent gone (the thread checks
    the parent's pid). Elsewhere the thread polls the parent's pid twice a second."""
    linux = sys.platform == "linux"
    if linux:  # blocked here, before any thread starts: only the watching thread takes it
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
        libc = ctypes.CDLL(None, use_errno=True)
        linux = libc.prctl(_PR_SET_PDEATHSIG, signal.SIGUSR2, 0, 0, 0) == 0

    def watch() -> None:
        while os.getppid() == parent:
            if linux:
                signal.sigwait({signal.SIGUSR2})
            else:
                time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


class ChildSnapshots:
    """The latest snapshot each child sent, read from their pipes by a thread of the parent
    (which keeps the pipes drained, so that a child never waits to send)."""

    def __init__(self, reports: list[Connection]) -> None:
        self._open = list(reports)
        self._latest: dict[int, JobSnapshot] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._read, name="child-snapshots", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Read what the children sent until now, then stop reading."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()

    def __call__(self) -> list[JobSnapshot]:
        """The latest snapshot of every child that sent one (a child that ended keeps its
        last: the job's counters never go down)."""
        with self._lock:
            return [self._latest[index] for index in sorted(self._latest)]

    def _read(self) -> None:
        decoder = msgspec.msgpack.Decoder(JobSnapshot)
        while self._open:
            stopping = self._stopping.is_set()
            for ready in wait(self._open, timeout=0 if stopping else 0.2):
                report: Connection = ready  # type: ignore[assignment]
                try:
                    state, _code, data = report.recv()
                except (EOFError, OSError):
                    self._open.remove(report)
                    continue
                if state == "snapshot" and isinstance(data, bytes):
                    snapshot = decoder.decode(data)
                    with self._lock:
                        self._latest[snapshot.process] = snapshot
            if stopping and not any(r.poll() for r in self._open):
                return


def _publisher(report: Connection, index: int) -> Publish:
    """A child's ``Publish``: its snapshot, numbered ``index``, down its pipe."""
    encoder = msgspec.msgpack.Encoder()

    def publish(job: JobView) -> None:
        with contextlib.suppress(OSError):  # the parent is gone: it stops this child anyway
            report.send(("snapshot", 0, encoder.encode(take_snapshot(job, index))))

    return publish


def _child(
    run_child: Callable[[Config, Callable[[], None], Publish], str],
    config: Config,
    index: int,
    parent: int,
    report: Connection,
) -> None:
    """A child's life: its own session, default signal handling, its share, an exit code; it
    says when it started (or why it could not) through ``report``."""
    os.setsid()
    # As in a fresh interpreter, until the executor installs its own handlers.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    _stop_with_parent(parent)
    os.environ["INDEXER_PROCESS_INDEX"] = str(index)
    reported = False

    def started() -> None:
        nonlocal reported
        if not reported:
            reported = True
            report.send(("started", 0, b""))

    try:
        summary = run_child(config, started, _publisher(report, index))
        if summary:
            print(summary, flush=True)
    except Exception as exc:
        known = failure_exit(exc)
        code, message = known if known is not None else (1, repr(exc))
        if not reported:  # the parent stops the command and says why
            report.send(("failed", code, message))
            sys.exit(code)
        if known is None:
            traceback.print_exc()
        else:
            print(f"indexer: error: {message}", file=sys.stderr, flush=True)
        sys.exit(code)


def _wait_started(children: list[Any], reports: list[Connection]) -> tuple[int, str] | None:
    """Wait until every child said it started; the exit code and error of the first that
    failed instead (or died without a word), else None."""
    deadline = time.monotonic() + START_TIMEOUT
    for child, report in zip(children, reports, strict=True):
        try:
            if not report.poll(max(0.0, deadline - time.monotonic())):
                return 1, f"worker process {child.pid} did not start within {START_TIMEOUT:g} s"
            state, code, message = report.recv()
        except EOFError:  # it died before it could say
            child.join()
            return child.exitcode or 1, f"worker process {child.pid} died at start-up"
        if state == "failed":
            return code, str(message)
    return None


def run_processes(
    config: Config,
    processes: int,
    run_share: Callable[[Callable[[int], None], ChildSnapshots], Any],
    run_child: Callable[[Config, Callable[[], None], Publish], str],
    method: StartMethod | None = None,
) -> int:
    """Start ``processes - 1`` children, each printing ``run_child(config, started,
    publish)``'s summary if any (``config`` is one process's share of the chunked job;
    ``started()`` tells the parent it is running, ``publish(job)`` sends it its numbers); once
    all have started, run this process's share with ``run_share(forward, snapshots)``, where
    ``forward(signum)`` passes a stop signal on to the children and ``snapshots()`` gives their
    latest numbers; then wait for them.
    Returns how many children failed; a child that fails before it started raises its error
    (``ChildFailed``) once the others are stopped. ``run_child`` must be a module-level
    function (spawned children import it)."""
    context: Any = multiprocessing.get_context(method or start_method())
    children: list[multiprocessing.process.BaseProcess] = []
    reports: list[Connection] = []

    def forward(signum: int) -> None:
        for child in children:
            if child.pid is not None and child.exitcode is None:
                os.kill(child.pid, signum)

    previous = {
        s: signal.signal(s, lambda signum, frame: forward(signum))
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    }
    try:
        for index in range(1, processes):
            receiving, sending = context.Pipe(duplex=False)
            child = context.Process(
                target=_child,
                args=(run_child, child_config(config, index), index, os.getpid(), sending),
                name=f"indexer-{index}",
            )
            child.start()
            sending.close()  # the child's end: EOF here once the child is gone
            children.append(child)
            reports.append(receiving)
        log.info(
            "started worker processes",
            processes=processes,
            pids=[c.pid for c in children],
            start_method=context.get_start_method(),
        )
        failure = _wait_started(children, reports)
        if failure is not None:
            forward(signal.SIGTERM)
            for child in children:
                child.join()
            code, message = failure
            raise ChildFailed(message, code)
        snapshots = ChildSnapshots(reports)
        snapshots.start()
        try:
            run_share(forward, snapshots)
            for child in children:
                child.join()
        finally:
            snapshots.stop()
    finally:
        for child in children:  # the parent itself failed: take the children down with it
            if child.exitcode is None and child.pid is not None:
                child.terminate()
                child.join()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    failed = [(c.pid, c.exitcode) for c in children if c.exitcode != 0]
    for pid, exit_code in failed:
        log.error("worker process failed", pid=pid, exit_code=exit_code)
    return len(failed)
