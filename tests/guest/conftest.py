"""Guest tier: real dm-crypt inside the User-Mode Linux guest. If UML is missing this fails with
the apt command to run, it does not skip."""

from __future__ import annotations

import pytest

from byok.guest import check_available


@pytest.fixture(scope="session", autouse=True)
def _uml_installed():
    check_available()  # ToolMissing: "apt-get install -y user-mode-linux" etc.


@pytest.fixture
def blank_volume(tmp_path):
    def make(name: str = "vol", size: int = 32 << 20):
        p = tmp_path / f"{name}.img"
        with open(p, "wb") as f:
            f.truncate(size)
        return p

    return make
