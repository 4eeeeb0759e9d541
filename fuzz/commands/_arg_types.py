"""The types of the command line's option values: each parses one text or says, in the option's error, why not."""

from __future__ import annotations

import argparse
import re

__all__ = [
    "count",
    "duration",
    "integer",
    "non_negative_count",
    "non_negative_float",
    "non_negative_number",
    "positive_float",
    "seconds",
    "world_size",
]


def _float(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None


def seconds(text: str) -> float:
    return _float(text, "a number of seconds")


def positive_float(text: str) -> float:
    if seconds(text) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0")
    return float(text)


def non_negative_float(text: str) -> float:
    """Seconds, 0 or more."""
    return _not_negative(seconds(text), text)


def non_negative_number(text: str) -> float:
    """An amount (of CPUs, of GPUs), 0 or more."""
    return _not_negative(_float(text, "a number"), text)


def _not_negative(value: float, text: str) -> float:
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value


DURATION_PARTS = re.compile(r"(\d+(?:\.\d*)?)([smh])")


def duration(text: str) -> float:
    """Seconds from "90", "90s", "15m", "8h" or "1h30m"."""
    cleaned = text.strip().lower()
    try:
        value = float(cleaned)
    except ValueError:
        parts = DURATION_PARTS.findall(cleaned)
        if not parts or "".join(n + u for n, u in parts) != cleaned:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a duration: give seconds, or a number with s, m or h (90, 15m, 8h, 1h30m)"
            ) from None
        value = sum(float(n) * {"s": 1, "m": 60, "h": 3600}[u] for n, u in parts)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0")
    return value


def integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def count(text: str) -> int:
    value = integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return value


def world_size(text: str) -> int:
    value = integer(text)
    if not 1 <= value <= 64:
        raise argparse.ArgumentTypeError(f"{value} ranks: choose 1 to 64")
    return value


def non_negative_count(text: str) -> int:
    value = integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value}: must be 0 or more")
    return value
