"""Small statistics helpers shared by benchmarks and experiments."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of ``samples``."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    k = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def summary(samples: Sequence[float]) -> dict:
    return {
        "n": len(samples),
        "p50": percentile(samples, 50),
        "p95": percentile(samples, 95),
        "mean": statistics.fmean(samples) if samples else float("nan"),
        "min": min(samples) if samples else float("nan"),
        "max": max(samples) if samples else float("nan"),
        "samples": [round(s, 6) for s in samples],
    }


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(a: Callable[[], object], b: Callable[[], object], n: int) -> tuple[list, list]:
    """Time ``a`` and ``b`` alternately ``n`` times each (after one warm-up of each)."""
    a()
    b()
    ta, tb = [], []
    for _ in range(n):
        ta.append(timed(a))
        tb.append(timed(b))
    return ta, tb
