"""Connection strings, without a database driver: which name PostgreSQL, and how to print one."""

from __future__ import annotations

import getpass
import os
import re
from typing import Any, TypeVar, cast
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = ["POSTGRES_SCHEMES", "is_postgres", "mask_dsn", "same_database"]

T = TypeVar("T")

#: DSN prefixes that name a PostgreSQL database.
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
_LOOPBACK = {"localhost", "127.0.0.1", "::1", ""}
#: What is shown instead of a password.
MASK = "***"
#: A string that may hold a password: nothing else is searched.
_HINT = re.compile(r"@|password", re.IGNORECASE)
#: ``user:password@`` of a URL, also mistyped (``postgresql:/u:pw@h``) or inside longer text:
#: the scheme and user start a word (or follow ``/``), the password runs to the word's last
#: ``@``.
_USERINFO = re.compile(
    r"""(?:(?<=[\s/'"(\[{=,])|^)((?:[A-Za-z][\w+.-]*:/+)?[^\s/@:'"]*:)(?!/)[^\s'"]*(?=@)"""
)
#: A key whose string value is a secret: a password, an object store's secret key, token or
#: account key, an HTTP ``Authorization`` header.
_SECRET_KEY = re.compile(r"password|secret|token|credential|authorization|account_key", re.I)
#: ``password=...`` of a libpq key/value string or a URL's query (``sslpassword``,
#: ``PGPASSWORD`` too), its value bare or single-quoted.
_KEYWORD = re.compile(r"""(\w*password\s*=\s*)(?:'(?:[^'\\]|\\.)*'|[^\s&'"]*)""", re.I)


def is_postgres(value: str) -> bool:
    """Whether ``value`` is a ``postgresql://`` (or ``postgres://``) DSN."""
    return value.startswith(POSTGRES_SCHEMES)


def mask_dsn(value: T) -> T:
    """``value`` with every password in it hidden, the one way the command prints anything
    that may hold a connection string: a URL's ``user:password@`` (``postgresql://u:***@h/db``),
    libpq's ``password=...`` (key/value or query), wherever they stand in a string (an error
    message, a ``repr``), and inside dicts, lists and tuples, where a key naming a password or
    another secret (``_SECRET_KEY``) hides its value too. Anything else is returned as it is."""
    if isinstance(value, str):
        if not _HINT.search(value):
            return cast(T, value)
        masked = _USERINFO.sub(rf"\1{MASK}", value)
        return cast(T, _KEYWORD.sub(rf"\1{MASK}", masked))
    if isinstance(value, dict):
        return cast(T, {key: _mask_item(key, item) for key, item in value.items()})
    if isinstance(value, list):
        return cast(T, [mask_dsn(item) for item in value])
    if isinstance(value, tuple) and not hasattr(value, "_fields"):  # not a NamedTuple
        return cast(T, tuple(mask_dsn(item) for item in value))
    return value


def _mask_item(key: Any, item: Any) -> Any:
    if isinstance(key, str) and _SECRET_KEY.search(key) and isinstance(item, str) and item:
        return MASK
    return mask_dsn(item)


def same_database(a: str, b: str) -> bool:
    """True when two DSNs name the same host(s), port(s), database and user."""
    return _target(a) == _target(b)


def _target(dsn: str) -> tuple[tuple[tuple[str, int], ...], str, str]:
    """(hosts with ports, database, user) of a ``postgresql://`` DSN, with libpq's defaults."""
    parts = urlsplit(dsn)
    query = dict(parse_qsl(parts.query))
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    user = query.get("user") or unquote(userinfo.partition(":")[0])
    user = user or os.environ.get("PGUSER") or getpass.getuser()
    database = query.get("dbname") or query.get("database") or unquote(parts.path.lstrip("/"))
    database = database or os.environ.get("PGDATABASE") or user
    default_port = int(query.get("port") or os.environ.get("PGPORT") or 5432)
    hosts: list[tuple[str, int]] = []
    specs = query["host"].split(",") if "host" in query else hostlist.split(",")
    for spec in specs:
        host, port = spec, ""
        if spec.startswith("["):  # [IPv6]:port
            host, _, port = spec[1:].partition("]")
            port = port.lstrip(":")
        elif spec.count(":") == 1:
            host, _, port = spec.partition(":")
        host = unquote(host).lower()
        host = "localhost" if host in _LOOPBACK else host
        hosts.append((host, int(port) if port else default_port))
    return tuple(sorted(hosts)), database, user
