"""Outages in the middle of volume operations: a key service that fails, hangs or disappears
while a create/clone/rotate is under way gives KeyServiceUnavailable within the deadline and
leaves nothing half-written (no record, no file, the source untouched)."""

from __future__ import annotations

import pytest

from byok.common.errors import KeyServiceUnavailable
from byok.harness.faults import FaultInjectingProxy
from byok.lifecycle import rotation
from byok.lifecycle.volumes import Pool, VolumeService
from tests.reliability.conftest import count, file_sha

pytestmark = pytest.mark.stack


@pytest.mark.parametrize("mode", ["error500", "truncate", "garbage", "hang"])
def test_faults_mid_operation_leave_nothing_half_written(tmp_path, identities, make_key, stack,
                                                         mode):
    ref, _ = make_key("alice")
    new, _ = make_key("alice")
    # Everything goes through the proxy; it passes traffic until the fault is switched on.
    with FaultInjectingProxy(stack.cfg.barbican_url, "pass") as proxy:
        svc = VolumeService(Pool(tmp_path / "pool"), identities("alice"), endpoint=proxy.url,
                            deadline=2.0)
        vol = svc.create(32 << 20, ref.secret_id)
        before = file_sha(svc.pool.path(vol.id))
        proxy.mode = mode
        for op in (lambda: svc.clone(vol.id), lambda: svc.create(32 << 20, ref.secret_id),
                   lambda: rotation.rotate(svc, vol.id, new.secret_id)):
            with pytest.raises(KeyServiceUnavailable):
                op()
            count("outage mid-operation: typed error")
        proxy.mode = "pass"
        assert [r.id for r in svc.pool.list()] == [vol.id]
        assert len(list((tmp_path / "pool" / "data").iterdir())) == 1
        assert file_sha(svc.pool.path(vol.id)) == before
        assert svc.pool.load(vol.id).state == "available"
        assert not rotation.journal_for(svc, vol.id).path.exists()
        svc.delete(vol.id)


def test_a_fault_after_k_requests_at_every_point_of_a_rotation(tmp_path, identities, make_key,
                                                               stack):
    """Let K requests through, then fail everything: for every K the rotation either finishes
    or stops with KeyServiceUnavailable; the volume opens with the old or the new key, and once
    Barbican answers again the next run completes or rolls back."""
    from byok.common.errors import WrongKey
    from byok.keys import resolver as keys
    from byok.luks import cryptsetup as luks

    old, _ = make_key("alice")
    new, _ = make_key("alice")
    with FaultInjectingProxy(stack.cfg.barbican_url, "pass") as proxy:
        svc = VolumeService(Pool(tmp_path / "pool"), identities("alice"), endpoint=proxy.url,
                            deadline=0.5)
        pw = {r.secret_id: keys.passphrase(svc.key(r.secret_id)) for r in (old, new)}
        outcomes = set()
        for k in range(0, 10):  # a rotation makes 9 key-manager requests
            vol = svc.create(32 << 20, old.secret_id)
            proxy.mode, proxy.requests = "error500", 0
            proxy.fail_after = k
            try:
                rotation.rotate(svc, vol.id, new.secret_id)
                outcomes.add("finished")
            except KeyServiceUnavailable:
                outcomes.add("stopped")
            proxy.mode = "pass"
            path = svc.pool.path(vol.id)
            opens = []
            for ref in (old, new):
                try:
                    luks.test_key(path, pw[ref.secret_id])
                    opens.append(ref.secret_id)
                except WrongKey:
                    pass
            assert opens, f"K={k}: opens with neither key"
            rec = rotation.rotate(svc, vol.id, "", resume_only=True)
            assert rec.state == "available" and rec.key_ref.endswith(tuple(opens))
            count("outage mid-rotation: consistent after resume")
            svc.delete(vol.id)
    assert outcomes == {"finished", "stopped"}
