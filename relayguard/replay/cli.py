"""`relayguard replay`: registered by relayguard.cli."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from relayguard.cli import Commands


def register(sub: Commands) -> None:
    del sub
