"""``progress.store``: the spec parsed once (``StoreSpec``), and the progress and claim stores
it names."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple

from .._dsn import is_postgres, mask_dsn
from ..errors import ConfigurationError

if TYPE_CHECKING:
    from ..claims import ClaimStore
    from ..progress import ProgressStore
    from .config import Config

__all__ = ["StoreSpec", "build_claim_store", "build_store", "named", "resolve_path"]


def resolve_path(value: str) -> Path:
    """A path from the config (``~`` expanded; a relative one is relative to the working
    directory: the config file's own were resolved against its directory when it was loaded)."""
    return Path(value).expanduser()


@contextmanager
def named(config: Config, prefix: str) -> Iterator[None]:
    """Report a ConfigurationError raised inside under the config's file and the key
    ``prefix`` (``config.toml: pipelines.p.concurrency must be ...``)."""
    try:
        yield
    except ConfigurationError as exc:
        raise exc.at(config.origin, prefix) from None


class StoreSpec(NamedTuple):
    """A parsed ``progress.store`` (or ``scale.claims``): its kind and its path or DSN."""

    kind: Literal["memory", "sqlite", "file", "postgresql"]
    #: The file of a ``sqlite:`` or ``file:`` store, the DSN of a PostgreSQL one, else "".
    target: str

    @classmethod
    def parse(cls, text: str) -> StoreSpec:
        """``memory``, ``sqlite:PATH``, ``file:PATH`` or a ``postgresql://`` DSN."""
        if text == "memory":
            return cls("memory", "")
        if is_postgres(text):
            return cls("postgresql", text)
        kind, sep, path = text.partition(":")
        if sep and path and kind in ("sqlite", "file"):
            return cls("sqlite" if kind == "sqlite" else "file", path)
        raise ConfigurationError(
            f"must be 'sqlite:PATH', 'file:PATH', 'memory' or a postgresql:// DSN, "
            f"got {mask_dsn(text)!r}",
            key="store",
        )

    @property
    def path(self) -> Path:
        """The file of a ``sqlite:`` or ``file:`` store (``~`` expanded)."""
        return resolve_path(self.target)

    @property
    def holds_claims(self) -> bool:
        """Whether its database can hold a scaled-out job's claims (SQLite, PostgreSQL)."""
        return self.kind in ("sqlite", "postgresql")

    def exists(self) -> bool:
        """Whether the store holds anything yet (without creating it)."""
        if self.kind in ("sqlite", "file"):
            return self.path.exists()
        return self.kind != "memory"

    def __str__(self) -> str:
        """As written, the DSN's password masked."""
        if self.kind == "memory":
            return "memory"
        return mask_dsn(self.target) if self.kind == "postgresql" else f"{self.kind}:{self.target}"


def build_store(config: Config) -> ProgressStore:
    """The progress store named by ``progress.store``."""
    spec = config.progress.spec
    if spec.kind == "memory":
        from ..progress import MemoryProgressStore

        return MemoryProgressStore()
    if spec.kind == "file":
        from ..progress import FileProgressStore

        return FileProgressStore(spec.path)
    if spec.kind == "sqlite":
        from ..progress import SqliteProgressStore

        return SqliteProgressStore(spec.path)
    from ..progress import PostgresProgressStore

    with named(config, "progress"):
        return PostgresProgressStore(spec.target, schema=config.progress.schema or "public")


def build_claim_store(config: Config) -> ClaimStore:
    """The claim store of a scaled-out job, in the progress store's database."""
    spec = config.progress.spec
    if spec.kind == "sqlite":
        from ..claims import SqliteClaimStore

        return SqliteClaimStore(spec.path)
    if spec.kind == "postgresql":
        from ..claims import PostgresClaimStore

        with named(config, "progress"):
            return PostgresClaimStore(spec.target, schema=config.progress.schema or "public")
    raise ConfigurationError(
        f"{config.origin}: scale-out needs an SQLite or PostgreSQL store, got {spec}"
    )
