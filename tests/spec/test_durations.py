"""Human durations: "90s", "5m", "1h30m", "250ms", bare seconds; bad input says how to write it."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentrun.spec.durations import MAX_DURATION, format_duration, parse_duration


@pytest.mark.parametrize("text, seconds", [
    ("90s", 90.0),
    ("5m", 300.0),
    ("1h30m", 5400.0),
    ("1h 30m", 5400.0),
    ("250ms", 0.25),
    ("1.5s", 1.5),
    ("2d", 172800.0),
    ("1m30s", 90.0),
    ("5 m", 300.0),
    ("  90S ", 90.0),
    ("0s", 0.0),
])
def test_unit_strings_parse_to_seconds(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("value, seconds", [(0, 0.0), (12, 12.0), (2.5, 2.5), ("45", 45.0), ("0.5", 0.5)])
def test_bare_numbers_are_seconds(value, seconds):
    result = parse_duration(value)
    assert result == seconds
    assert isinstance(result, float)


def test_milliseconds_are_not_read_as_minutes():
    assert parse_duration("5ms") == pytest.approx(0.005)
    assert parse_duration("5m") == 300.0


@pytest.mark.parametrize("bad", ["5x", "", "   ", "-1", "1h30", "m5", "5s m", "abc", "1..5s", ".5s", "5m-3s"])
def test_malformed_strings_are_refused_with_the_fix(bad):
    with pytest.raises(ValueError) as info:
        parse_duration(bad)
    message = str(info.value)
    assert repr(bad) in message
    assert '"90s"' in message and '"1h30m"' in message


@pytest.mark.parametrize("bad", [-1, -0.5])
def test_negative_numbers_are_refused_with_the_fix(bad):
    with pytest.raises(ValueError, match="negative") as info:
        parse_duration(bad)
    assert '"90s"' in str(info.value)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 10 ** 400, "9" * 400, "9" * 400 + "h"],
                         ids=["nan", "inf", "-inf", "huge-int", "huge-string", "huge-hours"])
def test_non_finite_durations_are_refused(bad):
    # TOML and JSON both allow nan/inf; a NaN estimate would poison the planner.
    with pytest.raises(ValueError) as info:
        parse_duration(bad)
    assert '"90s"' in str(info.value)


@pytest.mark.parametrize("bad, word", [(True, "boolean"), (False, "boolean"), (None, "NoneType"),
                                       ([5], "list"), ({"s": 5}, "dict")])
def test_non_duration_types_are_refused_with_the_fix(bad, word):
    with pytest.raises(ValueError) as info:
        parse_duration(bad)
    assert word in str(info.value)
    assert '"90s"' in str(info.value)


@settings(max_examples=150, deadline=None)
@given(h=st.integers(0, 50), m=st.integers(0, 59), s=st.integers(0, 59), ms=st.integers(0, 999))
def test_compound_durations_add_up(h, m, s, ms):
    text = f"{h}h{m}m{s}s{ms}ms"
    assert parse_duration(text) == pytest.approx(h * 3600 + m * 60 + s + ms / 1000)


@settings(max_examples=150, deadline=None)
@given(st.floats(min_value=0, max_value=MAX_DURATION, allow_nan=False, allow_infinity=False))
def test_every_number_up_to_the_maximum_is_accepted_unchanged(value):
    assert parse_duration(value) == value


@pytest.mark.parametrize("value, maximum, expected", [
    ("31d", MAX_DURATION, "'31d' is out of range; use a duration from 0s to 30d"),
    (MAX_DURATION + 1, MAX_DURATION, "2592001.0 is out of range; use a duration from 0s to 30d"),
    (10 ** 18, MAX_DURATION, "1000000000000000000 is out of range; use a duration from 0s to 30d"),
    ("25h", 86400.0, "'25h' is out of range; use a duration from 0s to 1d"),
    (91, 90.0, "91 is out of range; use a duration from 0s to 90s"),
])
def test_durations_past_the_maximum_are_refused_with_the_range(value, maximum, expected):
    assert parse_duration(maximum) == maximum
    with pytest.raises(ValueError) as info:
        parse_duration(value, maximum)
    assert str(info.value) == expected


def test_a_huge_duration_string_is_quoted_short_and_on_one_line():
    with pytest.raises(ValueError) as info:
        parse_duration("5x\n" * 1_000_000)
    message = str(info.value)
    assert len(message) < 300 and "\n" not in message and "..." in message


@pytest.mark.parametrize("seconds, text", [
    (None, "-"), (0.4, "0.4s"), (9.94, "9.9s"), (12, "12s"), (59.4, "59s"), (185, "3m05s"),
    (3720, "1h02m"), (59.6, "1m00s"),
])
def test_format_duration_is_short(seconds, text):
    assert format_duration(seconds) == text
