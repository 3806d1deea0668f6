"""What ``indexer config check`` checks beyond the config itself: that a run could start.

The pipelines are imported and built (each class's own checks, and whether each reducer can
work with the progress store), then what the run would reach is reached: the feed directory
(or one request to a remote feed), the progress store (a SQLite or JSON file, or its directory
when it is to be created; a PostgreSQL server, connected to with a short timeout) and each
database sink's own database.
Each check is one line; the first that fails is a ``ConfigurationError`` naming the file and
the key, its DSN masked. Nothing is created.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .._dsn import mask_dsn
from .._loop import run_on
from ..errors import ConfigurationError
from ..sinks import DatabaseSink
from ..sources import (
    CheckpointSource,
    FeedRequestRefused,
    RemoteFeedSource,
    feed_kind,
    local_feed_path,
)
from .build import build_executor, build_source
from .config import Config
from .stores import named, resolve_path

__all__ = ["check_config"]


def check_config(config: Config) -> Iterator[str]:
    """Check ``config`` one step at a time: a line for each step that passed, the last one
    ``FILE: OK (...)``; raises ConfigurationError at the first that fails."""
    executor = build_executor(config, handle_signals=False)
    for pool in executor.pools:  # a sink that needs another kind of store fails at start
        if pool.reducer is not None:
            with named(config, f"pipelines.{pool.name}.reducer"):
                pool.reducer.check_store(executor.progress_store)
    names = ", ".join(pool.name for pool in executor.pools)
    yield f"pipelines: {names} (imported and built)"
    source = build_source(config)  # the [source] settings' own checks
    yield _check_feed(config, source)
    store_key = "scale.claims" if config.scale.claims is not None else "progress.store"
    spec = config.progress.spec
    yield f"{store_key}: {spec} ({_check_database(config, store_key, spec.target, spec.kind)})"
    for pool in executor.pools:
        reducer = pool.reducer
        if isinstance(reducer, DatabaseSink) and reducer.own_database is not None:
            key = f"pipelines.{pool.name}.reducer.options.{reducer.database_key}"
            kind = "postgresql" if reducer.database_kind == "PostgreSQL" else "sqlite"
            target = str(reducer.own_database)
            found = _check_database(config, key, target, kind)
            yield f"{key}: {mask_dsn(target)} ({found})"
    yield f"{config.origin}: OK ({len(executor.pools)} pipelines: {names})"


def _failed(config: Config, key: str, message: str) -> ConfigurationError:
    return ConfigurationError(f"{config.origin}: {key}: {message}")


def _check_feed(config: Config, source: CheckpointSource) -> str:
    """The feed directory exists and can be listed and read; a remote feed answers one
    request (for the first checkpoint's file) without refusing it."""
    settings = config.source
    if settings.cls is not None:
        return f"source.class: {settings.cls} (imported and built)"
    if settings.kind == "synthetic":
        return f"source: synthetic checkpoints (seed {settings.seed})"
    if isinstance(source, RemoteFeedSource) and feed_kind(settings.feed) != "directory":
        found = run_on(config.run.event_loop, _reach(config, source))
        return f"source.feed: {mask_dsn(settings.feed)} ({found})"
    path = resolve_path(local_feed_path(settings.feed))
    feed = settings.feed
    if not path.exists():
        raise _failed(config, "source.feed", f"directory {feed!r} does not exist")
    if not path.is_dir():
        raise _failed(config, "source.feed", f"{feed!r} is not a directory")
    if not os.access(path, os.R_OK | os.X_OK):
        raise _failed(config, "source.feed", f"directory {feed!r} is not readable")
    return f"source.feed: {feed} (a readable directory)"


async def _reach(config: Config, source: RemoteFeedSource) -> str:
    """One request to a remote feed, for the file of the run's first checkpoint."""
    first = config.run.first_checkpoint or 0
    try:
        return await source.check_reachable(first)
    except FeedRequestRefused as exc:
        raise _failed(config, "source.feed", str(exc)) from None
    except Exception as exc:  # TransientFetchError: no answer, or not one to start on
        raise _failed(config, "source.feed", f"cannot reach the feed: {exc}") from None
    finally:
        await source.close()


def _check_database(config: Config, key: str, target: str, kind: str) -> str:
    """Whether the database ``key`` names (``target``, a file or a DSN, of ``kind``) can be
    used: what was found."""
    if kind == "memory":
        return "kept in this process only: lost when it ends"
    if kind == "postgresql":
        return run_on(config.run.event_loop, _connect(config, key, target))
    return _check_file(config, key, resolve_path(target))


def _check_file(config: Config, key: str, path: Path) -> str:
    """A database file exists and can be written, or its directory does to create it in."""
    if path.exists():
        if path.is_dir():
            raise _failed(config, key, f"{str(path)!r} is a directory, not a file")
        if not os.access(path, os.R_OK | os.W_OK):
            raise _failed(config, key, f"{str(path)!r} cannot be read and written")
        return "exists"
    directory = path.parent
    if not directory.is_dir():
        raise _failed(config, key, f"directory {str(directory)!r} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise _failed(config, key, f"directory {str(directory)!r} is not writable")
    return "to be created"


async def _connect(config: Config, key: str, dsn: str) -> str:
    """Connect to a PostgreSQL server and say which it is."""
    import asyncpg

    from .._postgres import CONNECT_TIMEOUT, ERRORS, reason

    errors: tuple[type[BaseException], ...] = (*ERRORS, ValueError)  # ValueError: a bad DSN
    try:
        conn: Any = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT)
    except errors as exc:
        raise _failed(config, key, f"cannot connect to {mask_dsn(dsn)}: {reason(exc)}") from None
    try:
        version = conn.get_server_version()
    finally:
        await conn.close()
    return f"connected: PostgreSQL {version.major}.{version.minor}"
