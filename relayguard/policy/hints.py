"""Retry hints in reply texts: "try again in 5 minutes", "greylisted for 60 seconds",
"retry after 2 hours", "come back in an hour".

A hint replaces the policy's delay (when the rule honours hints), bounded to
[HINT_MIN, HINT_MAX]: retrying every few seconds helps nobody, and a hint of
days would outlive most messages anyway.
"""

from __future__ import annotations

import re
from typing import NamedTuple

HINT_MIN = 30.0
HINT_MAX = 86400.0

_UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_WORD_NUMBERS = {
    "a": 1,
    "an": 1,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "ten": 10,
    "fifteen": 15,
    "twenty": 20,
    "thirty": 30,
    "sixty": 60,
    "half an": 0.5,
    "half a": 0.5,
}
_NUMBER = (
    r"(?P<n>[0-9]{1,6}(?:\.[0-9]+)?|half an?|an?|one|two|three|four|five|ten|fifteen|twenty|"
    r"thirty|sixty)"
)
_UNIT = r"(?P<unit>seconds?|secs?|s|minutes?|mins?|m|hours?|hrs?|h|days?|d)\b"
# "try again in", "retry after", "wait", "come back in", "greylisted for", "blocked for",
# "deferred for", "for the next": the words that make "N minutes" a wait, not a rate.
_LEAD = (
    r"(?:\b(?:try(?:ing)?|tried|retry|retrying|resend|resending|come back|send)"
    r"(?:\s+(?:it|again|later|this message))*"
    r"\s+(?:in|after|within)(?:\s+(?:at least|about|approximately|the next))?"
    r"|\bwait(?:ing)?(?:\s+(?:for|at least|about))*"
    r"|\b(?:greylisted|graylisted|grey-listed|deferred|delayed|blocked|suspended|throttled|"
    r"limited|banned|locked|postponed|paused|rejected|refused)"
    r"(?:\s+(?:temporarily|again|you))?\s+for(?:\s+(?:the next|at least|about))?"
    r"|\bafter)\s+"
)
_HINT_SOURCE = _LEAD + _NUMBER + r"\s*" + _UNIT
# A bare "for 60 seconds" or "in an hour" is a wait too, unless it measures a rate:
# "100 messages in 5 minutes", "more than 20 connections for 10 minutes".
_BARE_SOURCE = r"\b(?:for|in)\s+" + _NUMBER + r"\s*" + _UNIT
_RATE_BEFORE_SOURCE = (
    r"\b(?:messages?|mails?|e-?mails?|recipients?|connections?|sessions?|per|than|within|"
    r"last|past|limit|rate|exceeded|sent|received)\b[^.;,]{0,25}$"
)


class _Patterns(NamedTuple):
    hint: re.Pattern[str]
    bare: re.Pattern[str]
    rate_before: re.Pattern[str]


def _patterns(flags: int) -> _Patterns:
    return _Patterns(
        re.compile(_HINT_SOURCE, flags),
        re.compile(_BARE_SOURCE, flags),
        re.compile(_RATE_BEFORE_SOURCE, flags),
    )


# The patterns are all lower case. Any text is read case-blind (IGNORECASE, which also
# lets the long s, U+017F, be an "s"); an ASCII text is read as the lower case it is once
# lowered: for ASCII the two readings are the same (an ASCII letter's only case partner
# is its other case; \b and \s do not change) and lower() keeps every character where it
# was, so the matches, their places and their groups are the same. IGNORECASE folds each
# character at each place tried, about three times the cost of the plain match.
for _source in (_HINT_SOURCE, _BARE_SOURCE, _RATE_BEFORE_SOURCE):
    # An upper-case letter (but the P of "(?P<name>") would never match lowered text.
    if not _source.replace("(?P<", "(?<").islower():
        raise ValueError(f"retry hint pattern {_source!r} must be lower case")
_CASE_BLIND = _patterns(re.IGNORECASE)
_LOWER_CASE = _patterns(0)


_DIGIT_UNIT = re.compile(r"[0-9] ?[smhd]\b")


def _mentions_time(lowered: str) -> bool:
    """Whether the text names a unit of time at all ("sec", "min", "hour", "hr", "day",
    a digit and s/m/h/d)."""
    # Written out: a chain of `in` tests is the cheapest way in CPython.
    return (
        "sec" in lowered
        or "min" in lowered
        or "hour" in lowered
        or "hr" in lowered
        or "day" in lowered
        or _DIGIT_UNIT.search(lowered) is not None
    )


def retry_hint(text: str) -> float | None:
    """Seconds the server asked us to wait, bounded to [HINT_MIN, HINT_MAX]; None if none."""
    return retry_hint_lowered(text, text.lower())


def retry_hint_lowered(text: str, lowered: str) -> float | None:
    """retry_hint(text), given text.lower(): classify lowers each reply once, for this
    and for normalise."""
    if not _mentions_time(lowered):
        return None  # no unit of time at all: most replies, and the cheap answer
    # (text.isascii(), not lowered's: "\u212a", the Kelvin sign, lowers to an ASCII "k".)
    read, (hint, bare, rate_before) = (
        (lowered, _LOWER_CASE) if text.isascii() else (text, _CASE_BLIND)
    )
    m = hint.search(read)
    if m is None:
        m = next(
            (b for b in bare.finditer(read) if not rate_before.search(read, 0, b.start())),
            None,
        )
        if m is None:
            return None
    raw = m.group("n").lower()
    amount = _WORD_NUMBERS[raw] if raw in _WORD_NUMBERS else float(raw)
    # casefold, not lower: the case-blind unit pattern also matches a long s (U+017F),
    # whose lower case is itself; its casefold is "s".
    seconds = amount * _UNIT_SECONDS[m.group("unit")[0].casefold()]
    return min(HINT_MAX, max(HINT_MIN, seconds))
