"""The ``indexer bench`` click command: runs scenarios, prints a table or JSON, draws a plot."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from ..._loop import EVENT_LOOPS
from . import SCENARIOS, Result, machine, run_scenarios

_UNITS = {"checkpoints/s": "cp/s", "rows/s": "rows/s", "MB peak RSS": "MB"}


def _figure(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def _verdict(result: Result) -> str:
    if result.passed is None:
        return "-"
    return "ok" if result.passed else "MISSED"


def _bar(result: Result) -> str:
    if result.bar is None:
        return "-"
    sign = ">=" if result.higher_is_better else "<="
    text = f"{sign} {result.bar:g}"
    if result.limit is not None:
        text += f", <= {result.limit:g}"
    return text


def print_table(results: list[Result], info: dict[str, Any]) -> None:
    """A rich table on a terminal, plain aligned text otherwise (rich decides)."""
    from rich.console import Console
    from rich.table import Table

    cpu = f"{info['cpus']} CPUs" + (f" {info['processor']}" if info["processor"] else "")
    table = Table(title=f"indexer bench ({cpu}, Python {info['python']}, {info['event_loop']})")
    for column in ("scenario", "figure", "reference", "unit", "ratio", "bar", ""):
        justify = "left" if column in ("scenario", "unit", "bar", "") else "right"
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for r in results:
        table.add_row(
            r.scenario,
            _figure(r.figure),
            _figure(r.reference),
            _UNITS.get(r.unit, r.unit),
            f"{r.ratio:.2f}",
            _bar(r),
            _verdict(r),
        )
    Console(width=max(100, Console().width)).print(table)


def plot_concurrency(path: Path, quick: bool, event_loop: str = "auto") -> dict[int, float]:
    """Throughput of the 10 ms worker against concurrency, beside the ideal, as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # matplotlib is a dev-only dependency
        raise click.UsageError(
            "--plot needs matplotlib: pip install -e '.[dev]' (or pip install matplotlib)"
        ) from exc
    from .iobound import CONCURRENCY, LATENCY, sweep

    concurrencies = [1, 4, 16, 64, CONCURRENCY, 1024]
    measured = sweep(concurrencies, 5 if quick else 20, event_loop)
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    ax.plot(concurrencies, [c / LATENCY for c in concurrencies], "--", label="ideal (c / 10 ms)")
    ax.plot(concurrencies, [measured[c] for c in concurrencies], "o-", label="indexer")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("concurrency (process_checkpoint calls at once)")
    ax.set_ylabel("checkpoints / s")
    ax.set_title("A worker that awaits 10 ms: throughput against concurrency")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return measured


@click.command("bench")
@click.option("--quick", is_flag=True, help="Smaller runs: every scenario in under a minute.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "--scenario",
    "scenarios",
    multiple=True,
    type=click.Choice(list(SCENARIOS)),
    help="Run only this scenario (repeatable; default: all).",
)
@click.option(
    "--postgres-dsn",
    envvar="INDEXER_BENCH_POSTGRES_DSN",
    help="Also measure the PostgreSQL sink and pipelines against bare COPY on this server "
    "[env INDEXER_BENCH_POSTGRES_DSN].",
)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write a PNG of io-bound throughput against concurrency.",
)
@click.option(
    "--event-loop",
    type=click.Choice(EVENT_LOOPS),
    default="auto",
    show_default=True,
    help="The loop both sides of every scenario run on (auto: uvloop when installed).",
)
@click.option("--strict", is_flag=True, help="Exit 1 when a scenario misses its bar.")
def bench_command(
    quick: bool,
    as_json: bool,
    scenarios: tuple[str, ...],
    postgres_dsn: str | None,
    plot: Path | None,
    event_loop: str,
    strict: bool,
) -> None:
    """Measure throughput and memory, each scenario beside its reference in the same run."""
    os.environ.setdefault("INDEXER_LOG_LEVEL", "warning")
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))

    def progress(result: Result) -> None:
        if not as_json:
            click.echo(
                f"  {result.scenario}: ratio {result.ratio:.2f} ({_verdict(result)})", err=True
            )

    info = machine(event_loop)
    results = run_scenarios(
        list(scenarios),
        quick,
        {"postgres_dsn": postgres_dsn, "event_loop": event_loop},
        on_result=progress,
    )
    sweep = plot_concurrency(plot, quick, event_loop) if plot is not None else None
    if as_json:
        document: dict[str, Any] = {
            "machine": info,
            "quick": quick,
            "results": [r.to_dict() for r in results],
        }
        if sweep is not None:
            document["io_bound_sweep"] = {str(c): round(v, 1) for c, v in sweep.items()}
        click.echo(json.dumps(document, indent=2))
    else:
        print_table(results, info)
        if plot is not None:
            click.echo(f"wrote {plot}")
    if strict and any(r.passed is False for r in results):
        sys.exit(1)
