"""The options of ``indexer run``, defined once: each is a flag, an ``INDEXER_*`` variable and
the config key it overrides.

``config show`` and ``config check`` take the same options, so that they show and check what
``run`` would run with the same flags and environment; ``status`` and ``reset`` take the ones
that name what they read (``option("progress.store")``, ``option("scale.claims")``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import click

from .._loop import EVENT_LOOPS

__all__ = ["RUN_OPTIONS", "RunOption", "option", "overrides", "run_options"]

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class RunOption:
    """One option of ``indexer run``: its flags, the config key it overrides, its variable."""

    #: The dotted config key the option overrides ("source.feed").
    key: str
    #: The keyword argument click passes it as.
    param: str
    #: The flags ("--feed", or "--metrics/--no-metrics").
    flags: str
    envvar: str
    help: str
    #: More of ``click.option``'s arguments (type, default, multiple).
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __call__(self, func: F) -> F:
        """``func`` with this option added."""
        help = f"{self.help} [env {self.envvar}]." if self.help else f"[env {self.envvar}]"
        return click.option(self.flags, self.param, envvar=self.envvar, help=help, **self.extra)(
            func
        )


RUN_OPTIONS: tuple[RunOption, ...] = (
    RunOption(
        "run.pipelines",
        "pipelines",
        "--pipeline",
        "INDEXER_PIPELINE",
        "Run only this pipeline (repeatable; the variable space-separated)",
        {"multiple": True},
    ),
    RunOption(
        "run.first_checkpoint",
        "first_checkpoint",
        "--first-checkpoint",
        "INDEXER_FIRST_CHECKPOINT",
        "Where pipelines without a saved watermark start",
        {"type": int},
    ),
    RunOption(
        "run.last_checkpoint",
        "last_checkpoint",
        "--last-checkpoint",
        "INDEXER_LAST_CHECKPOINT",
        "Stop after this checkpoint (inclusive)",
        {"type": int},
    ),
    RunOption(
        "source.feed",
        "feed",
        "--feed",
        "INDEXER_FEED",
        "Feed directory, http(s):// URL or s3://, gs://, az:// prefix (source.feed)",
    ),
    RunOption(
        "progress.store",
        "store",
        "--store",
        "INDEXER_STORE",
        "Progress store: sqlite:PATH, file:PATH, memory or a postgresql:// DSN (progress.store)",
    ),
    RunOption(
        "metrics.address",
        "metrics_address",
        "--metrics-address",
        "INDEXER_METRICS_ADDRESS",
        "HOST:PORT for /metrics (default 127.0.0.1:9184)",
    ),
    RunOption(
        "metrics.enabled",
        "metrics",
        "--metrics/--no-metrics",
        "INDEXER_METRICS",
        "Serve Prometheus metrics",
        {"default": None},
    ),
    RunOption(
        "logging.level",
        "log_level",
        "--log-level",
        "INDEXER_LOG_LEVEL",
        "",
        {"type": click.Choice(["debug", "info", "warning", "error"])},
    ),
    RunOption(
        "logging.format",
        "log_format",
        "--log-format",
        "INDEXER_LOG_FORMAT",
        "auto: console on a terminal, JSON lines otherwise",
        {"type": click.Choice(["auto", "console", "json"])},
    ),
    RunOption(
        "logging.progress",
        "progress",
        "--progress/--no-progress",
        "INDEXER_PROGRESS",
        "Live progress bars on a terminal",
        {"default": None},
    ),
    RunOption(
        "scale.processes",
        "processes",
        "--processes",
        "INDEXER_PROCESSES",
        "Worker processes on this machine, sharing chunk claims (scale.processes)",
        {"type": click.IntRange(min=1)},
    ),
    RunOption(
        "scale.claims",
        "claims",
        "--claims",
        "INDEXER_CLAIMS",
        "Join a chunked job whose claims and progress live in this sqlite:PATH or "
        "postgresql:// database (scale.claims; also the progress store, over the file's)",
    ),
    RunOption(
        "scale.chunk_size",
        "chunk_size",
        "--chunk-size",
        "INDEXER_CHUNK_SIZE",
        "Checkpoints per claimed chunk (scale.chunk_size)",
        {"type": click.IntRange(min=1)},
    ),
    RunOption(
        "run.event_loop",
        "event_loop",
        "--event-loop",
        "INDEXER_EVENT_LOOP",
        "auto: uvloop when installed, else asyncio (run.event_loop)",
        {"type": click.Choice(EVENT_LOOPS)},
    ),
)


def run_options(func: F) -> F:
    """``func`` with every option of ``indexer run``, in order."""
    for run_option in reversed(RUN_OPTIONS):
        func = run_option(func)
    return func


def option(key: str) -> RunOption:
    """The run option that overrides config key ``key``."""
    return next(run_option for run_option in RUN_OPTIONS if run_option.key == key)


def overrides(values: Mapping[str, Any]) -> dict[str, Any]:
    """click's keyword arguments for the run options as ``load_config`` overrides, by config
    key; an option not given is None (a repeatable one given no time too)."""
    found: dict[str, Any] = {}
    for run_option in RUN_OPTIONS:
        value = values.get(run_option.param)
        if isinstance(value, tuple):  # multiple=True
            value = list(value) or None
        found[run_option.key] = value
    return found
