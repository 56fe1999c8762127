"""`relayguard replay`: registered by relayguard.cli."""

from __future__ import annotations

from typing import Any


def register(sub: Any) -> None:
    del sub
