"""The whole experiment set's wall time on the embedded stack. Target: <= 5 minutes."""

from __future__ import annotations

from pathlib import Path

TARGET_S = 300.0


def run(stack, out_dir: Path | None = None) -> dict:
    from byok.harness.context import Environment
    from byok.harness.registry import discover
    from byok.harness.runner import run_experiments

    summary = run_experiments(list(discover().values()), Environment.embedded(stack),
                              out_dir=out_dir)
    return {
        "name": "suite", "unit": "s", "seconds": round(summary.seconds, 1),
        "experiments": len(summary.experiments), "counts": summary.counts(),
        "run_dir": str(summary.run_dir), "ratio": round(summary.seconds / TARGET_S, 3),
        "target": f"seconds / {TARGET_S:.0f} <= 1 (the whole set within five minutes)",
        "target_met": summary.seconds <= TARGET_S,
    }
