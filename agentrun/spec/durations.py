"""Parse and format human durations such as "90s", "5m", "1h30m", "250ms"."""

from __future__ import annotations

import math
import re

from agentrun.spec.values import shown

MAX_DURATION = 30 * 86400.0     # 30 days: the longest timeout, estimate or model timeout
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")
_HOW = 'write it like "90s", "5m", "1h30m" or "250ms" (a bare number means seconds)'


def parse_duration(value: object, maximum: float = MAX_DURATION) -> float:
    """Seconds from a number (already seconds) or a string like "1h30m", at most ``maximum``.

    Raises ValueError with a message fit to show the user.
    """
    if isinstance(value, bool):
        raise ValueError("expected a duration such as \"90s\" or \"5m\", got a boolean")
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:  # an int too large for a float (JSON allows any size)
            seconds = math.inf if value > 0 else -math.inf
        if seconds < 0:
            raise ValueError(f"bad duration {shown(value)}: a duration cannot be negative; {_HOW}")
        return _bounded(value, seconds, maximum)
    if not isinstance(value, str):
        raise ValueError(f"expected a duration such as \"90s\" or \"5m\", got {type(value).__name__}")
    text = value.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return _bounded(value, float(text), maximum)
    total, pos = 0.0, 0
    for match in _PART.finditer(text):
        if match.start() != pos and text[pos:match.start()].strip():
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos == 0 or text[pos:].strip():
        raise ValueError(f"bad duration {shown(value)}; {_HOW}")
    return _bounded(value, total, maximum)


def _bounded(value: object, seconds: float, maximum: float) -> float:
    # NaN and infinity (valid TOML and JSON floats, or a string of 400 digits)
    # would poison every comparison in the planner: refuse them.
    if not math.isfinite(seconds):
        raise ValueError(f"bad duration {shown(value)}: it must be a finite number of seconds; {_HOW}")
    if seconds > maximum:
        raise ValueError(f"{shown(value)} is out of range; use a duration from 0s to {_largest_unit(maximum)}")
    return seconds


def _largest_unit(seconds: float) -> str:
    """``seconds`` in the largest unit that divides it: 30d, 1d, 90s."""
    for unit, size in sorted(_UNITS.items(), key=lambda item: -item[1]):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def format_duration(seconds: float | None) -> str:
    """Short human form: 0.4s, 12s, 3m05s, 1h02m."""
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.1f}s"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, sec = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
