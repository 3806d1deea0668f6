"""What ``indexer reset`` does: move a pipeline's watermark (lower included) or forget the
pipeline, with its chunk claims, and say what happens to the rows its sink wrote.

A reset refuses a pipeline neither the config nor the store knows (a typo would create a
phantom pipeline) and one that a run holds. Rows stay unless ``--delete-rows`` asks a sink
that records each row's checkpoint (``DatabaseSink.checkpoint_column``) to delete them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from ..claims import WHOLE, ClaimStore
from ..errors import ConfigurationError
from ..progress import ProgressStore
from ..reducer import Reducer
from ..sinks import DatabaseSink
from .build import build_reducer
from .config import Config
from .stores import build_claim_store, build_store

__all__ = ["Reset", "reset_pipeline"]


@dataclass
class Reset:
    """What a reset did, or would do without ``--force``."""

    pipeline: str
    #: The new watermark, or None when the pipeline is dropped.
    to: int | None
    #: The watermark before, None when there was none.
    before: int | None = None
    dead_letters: int = 0
    chunks: int = 0
    #: Whether the sink deletes the rows to index again (``--delete-rows``), and how many it did.
    deleting: bool = False
    deleted_rows: int = 0
    #: What the user should know: rows that stay and will be written again.
    warnings: list[str] = field(default_factory=list)
    sink: str | None = None

    def describe(self, store: str, *, done: bool) -> str:
        """One line: what was done (``done``), or what would be (after "would")."""
        if self.to is None:
            what = f"{'dropped' if done else 'drop'} pipeline {self.pipeline!r} (watermark "
            what += f"{_value(self.before)}, {self.dead_letters} dead letters, "
            what += f"{self.chunks} chunk claims)"
        else:
            what = f"reset pipeline {self.pipeline!r} from {_value(self.before)} to {self.to}"
            if self.chunks:
                what += f" and {'dropped' if done else 'drop'} its {self.chunks} chunk claims"
        if self.deleting:
            rows = f"{self.deleted_rows} rows" if done else "the rows"
            first = self.to or 0
            what += f", {'deleted' if done else 'delete'} {rows} of {self.sink}"
            what += f" from checkpoint {first} on"
        return f"{what} in {store}"


def _value(watermark: int | None) -> str:
    return "nothing" if watermark is None else str(watermark)


async def reset_pipeline(
    config: Config, pipeline: str, to: int | None, *, force: bool, delete_rows: bool = False
) -> Reset:
    """Set ``pipeline``'s watermark to ``to`` (None: drop the pipeline: its watermark, dead
    letters and chunks), and with ``delete_rows`` delete the rows its sink wrote from there
    on. Without ``force`` nothing changes and the returned ``Reset`` says what would. Raises
    ConfigurationError for an unknown pipeline, one a run holds, or rows that cannot be
    deleted (before changing anything)."""
    spec = config.progress.spec
    reset = Reset(pipeline, to)
    reducer = build_reducer(config, pipeline) if pipeline in config.pipelines else None
    first = 0 if to is None else to
    reset.sink = _sink_label(reducer)
    sink = _deleting_sink(config, pipeline, reducer) if delete_rows else None
    reset.deleting = sink is not None
    exists = spec.exists()
    claims = build_claim_store(config) if spec.holds_claims and exists else None
    async with contextlib.AsyncExitStack() as stack:
        store: ProgressStore | None = None
        if exists:  # a look, or a refused reset, must not create a store
            store = await stack.enter_async_context(build_store(config))
        if claims is not None:
            await stack.enter_async_context(claims)
        if reducer is not None:
            stack.push_async_callback(reducer.close)
        await _check_known(config, pipeline, store, claims)
        if store is not None:
            reset.before = await store.load(pipeline)
            reset.dead_letters = len(await store.dead_letters(pipeline))
        if claims is not None:
            await _check_not_held(pipeline, claims)
            reset.chunks = len(await claims.chunks(pipeline))
        if not delete_rows:
            reset.warnings += _rows_stay(config, pipeline, reducer, first, to is None)
        if not force:
            return reset
        if store is None:
            store = await stack.enter_async_context(build_store(config))
        if sink is not None:
            reset.deleted_rows = await sink.rewind(store, pipeline, first)
        elif to is not None:
            await store.reset(pipeline, to)
        if to is None:
            await store.drop(pipeline)
        if claims is not None:
            await claims.forget(pipeline)
    return reset


async def _check_known(
    config: Config, pipeline: str, store: ProgressStore | None, claims: ClaimStore | None
) -> None:
    """Refuse a pipeline that neither the config nor the store has heard of."""
    known = set(config.pipelines)
    if store is not None:
        known.update(await store.watermarks())
        known.update(letter.pipeline for letter in await store.dead_letters())
    if claims is not None:
        known.update(await claims.pipelines())
    if pipeline not in known:
        listed = ", ".join(sorted(known)) or "none"
        raise ConfigurationError(
            f"unknown pipeline {pipeline!r}: neither {config.origin} nor the store "
            f"{config.progress.spec} has it (known: {listed})"
        )


async def _check_not_held(pipeline: str, claims: ClaimStore) -> None:
    held = await claims.holders(pipeline)
    if held:
        what = "it" if held[0].chunk == WHOLE else f"chunk {held[0].chunk}"
        raise ConfigurationError(
            f"pipeline {pipeline!r} is running: {what} is leased to {held[0].owner!r}; "
            "stop every process of the job before a reset"
        )


def _sink_label(reducer: Reducer[Any] | None) -> str | None:
    if reducer is None:
        return None
    return str(getattr(reducer, "label", type(reducer).__name__))


def _deleting_sink(
    config: Config, pipeline: str, reducer: Reducer[Any] | None
) -> DatabaseSink[Any]:
    """The sink ``--delete-rows`` deletes with: one that knows each row's checkpoint."""
    where = f"--delete-rows: pipeline {pipeline!r}"
    if pipeline not in config.pipelines:
        raise ConfigurationError(f"{where} is not in {config.origin}: its sink is unknown")
    if reducer is None:
        raise ConfigurationError(f"{where} has no reducer: there are no rows to delete")
    if not isinstance(reducer, DatabaseSink) or reducer.checkpoint_column is None:
        raise ConfigurationError(
            f"{where}: {_sink_label(reducer)} cannot delete rows by checkpoint "
            "(a DatabaseSink with a checkpoint_column can)"
        )
    return reducer


def _rows_stay(
    config: Config, pipeline: str, reducer: Reducer[Any] | None, first: int, dropped: bool
) -> list[str]:
    """Warnings about rows the reset leaves behind (a re-index writes them again)."""
    if pipeline not in config.pipelines:  # no sink known (a config file may name one)
        if config.path is None:
            return []
        return [f"pipeline {pipeline!r} is not in {config.path}: whatever its sink wrote stays"]
    if reducer is None:
        return []
    which = "the rows it wrote" if dropped else f"the rows of checkpoints {first} and later"
    warning = f"pipeline {pipeline!r} writes with {_sink_label(reducer)}: {which} stay"
    if not dropped:
        warning += " and a re-index writes them again"
    if isinstance(reducer, DatabaseSink) and reducer.checkpoint_column is not None:
        warning += " (--delete-rows deletes them)"
    return [warning]
