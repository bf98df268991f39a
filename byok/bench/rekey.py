"""Keyslot rekey time at 1 GiB vs 16 GiB (sparse), and full re-encryption throughput.

A keyslot rekey touches only the LUKS header, so its time must not depend on the volume size
(target ratio <= 1.2); full re-encryption rewrites every sector (MB/s reported for contrast).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from byok.bench.stats import summary
from byok.common import sparse
from byok.common.sensitive import Sensitive
from byok.luks import cryptsetup as luks


def _rekey_times(path: Path, n: int) -> list[float]:
    a, b = Sensitive(os.urandom(64).hex()), Sensitive(os.urandom(64).hex())
    luks.format(path, a)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        luks.add_key(path, a, b)
        luks.test_key(path, b)
        luks.remove_key(path, a)
        times.append(time.perf_counter() - t0)
        a, b = b, a
    return times


def run(*, n: int = 5, reencrypt_gib: int = 1) -> dict:
    from byok.common import paths

    paths.base_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-", dir=paths.base_dir()) as d:
        small, big = Path(d) / "1g.img", Path(d) / "16g.img"
        sparse.create(small, 1 << 30)
        sparse.create(big, 16 << 30)
        t_small, t_big = [], []
        for _ in range(2):  # interleaved
            t_small += _rekey_times(small, n)
            t_big += _rekey_times(big, n)
            small.unlink()
            big.unlink()
            sparse.create(small, 1 << 30)
            sparse.create(big, 16 << 30)
        s, b = summary(t_small), summary(t_big)
        re = Path(d) / "re.img"
        sparse.create(re, reencrypt_gib << 30)
        pw = Sensitive(os.urandom(64).hex())
        luks.format(re, pw)
        t0 = time.perf_counter()
        luks.reencrypt(re, pw)
        re_s = time.perf_counter() - t0
    ratio = b["p50"] / s["p50"]
    return {
        "name": "rekey", "unit": "s", "rekey_1gib": s, "rekey_16gib": b,
        "ratio_p50": ratio, "target": "rekey 16 GiB / 1 GiB <= 1.2", "target_met": ratio <= 1.2,
        "reencrypt_gib": reencrypt_gib, "reencrypt_s": round(re_s, 3),
        "reencrypt_mb_s": round((reencrypt_gib << 30) / re_s / 1e6, 1),
    }
