"""Durations as operators write them in config, policy and scenario files, and as
relayguard shows them back.

One grammar everywhere: '90s', '5m', '1.5h', '250ms', compound '1h30m' or
'2d12h' (largest unit first), a plain number of seconds; ranges 'lo..hi'. One way
of showing them: what relayguard prints can be pasted back into a file.

This module imports nothing of relayguard: config.py, the lowest layer, builds on it.
"""

from __future__ import annotations

import math
import re

EXPECTED = "a duration like '90s', '5m', '1h30m', '2d'"
EXPECTED_RANGE = "a duration or a range like '5m..10m'"

# Largest first: a compound duration names its units in this order, each once.
_SIZE: dict[str, int] = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
_ORDER = {unit: i for i, unit in enumerate((*_SIZE, "ms"))}
_NUMBER = r"\d+(?:\.\d+)?"
_PLAIN = re.compile(rf"\s*({_NUMBER})\s*")
_PART = re.compile(rf"\s*({_NUMBER})\s*(ms|s|m|h|d|w)\s*")
# Shown down to whole days: '14d' reads faster than '2w' next to '36h' in a table.
_SHOWN = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def parse_duration(value: object) -> float:
    """Seconds, from '1h30m', '250ms', '5m' or a plain number (seconds).

    Raises ValueError (TypeError for a value of another type, true and false
    included) whose message says what was expected, so that a table reader can show
    it next to the key.
    """
    if isinstance(value, bool):
        raise TypeError(EXPECTED)
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValueError("a duration that is finite and not negative")
        return float(value)
    if not isinstance(value, str):
        raise TypeError(EXPECTED)
    plain = _PLAIN.fullmatch(value)
    if plain:
        return _finite(float(plain.group(1)))
    total, pos, last = 0.0, 0, -1
    for part in _PART.finditer(value):
        # Parts must tile the whole text, or '5m junk 3s' would read as 5m3s.
        if part.start() != pos:
            raise ValueError(EXPECTED)
        number, unit = part.groups()
        # A unit out of order or twice ('30m1h', '5m5m') is likelier a slip than meant.
        if _ORDER[unit] <= last:
            raise ValueError(EXPECTED + ", largest unit first, each unit once")
        last = _ORDER[unit]
        # Milliseconds divide, so '250ms' is exactly 0.25 and not 250 * 0.001.
        total += float(number) / 1000 if unit == "ms" else float(number) * _SIZE[unit]
        pos = part.end()
    if pos == 0 or pos != len(value):
        raise ValueError(EXPECTED)
    return _finite(total)


def _finite(seconds: float) -> float:
    # Enough digits overflow to inf, which would make every deadline never arrive.
    if not math.isfinite(seconds):
        raise ValueError("a duration that is finite and not negative")
    return seconds


def parse_duration_range(value: object) -> tuple[float, float]:
    """(low, high) in seconds from '5m..10m'; one duration is a range of one value."""
    if isinstance(value, str) and ".." in value:
        low_s, _, high_s = value.partition("..")
        try:
            low, high = parse_duration(low_s), parse_duration(high_s)
        except (ValueError, TypeError):
            raise ValueError(EXPECTED_RANGE) from None
        if low > high:
            raise ValueError(EXPECTED_RANGE + ", low end first")
        return low, high
    try:
        seconds = parse_duration(value)
    except (ValueError, TypeError):
        raise ValueError(EXPECTED_RANGE) from None
    return seconds, seconds


def format_duration(seconds: float) -> str:
    """'5m', '2d', '1h30m'; drawn values to the second from a minute up ('7m32s'),
    to the millisecond below ('250ms', '1.5s'). Parses back with parse_duration."""
    if not math.isfinite(seconds):
        return str(seconds)
    if seconds < 0:
        shown = format_duration(-seconds)
        return shown if shown == "0s" else "-" + shown
    ms = round(seconds * 1000)
    if ms >= 60_000:
        # Past a minute nobody reads milliseconds, and a drawn delay has plenty.
        left = round(seconds)
        parts = []
        for unit, size in _SHOWN:
            count, left = divmod(left, size)
            if count:
                parts.append(f"{count}{unit}")
        return "".join(parts)
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    whole, frac = divmod(ms, 1000)
    return f"{whole}.{frac:03d}".rstrip("0").rstrip(".") + "s"


def format_duration_range(low: float, high: float) -> str:
    """'5m..10m', or '5m' when both ends are the same."""
    if low == high:
        return format_duration(low)
    return f"{format_duration(low)}..{format_duration(high)}"


def format_span(seconds: float, *, units: int = 2) -> str:
    """An age or a wait at a glance, in tables: the `units` largest units, the rest
    dropped ('3s', '4m10s', '2h5m', '3d4h'); under ten seconds to a tenth ('0.4s')."""
    if not math.isfinite(seconds):
        return str(seconds)
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f}".rstrip("0").rstrip(".") + "s"
    left = int(seconds)  # an age shows what has passed: truncated, never rounded up
    parts: list[str] = []
    for unit, size in _SHOWN:
        count, left = divmod(left, size)
        if count or parts:
            parts.append(f"{count}{unit}")
        if len(parts) == units:
            break
    return "".join(p for p in parts if not p.startswith("0")) or "0s"
