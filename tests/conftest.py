"""Shared fixtures: one real embedded stack per test session, identities, free ports.

The stack fixture brings up the real Keystone + Barbican once (or reuses a running one from the
same state dir) and stops it at the end only if this session started it.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def stack() -> Iterator:
    from byok.stack.manager import Stack

    st = Stack.at()
    already = st.status()["healthy"]
    status = st.up()
    assert status["healthy"], status
    yield st
    if not already:
        st.down()


@pytest.fixture(scope="session")
def identities(stack):
    """Sessions for the seeded users, created once (keystoneauth re-auths on expiry)."""
    from byok.identity import Identity

    cache: dict = {}

    def get(user: str) -> Identity:
        if user not in cache:
            cache[user] = Identity.from_cloud(
                stack.cloud_name(user), clouds_yaml=stack.cfg.clouds_yaml
            )
        return cache[user]

    return get


def processes_in(path) -> list[int]:
    """Pids whose working directory or command line lies under ``path`` (stray-process checks;
    gunicorn rewrites its title, so cwd is the reliable trace)."""
    import os
    from pathlib import Path

    root = str(Path(path).resolve())
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
            with open(f"/proc/{entry}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().decode(errors="replace")
        except OSError:
            continue
        if cwd.startswith(root) or root in cmd:
            found.append(int(entry))
    return found


@pytest.fixture(scope="session")
def barbican(stack, identities):
    """``barbican(user)`` -> BarbicanAPI for that seeded user against the embedded Barbican."""
    from byok.barbican_api import BarbicanAPI

    return lambda user: BarbicanAPI(identities(user), stack.cfg.barbican_url)


@pytest.fixture(scope="session")
def make_key(barbican):
    """``make_key(user, kind="aes512"|"aes256"|"passphrase", **overrides)`` stores a secret as
    ``user`` and returns ``(KeyRef, raw bytes)``."""
    import os

    from byok.sensitive import Sensitive

    def make(user: str = "alice", kind: str = "aes512", **kw):
        api = barbican(user)
        if kind == "passphrase":
            raw = kw.pop("payload", os.urandom(12).hex().encode())
            ref = api.store(Sensitive(raw), secret_type="passphrase", name=f"t-{kind}", **kw)
        else:
            bits = int(kind[3:]) if kind.startswith("aes") else 512
            raw = kw.pop("payload", os.urandom(bits // 8))
            args = {"algorithm": "aes", "bit_length": bits, "mode": "xts"} | kw
            ref = api.store(Sensitive(raw), secret_type=args.pop("secret_type", "symmetric"),
                            name=f"t-{kind}", **args)
        return ref, raw

    return make
