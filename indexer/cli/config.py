"""The TOML configuration: typed msgspec structs, loading, validation and precedence.

Precedence is flags > ``INDEXER_*`` environment variables > the config file > defaults; the CLI
resolves flags and environment variables (click) and hands them to ``load_config`` as
overrides keyed by dotted paths (``"source.feed"``). Every error names the file and the key.
Relative paths the file gives resolve against its directory, those of overrides against the
working directory (``paths.py``).

A default here is the library's own, read from the signature of the class the key configures
(``WorkerPool``, ``LocalDirectorySource`` for ``[source]``, in ``source_config.py``, ...), and a
rule on a value is the class's own, checked when the object is built (``build.py``) and
reported under the key's name; what only the command has (the store's spec, scale-out, the
metrics address) is checked here.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
import tomllib
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import msgspec

from .._dsn import mask_dsn
from .._loop import EventLoopName
from ..claims.lease import check_chunking
from ..errors import ConfigurationError
from ..executor import IndexerExecutor, check_range
from ..pipeline import WorkerPool
from ..retry import RetryPolicy
from .paths import anchor_file_paths
from .source_config import SourceConfig
from .stores import StoreSpec

__all__ = [
    "Config",
    "LoggingConfig",
    "MetricsConfig",
    "PipelineConfig",
    "ProgressConfig",
    "ReducerConfig",
    "RunConfig",
    "ScaleConfig",
    "SourceConfig",
    "import_object",
    "load_config",
]


def _default(target: Callable[..., Any], name: str) -> Any:
    """The default of ``target``'s parameter ``name``: a key's default is the library's."""
    return inspect.signature(target).parameters[name].default


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class ProgressConfig(_Section):
    """Where watermarks are kept: ``sqlite:PATH``, ``file:PATH``, ``memory`` or a DSN."""

    store: str = "sqlite:indexer.db"
    #: PostgreSQL only: the schema of the indexer's tables (watermarks, dead letters, claims).
    schema: str | None = None

    @property
    def spec(self) -> StoreSpec:
        """``store`` parsed (it was checked when the config was loaded)."""
        return StoreSpec.parse(self.store)


class RunConfig(_Section):
    first_checkpoint: int | None = None
    last_checkpoint: int | None = None
    pipelines: list[str] = msgspec.field(default_factory=list)
    #: "auto" (uvloop when installed), "uvloop" or "asyncio".
    event_loop: EventLoopName = "auto"
    #: Pipelines within this many checkpoints of each other read the feed once (a cohort).
    cohort_distance: int = _default(IndexerExecutor, "cohort_distance")
    #: The most encoded bytes a cohort keeps for its members behind its newest checkpoint.
    cohort_bytes: int = _default(IndexerExecutor, "cohort_bytes")


class MetricsConfig(_Section):
    enabled: bool = True
    address: str = "127.0.0.1:9184"
    #: ``/readyz`` answers 503 while a pipeline's newest committed checkpoint is older than
    #: this many seconds (None: the age is not checked).
    ready_max_lag_seconds: float | None = None

    @property
    def host_port(self) -> tuple[str, int]:
        """``address`` parsed (it was checked when the config was loaded)."""
        return parse_address(self.address, "metrics.address")


class LoggingConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "console", "json"] = "auto"
    progress: bool = True


class ReducerConfig(_Section):
    """A Reducer named by import string, its batch limits and constructor options.

    A limit left out keeps the Reducer's own (its class attribute or what ``options`` gave its
    constructor); one set here overrides it."""

    cls: str = msgspec.field(name="class")
    max_batch_size: int | msgspec.UnsetType | None = msgspec.UNSET
    max_batch_bytes: int | msgspec.UnsetType | None = msgspec.UNSET
    max_batch_age: float | msgspec.UnsetType | None = msgspec.UNSET
    options: dict[str, Any] = msgspec.field(default_factory=dict)

    def limits(self) -> dict[str, Any]:
        """The batch limits this table sets, by name."""
        return {
            name: value
            for name in ("max_batch_size", "max_batch_bytes", "max_batch_age")
            if (value := getattr(self, name)) is not msgspec.UNSET
        }


class PipelineConfig(_Section):
    """A Worker named by import string, with its ``WorkerPool`` settings."""

    worker: str
    options: dict[str, Any] = msgspec.field(default_factory=dict)
    concurrency: int = _default(WorkerPool, "concurrency")
    max_inflight: int | None = _default(WorkerPool, "max_inflight")
    max_inflight_bytes: int | None = _default(WorkerPool, "max_inflight_bytes")
    reschedule_threshold: float = _default(WorkerPool, "reschedule_threshold")
    progress_interval: float = _default(WorkerPool, "progress_interval")
    retention: int | None = _default(WorkerPool, "retention")
    retention_interval: float = _default(WorkerPool, "retention_interval")
    retry: RetryPolicy = msgspec.field(default_factory=RetryPolicy)
    reducer: ReducerConfig | None = None


class ScaleConfig(_Section):
    """Scale-out: chunks leased from a claim store (on when processes > 1 or claims is set)."""

    processes: int = 1
    claims: str | None = None  # sqlite:PATH or a postgresql:// DSN; also the progress store
    chunk_size: int = 10_000
    #: The executor's (a whole pipeline's lease), which is also the ChunkedRunner's: the
    #: chunked runner is imported only by a chunked run.
    lease_ttl: float = _default(IndexerExecutor, "lease_ttl")

    @property
    def chunked(self) -> bool:
        return self.processes > 1 or self.claims is not None


class Config(_Section):
    source: SourceConfig = msgspec.field(default_factory=SourceConfig)
    progress: ProgressConfig = msgspec.field(default_factory=ProgressConfig)
    run: RunConfig = msgspec.field(default_factory=RunConfig)
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    logging: LoggingConfig = msgspec.field(default_factory=LoggingConfig)
    scale: ScaleConfig = msgspec.field(default_factory=ScaleConfig)
    pipelines: dict[str, PipelineConfig] = msgspec.field(default_factory=dict)
    #: The file this came from (not a TOML key); the relative paths it gave are resolved
    #: against its directory already (``paths.py``).
    path: str | None = None

    @property
    def origin(self) -> str:
        """What errors about this config name: its file, or "configuration"."""
        return self.path or "configuration"

    @property
    def directory(self) -> Path | None:
        """The config file's directory, where its classes are imported from and its workers'
        and reducers' relative paths lead; None without a file."""
        return None if self.path is None else Path(self.path).parent


_MSGSPEC_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")


def _key_path(path: str) -> str:
    """msgspec's ``$.pipelines.x[0]`` as ``pipelines.x[0]``."""
    return path.lstrip(".")


def _explain(exc: msgspec.ValidationError, origin: str, prefix: str = "") -> ConfigurationError:
    message = str(exc)
    match = _MSGSPEC_PATH.search(message)
    where = prefix
    if match:
        inner = _key_path(match.group("path"))
        where = f"{prefix}.{inner}" if prefix and inner else (inner or prefix)
        message = message[: match.start()]
    cause = exc.__cause__
    if isinstance(cause, ConfigurationError) and where:  # a struct's own rule (RetryPolicy)
        return cause.at(origin, where)
    unknown = re.match(r"Object contains unknown field `(?P<key>[^`]+)`", message)
    if unknown:
        key = f"{where}.{unknown['key']}" if where else unknown["key"]
        return ConfigurationError(f"{origin}: unknown key {key!r}")
    missing = re.match(r"Object missing required field `(?P<key>[^`]+)`", message)
    if missing:
        key = f"{where}.{missing['key']}" if where else missing["key"]
        return ConfigurationError(f"{origin}: missing required key {key!r}")
    choices = _choices(Config, where.split(".")) if message.startswith("Invalid enum") else None
    if choices:
        message += f" (one of {', '.join(map(repr, choices))})"
    if where:
        return ConfigurationError(f"{origin}: {where}: {message[0].lower()}{message[1:]}")
    return ConfigurationError(f"{origin}: {message}")


def _choices(struct: Any, path: list[str]) -> tuple[Any, ...] | None:
    """The values a ``Literal`` key at ``path`` (``["source", "kind"]``) allows, if it is one."""
    kind: Any = struct
    for part in path:
        if typing.get_origin(kind) is dict:  # [pipelines.NAME]: this part is a NAME
            kind = typing.get_args(kind)[1]
            continue
        if not (isinstance(kind, type) and issubclass(kind, msgspec.Struct)):
            return None
        kind = typing.get_type_hints(kind).get(part)
    if typing.get_origin(kind) is typing.Union:  # "x" | None
        kind = next((a for a in typing.get_args(kind) if a is not type(None)), None)
    return typing.get_args(kind) if typing.get_origin(kind) is Literal else None


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigurationError(f"cannot set {dotted!r}: {part!r} is not a table")
    node[leaf] = value


def load_config(
    path: str | os.PathLike[str] | None = None, overrides: dict[str, Any] | None = None
) -> Config:
    """Read ``path`` (TOML; None means defaults only), resolve its relative paths against its
    directory, apply ``overrides`` (dotted keys whose values are not None; a ``scale.claims``
    names the progress store too, unless ``progress.store`` is among them) and validate
    everything."""
    data: dict[str, Any] = {}
    origin = "configuration"
    if path is not None:
        origin = str(path)
        try:
            with open(path, "rb") as file:
                data = tomllib.load(file)
        except FileNotFoundError:
            raise ConfigurationError(f"{origin}: config file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"{origin}: not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigurationError(f"{origin}: cannot read: {exc.strerror}") from None
        anchor_file_paths(
            data,
            Path(path).parent,
            default_feed=SourceConfig().feed,
            default_store=ProgressConfig().store,
        )
    overrides = dict(overrides or {})
    if overrides.get("progress.store") is None:  # a --claims flag over the file's store
        overrides["progress.store"] = overrides.get("scale.claims")
    for dotted, value in overrides.items():
        if value is not None:
            _set_path(data, dotted, value)
    if "path" in data:
        raise ConfigurationError(f"{origin}: unknown key 'path'")
    pipelines = data.pop("pipelines", {})
    if not isinstance(pipelines, dict):
        raise ConfigurationError(f"{origin}: pipelines must be a table of [pipelines.NAME]")
    try:
        config = msgspec.convert(data, Config, strict=True)
    except msgspec.ValidationError as exc:
        raise _explain(exc, origin) from None
    for name, table in pipelines.items():
        try:
            config.pipelines[name] = msgspec.convert(table, PipelineConfig, strict=True)
        except msgspec.ValidationError as exc:
            raise _explain(exc, origin, f"pipelines.{name}") from None
    config.path = str(path) if path is not None else None
    _check(config, origin)
    return config


def _check(config: Config, origin: str) -> None:
    """The command's own rules, which no object of the library checks; each names its key."""
    try:
        check_range(config.run.first_checkpoint, config.run.last_checkpoint)
    except ConfigurationError as exc:
        raise exc.at(origin, "run") from None
    try:
        StoreSpec.parse(config.progress.store)
    except ConfigurationError as exc:
        raise exc.at(origin, "progress") from None
    _check_scale(config, origin)  # scale.claims, when set, is the store from here on
    spec = config.progress.spec
    if config.progress.schema is not None and spec.kind != "postgresql":
        raise ConfigurationError(
            f"{origin}: progress.schema is for a postgresql:// store, not {str(spec)!r}"
        )
    parse_address(config.metrics.address, f"{origin}: metrics.address")
    most = config.metrics.ready_max_lag_seconds
    if most is not None and most <= 0:
        raise ConfigurationError(
            f"{origin}: metrics.ready_max_lag_seconds must be positive, got {most}"
        )
    unknown = [p for p in config.run.pipelines if p not in config.pipelines]
    if unknown:
        known = ", ".join(config.pipelines) or "none"
        raise ConfigurationError(f"{origin}: unknown pipeline {unknown[0]!r} (configured: {known})")


def _check_scale(config: Config, origin: str) -> None:
    """Scale-out settings; in chunked mode the claims live in the progress store's database."""
    scale = config.scale
    if scale.processes < 1:
        raise ConfigurationError(
            f"{origin}: scale.processes must be at least 1, got {scale.processes}"
        )
    try:
        check_chunking(scale.chunk_size, scale.lease_ttl)
    except ConfigurationError as exc:
        raise exc.at(origin, "scale") from None
    if not scale.chunked:
        return
    store = config.progress.store
    if scale.claims is not None:
        try:
            StoreSpec.parse(scale.claims)
        except ConfigurationError as exc:
            raise ConfigurationError(exc.message, key="scale.claims", where=origin) from None
        if store not in (scale.claims, ProgressConfig().store):
            raise ConfigurationError(
                f"{origin}: scale.claims ({mask_dsn(scale.claims)}) and progress.store "
                f"({mask_dsn(store)}) must name the same database (leave progress.store unset)"
            )
        config.progress.store = store = scale.claims
    if not config.progress.spec.holds_claims:
        raise ConfigurationError(
            f"{origin}: scale-out needs an SQLite or PostgreSQL store for its claims "
            f"(scale.claims or progress.store), got {mask_dsn(store)!r}"
        )
    if config.source.delete_below_watermark:
        raise ConfigurationError(
            f"{origin}: source.delete_below_watermark cannot be used with scale-out "
            "(other processes still read below this one's chunk)"
        )


def parse_address(address: str, where: str) -> tuple[str, int]:
    """``host:port`` as a tuple; errors name ``where``."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigurationError(f"{where} must be HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


def import_object(spec: str, where: str, directory: Path | None = None) -> Any:
    """Import ``package.module:Name``; errors name ``where`` (file and key). ``directory`` (the
    config file's) is put first on the import path, as ``PYTHONPATH=.`` would from it: the
    modules beside a config file are found wherever the command runs."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigurationError(f"{where}: expected 'package.module:Class', got {spec!r}")
    if directory is not None and (entry := os.path.abspath(directory)) not in sys.path:
        sys.path.insert(0, entry)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"{where}: cannot import {module_name!r}: {exc}") from None
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigurationError(
                f"{where}: {module_name!r} has no attribute {attribute!r}"
            ) from None
        except ImportError as exc:  # a package's name loaded on first use (PEP 562)
            raise ConfigurationError(f"{where}: cannot import {module_name!r}: {exc}") from None
    return target
