"""A feed of checkpoint files served over HTTP(S): ``GET {url}/{file_template}`` with aiohttp.

aiohttp is imported on first use: a run over a local feed never loads it.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from .. import __version__
from .._dsn import mask_dsn
from ..errors import ConfigurationError
from ._fetch_faults import FeedRequestRefused, TransientFetchError, status_fault
from ._remote import RemoteFeedSource

if TYPE_CHECKING:
    import aiohttp

__all__ = ["HttpSource", "check_http_url"]

#: Statuses of a server that does not answer HEAD: whether a file is there is asked with a GET
#: of its first byte instead.
_NO_HEAD = (405, 501)


def check_http_url(url: str) -> str:
    """``url`` if it is an ``http://`` or ``https://`` URL with a host, else why not."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - a bad port raises here
    except ValueError as exc:
        raise ConfigurationError(
            f"is not a valid URL ({exc}): {mask_dsn(url)!r}", key="feed"
        ) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"is not an http(s):// URL with a host: {mask_dsn(url)!r}", key="feed"
        )
    return url


class HttpSource(RemoteFeedSource):
    """Checkpoint files at ``{url}/{file_template}`` over HTTP(S) (see ``RemoteFeedSource``).

    Requests carry ``headers`` (an ``Authorization``, say); a URL's ``user:password@`` is sent as
    basic authentication. Timeouts: ``connect_timeout`` to connect, ``request_timeout`` for the
    whole request. A 404 means "not produced yet"; other answers follow ``_fetch_faults``.
    Whether a file is there (for the feed's newest) is asked with HEAD, or with a GET of one
    byte from a server that does not answer HEAD.
    """

    def __init__(self, url: str, *, headers: dict[str, str] | None = None, **options: Any) -> None:
        super().__init__(check_http_url(url), **options)
        self.headers = {"User-Agent": f"checkpoint-indexer/{__version__}", **(headers or {})}
        self._session: aiohttp.ClientSession | None = None
        self._head_allowed = True
        self._base: str | None = None  # the URL with a trailing "/", encoded once

    def _request_url(self, n: int) -> Any:
        """Checkpoint ``n``'s file URL, encoded (its base once, its name per request): yarl
        then takes it as it is instead of parsing and encoding it on every request."""
        from yarl import URL

        if self._base is None:
            self._base = str(URL(f"{self.url}/"))
        return URL(f"{self._base}{quote(self.file_name(n))}", encoded=True)

    def _client(self) -> aiohttp.ClientSession:
        """The session, opened on first use on the running loop."""
        if self._session is None or self._session.closed:
            import aiohttp

            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
                timeout=aiohttp.ClientTimeout(
                    total=self.request_timeout, sock_connect=self.connect_timeout
                ),
                headers=self.headers,
            )
        return self._session

    async def fetch_file(self, n: int) -> bytes | None:
        """GET checkpoint ``n``'s file: its body, None on 404 (see ``RemoteFeedSource``)."""
        url = self.file_url(n)
        started = time.monotonic()
        in_body = False
        try:
            async with self._client().get(self._request_url(n)) as response:
                status = response.status
                if 200 <= status < 300:
                    in_body = True
                    return await response.read()
                if status == 404:
                    return None
                raise status_fault(
                    status, url, response.reason, response.headers.get("Retry-After")
                )
        except (TransientFetchError, FeedRequestRefused):
            raise
        except Exception as exc:
            raise _fault(exc, url, in_body) from None
        finally:
            self.faults.timed(url, started)

    async def file_exists(self, n: int) -> bool:
        """HEAD checkpoint ``n``'s file (or GET its first byte): whether it is there."""
        url = self.file_url(n)
        started = time.monotonic()
        try:
            if self._head_allowed:
                async with self._client().head(url, allow_redirects=True) as response:
                    status = response.status
                if status in _NO_HEAD:
                    self._head_allowed = False
            if not self._head_allowed:
                ranged = {"Range": "bytes=0-0"}
                async with self._client().get(url, headers=ranged) as response:
                    status = response.status
            if 200 <= status < 300:
                return True
            if status == 404:
                return False
            raise status_fault(status, url, None)
        except (TransientFetchError, FeedRequestRefused):
            raise
        except Exception as exc:
            raise _fault(exc, url, False) from None
        finally:
            self.faults.timed(url, started)

    async def close(self) -> None:
        """Close the session and its connections (idempotent)."""
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()


def _fault(exc: Exception, url: str, in_body: bool) -> Exception:
    """What an aiohttp (or socket) error means under the fault rules; anything else as it is."""
    import aiohttp

    if isinstance(exc, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError):
        return FeedRequestRefused(url, f"a malformed URL ({exc})")
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return TransientFetchError("timeout", url, f"no answer in time ({type(exc).__name__})")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return TransientFetchError("short_body", url, f"the body was cut short: {exc}")
    if isinstance(exc, aiohttp.ClientError | OSError):
        reason = "short_body" if in_body else "connect"
        return TransientFetchError(reason, url, f"{type(exc).__name__}: {exc}")
    return exc
