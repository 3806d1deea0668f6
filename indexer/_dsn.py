"""Connection strings, without a database driver: which name PostgreSQL, and how to print one."""

from __future__ import annotations

import getpass
import os
import re
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = ["POSTGRES_SCHEMES", "is_postgres", "mask_dsn", "same_database"]

#: DSN prefixes that name a PostgreSQL database.
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
_LOOPBACK = {"localhost", "127.0.0.1", "::1", ""}


def is_postgres(value: str) -> bool:
    """Whether ``value`` is a ``postgresql://`` (or ``postgres://``) DSN."""
    return value.startswith(POSTGRES_SCHEMES)


def mask_dsn(value: str) -> str:
    """Hide the password of a ``scheme://user:password@host/db?password=...`` DSN."""
    scheme, sep, rest = value.partition("://")
    if sep:
        at = rest.rfind("@")
        if at >= 0 and ":" in rest[:at]:
            user = rest[:at].split(":", 1)[0]
            rest = f"{user}:***{rest[at:]}"
        value = f"{scheme}{sep}{rest}"
    return re.sub(r"([?&]password=)[^&]*", r"\1***", value)


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
