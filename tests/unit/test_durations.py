"""Durations: one grammar for config, policy and scenario files, one way of showing them."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relayguard.durations import (
    format_duration,
    format_duration_range,
    format_span,
    parse_duration,
    parse_duration_range,
)
from relayguard.policy.rules import Backoff, DurationRange, human_duration


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("90s", 90.0),
        ("5m", 300.0),
        ("4h", 14400.0),
        ("5d", 432000.0),
        ("2w", 1209600.0),
        ("250ms", 0.25),
        ("1.5h", 5400.0),
        ("0", 0.0),
        ("42", 42.0),
        ("1.5", 1.5),
        (" 5 m ", 300.0),
        ("1h30m", 5400.0),
        ("2d12h", 216000.0),
        ("5m30s", 330.0),
        ("1m0.5s", 60.5),
        ("1s500ms", 1.5),
        ("1w2d3h4m5s6ms", 604800 + 2 * 86400 + 3 * 3600 + 4 * 60 + 5.006),
        ("1h 30m", 5400.0),
        (7, 7.0),
        (2.5, 2.5),
        (0, 0.0),
    ],
)
def test_parse_duration_good(value, seconds):
    result = parse_duration(value)
    assert result == pytest.approx(seconds)
    assert isinstance(result, float)


@pytest.mark.parametrize(
    "value",
    [
        "5 parsecs",
        "",
        " ",
        "m",
        "5x",
        "-5m",
        "5M",
        "1e3s",
        "1h30",  # a bare number only on its own: '30' of what?
        "30m1h",  # largest unit first
        "5m5m",  # each unit once
        "1h-30m",
        "1h,30m",
        "5m junk",
        "inf",
        "nan",
        "1" * 400,  # overflows to inf
        "1" * 400 + "s",
        True,
        False,
        -1,
        -0.5,
        math.inf,
        math.nan,
        None,
        [5],
        "five",
    ],
)
def test_parse_duration_bad(value):
    with pytest.raises((ValueError, TypeError), match=r"^a duration"):
        parse_duration(value)


def test_units_out_of_order_say_so():
    with pytest.raises(ValueError, match="largest unit first, each unit once"):
        parse_duration("30m1h")


def test_milliseconds_are_exact():
    assert parse_duration("250ms") == 0.25
    assert parse_duration("100ms") == 0.1


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("5m..10m", (300.0, 600.0)),
        ("200ms..1.5s", (0.2, 1.5)),
        ("1h30m..2d", (5400.0, 172800.0)),
        ("0..0", (0.0, 0.0)),
        ("5m", (300.0, 300.0)),
        (90, (90.0, 90.0)),
    ],
)
def test_parse_duration_range_good(value, expected):
    assert parse_duration_range(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("10m..5m", "a duration or a range like '5m..10m', low end first"),
        ("5m..", "a duration or a range like '5m..10m'"),
        ("..5m", "a duration or a range like '5m..10m'"),
        ("5m..10m..20m", "a duration or a range like '5m..10m'"),
        ("5 parsecs", "a duration or a range like '5m..10m'"),
        (True, "a duration or a range like '5m..10m'"),
        ([1, 2], "a duration or a range like '5m..10m'"),
    ],
)
def test_parse_duration_range_bad(value, message):
    with pytest.raises(ValueError) as info:
        parse_duration_range(value)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.25, "250ms"),
        (0.5, "500ms"),
        (1.5, "1.5s"),
        (12.345, "12.345s"),
        (45, "45s"),
        (60, "1m"),
        (90, "1m30s"),
        (300, "5m"),
        (3600, "1h"),
        (5400, "1h30m"),
        (4000, "1h6m40s"),
        (86400, "1d"),
        (172800, "2d"),
        (432000, "5d"),
        (90000, "1d1h"),
        (216000, "2d12h"),
        (604800, "7d"),
        (1_000_001, "11d13h46m41s"),
    ],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (452.37, "7m32s"),  # a drawn delay: whole seconds from a minute up
        (59.9996, "1m"),  # rounds across the minute
        (0.4, "400ms"),
        (0.0004, "0s"),
        (3599.6, "1h"),
        (-90, "-1m30s"),  # a deadline already past
        (-0.0001, "0s"),
    ],
)
def test_format_drawn_values(seconds, text):
    assert format_duration(seconds) == text


def test_format_non_finite():
    assert format_duration(math.inf) == "inf"


def test_human_duration_is_the_one_formatter():
    assert human_duration is format_duration


def test_ranges_and_backoff_show_through_the_one_formatter():
    assert format_duration_range(300, 600) == "5m..10m"
    assert format_duration_range(5400, 5400) == "1h30m"
    assert str(DurationRange(0.2, 1.5)) == "200ms..1.5s"
    assert str(DurationRange(300, 300)) == "5m"
    assert str(Backoff(300, 2, 4000)) == "backoff from 5m, x2, capped at 1h6m40s"


@pytest.mark.parametrize("seconds", [1_000_001.0, 1_234_567.0])
def test_format_duration_round_trips_large_odd_values(seconds):
    # ':g' keeps 6 significant digits: 1000001 → '1e+06s', which is neither exact nor parseable.
    text = format_duration(seconds)
    assert parse_duration(text) == seconds, text


def test_duration_strings_never_spell_infinity():
    with pytest.raises(ValueError):
        parse_duration("inf")
    assert math.isfinite(parse_duration("999999w"))


@given(st.integers(min_value=0, max_value=10**12))
def test_whole_seconds_round_trip(seconds):
    text = format_duration(float(seconds))
    assert parse_duration(text) == seconds, text


@given(st.integers(min_value=0, max_value=59_999))
def test_milliseconds_under_a_minute_round_trip(ms):
    text = format_duration(ms / 1000)
    assert parse_duration(text) == pytest.approx(ms / 1000, abs=1e-9), text


@given(st.integers(min_value=0, max_value=10**9), st.integers(min_value=0, max_value=10**9))
def test_ranges_round_trip(a, b):
    low, high = sorted((float(a), float(b)))
    assert parse_duration_range(format_duration_range(low, high)) == (low, high)


@given(st.floats(min_value=60, max_value=10**9, allow_nan=False))
def test_drawn_values_show_whole_seconds(seconds):
    text = format_duration(seconds)
    assert "." not in text
    assert "ms" not in text
    assert parse_duration(text) == round(seconds)


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0, "0s"),
        (0.4, "0.4s"),
        (3, "3s"),
        (59.9, "59s"),
        (250, "4m10s"),
        (3 * 3600 + 5 * 60 + 7, "3h5m"),
        (2 * 86400 + 30, "2d"),
        (4 * 86400 + 2 * 3600 + 5, "4d2h"),
        (-5, "0s"),
    ],
)
def test_spans_show_two_units_at_most(seconds, shown):
    assert format_span(seconds) == shown
