"""Connection strings, without a database driver: which name PostgreSQL, and how to print one."""

from __future__ import annotations

import re

__all__ = ["POSTGRES_SCHEMES", "is_postgres", "mask_dsn"]

#: DSN prefixes that name a PostgreSQL database.
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


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
