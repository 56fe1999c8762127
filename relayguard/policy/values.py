"""Converters for policy file values: each returns the value or raises ValueError
(or TypeError) saying what was expected ("a reply code like 554"), or a
NamedValueError that names the value; the table reader adds file, rule and key."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import TYPE_CHECKING, TypeVar

from relayguard.config import NamedValueError
from relayguard.durations import EXPECTED_RANGE, parse_duration, parse_duration_range
from relayguard.model import Phase
from relayguard.policy.rules import DurationRange

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

T = TypeVar("T")
E = TypeVar("E", bound=StrEnum)


_CODE = re.compile(r"[1-5x][0-9x][0-9x]")
_ENHANCED_PART = re.compile(r"[0-9*?\[\]!-]+")
_DOMAIN = re.compile(r"[a-z0-9*?.\[\]!_-]+")


def string(v: object) -> str:
    if not isinstance(v, str) or not v.strip():
        raise ValueError("a non-empty string")
    return v


def any_value(v: object) -> object:
    return v


def boolean(v: object) -> bool:
    if not isinstance(v, bool):
        raise TypeError("true or false")
    return v


def list_of(convert: Callable[[object], T]) -> Callable[[object], tuple[T, ...]]:
    """A single value or a non-empty list of values."""

    def conv(v: object) -> tuple[T, ...]:
        items = v if isinstance(v, list) else [v]
        if not items:
            raise ValueError("a value or a non-empty list")
        return tuple(convert(i) for i in items)

    return conv


def duration(v: object) -> float:
    # A zero delay or lifetime in a rule is a retry storm or an instant bounce.
    value = parse_duration(v)
    if value <= 0:
        raise ValueError("a duration more than zero")
    return value


def duration_range(v: object) -> DurationRange:
    """'5m..10m', '5m' or a number of seconds."""
    low, high = parse_duration_range(v)
    if high <= 0:
        raise ValueError(EXPECTED_RANGE + ", more than zero")
    return DurationRange(low, high)


def reply_code(v: object) -> str:
    s = str(v).lower() if isinstance(v, int | str) and not isinstance(v, bool) else ""
    if not _CODE.fullmatch(s):
        raise ValueError("a reply code like 554, '5xx' or '45x'")
    return s


def enhanced_code(v: object) -> str:
    s = string(v).strip()
    parts = s.split(".")
    if len(parts) != 3 or not all(_ENHANCED_PART.fullmatch(p) for p in parts):
        raise ValueError("an enhanced status code like '5.7.1' or '5.7.*'")
    if parts[0][0] not in "245*?[":
        raise ValueError("an enhanced status code of class 2, 4 or 5")
    return s


def regex(v: object) -> re.Pattern[str]:
    s = string(v)
    try:
        return re.compile(s, re.IGNORECASE)
    except re.error as exc:
        raise NamedValueError(f"bad regex {s!r}: {exc}") from None


def phase(v: object) -> Phase:
    try:
        return Phase(string(v).lower())
    except ValueError:
        known = ", ".join(p.value for p in Phase)
        raise NamedValueError(f"unknown phase {v!r} (expected one of {known})") from None


def domain(v: object) -> str:
    s = string(v).strip().lower().rstrip(".")
    if not _DOMAIN.fullmatch(s):
        raise ValueError("a domain or glob like 'example.com' or '*.outlook.com'")
    return s


def enum_of(kind: type[E], what: str) -> Callable[[object], E]:
    def conv(v: object) -> E:
        try:
            return kind(string(v).lower())
        except ValueError:
            known = ", ".join(k.value for k in kind)
            raise NamedValueError(f"unknown {what} {v!r} (expected one of {known})") from None

    return conv


class RouteNames:
    def __init__(self, names: Sequence[str] | None) -> None:
        self.names = tuple(names) if names is not None else None

    def check(self, v: object) -> str:
        s = string(v)
        if self.names is not None and s not in self.names:
            raise NamedValueError(f"unknown route {s!r} (routes: {', '.join(self.names)})")
        return s


def factor(v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not 1 <= v <= 100:
        raise ValueError("a number from 1 to 100")
    return float(v)


def connections(v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 10_000:
        raise ValueError("a number from 1 to 10000")
    return v


def reroute(routes: RouteNames) -> Callable[[object], tuple[str, ...]]:
    def conv(v: object) -> tuple[str, ...]:
        if v == "next":
            return ("next",)
        if not isinstance(v, list):
            raise TypeError('"next" or a list of route names')
        return list_of(routes.check)(v)

    return conv
