"""Openable: what the stores share, opened before use and closed after."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Self

__all__ = ["Openable"]


class Openable(ABC):
    """Something a run opens before use and closes after; ``async with it:`` does both."""

    @abstractmethod
    async def open(self) -> None:
        """Connect, create what is needed (idempotent)."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections and files (idempotent)."""

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
