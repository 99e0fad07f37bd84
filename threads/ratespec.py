"""The written form of a rate limit, `COUNT/PERIOD`: "60/m", "10/5m", "1000/d", or "off".

Read by the settings (the RATE_LIMIT_* variables) and by the admin's group limits, so both
accept exactly the same values. Pure Python: the settings module imports it before Django is
set up.
"""

from __future__ import annotations

import re

OFF = "off"
_PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([smhd])\s*$", re.IGNORECASE)


def parse_rate(value: str) -> tuple[int, int] | None:
    """(count, seconds) of a rate, or None for "off" (no limit). ValueError when malformed."""
    if value.strip().lower() == OFF:
        return None
    match = _RATE.match(value)
    if match is None:
        raise ValueError(
            f"{value!r} is not a rate: write COUNT/PERIOD (60/m, 10/5m, 1000/d) or off"
        )
    count, multiple, unit = match.groups()
    seconds = _PERIODS[unit.lower()] * (int(multiple) if multiple else 1)
    if int(count) < 1 or seconds < 1:
        raise ValueError(f"{value!r}: a rate needs a count and a period of at least 1")
    return int(count), seconds


def normal_rate(value: str) -> str:
    """The rate in the tuple form django-ratelimit's keys are made from: "COUNT/SECONDSs"
    (so "60/m" and "60/60s" count into the same window), or "off"."""
    parsed = parse_rate(value)
    return OFF if parsed is None else f"{parsed[0]}/{parsed[1]}s"


def more_generous(a: str, b: str) -> str:
    """Of two rates, the one that lets more through: off, else the higher requests per second,
    else (the same pace) the larger burst."""
    pa, pb = parse_rate(a), parse_rate(b)
    if pa is None:
        return a
    if pb is None:
        return b
    # Cross-multiplied to compare count/seconds without floats.
    if pa[0] * pb[1] != pb[0] * pa[1]:
        return a if pa[0] * pb[1] > pb[0] * pa[1] else b
    return a if pa[0] >= pb[0] else b


def describe(value: str) -> str:
    """A rate for people: "60 a minute", "10 every 5 minutes"."""
    parsed = parse_rate(value)
    if parsed is None:
        return "no limit"
    count, seconds = parsed
    for unit, name in ((86400, "day"), (3600, "hour"), (60, "minute"), (1, "second")):
        if seconds % unit == 0:
            n = seconds // unit
            return f"{count} a {name}" if n == 1 else f"{count} every {n} {name}s"
    return f"{count} every {seconds} seconds"  # pragma: no cover - 1 divides everything
