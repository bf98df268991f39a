"""Concurrent key derivations: N ``cryptsetup open --test-passphrase`` at once.

``--test-passphrase`` runs the whole key derivation of an open (the part a PBKDF policy
changes) without device-mapper, so this measures what N parallel attaches cost a compute host
in KDF time and memory. Used by experiment E12 and ``byok bench parallel``.
"""

from __future__ import annotations

import time
from pathlib import Path

import psutil

from byok.common import proc
from byok.common.sensitive import Sensitive


def parallel_unlocks(path: Path, pw: Sensitive, n: int) -> dict:
    """Wall time, failures and the peak of the N processes' summed resident memory (MiB)."""
    procs = [proc.start(["cryptsetup", "open", "--test-passphrase", "--key-file=-", str(path)],
                        input=pw) for _ in range(n)]
    t0 = time.perf_counter()
    peak = 0
    while any(p.poll() is None for p in procs):
        rss = 0
        for p in procs:
            try:
                rss += psutil.Process(p.pid).memory_info().rss
            except psutil.Error:
                pass
        peak = max(peak, rss)
        time.sleep(0.01)
    wall = time.perf_counter() - t0
    failures = sum(p.wait() != 0 for p in procs)
    for p in procs:  # stdin was closed by proc.start once the key was written
        for stream in (p.stdout, p.stderr):
            if stream is not None:
                stream.close()
    return {"wall": wall, "peak_mib": peak / (1 << 20), "failures": failures}
