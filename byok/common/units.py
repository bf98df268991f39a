"""Sizes as people write them on a command line: 4096, 64M, 1G, 1.5GiB."""

from __future__ import annotations

UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """Bytes in ``text``; binary units (64M = 64 MiB). ValueError says what is accepted."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        value = float(t[:-1]) * UNITS[t[-1]] if t and t[-1] in UNITS else int(t)
    except (ValueError, KeyError):
        raise ValueError(f"not a size: {text!r} (examples: 4096, 64M, 1G)") from None
    if value < 0 or value != value:  # negative or NaN
        raise ValueError(f"not a size: {text!r} (a size is not negative)")
    return int(value)
