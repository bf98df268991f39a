"""Guest tier: real dm-crypt on a real kernel, on the backend ``auto`` picks for this host
(``BYOK_GUEST`` forces one). If no backend can run here this fails with every backend's reason,
it does not skip. The probe table is printed at the end of the run."""

from __future__ import annotations

import pytest

from byok.guest import select

PROBES: list[select.Verdict] = []


@pytest.fixture(scope="session", autouse=True)
def guest_backend():
    """The backend every guest test runs on (probing on first use, cached per host)."""
    b = select.pick()  # GuestError naming each backend's failure if none works
    return b


@pytest.fixture(scope="session")
def all_verdicts():
    """Every backend's verdict on this host (probing those without a cached one)."""
    if not PROBES:
        PROBES.extend(select.verdicts())
    return {v.backend: v for v in PROBES}


@pytest.fixture
def blank_volume(tmp_path):
    def make(name: str = "vol", size: int = 32 << 20):
        p = tmp_path / f"{name}.img"
        with open(p, "wb") as f:
            f.truncate(size)
        return p

    return make
