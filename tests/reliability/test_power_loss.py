"""Power loss (issue 18): each operation byok performs on a volume runs in a real guest kernel
under dm-log-writes; the log is replayed onto the volume as it was, at every flush point and
with random subsets of the unflushed writes; every image must open with the old or the new key
and give the exact plaintext (byok recover offline; a sample on real dm-crypt in the guest).
CI replays 2 subsets per flush interval; ``byok bench crash``-style full runs use more
(BYOK_POWERLOSS_SUBSETS)."""

from __future__ import annotations

import os

import pytest

from byok.guest import Guest
from byok.harness import powerloss
from tests.reliability.conftest import count

pytestmark = pytest.mark.guest
SUBSETS = int(os.environ.get("BYOK_POWERLOSS_SUBSETS", "2"))


@pytest.mark.parametrize("name", sorted(powerloss.SCENARIOS))
def test_every_replayed_power_cut_opens_with_old_or_new_key(name, tmp_path):
    scenario = powerloss.SCENARIOS[name]
    out = powerloss.run_scenario(scenario, guest=Guest(), subsets=SUBSETS,
                                 keep=tmp_path / "kept")
    count(f"power loss: {name}: images checked", out.states)
    count(f"power loss: {name}: flush points", out.flushes)
    count("power loss: images checked", out.states)
    count("power loss: images also opened in the guest", out.guest_agreed)
    count("power loss: losses (byok's)", len(out.losses))
    count("power loss: states only cryptsetup loses (byok refuses them)",
          len(out.cryptsetup_losses))
    for how, n in out.finished.items():
        count(f"power loss: interrupted re-encryptions byok's resume left {how}", n)
    assert out.flushes >= 1 and out.states > out.flushes  # flush points and reorderings
    assert out.losses == [], out.losses  # the images are kept under tmp_path/kept
    assert "wrong" not in out.finished
    assert out.guest_agreed == out.guest_checked
    if not scenario.blank:  # every state opened exactly, or is one only cryptsetup loses
        assert sum(out.by_key.values()) + len(out.cryptsetup_losses) == out.states
