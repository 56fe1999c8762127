"""Retry hints in reply texts: "try again in 5 minutes", "retry in 300 seconds"."""

from __future__ import annotations

import re

# Bounds on what a server may make us do: retrying every few seconds helps nobody,
# and a hint of days would outlive most messages anyway.
HINT_MIN = 30.0
HINT_MAX = 86400.0

_UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0}

_HINT = re.compile(
    r"(?:\b(?:try(?:ing)?\s+again|retry)(?:\s+later)?\s+(?:in|after)\s+|\bafter\s+)"
    r"(?P<n>[0-9]{1,7})\s*"
    r"(?P<unit>seconds?|secs?|s|minutes?|mins?|m|hours?|hrs?|h)\b",
    re.IGNORECASE | re.ASCII,
)


def retry_hint(text: str) -> float | None:
    """Seconds the server asked us to wait, bounded to [HINT_MIN, HINT_MAX]; None if none."""
    m = _HINT.search(text)
    if m is None:
        return None
    seconds = int(m.group("n")) * _UNIT_SECONDS[m.group("unit")[0].lower()]
    return min(HINT_MAX, max(HINT_MIN, seconds))
