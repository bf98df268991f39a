"""The full power-loss replay (``byok bench powerloss``): every scenario of
:mod:`byok.harness.powerloss` with more reorderings per flush interval than CI (8 instead of 2),
states judged offline, by cryptsetup's own repair + resume where byok refuses, by byok's resume
on interrupted re-encryptions, and a sample on real dm-crypt in the guest."""

from __future__ import annotations

import time
from pathlib import Path

from byok.common import paths
from byok.guest import Guest
from byok.harness import powerloss


def run(*, subsets: int = 8) -> dict:
    keep = paths.base_dir() / "powerloss-kept"
    out: dict = {"name": "powerloss", "unit": "images", "subsets": subsets, "scenarios": {}}
    guest = Guest()
    t0 = time.perf_counter()
    for name, scenario in powerloss.SCENARIOS.items():
        o = powerloss.run_scenario(scenario, guest=guest, subsets=subsets, keep=keep,
                                   guest_sample=5)
        out["scenarios"][name] = {
            "log_entries": o.entries, "flush_points": o.flushes, "images": o.states,
            "opened_exactly_by_key": o.by_key, "refused": o.refused,
            "byok_losses": o.losses, "cryptsetup_losses": o.cryptsetup_losses,
            "byok_resume": o.finished, "guest_checked": o.guest_checked,
            "guest_agreed": o.guest_agreed,
        }
    scen = out["scenarios"].values()
    out["images"] = sum(s["images"] for s in scen)
    out["byok_losses"] = sum(len(s["byok_losses"]) for s in scen)
    out["cryptsetup_losses"] = sum(len(s["cryptsetup_losses"]) for s in scen)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out["kept_images"] = str(Path(keep))
    out["target"] = "byok losses == 0"
    out["target_met"] = out["byok_losses"] == 0
    return out
