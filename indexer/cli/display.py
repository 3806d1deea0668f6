"""Live progress bars on a terminal (rich): one per pipeline, for the whole job, refreshed
twice a second, with the log lines printed above them."""

from __future__ import annotations

import asyncio
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from ..metrics import JobSnapshots, Others
from ..stats import JobView
from .logs import LineWriter


class ProgressDisplay:
    """Shows, per pipeline, this run's done / total, rate and ETA when the last checkpoint is
    known; rate and lag otherwise. The job is this process's and, for the parent of
    ``--processes``, the ``others``'. While it shows, log lines go through its console, above
    the bars. Use only when the output is a terminal."""

    def __init__(
        self,
        job: JobView,
        last_checkpoint: int | None,
        console: Console,
        others: Others | None = None,
        starts: dict[str, int] | None = None,
    ) -> None:
        self.snapshots = JobSnapshots(job, others)
        #: Where each pipeline began, when the caller read it before any process could
        #: commit (``--processes``); else where the job's snapshots say it began.
        self.starts = starts or {}
        self.last = last_checkpoint
        self.console = console
        bounded = last_checkpoint is not None
        self.progress = Progress(
            TextColumn("[bold]{task.description:<20}"),
            BarColumn(),
            MofNCompleteColumn() if bounded else TextColumn(""),
            TaskProgressColumn() if bounded else TextColumn(""),
            TextColumn("{task.fields[rate]}"),
            TextColumn("{task.fields[lag]}"),
            TimeRemainingColumn() if bounded else TextColumn(""),
            console=console,
            redirect_stderr=True,
            redirect_stdout=True,
            transient=False,
        )
        self._tasks: dict[str, Any] = {}
        self._previous: dict[str, tuple[float, int]] = {}

    async def run(self, interval: float = 0.5) -> None:
        """Refresh until cancelled; then draw the final numbers once more."""
        loop = asyncio.get_running_loop()
        LineWriter.divert = self._print_line
        try:
            with self.progress:
                try:
                    while True:
                        self.update(loop.time())
                        await asyncio.sleep(interval)
                finally:
                    self.update(loop.time())  # the final frame: what the run ended with
        finally:
            LineWriter.divert = None

    def _print_line(self, line: str) -> None:
        self.console.print(Text.from_ansi(line.rstrip("\n")), soft_wrap=True)

    def update(self, now: float) -> None:
        """Draw the job's numbers as they are at ``now`` (the loop's clock)."""
        job = self.snapshots.merged(on_loop=True)
        latest = job.feed_newest
        for pipeline in job.pipelines:
            start = self.starts.get(pipeline.name, pipeline.start)
            if start is None:  # its run has not begun: no range to show yet
                continue
            done = max(0, pipeline.watermark - start)
            total = max(1, self.last - start + 1) if self.last is not None else None
            then, before = self._previous.get(pipeline.name, (now, done))
            rate = (done - before) / (now - then) if now > then else 0.0
            self._previous[pipeline.name] = (now, done)
            lag = "" if latest is None else f"lag {max(0, latest + 1 - pipeline.watermark)}"
            speed = f"{rate:,.0f}/s"
            task = self._tasks.get(pipeline.name)
            if task is None:
                self._tasks[pipeline.name] = self.progress.add_task(
                    pipeline.name, completed=done, total=total, rate=speed, lag=lag
                )
            else:
                self.progress.update(task, completed=done, total=total, rate=speed, lag=lag)
