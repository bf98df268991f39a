"""Volume lifecycle with user-owned keys on the real stack and real cryptsetup (issue 6):
create, clone (shared / rekeyed), snapshot, backup/restore across a rotation, images, delete,
escrow, header backup/restore, parallel clones. Opening through dm-crypt is in tests/guest."""

from __future__ import annotations

import threading

import pytest

from byok.common.errors import KeyAccessDenied, NotLuks, VolumeBusy, WrongKey
from byok.common.pattern import pattern
from byok.keys import guard
from byok.keys import resolver as keys
from byok.lifecycle.volumes import Pool, VolumeService
from byok.luks import cryptsetup as luks
from byok.luks import recovery

pytestmark = pytest.mark.stack
SIZE = 48 << 20


@pytest.fixture
def svc(tmp_path, identities, stack):
    return VolumeService(Pool(tmp_path / "pool"), identities("alice"),
                         service=identities("cinder"), endpoint=stack.cfg.barbican_url)


def consumers_of(barbican, ref):
    return sorted((c["resource_type"], c["resource_id"]) for c in barbican("alice").consumers(ref))


def pw_of(svc, ref):
    return keys.passphrase(svc.key(ref))


def test_create_formats_with_the_users_key_and_registers_a_consumer(svc, make_key, barbican):
    ref, _ = make_key("alice")
    rec = svc.create(SIZE, ref.href)
    assert rec.key_owner == "user" and rec.key_ref == ref.href and rec.state == "available"
    assert luks.test_key(svc.pool.path(rec.id), pw_of(svc, ref)) == 0
    assert consumers_of(barbican, ref) == [("volume", rec.id)]


def test_bob_cannot_create_a_volume_with_alices_key_and_nothing_is_left(
    tmp_path, identities, make_key, stack, barbican
):
    ref, _ = make_key("alice")
    bob = VolumeService(Pool(tmp_path / "p"), identities("bob"), endpoint=stack.cfg.barbican_url)
    with pytest.raises(KeyAccessDenied):
        bob.create(SIZE, ref.href)
    assert bob.pool.list() == [] and list((tmp_path / "p" / "data").iterdir()) == []
    assert barbican("alice").consumers(ref) == []


def test_copies_share_the_key_and_barbican_gains_no_secret(svc, make_key, barbican, tmp_path):
    ref, _ = make_key("alice")
    before = barbican("alice").count_secrets()
    vol = svc.create(SIZE, ref.href)
    vk = luks.volume_key(svc.pool.path(vol.id), pw_of(svc, ref))
    made = [svc.clone(vol.id), svc.snapshot(vol.id), svc.backup(vol.id), svc.upload_image(vol.id)]
    made.append(svc.create_from_image(made[-1].id))
    made.append(svc.restore(made[2].id))
    raw = tmp_path / "raw.img"
    raw.write_bytes(pattern(3, 4 << 20))
    img = svc.image_from_raw(raw, ref.href)
    made.append(img)
    assert barbican("alice").count_secrets() == before  # nothing copied in Barbican
    for rec in made:
        assert rec.key_ref == ref.href
        if rec.id != img.id:  # same volume key, same user key: a shared ref, not a copy
            assert luks.volume_key(svc.pool.path(rec.id), pw_of(svc, ref)) == vk
    kinds = {(r.kind, r.id) for r in [vol, *made]}
    assert set(consumers_of(barbican, ref)) == kinds
    # The image built from a raw file recovers, offline, to exactly that file.
    out = tmp_path / "img.plain"
    recovery.recover(svc.pool.path(img.id), out, passphrase=pw_of(svc, ref))
    assert out.read_bytes() == raw.read_bytes()
    for rec in [*made, vol]:
        svc.delete(rec.id)
    assert svc.pool.list() == [] and barbican("alice").consumers(ref) == []
    assert svc.key(ref).payload  # delete never deletes the user's key


def test_rekeyed_clone_changes_the_keyslot_not_the_volume_key(svc, make_key, barbican):
    ref, _ = make_key("alice")
    new, _ = make_key("alice")
    vol = svc.create(SIZE, ref.href)
    clone = svc.clone(vol.id, key_ref=new.href)
    path = svc.pool.path(clone.id)
    assert clone.key_ref == new.href
    assert luks.test_key(path, pw_of(svc, new)) >= 0
    with pytest.raises(WrongKey):
        luks.test_key(path, pw_of(svc, ref))
    # Same volume key as the source: revoking the old user key does not re-encrypt anything.
    assert luks.volume_key(path, pw_of(svc, new)) == luks.volume_key(
        svc.pool.path(vol.id), pw_of(svc, ref))
    assert consumers_of(barbican, new) == [("volume", clone.id)]
    assert consumers_of(barbican, ref) == [("volume", vol.id)]


def test_backup_taken_before_a_rotation_restores_only_with_the_old_key(svc, make_key):
    old, _ = make_key("alice")
    new, _ = make_key("alice")
    vol = svc.create(SIZE, old.href)
    bkp = svc.backup(vol.id)
    svc.rekey(vol.id, new.href)
    assert svc.pool.load(vol.id).key_ref == new.href
    with pytest.raises(WrongKey):
        svc.restore(bkp.id, key_ref=new.href)  # the backup kept its keyslots of backup time
    restored = svc.restore(bkp.id)  # the key recorded at backup time (the old one)
    assert restored.key_ref == old.href
    assert luks.test_key(svc.pool.path(restored.id), pw_of(svc, old)) >= 0


def test_parallel_clones_of_one_source_run_under_a_shared_lock(svc, make_key):
    ref, _ = make_key("alice")
    vol = svc.create(SIZE, ref.href)
    errors, made = [], []

    def clone():
        try:
            made.append(svc.clone(vol.id))
        except Exception as e:  # collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=clone) for _ in range(4)]
    with svc.pool.lock(vol.id, shared=True):  # a reader holds it: clones still proceed
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == [] and len(made) == 4
    # A writer is refused while a reader holds the volume.
    with svc.pool.lock(vol.id, shared=True), pytest.raises(VolumeBusy):
        with svc.pool.lock(vol.id, shared=False, wait=0.2):
            pass


def test_escrow_lets_either_party_open(svc, make_key):
    ref, _ = make_key("alice")
    vol = svc.create(SIZE, ref.href, escrow=True)
    path = svc.pool.path(vol.id)
    user_slot = luks.test_key(path, pw_of(svc, ref))
    escrow_slot = luks.test_key(path, svc.escrow_passphrase(vol))
    assert user_slot != escrow_slot
    assert vol.escrow_ref and not guard.owned_by_callers_project(vol.escrow_ref, svc.user)
    svc.delete(vol.id)


def test_header_backup_brings_back_a_zeroed_header(svc, make_key):
    ref, _ = make_key("alice")
    vol = svc.create(SIZE, ref.href)
    svc.header_backup(vol.id)
    path = svc.pool.path(vol.id)
    with open(path, "r+b") as f:
        f.write(bytes(64 << 10))
    # Both header copies (0 and 16 KiB) are gone and no LUKS magic is left: "not LUKS".
    with pytest.raises(NotLuks, match="not a LUKS volume"):
        luks.test_key(path, pw_of(svc, ref))
    svc.header_restore(vol.id)
    assert luks.test_key(path, pw_of(svc, ref)) == 0


def test_user_deletes_a_key_still_in_use(svc, make_key, barbican, tmp_path):
    """What every later operation does (design/notes/lifecycle.md has the table)."""
    from byok.common.errors import KeyNotFound
    from byok.keys.barbican import SecretConflict
    from byok.lifecycle import rotation

    ref, raw = make_key("alice")
    new, _ = make_key("alice")
    vol = svc.create(SIZE, ref.href)
    bkp = svc.backup(vol.id)
    with pytest.raises(SecretConflict, match="consumers"):
        barbican("alice").delete(ref)  # Barbican refuses: volumes consume it
    barbican("alice").delete(ref, force=True)  # the owner insists
    count = len(svc.pool.list())
    for op in (lambda: svc.clone(vol.id), lambda: svc.backup(vol.id),
               lambda: svc.snapshot(vol.id), lambda: svc.restore(bkp.id),
               lambda: rotation.rotate(svc, vol.id, new.href)):
        with pytest.raises(KeyNotFound):
            op()
    assert len(svc.pool.list()) == count  # nothing half-made
    assert svc.pool.load(vol.id).state == "available"
    # The user's own copy of the key still opens everything offline.
    out = tmp_path / "offline.plain"
    recovery.recover(svc.pool.path(vol.id), out,
                     passphrase=recovery.passphrase_from_key_bytes(raw))
    svc.delete(vol.id)
    svc.delete(bkp.id)
    assert svc.pool.list() == []
