"""The ``indexer`` command.

Every option can also come from the config file and from an ``INDEXER_*`` environment variable;
flags win over the environment, which wins over the file, which wins over the defaults.
Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from .. import __version__
from .._dsn import mask_dsn
from .._loop import run_on
from ..errors import failure_exit
from .options import option, overrides, run_options

if TYPE_CHECKING:
    from .config import Config

F = TypeVar("F", bound=Callable[..., Any])


def _fail(message: str, code: int) -> None:
    click.echo(f"indexer: error: {mask_dsn(message)}", err=True)
    sys.exit(code)


def _output_closed() -> None:
    """Point stdout and stderr at /dev/null: their reader went away (``| head``), and the
    interpreter's final flush must not fail on them again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            os.dup2(devnull, stream.fileno())
    os.close(devnull)


def echo_result(text: str) -> None:
    """Print a command's result; a reader that went away (``| head``) does not fail a command
    whose work is done."""
    try:
        click.echo(text)
        sys.stdout.flush()
    except BrokenPipeError:
        _output_closed()


def handle_errors(func: F) -> F:
    """One line on stderr and the exit code the brief promises, instead of a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except BrokenPipeError:  # nobody reads the output any more: nothing more to say
            _output_closed()
            sys.exit(1)
        except Exception as exc:
            known = failure_exit(exc)
            if known is None:
                raise
            _fail(known[1], known[0])

    return wrapper  # type: ignore[return-value]


def config_option(func: F) -> F:
    return click.option(
        "-c",
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        envvar="INDEXER_CONFIG",
        help="TOML config file [env INDEXER_CONFIG].",
    )(func)


feed_option = option("source.feed")
store_option = option("progress.store")


def configured(func: F) -> F:
    """The options every command that reads the config takes (file, feed, store), and the
    one-line errors."""
    return config_option(feed_option(store_option(handle_errors(func))))


def _load(config_path: Path | None, **overrides: Any) -> Config:
    from .config import load_config  # here, not at the top: ``indexer --help`` needs none of it

    return load_config(config_path, overrides)


class _Group(click.Group):
    """Usage errors as one line too (click prints a four-line block by default)."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            result = super().main(*args, **kwargs)
        except click.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            _fail(f"{exc.format_message()}{hint}", exc.exit_code)
        except click.ClickException as exc:
            _fail(exc.format_message(), exc.exit_code)
        except click.exceptions.Abort:
            _fail("aborted", 1)
        # standalone_mode=False returns an exit code instead of exiting (--help, --version).
        sys.exit(result if isinstance(result, int) else 0)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="indexer")
def main() -> None:
    """Index ordered streams of numbered checkpoints."""


# -- run --------------------------------------------------------------------------------------


@main.command()
@config_option
@run_options
@handle_errors
def run(config_path: Path | None, **options: Any) -> None:
    """Run the configured pipelines over the feed until stopped (Ctrl+C stops gracefully)."""
    config = _load(config_path, **overrides(options))
    from .logs import configure_logging

    configure_logging(config.logging.level, config.logging.format)
    from .run import run_indexer

    summary = run_indexer(config)
    echo_result(summary)


# -- status and reset -------------------------------------------------------------------------


@main.command()
@configured
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def status(config_path: Path | None, feed: str | None, store: str | None, as_json: bool) -> None:
    """Per pipeline: watermark, newest checkpoint in the feed, lag, dead letters; for a
    scaled-out job also its chunks: done, owners and lease expiry."""
    config = _load(config_path, **{"source.feed": feed, "progress.store": store})
    from .status import render_status, status_report

    report = mask_dsn(run_on(config.run.event_loop, status_report(config)))
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        render_status(report)


@main.command()
@config_option
@store_option
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
    config = _load(config_path, **{"progress.store": store})
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


@main.command()
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


@main.group(name="config")
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


@main.command()
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


# -- bench ------------------------------------------------------------------------------------


def _register_bench() -> None:
    from .bench._command import bench_command

    assert bench_command.callback is not None
    bench_command.callback = handle_errors(bench_command.callback)
    main.add_command(bench_command)


_register_bench()
