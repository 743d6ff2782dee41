"""Parse and format human durations such as "90s", "5m", "1h30m", "250ms"."""

from __future__ import annotations

import math
import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")
_HOW = 'write it like "90s", "5m", "1h30m" or "250ms" (a bare number means seconds)'


def parse_duration(value: object) -> float:
    """Seconds from a number (already seconds) or a string like "1h30m".

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
            raise ValueError(f"bad duration {value!r}: a duration cannot be negative; {_HOW}")
        return _finite(value, seconds)
    if not isinstance(value, str):
        raise ValueError(f"expected a duration such as \"90s\" or \"5m\", got {type(value).__name__}")
    text = value.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return _finite(value, float(text))
    total, pos = 0.0, 0
    for match in _PART.finditer(text):
        if match.start() != pos and text[pos:match.start()].strip():
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos == 0 or text[pos:].strip():
        raise ValueError(f"bad duration {value!r}; {_HOW}")
    return _finite(value, total)


def _finite(value: object, seconds: float) -> float:
    # NaN and infinity (valid TOML and JSON floats, or a string of 400 digits)
    # would poison every comparison in the planner: refuse them.
    if not math.isfinite(seconds):
        raise ValueError(f"bad duration {value!r}: it must be a finite number of seconds; {_HOW}")
    return seconds


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
