"""The full crash enumeration (``byok bench crash``): every shape of cryptsetup's LUKS2
re-encryption killed at every write and torn at every large write, each state judged by
``byok recover`` and by cryptsetup's own ``repair`` + ``--resume-only`` (for re-encryption
shapes also by byok's finish), against the plaintext.

Torn writes: every write of at least ``torn_min_bytes`` (64 KiB: the data writes) at two cut
points. CI runs a sample of the same enumeration (tests/reliability/test_reencrypt_enumeration.py);
byok's own operations are enumerated in full with ``BYOK_CRASH_FULL=1 ./dev test
tests/reliability/test_byok_op_enumeration.py`` (they need the embedded stack).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from byok.harness import crashenum as ce

SHAPES = [
    ce.Shape(),
    ce.Shape(sector=4096, key_bits=256, secret="passphrase"),
    ce.Shape(resilience="journal"),
    ce.Shape(resilience="none"),
    ce.Shape(hotzone=None, data_kib=8192),  # the upstream report's case: one hotzone, 42 writes
    ce.Shape(mode="encrypt", hotzone=None),
    ce.Shape(mode="encrypt", header="detached"),
    ce.Shape(mode="decrypt", header="detached"),
    ce.Shape(mode="decrypt", header="export", hotzone=None),
]


def run(*, shapes: list[ce.Shape] | None = None, finish: bool = True,
        torn_min_bytes: int = 65536, progress=print) -> dict:
    from byok.common import paths

    out: dict = {"name": "crash", "unit": "states", "shapes": {}}
    totals = {"tried": 0, "byok_wrong": 0, "byok_refused": 0, "byok_exact": 0,
              "byok_refused_where_cryptsetup_exact": 0, "cryptsetup_wrong": 0}
    paths.base_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-crash-", dir=paths.base_dir()) as d:
        for shape in shapes or SHAPES:
            t0 = time.perf_counter()
            finished: dict[str, int] = {}

            def on_state(base, c, byok, cs, shape=shape, finished=finished):
                if finish and shape.mode == "reencrypt" and shape.resilience in (None, "journal"):
                    v = ce.judge_byok_finish(base, c)
                    finished[v] = finished.get(v, 0) + 1

            base, tally = ce.enumerate_shape(shape, Path(d) / shape.name, every=1, torn_every=1,
                                             torn_fractions=(0.3, 0.7),
                                             torn_min_bytes=torn_min_bytes,
                                             compare_every=1, on_state=on_state)
            rec = tally.as_dict() | {"writes": base.writes, "seconds": round(
                time.perf_counter() - t0, 1)}
            if finished:
                rec["byok_finish"] = finished
            if tally.wrong_states and shape.mode == "encrypt" and shape.header == "detached":
                rec["note"] = ("wrong states: cryptsetup killed between writing the detached "
                               "header (luksFormat: a crypt segment, no requirement) and marking "
                               "it for encryption — the header claims encryption over data that "
                               "is still plaintext; no reader can tell it from a fresh volume "
                               "(design/upstream/cryptsetup-reencrypt-resume.md, finding 3)")
            out["shapes"][shape.name] = rec
            if progress:
                progress(f"{shape.name}: {tally.tried} states, byok {tally.byok}, "
                         f"cryptsetup {tally.cryptsetup}, finish {finished} ({rec['seconds']} s)")
            totals["tried"] += tally.tried
            for k in ("wrong", "refused", "exact"):
                totals[f"byok_{k}"] += tally.byok.get(k, 0)
            totals["byok_refused_where_cryptsetup_exact"] += len(
                tally.refused_where_cryptsetup_exact)
            totals["cryptsetup_wrong"] += tally.cryptsetup.get("wrong", 0)
    out["totals"] = totals
    out["target"] = "byok recover: zero wrong bytes in every crashed state"
    out["target_met"] = totals["byok_wrong"] == 0
    return out
