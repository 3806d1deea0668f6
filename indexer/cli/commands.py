"""The ``indexer`` commands other than ``run`` and ``bench``: ``status``, ``reset``,
``generate``, ``config show`` / ``config check`` and ``init``.

The command group (``main.py``) loads this module only when one of them is named (or by
``--help``), so that ``indexer run`` does not define them; each imports what it needs when it
runs.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from .._dsn import mask_dsn
from .._loop import run_on
from .main import _fail, _load, config_option, configured, echo_result, handle_errors, store_option
from .options import option, overrides, run_options

__all__ = ["config_group", "generate", "init", "reset", "status"]


# -- status and reset -------------------------------------------------------------------------


claims_option = option("scale.claims")


@click.command()
@configured
@claims_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def status(
    config_path: Path | None, feed: str | None, store: str | None, claims: str | None, as_json: bool
) -> None:
    """Per pipeline: watermark, newest checkpoint in the feed, lag (in checkpoints and
    seconds), dead letters, the pruned-below mark of a pipeline with a retention; for a
    scaled-out job also its chunks: done, owners and lease expiry. A job run with --claims
    keeps its progress there: give status the same."""
    config = _load(
        config_path, **{"source.feed": feed, "progress.store": store, "scale.claims": claims}
    )
    from .status import render_status, status_report

    report = mask_dsn(run_on(config.run.event_loop, status_report(config)))
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        render_status(report)


@click.command()
@config_option
@store_option
@claims_option
@click.option("--pipeline", required=True, help="The pipeline to reset (or drop).")
@click.option(
    "--to",
    "to",
    type=click.IntRange(min=0),
    help="The new watermark (next checkpoint to process), lower included.",
)
@click.option(
    "--drop", is_flag=True, help="Forget the pipeline: its watermark, dead letters and chunks."
)
@click.option(
    "--delete-rows",
    is_flag=True,
    help="Also delete the rows its sink wrote for the checkpoints to index again "
    "(sinks that record each row's checkpoint).",
)
@click.option("--force", is_flag=True, help="Really do it.")
@handle_errors
def reset(
    config_path: Path | None,
    store: str | None,
    claims: str | None,
    pipeline: str,
    to: int | None,
    drop: bool,
    delete_rows: bool,
    force: bool,
) -> None:
    """Set a pipeline's watermark, lower included (the way to re-index), or drop the pipeline.

    Without --force, say what would be done."""
    if (to is None) == (not drop):
        raise click.UsageError("give either --to N or --drop")
    config = _load(config_path, **{"progress.store": store, "scale.claims": claims})
    from .reset import reset_pipeline

    outcome = run_on(
        config.run.event_loop,
        reset_pipeline(config, pipeline, to, force=force, delete_rows=delete_rows),
    )
    for warning in outcome.warnings:
        click.echo(f"indexer: warning: {warning}", err=True)
    spec = str(config.progress.spec)
    if not force:
        _fail(f"would {outcome.describe(spec, done=False)}; add --force to do it", 2)
    click.echo(outcome.describe(spec, done=True))


# -- generate ---------------------------------------------------------------------------------


@click.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Directory to write {n}.chk files into.",
)
@click.option("--count", type=click.IntRange(min=1), required=True)
@click.option("--start", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@handle_errors
def generate(out: Path, count: int, start: int, seed: int) -> None:
    """Write a synthetic feed of COUNT checkpoints (deterministic for a seed)."""
    from rich.progress import Progress

    from ..sources import SyntheticSource, write_feed

    started = time.perf_counter()
    with Progress(disable=not sys.stderr.isatty(), transient=True) as bar:
        task = bar.add_task("generating", total=count)
        written = run_on(
            "asyncio",
            write_feed(
                SyntheticSource(seed=seed),
                out,
                start=start,
                count=count,
                on_progress=lambda done: bar.update(task, completed=done),
            ),
        )
    elapsed = time.perf_counter() - started
    click.echo(
        f"wrote {written} checkpoints ({start}..{start + written - 1}) to {out} in {elapsed:.1f}s"
    )


# -- config -----------------------------------------------------------------------------------


@click.group(name="config")
def config_group() -> None:
    """Show or check the effective configuration."""


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value


@config_group.command("show")
@config_option
@run_options
@handle_errors
def config_show(config_path: Path | None, **options: Any) -> None:
    """Print the config `indexer run` would run with the same options and INDEXER_* variables,
    as TOML (relative paths resolved, passwords masked)."""
    config = _load(config_path, **overrides(options))
    import msgspec

    data = _without_none(msgspec.to_builtins(config))
    data.pop("path", None)
    click.echo(msgspec.toml.encode(mask_dsn(data)).decode(), nl=False)


@config_group.command("check")
@config_option
@run_options
@handle_errors
def config_check(config_path: Path | None, **options: Any) -> None:
    """Check what `indexer run` would run with the same options and INDEXER_* variables:
    validate the config, import every worker and reducer, build the pipelines, and reach the
    feed and the databases. One line per check, then OK (exit 2 at the first that fails)."""
    config = _load(config_path, **overrides(options))
    from .checks import check_config

    for line in check_config(config):
        echo_result(mask_dsn(line))


# -- init -------------------------------------------------------------------------------------


@click.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", help="Python package name (default: from the directory name).")
@handle_errors
def init(directory: Path, name: str | None) -> None:
    """Scaffold a new indexer project (a Worker, a config and a passing test) in DIRECTORY."""
    from .scaffold import scaffold_project

    files = scaffold_project(directory, name)
    click.echo(f"created {len(files)} files in {directory}:")
    for path in files:
        click.echo(f"  {path}")
    click.echo(
        f"next: cd {directory} && pip install -e '.[dev]' && pytest && indexer run -c config.toml"
    )
