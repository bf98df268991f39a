"""Benchmarks (``byok bench ...``): side-by-side ratios measured in one run, written as JSON.

This machine is noisy, so every figure is a ratio of two things measured interleaved in the
same run, with p50/p95 and the raw samples kept. Targets are reported, never asserted in tests.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from typing import Any

BENCHES = ("resolve", "attach", "parallel", "recover", "rekey", "crash", "crash-lifecycle",
           "powerloss", "cinder", "suite")


def run(wanted: tuple[str, ...], identity: Any, stack: Any, *, n: int = 30,
        progress: Callable[[str], None] | None = None) -> dict:
    """Run the ``wanted`` benchmarks (``stack`` is None on a real cloud: no suite there)."""
    from byok.bench import (
        attach,
        cinder,
        crash,
        crashlife,
        parallel,
        powerloss,
        recover,
        rekey,
        resolve,
        suite,
    )

    say = progress or (lambda _m: None)
    jobs: dict[str, Callable[[], dict]] = {
        "resolve": lambda: resolve.run(identity, n=n),
        "attach": lambda: attach.run(identity, n=max(5, n // 3)),
        "parallel": parallel.run,
        "recover": recover.run,
        "rekey": rekey.run,
        "crash": crash.run,
        "crash-lifecycle": lambda: crashlife.run(stack, progress=say) if stack else {
            "skipped": "needs the embedded stack"},
        "powerloss": powerloss.run,
        "cinder": lambda: cinder.run(stack, n=min(n, 10), progress=say),  # ~20 s a round
        "suite": lambda: suite.run(stack) if stack else {"skipped": "needs the embedded stack"},
    }
    results: dict = {"host": {"kernel": platform.release(), "cpus": os.cpu_count(),
                              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}
    for name in wanted:
        say(f"bench {name}")
        t0 = time.perf_counter()
        results[name] = jobs[name]()
        results[name]["bench_seconds"] = round(time.perf_counter() - t0, 1)
        if "target" in results[name]:
            say(f"  {name}: target {results[name]['target']}: "
                f"{'met' if results[name].get('target_met') else 'NOT met'}")
    return results
