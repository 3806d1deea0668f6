"""The ``indexer`` command.

Every option can also come from the config file and from an ``INDEXER_*`` environment variable;
flags win over the environment, which wins over the file, which wins over the defaults.
Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import gc
import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from .. import __version__
from .._dsn import mask_dsn
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

    wrapper.handles_errors = True  # type: ignore[attr-defined]
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


def _skip_collection_at_exit() -> None:
    """Have the interpreter's exit skip its cyclic garbage collections: they walk every object
    the imports made (20 ms, a seventh of a short run) to free memory the process's end frees
    anyway. ``gc.freeze`` runs as the last ``atexit`` hook registered before the command (the
    command's and its workers' hooks run before it); the standard streams are still flushed
    and every module still torn down after it."""
    atexit.unregister(gc.freeze)  # once, however many times the command runs in one process
    atexit.register(gc.freeze)


class _Group(click.Group):
    """Usage errors as one line too (click prints a four-line block by default).

    The commands in ``lazy_commands`` are imported only when named (to run, or by ``--help``,
    which lists every command with its short help), as in click's "Lazily Loading
    Subcommands": ``indexer run`` defines only itself and imports none of the others' modules.
    """

    #: Command name -> ``module:attribute`` of its click command.
    lazy_commands: dict[str, str] = {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        target = self.lazy_commands.get(cmd_name)
        if command is not None or target is None:
            return command
        module, _, attribute = target.partition(":")
        command = getattr(importlib.import_module(module), attribute)
        assert isinstance(command, click.Command)
        callback = command.callback
        if not isinstance(command, click.Group) and not hasattr(callback, "handles_errors"):
            assert callback is not None
            command.callback = handle_errors(callback)  # bench's: one-line errors too
        self.add_command(command, cmd_name)  # loaded once
        return command

    def main(self, *args: Any, **kwargs: Any) -> Any:
        _skip_collection_at_exit()
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


# -- the other commands -----------------------------------------------------------------------

# Loaded when named (commands.py, bench/_command.py): ``indexer run`` defines only itself, and
# does not import the benchmarks' machinery (multiprocessing, the process pool).
_Group.lazy_commands.update(
    {
        "status": "indexer.cli.commands:status",
        "reset": "indexer.cli.commands:reset",
        "generate": "indexer.cli.commands:generate",
        "config": "indexer.cli.commands:config_group",
        "init": "indexer.cli.commands:init",
        "bench": "indexer.cli.bench._command:bench_command",
    }
)
