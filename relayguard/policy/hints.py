"""Retry hints in reply texts: "try again in 5 minutes", "greylisted for 60 seconds",
"retry after 2 hours", "come back in an hour".

A hint replaces the policy's delay (when the rule honours hints), bounded to
[HINT_MIN, HINT_MAX]: retrying every few seconds helps nobody, and a hint of
days would outlive most messages anyway.
"""

from __future__ import annotations

import re

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
_HINT = re.compile(_LEAD + _NUMBER + r"\s*" + _UNIT, re.IGNORECASE)
# A bare "for 60 seconds" or "in an hour" is a wait too, unless it measures a rate:
# "100 messages in 5 minutes", "more than 20 connections for 10 minutes".
_BARE = re.compile(r"\b(?:for|in)\s+" + _NUMBER + r"\s*" + _UNIT, re.IGNORECASE)
_RATE_BEFORE = re.compile(
    r"\b(?:messages?|mails?|e-?mails?|recipients?|connections?|sessions?|per|than|within|"
    r"last|past|limit|rate|exceeded|sent|received)\b[^.;,]{0,25}$",
    re.IGNORECASE,
)


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
    if not _mentions_time(text.lower()):
        return None  # no unit of time at all: most replies, and the cheap answer
    m = _HINT.search(text)
    if m is None:
        m = next(
            (b for b in _BARE.finditer(text) if not _RATE_BEFORE.search(text, 0, b.start())),
            None,
        )
        if m is None:
            return None
    raw = m.group("n").lower()
    amount = _WORD_NUMBERS[raw] if raw in _WORD_NUMBERS else float(raw)
    seconds = amount * _UNIT_SECONDS[m.group("unit")[0].lower()]
    return min(HINT_MAX, max(HINT_MIN, seconds))
