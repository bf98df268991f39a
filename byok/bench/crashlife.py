"""The full lifecycle crash enumeration (``byok bench crash-lifecycle``): every lifecycle
operation that writes a volume, its header, its record or its key bookkeeping, and the castellan
backend's consumer bookkeeping, killed at every counted call of one run (byok and cryptsetup:
writes, pwrites, fsyncs, renames, truncates, copy_file_range, unlinks, each request to the key
service) in each of its variants, and judged by :mod:`byok.harness.opcrash` after the next call.
CI runs a sample (tests/reliability/test_lifecycle_enumeration.py); it needs the embedded stack.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from byok.harness import opcrash


def cases() -> list[tuple[str, str]]:
    """(operation, variant) in the order they run."""
    out = [(name, v) for name, op in opcrash.OPS.items() for v in op.variants]
    return out + [(name, "tree") for name in opcrash.CASTELLAN]


def run(stack: Any, *, only: list[str] | None = None,
        progress: Callable[[str], None] | None = print) -> dict:
    from byok.common import paths

    out: dict = {"name": "crash-lifecycle", "unit": "states", "operations": {}}
    totals = {"tried": 0, "problems": 0, "counted_calls": 0}
    paths.base_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-crash-lifecycle-", dir=paths.base_dir()) as d:
        lab = opcrash.build_lab(Path(d), clouds_yaml=stack.cfg.clouds_yaml,
                                user_cloud=stack.cloud_name("alice"),
                                service_cloud=stack.cloud_name("cinder"),
                                auth_url=stack.cfg.keystone_url,
                                endpoint=stack.cfg.barbican_url)
        try:
            for name, variant in cases():
                if only and name not in only:
                    continue
                t0 = time.perf_counter()
                tally = opcrash.enumerate_op(lab, name, variant, sample=None)
                rec = tally.as_dict() | {"seconds": round(time.perf_counter() - t0, 1)}
                out["operations"].setdefault(name, {})[variant] = rec
                totals["tried"] += tally.tried
                totals["problems"] += len(tally.problems)
                totals["counted_calls"] += tally.calls
                if progress:
                    progress(f"{name}/{variant}: {tally.calls} calls, {tally.tried} states, "
                             f"{len(tally.problems)} problems, {tally.outcomes} "
                             f"({rec['seconds']} s)")
        finally:
            lab.close()
    out["totals"] = totals
    out["target"] = ("after every crash and the next call: old or new key opens, plaintext "
                     "unchanged, journal/record/disk/Barbican agree (problems == 0)")
    out["target_met"] = totals["problems"] == 0
    return out
