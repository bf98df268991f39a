"""N = 1..32 concurrent unlocks per PBKDF policy: wall time and peak memory.

Target (issue 9): N = 32 completes under the machine-key policy with <= 256 MiB of memory in
total (measured: resident memory of the 32 cryptsetup processes, sampled every 10 ms).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from byok.common import sparse
from byok.common.sensitive import Sensitive
from byok.harness.measures import parallel_unlocks
from byok.luks import cryptsetup as luks

NS = {"machine-key": (1, 2, 4, 8, 16, 32), "passphrase": (1, 2, 4, 8, 16),
      "osbrick-default": (1, 2, 4)}


def run() -> dict:
    out: dict = {"name": "parallel", "policies": {}}
    pw = Sensitive(b"ab" * 64)
    with tempfile.TemporaryDirectory(prefix="byok-bench-") as d:
        for policy, ns in NS.items():
            p = Path(d) / f"{policy}.img"
            sparse.create(p, 32 << 20)
            info = luks.format(p, pw, policy=policy)
            rows = {}
            for n in ns:
                r = parallel_unlocks(p, pw, n)
                rows[str(n)] = {"wall_s": round(r["wall"], 3), "peak_mib": round(r["peak_mib"], 1),
                                "failures": r["failures"]}
            kdf = info.keyslots[min(info.keyslots)]
            out["policies"][policy] = {"kdf": kdf.get("kdf"), "memory_kib": kdf.get("memory_kib"),
                                       "by_n": rows}
    n32 = out["policies"]["machine-key"]["by_n"]["32"]
    out["machine_key_n32_peak_mib"] = n32["peak_mib"]
    out["target"] = "machine-key, N=32: all succeed within 256 MiB"
    out["target_met"] = n32["failures"] == 0 and n32["peak_mib"] <= 256
    return out
