"""The lifecycle's data path through real dm-crypt (issue 6): data written through os-brick in
the guest survives clone (shared and rekeyed), rotation and backup/restore, and is recovered
offline from the volume file with only the user's raw key bytes."""

from __future__ import annotations

import pytest

from byok.attach.hook import (
    AttachHook,
    attach_step,
    detach_step,
    raise_for,
    read_step,
    write_step,
)
from byok.common.pattern import pattern_sha256
from byok.lifecycle import rotation
from byok.lifecycle.volumes import Pool, VolumeService
from byok.luks.recovery import passphrase_from_key_bytes, recover

pytestmark = [pytest.mark.stack, pytest.mark.guest]
SIZE = 4 << 20


@pytest.mark.parametrize("provider", ["luks2", "luks"])
def test_data_survives_clone_rotation_backup_and_offline_recovery(
    tmp_path, identities, make_key, stack, provider
):
    alice = identities("alice")
    svc = VolumeService(Pool(tmp_path / "pool"), alice, endpoint=stack.cfg.barbican_url)
    ref, raw_key = make_key("alice")
    other, other_raw = make_key("alice")
    vol = svc.create(64 << 20, ref.href, provider=provider, format=False)  # Cinder's blank way
    hook = AttachHook(alice)

    def prepared(rec, key_ref):
        conn, enc, new = svc.attach_args(rec.id, key_ref)
        return hook.prepare(conn, enc, new_volume=new)

    v = prepared(vol, ref.href)
    assert v.state == "formatted"  # the hook formatted the blank volume, with byok's policy
    svc.mark_formatted(vol.id)
    raise_for(hook.run([v], [attach_step(v), write_step(v, 77, SIZE), detach_step(v)]))
    shared = svc.clone(vol.id)
    rekeyed = svc.clone(vol.id, key_ref=other.href)
    backup = svc.backup(vol.id)
    rotation.rotate(svc, vol.id, other.href)  # the original now opens with the other key
    restored = svc.restore(backup.id)  # the backup needs the key of backup time
    checks = [(vol, other.href), (shared, ref.href), (rekeyed, other.href), (restored, ref.href)]
    vols = [prepared(rec, key) for rec, key in checks]
    steps = []
    for pv in vols:
        steps += [attach_step(pv), read_step(pv, SIZE, name=f"read:{pv.volume_id}"),
                  detach_step(pv)]
    run = hook.run(vols, steps)
    raise_for(run)
    for pv in vols:
        assert run.step(f"read:{pv.volume_id}")["sha256"] == pattern_sha256(77, SIZE)
    # Offline recovery from the raw key bytes as Barbican holds them: no stack, no dm.
    for rec, raw in ((vol, other_raw), (shared, raw_key)):
        out = tmp_path / f"{rec.id}.plain"
        recover(svc.pool.path(rec.id), out, passphrase=passphrase_from_key_bytes(raw))
        with open(out, "rb") as f:
            import hashlib

            assert hashlib.sha256(f.read(SIZE)).hexdigest() == pattern_sha256(77, SIZE)
