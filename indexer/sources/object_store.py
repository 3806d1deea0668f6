"""A feed of checkpoint files in an object store (S3, GCS, Azure, or a local directory by
``file://``), read with obstore, the Python bindings of Rust's ``object_store``.

obstore is imported on first use: a run over a local feed never loads it.
"""

from __future__ import annotations

import re
import time
from datetime import timedelta
from typing import Any

from .._dsn import mask_dsn
from ..errors import ConfigurationError
from ._fetch_faults import FeedRequestRefused, TransientFetchError, status_fault
from ._remote import RemoteFeedSource

__all__ = ["OBJECT_STORE_SCHEMES", "ObjectStoreSource"]

#: URL schemes obstore reads: S3, GCS, Azure and local files.
OBJECT_STORE_SCHEMES = ("s3", "s3a", "gs", "az", "azure", "abfs", "abfss", "adl", "file")
#: ``[source.options]`` keys that are the HTTP client's (obstore's ``ClientConfig``); the others
#: configure the store (credentials, region, endpoint, ...).
CLIENT_KEYS = frozenset(
    {
        "allow_http",
        "allow_invalid_certificates",
        "connect_timeout",
        "default_content_type",
        "default_headers",
        "http1_only",
        "http2_only",
        "pool_idle_timeout",
        "pool_max_idle_per_host",
        "proxy_url",
        "proxy_ca_certificate",
        "proxy_excludes",
        "randomize_addresses",
        "timeout",
        "user_agent",
    }
)
#: The status code in an obstore error's text.
_STATUS = re.compile(r"status code: (\d{3})")
#: The error text of a bucket or container that does not exist (a 404 that never heals).
_NO_BUCKET = re.compile(r"NoSuchBucket|ContainerNotFound|bucket does not exist", re.IGNORECASE)


class ObjectStoreSource(RemoteFeedSource):
    """Checkpoint files at ``{url}/{file_template}`` in an object store: ``s3://bucket/prefix``,
    ``gs://bucket/prefix``, ``az://account/container/prefix`` or ``file:///directory`` (see
    ``RemoteFeedSource``).

    Credentials and settings come from the environment (``AWS_*``, ``GOOGLE_*``, ``AZURE_*``),
    and from ``store_options`` (obstore's keys for the store: ``region``, ``endpoint``,
    ``access_key_id``, ...; or for its client: ``allow_http``, ``proxy_url``, ...). None of
    them is ever printed. The store's own retries are off: the fault rules retry. The feed's
    newest file is found by listing it when nothing is known, by probing forward after.
    """

    def __init__(
        self, url: str, *, store_options: dict[str, Any] | None = None, **options: Any
    ) -> None:
        super().__init__(url, **options)
        self.store_options = dict(store_options or {})
        self._store = self._open_store()

    def __repr__(self) -> str:
        return f"ObjectStoreSource({mask_dsn(self.url)!r}, follow={self.follow})"

    def _open_store(self) -> Any:
        """The obstore store the URL and options name; a bad URL or option is a
        configuration error naming it (never its value)."""
        from obstore.exceptions import BaseError
        from obstore.store import from_url

        client = {key: v for key, v in self.store_options.items() if key in CLIENT_KEYS}
        client.setdefault("connect_timeout", timedelta(seconds=self.connect_timeout))
        client.setdefault("timeout", timedelta(seconds=self.request_timeout))
        store = {key: v for key, v in self.store_options.items() if key not in CLIENT_KEYS}
        try:
            return from_url(  # type: ignore[call-overload]
                self.url, client_options=client, retry_config={"max_retries": 0}, **store
            )
        except (BaseError, ValueError, TypeError) as exc:
            unknown = re.search(r"[Cc]onfiguration key:? ['\"]?(\w+)['\"]? is not valid", str(exc))
            if unknown:
                raise ConfigurationError(
                    f"unknown option {unknown[1]!r} for {mask_dsn(self.url)}", key="options"
                ) from None
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigurationError(
                f"cannot open {mask_dsn(self.url)}: {mask_dsn(first)}", key="feed"
            ) from None

    async def fetch_file(self, n: int) -> bytes | None:
        """GET checkpoint ``n``'s object: its bytes, None when it is not there."""
        import obstore

        name = self.file_name(n)
        started = time.monotonic()
        try:
            result = await obstore.get_async(self._store, name)
            return bytes(await result.bytes_async())
        except Exception as exc:
            missing = _fault(exc, self.file_url(n))
            if missing is None:
                return None
            raise missing from None
        finally:
            self.faults.timed(self.file_url(n), started)

    async def check_reachable(self, n: int) -> str:
        """One GET of checkpoint ``n``'s object (whose error, unlike a HEAD's, says when the
        bucket itself is missing): what was found."""
        there = await self.fetch_file(n) is not None
        return f"reached: checkpoint {n} {'is there' if there else 'is not there (yet)'}"

    async def file_exists(self, n: int) -> bool:
        """HEAD checkpoint ``n``'s object: whether it is there."""
        import obstore

        try:
            await obstore.head_async(self._store, self.file_name(n))
        except Exception as exc:
            missing = _fault(exc, self.file_url(n))
            if missing is None:
                return False
            raise missing from None
        return True

    async def list_newest(self) -> int | None:
        """The highest number of the files the feed's listing holds that the template names."""
        import obstore

        prefix, _, suffix = self.file_template.partition("{seq}")
        if "{" in prefix or "{" in suffix:  # a formatted number ({seq:08d}): probe instead
            return None
        pattern = re.compile(re.escape(prefix) + r"(0|[1-9][0-9]*)" + re.escape(suffix))
        newest: int | None = None
        try:
            async for page in obstore.list(self._store, None, chunk_size=1000):
                for entry in page:
                    match = pattern.fullmatch(entry["path"])
                    if match is not None and (newest is None or int(match[1]) > newest):
                        newest = int(match[1])
        except Exception as exc:
            fault = _fault(exc, self.url)
            if fault is None:
                return None
            raise fault from None
        return newest


def _fault(exc: Exception, url: str) -> Exception | None:
    """What an obstore error means under the fault rules: None for "not there", a refusal,
    a transient fault, or the error as it is."""
    from obstore.exceptions import (
        BaseError,
        InvalidPathError,
        NotSupportedError,
        PermissionDeniedError,
        UnauthenticatedError,
    )

    text = str(exc)
    first = mask_dsn(text.splitlines()[0] if text else type(exc).__name__)
    if isinstance(exc, FileNotFoundError):
        if _NO_BUCKET.search(text):
            return FeedRequestRefused(url, f"the bucket or container does not exist ({first})")
        return None
    if isinstance(exc, PermissionDeniedError | UnauthenticatedError):
        return FeedRequestRefused(url, f"access denied ({first})")
    if isinstance(exc, InvalidPathError | NotSupportedError):
        return FeedRequestRefused(url, f"a malformed path ({first})")
    if not isinstance(exc, BaseError | OSError):
        return exc
    status = _STATUS.search(text)
    if status is not None:
        return status_fault(int(status[1]), url, first)
    lowered = text.lower()
    if "timed out" in lowered or "timeout" in lowered:
        return TransientFetchError("timeout", url, first)
    if "body" in lowered or "decod" in lowered:
        return TransientFetchError("short_body", url, first)
    return TransientFetchError("connect", url, first)
