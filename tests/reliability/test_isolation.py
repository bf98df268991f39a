"""Isolation: bob, carol (project access off) and service users without an ACL are refused every
path to alice's key — the CLI, the castellan backend (stock and `byok`, read and delete), the
hook and the service-side guard; a service *with* an ACL is still refused for a volume no user
of alice's project bound."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from castellan import key_manager
from castellan.common import exception as cexc

from byok.attach.hook import AttachHook, connection_info_for
from byok.common.errors import KeyAccessDenied
from byok.key_manager.byok_key_manager import configure, volume_scope
from byok.keys import guard
from byok.keys import resolver as keys
from tests.reliability.conftest import count

pytestmark = pytest.mark.stack
INTRUDERS = ("bob", "carol", "cinder", "nova")


@pytest.fixture(scope="module")
def alices_key(make_key, barbican):
    ref, raw = make_key("alice")
    barbican("alice").set_acl(ref, users=[], project_access=False)  # creator-only
    guard.bind(ref, user=barbican("alice").identity, volume_id="alice-vol")
    return ref, raw


def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "byok.cli", *argv], capture_output=True,
                          text=True, timeout=120)


def _denied(r: subprocess.CompletedProcess) -> bool:
    return (r.returncode == KeyAccessDenied.exit_code and "keyslot" not in r.stderr
            and re.search("may not|cannot read|never bound", r.stderr) is not None)


@pytest.mark.parametrize("who", INTRUDERS)
def test_every_path_is_refused(who, alices_key, identities, stack, tmp_path):
    ref, raw = alices_key
    ident = identities(who)
    vol = tmp_path / "v.img"
    with open(vol, "wb") as f:
        f.truncate(32 << 20)
    # CLI: read, grant itself access, attach (refused before any guest starts), delete.
    for argv in (("key", "show", ref.href), ("key", "grant", ref.href, "--to", who),
                 ("attach", str(vol), "--key-ref", ref.href, "--new"),
                 ("key", "delete", ref.href, "--force")):
        r = _cli(*argv, "--as", who)
        assert _denied(r), (argv, r.returncode, r.stderr)
    assert vol.stat().st_blocks == 0  # never formatted
    # castellan, stock backend and ours: get, and (the destructive one) delete.
    for backend in ("barbican", "byok"):
        km = key_manager.API(configure(auth_url=stack.cfg.keystone_url, backend=backend))
        with pytest.raises(cexc.KeyManagerError, match=r"Forbidden|KeyAccessDenied"):
            km.get(ident.castellan_context(), ref.secret_id)
        with volume_scope(f"{who}-vol"), pytest.raises(cexc.KeyManagerError):
            km.get(ident.castellan_context(), ref.secret_id)
        with volume_scope("alice-vol"):
            if backend == "barbican":
                with pytest.raises(cexc.CastellanException):
                    km.delete(ident.castellan_context(), ref.secret_id, force=True)
            else:
                # byok never deletes a key it cannot vouch is the service's; it only tries to
                # drop the volume's consumer, which Barbican refuses (403) — and that refusal
                # reaches the caller, so it cannot forget a consumer that still exists.
                with pytest.raises(cexc.KeyManagerError, match="Forbidden"):
                    km.delete(ident.castellan_context(), ref.secret_id, force=True)
    # The hook and the guard.
    with pytest.raises(KeyAccessDenied):
        AttachHook(ident).prepare(connection_info_for(vol), {"key_ref": ref.href},
                                  new_volume=True)
    with pytest.raises(KeyAccessDenied):
        guard.resolve_for_volume(ref, service_identity=ident, volume_id="alice-vol")
    with pytest.raises(KeyAccessDenied):
        guard.bind(ref, user=ident, volume_id=f"{who}-vol")
    # Nothing changed for alice: her key is intact and only her volume consumes it.
    assert keys.Resolver(identities("alice")).resolve(ref).payload.reveal() == raw
    consumers = [c["resource_id"] for c in
                 keys.Resolver(identities("alice")).api.consumers(ref)]
    assert consumers == ["alice-vol"]
    count("isolation paths refused", 12)


@pytest.mark.parametrize("service", ["cinder", "nova"])
def test_a_service_with_an_acl_is_refused_for_an_unbound_volume(service, make_key, barbican,
                                                                identities, tmp_path):
    """The confused deputy: the owner granted the service read access for *her* volume; anyone
    handing the service that ref for another volume (the hook, the CLI, the backend) is refused.
    """
    ref, _ = make_key("alice")
    svc = identities(service)
    barbican("alice").set_acl(ref, users=[svc.user_id()], project_access=True)
    guard.bind(ref, user=identities("alice"), volume_id="her-vol")
    vol = tmp_path / "other.img"
    with open(vol, "wb") as f:
        f.truncate(32 << 20)
    with pytest.raises(KeyAccessDenied, match="never bound"):
        AttachHook(svc).prepare(connection_info_for(vol, "not-her-vol"), {"key_ref": ref.href},
                                new_volume=True)
    r = _cli("attach", str(vol), "--key-ref", ref.href, "--new", "--as", service)
    assert _denied(r) and "never bound" in r.stderr, r.stderr
    km = key_manager.API(configure(auth_url=identities("alice").auth_url))
    with volume_scope("not-her-vol"), pytest.raises(cexc.KeyManagerError, match="never bound"):
        km.get(svc.castellan_context(), ref.secret_id)
    assert vol.stat().st_blocks == 0
    # For her volume, the same service identity may (token-less operations).
    assert guard.resolve_for_volume(ref, service_identity=svc, volume_id="her-vol")
    count("isolation paths refused", 3)
