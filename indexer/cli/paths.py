"""Relative paths in a config file: they name files beside the file, wherever the command runs.

A relative path the config file gives (or leaves to its default) is resolved against the file's
directory: ``indexer run -c /srv/job/swaps.toml`` from any directory reads ``/srv/job/demo/feed``
and keeps ``/srv/job/swaps.db``. A flag or an ``INDEXER_*`` variable is the caller's, so its
relative paths stay relative to the working directory. What is resolved:

- the framework's keys: ``source.feed`` (unless it is a URL), the file of a ``sqlite:PATH`` or
  ``file:PATH`` ``progress.store`` and ``scale.claims``;
- a worker's or reducer's ``options`` whose constructor parameter takes a path (annotated
  ``os.PathLike`` or ``pathlib.Path``, as ``SqliteSink(path=)``, ``CounterSink(path=)``,
  ``JsonlSink(path=)``, ``ArchiveSink(directory=)`` and ``CheckpointArchiver(directory=)``).

``~`` is expanded later; a path starting with it, like an absolute one, is left as it is.
"""

from __future__ import annotations

import inspect
import os
import re
import typing
from pathlib import Path, PurePath
from typing import Any

from ..sources import is_url

__all__ = [
    "anchor_file_paths",
    "anchor_options",
    "anchored",
    "constructor_signature",
    "path_parameters",
]

#: Store kinds whose spec (``KIND:PATH``) names a file.
_FILE_STORES = ("sqlite", "file")
#: An annotation, as text, that takes a path.
_PATH_TEXT = re.compile(r"\b(?:PathLike|Path|PurePath)\b")


def anchored(value: str, directory: Path) -> str:
    """``value`` resolved against ``directory`` when it is a relative path."""
    if directory == Path(".") or Path(value).expanduser().is_absolute():
        return value
    return str(directory / value)


def _anchored_store(text: str, directory: Path) -> str:
    """A ``sqlite:PATH`` or ``file:PATH`` spec with its PATH anchored; others as they are."""
    kind, sep, path = text.partition(":")
    if sep and path and kind in _FILE_STORES:
        return f"{kind}:{anchored(path, directory)}"
    return text


def anchor_file_paths(
    data: dict[str, Any], directory: Path, *, default_feed: str, default_store: str
) -> None:
    """Resolve, in the TOML ``data`` of a file in ``directory``, the framework's relative paths
    against it: those the file gives and the defaults of those it leaves out (the store's
    unless ``scale.claims`` names the database instead). Values of the wrong type are left for
    validation to report."""
    source = data.setdefault("source", {})
    if isinstance(source, dict) and isinstance(feed := source.get("feed", default_feed), str):
        source["feed"] = feed if is_url(feed) else anchored(feed, directory)
    scale = data.get("scale", {})
    claims = scale.get("claims") if isinstance(scale, dict) else None
    if isinstance(claims, str):
        scale["claims"] = _anchored_store(claims, directory)
    progress = data.setdefault("progress", {})
    if not isinstance(progress, dict):
        return
    store = progress.get("store", None if claims is not None else default_store)
    if isinstance(store, str):
        progress["store"] = _anchored_store(store, directory)


def _takes_path(annotation: Any) -> bool:
    """Whether a parameter annotated ``annotation`` takes a path (``str | os.PathLike[str]``,
    ``Path | None``, ...); an annotation left as text is read as text."""
    if isinstance(annotation, str):
        return bool(_PATH_TEXT.search(annotation))
    if isinstance(annotation, type) and issubclass(annotation, PurePath | os.PathLike):
        return True
    if typing.get_origin(annotation) is os.PathLike:
        return True
    return any(_takes_path(arg) for arg in typing.get_args(annotation))


def constructor_signature(cls: Any) -> inspect.Signature:
    """``inspect.signature(cls)``. A class that keeps ``object``'s constructor (a Worker without
    ``__init__``) takes no arguments: its empty signature is returned as it is, since inspect
    reads it off ``object``'s text signature with the tokenizer, whose first use costs 3 ms of
    the command's start-up."""
    if (
        isinstance(cls, type)
        and type(cls).__call__ is type.__call__
        and cls.__init__ is object.__init__  # type: ignore[misc]
        and cls.__new__ is object.__new__
        and "__signature__" not in dir(cls)
    ):
        return inspect.Signature()
    return inspect.signature(cls)


def path_parameters(cls: Any) -> frozenset[str]:
    """The names of ``cls``'s constructor parameters that take a path."""
    try:
        parameters = constructor_signature(cls).parameters
    except (TypeError, ValueError):  # no signature to read
        return frozenset()
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # a name only imported for type checking: read the annotations as text
        hints = {}
    return frozenset(
        name
        for name, parameter in parameters.items()
        if _takes_path(hints.get(name, parameter.annotation))
    )


def anchor_options(cls: Any, options: dict[str, Any], directory: Path | None) -> dict[str, Any]:
    """A config file's ``options`` for ``cls`` with the relative paths among them resolved
    against the file's ``directory`` (None: no file, nothing to resolve)."""
    if directory is None:
        return options
    paths = path_parameters(cls)
    return {
        name: anchored(value, directory) if name in paths and isinstance(value, str) else value
        for name, value in options.items()
    }
