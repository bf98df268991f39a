"""Measurements shared by experiments and benchmarks (the benchmarks sit above the harness, so
what both use lives here): N concurrent key derivations, and the machine's AES-XTS limit.

``parallel_unlocks`` runs N ``cryptsetup open --test-passphrase`` at once: it performs the whole
key derivation of an open (the part a PBKDF policy changes) without device-mapper, so it shows
what N parallel attaches cost a compute host in KDF time and memory (E12, ``byok bench
parallel``). ``openssl_mb_s`` is the physical limit recovery speed is judged against (E13,
``byok bench recover``).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import psutil

from byok.common import proc
from byok.common.errors import CommandFailed
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


def openssl_mb_s(sector: int, seconds: int = 2, *, cores: int = 1) -> float:
    """``openssl speed -evp aes-256-xts`` at ``sector``-byte blocks, in MB/s (10^6 bytes).

    :raises CommandFailed: openssl failed or printed no AES-256-XTS line.
    """
    multi = ["-multi", str(cores)] if cores > 1 else []
    res = proc.run(["openssl", "speed", *multi, "-evp", "aes-256-xts", "-bytes", str(sector),
                    "-seconds", str(seconds)], timeout=120)
    for line in res.out.splitlines():
        if line.startswith("AES-256-XTS"):
            m = re.search(r"([\d.]+)k\s*$", line.strip())
            if m:
                return float(m.group(1)) * 1000 / 1e6
    raise CommandFailed("openssl speed printed no AES-256-XTS rate", argv=res.argv,
                        stderr=res.tail(3))
