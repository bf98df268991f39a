"""Isolation: bob, carol (project access off) and service users without an ACL are refused every
path to alice's key — the CLI, the castellan backend, the hook and the service-side guard."""

from __future__ import annotations

import subprocess
import sys

import pytest
from castellan import key_manager
from castellan.common import exception as cexc

from byok import guard
from byok.attach import AttachHook, connection_info_for
from byok.errors import KeyAccessDenied
from byok.keymanager import configure
from tests.reliability.conftest import count

pytestmark = pytest.mark.stack
INTRUDERS = ("bob", "carol", "cinder", "nova")


@pytest.fixture(scope="module")
def alices_key(make_key, barbican):
    ref, _ = make_key("alice")
    barbican("alice").set_acl(ref, users=[], project_access=False)  # creator-only
    guard.bind(ref, user=barbican("alice").identity, volume_id="alice-vol")
    return ref


@pytest.mark.parametrize("who", INTRUDERS)
def test_every_path_is_refused(who, alices_key, identities, stack, tmp_path):
    ident = identities(who)
    r = subprocess.run([sys.executable, "-m", "byok.cli", "key", "show", alices_key.href,
                        "--as", who], capture_output=True, text=True, timeout=120)
    assert r.returncode == 5, r.stderr
    km = key_manager.API(configure(auth_url=stack.cfg.keystone_url))
    with pytest.raises(cexc.KeyManagerError, match="Forbidden"):
        km.get(ident.castellan_context(), alices_key.secret_id)
    vol = tmp_path / "v.img"
    with open(vol, "wb") as f:
        f.truncate(32 << 20)
    with pytest.raises(KeyAccessDenied):
        AttachHook(ident).prepare(connection_info_for(vol), {"key_ref": alices_key.href},
                                  new_volume=True)
    with pytest.raises(KeyAccessDenied):
        guard.resolve_for_volume(alices_key, service_identity=ident, volume_id="alice-vol")
    with pytest.raises(KeyAccessDenied):
        guard.bind(alices_key, user=ident, volume_id=f"{who}-vol")
    count("isolation paths refused", 5)
