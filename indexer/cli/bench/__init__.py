"""``indexer bench``: each scenario measured beside its reference in the same run.

Ratios, not absolute figures, are what carry from one machine to another: both sides of a
scenario run interleaved in one process (or one after the other for memory), so a noisy moment
on a shared machine hits both. Each scenario runs in a fresh interpreter of its own, so that
none inherits another's heap, threads or page-cache writeback (they moved later scenarios by
10 to 20%).
"""

from __future__ import annotations

import compileall
import importlib
import multiprocessing
import platform
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from ._result import Result, cpu_count

__all__ = ["SCENARIOS", "Result", "machine", "run_scenarios"]


def _dispatch(quick: bool, options: dict[str, Any]) -> list[Result]:
    from . import dispatch

    return dispatch.run(quick, options.get("event_loop", "auto"))


def _feed(quick: bool, options: dict[str, Any]) -> list[Result]:
    from . import feed

    return feed.run(quick, event_loop=options.get("event_loop", "auto"))


def _iobound(quick: bool, options: dict[str, Any]) -> list[Result]:
    from . import iobound

    return iobound.run(quick, options.get("event_loop", "auto"))


def _reducer(quick: bool, options: dict[str, Any]) -> list[Result]:
    from . import reducer

    return reducer.run(quick, options.get("postgres_dsn"), options.get("event_loop", "auto"))


def _gc_window(quick: bool, options: dict[str, Any]) -> list[Result]:
    from . import gc_window

    return gc_window.run(quick)


def _memory(quick: bool, options: dict[str, Any]) -> list[Result]:
    from . import memory

    return memory.run(quick, options.get("event_loop", "auto"))


def _scaleout(quick: bool, options: dict[str, Any]) -> list[Result]:
    from . import scaleout

    return scaleout.run(quick, options.get("event_loop", "auto"))


def _pipeline_sqlite(quick: bool, options: dict[str, Any]) -> list[Result]:
    from . import pipeline

    return pipeline.run_sqlite(quick, 1, options.get("event_loop", "auto"))


def _pipeline_postgres(quick: bool, options: dict[str, Any]) -> list[Result]:
    from . import pipeline

    return pipeline.run_postgres(
        quick, options.get("postgres_dsn"), 1, options.get("event_loop", "auto")
    )


def _pipeline_sqlite_2p(quick: bool, options: dict[str, Any]) -> list[Result]:
    from . import pipeline

    return pipeline.run_sqlite(quick, 2, options.get("event_loop", "auto"))


def _pipeline_postgres_2p(quick: bool, options: dict[str, Any]) -> list[Result]:
    from . import pipeline

    return pipeline.run_postgres(
        quick, options.get("postgres_dsn"), 2, options.get("event_loop", "auto")
    )


def _remote(quick: bool, options: dict[str, Any]) -> list[Result]:
    from . import remote

    return remote.run(quick, options.get("event_loop", "auto"))


def _cohorts(quick: bool, options: dict[str, Any]) -> list[Result]:
    from . import cohorts

    return cohorts.run_pace(quick, options.get("event_loop", "auto"))


def _cohort_tip(quick: bool, options: dict[str, Any]) -> list[Result]:
    from . import cohorts

    return cohorts.run_tip(quick, options.get("event_loop", "auto"))


#: Scenario name -> runner(quick, options) -> results, in the order they run.
SCENARIOS: dict[str, Callable[[bool, dict[str, Any]], list[Result]]] = {
    "dispatch": _dispatch,
    "feed": _feed,
    "io-bound": _iobound,
    "reducer": _reducer,
    "gc-window": _gc_window,
    "memory": _memory,
    "scale-out": _scaleout,
    "pipeline-sqlite": _pipeline_sqlite,
    "pipeline-postgres": _pipeline_postgres,
    "pipeline-sqlite-2p": _pipeline_sqlite_2p,
    "pipeline-postgres-2p": _pipeline_postgres_2p,
    "remote": _remote,
    "cohorts": _cohorts,
    "cohort-tip": _cohort_tip,
}


def _run_scenario(name: str, quick: bool, options: dict[str, Any]) -> list[Result]:
    """One scenario, in the fresh interpreter ``run_scenarios`` starts for it."""
    import sys

    import structlog

    structlog.configure(  # warnings, to stderr: stdout is the table or the JSON
        wrapper_class=structlog.make_filtering_bound_logger(30),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    return SCENARIOS[name](quick, options)


def run_scenarios(
    names: Sequence[str],
    quick: bool,
    options: dict[str, Any] | None = None,
    on_result: Callable[[Result], None] | None = None,
) -> list[Result]:
    """Run the named scenarios (all when empty) and return their results in order."""
    options = options or {}
    compile_bytecode()
    results: list[Result] = []
    for name in names or list(SCENARIOS):
        started = time.perf_counter()
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(1, mp_context=spawn) as isolated:
            results_of_one = isolated.submit(_run_scenario, name, quick, options).result()
        for result in results_of_one:
            result.details.setdefault("scenario_seconds", round(time.perf_counter() - started, 1))
            results.append(result)
            if on_result is not None:
                on_result(result)
    return results


def compile_bytecode() -> None:
    """Write the bytecode of the framework and its ready-made workers and sinks where it is
    missing, as installing a package does. The scenarios time ``indexer run`` from its start:
    where bytecode is never written (``PYTHONDONTWRITEBYTECODE``), every run compiled some 120
    modules again, 0.1 s and about 1 MB that no installed framework pays."""
    for package in ("indexer", "workers", "reducers"):
        for path in importlib.import_module(package).__path__:
            compileall.compile_dir(path, quiet=2)  # a directory it cannot write: left as it is


def _cpu_model() -> str | None:
    """The CPU's model name where Linux says it (``platform.processor()`` often says nothing)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip() or None
    except OSError:
        return None
    return None


def machine(event_loop: str = "auto") -> dict[str, Any]:
    """What the figures were measured on."""
    from ..._loop import loop_factory

    return {
        "event_loop": "asyncio" if loop_factory(event_loop) is None else "uvloop",
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "system": f"{platform.system()} {platform.machine()}",
        "cpus": cpu_count(),
        "processor": _cpu_model() or platform.processor() or None,
    }
