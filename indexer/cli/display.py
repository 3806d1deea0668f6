"""Live progress bars on a terminal (rich): one per pipeline, refreshed twice a second."""

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

from ..stats import JobView


class ProgressDisplay:
    """Shows done / target, rate and ETA when the last checkpoint is known; rate and lag
    otherwise. Use only when the output is a terminal."""

    def __init__(self, job: JobView, last_checkpoint: int | None, console: Console) -> None:
        self.job = job
        self.last = last_checkpoint
        self.progress = Progress(
            TextColumn("[bold]{task.description:<20}"),
            BarColumn(),
            MofNCompleteColumn() if last_checkpoint is not None else TextColumn(""),
            TaskProgressColumn() if last_checkpoint is not None else TextColumn(""),
            TextColumn("{task.fields[rate]}"),
            TextColumn("{task.fields[lag]}"),
            TimeRemainingColumn() if last_checkpoint is not None else TextColumn(""),
            console=console,
            redirect_stderr=True,
            redirect_stdout=True,
            transient=False,
        )

    async def run(self, interval: float = 0.5) -> None:
        tasks: dict[str, Any] = {}
        previous: dict[str, tuple[float, int]] = {}
        loop = asyncio.get_running_loop()
        with self.progress:
            while True:
                now = loop.time()
                feed = self.job.feed
                latest = feed.latest if feed.latest is not None else feed.last_read
                for view in self.job.pipelines.values():
                    start = view.start
                    done = view.watermark - start
                    total = self.last - start + 1 if self.last is not None else None
                    then, before = previous.get(view.name, (now, done))
                    rate = (done - before) / (now - then) if now > then else 0.0
                    previous[view.name] = (now, done)
                    lag = "" if latest is None else f"lag {max(0, latest + 1 - view.watermark)}"
                    speed = f"{rate:,.0f}/s"
                    if view.name not in tasks:
                        tasks[view.name] = self.progress.add_task(
                            view.name, total=total, completed=done, rate=speed, lag=lag
                        )
                    else:
                        self.progress.update(tasks[view.name], completed=done, rate=speed, lag=lag)
                await asyncio.sleep(interval)
