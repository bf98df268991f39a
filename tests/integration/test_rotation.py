"""Rotation is journaled and crash-safe; full re-encryption changes the volume key (issue 6).

The crash matrix kills ``byok volume rotate`` with SIGKILL (BYOK_CRASH_AT, the named fault
injector) after every step; after each crash the volume opens with the old or the new key, and
the next run completes or rolls back to a consistent record."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest

from byok.common.errors import VolumeBusy, VolumeError, WrongKey
from byok.common.pattern import pattern
from byok.keys import resolver as keys
from byok.lifecycle import rotation
from byok.lifecycle.volumes import Pool, VolumeService
from byok.luks import cryptsetup as luks
from byok.luks import recovery

pytestmark = pytest.mark.stack
SIZE = 48 << 20


@pytest.fixture
def svc(tmp_path, identities, stack):
    return VolumeService(Pool(tmp_path / "pool"), identities("alice"),
                         endpoint=stack.cfg.barbican_url)


def opens(svc, rid, ref) -> bool:
    try:
        luks.test_key(svc.pool.path(rid), keys.passphrase(svc.key(ref)))
        return True
    except WrongKey:
        return False


def test_rotate_moves_the_volume_to_the_new_key(svc, make_key, barbican):
    old, _ = make_key("alice")
    new, _ = make_key("alice")
    vol = svc.create(SIZE, old.href)
    rec = rotation.rotate(svc, vol.id, new.href)
    assert rec.key_ref == new.href and rec.state == "available"
    assert opens(svc, vol.id, new) and not opens(svc, vol.id, old)
    assert [c["resource_id"] for c in barbican("alice").consumers(new)] == [vol.id]
    assert barbican("alice").consumers(old) == []
    assert not rotation.journal_for(svc, vol.id).path.exists()


def test_concurrent_rotation_of_one_volume_is_refused(svc, make_key):
    old, _ = make_key("alice")
    new, _ = make_key("alice")
    vol = svc.create(SIZE, old.href)
    holding = threading.Event()
    release = threading.Event()

    def hold():
        with svc.pool.lock(vol.id, shared=False):
            holding.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    holding.wait(5)
    try:
        with pytest.raises(VolumeBusy):
            rotation.rotate(svc, vol.id, new.href)
    finally:
        release.set()
        t.join()
    assert opens(svc, vol.id, old)


@pytest.mark.parametrize("point", ["started", "backed-up", "added", "verified", "removed",
                                   "saved"])
def test_crash_at_every_step_leaves_an_openable_volume_and_resume_finishes(
    svc, make_key, stack, tmp_path, point
):
    old, _ = make_key("alice")
    new, _ = make_key("alice")
    vol = svc.create(SIZE, old.href)
    env = os.environ | {"BYOK_POOL_DIR": str(svc.pool.root), "BYOK_CRASH_AT": point}
    cmd = [sys.executable, "-m", "byok.cli", "volume", "rotate", vol.id, "--key-ref", new.href,
           "--as", "alice"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert opens(svc, vol.id, old) or opens(svc, vol.id, new)  # never neither
    env.pop("BYOK_CRASH_AT")
    r = subprocess.run([*cmd[:6], "--resume", "--as", "alice"], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rec = svc.pool.load(vol.id)
    assert rec.state == "available"
    assert not rotation.journal_for(svc, vol.id).path.exists()
    # Completed or rolled back, the record names a key that opens the volume.
    assert opens(svc, vol.id, svc.resolver.parse(rec.key_ref))
    expected_new = point not in ("started", "backed-up")
    assert (rec.key_ref == new.href) == expected_new


def test_full_reencryption_changes_the_volume_key_and_keeps_the_data(svc, make_key, tmp_path):
    old, _ = make_key("alice")
    new, _ = make_key("alice")
    raw = tmp_path / "raw.img"
    raw.write_bytes(pattern(21, 8 << 20))
    img = svc.image_from_raw(raw, old.href)
    vol = svc.create_from_image(img.id)
    path = svc.pool.path(vol.id)
    vk_before = luks.volume_key(path, keys.passphrase(svc.key(old)))
    rec, seconds = rotation.reencrypt(svc, vol.id, new.href)
    assert rec.key_ref == new.href and seconds > 0
    new_pw = keys.passphrase(svc.key(new))
    assert luks.volume_key(path, new_pw) != vk_before
    out = tmp_path / "out.plain"
    recovery.recover(path, out, passphrase=new_pw)
    assert out.read_bytes() == raw.read_bytes()
    # The image made before still has the old volume key and opens with the old user key:
    # re-encryption revokes the volume, not copies made earlier.
    assert luks.volume_key(svc.pool.path(img.id), keys.passphrase(svc.key(old))) == vk_before


def _crash_rotation_at(svc, vol_id, new_ref, point):
    env = os.environ | {"BYOK_POOL_DIR": str(svc.pool.root), "BYOK_CRASH_AT": point}
    r = subprocess.run([sys.executable, "-m", "byok.cli", "volume", "rotate", vol_id,
                        "--key-ref", new_ref, "--as", "alice"], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr


def test_resume_completes_when_the_user_deleted_the_old_key_meanwhile(svc, make_key, barbican):
    """The usual reason to rotate is a compromised key, which the user then deletes — maybe
    before the crashed rotation is resumed. Resume finishes with the new key alone."""
    old, _ = make_key("alice")
    new, _ = make_key("alice")
    vol = svc.create(SIZE, old.href)
    _crash_rotation_at(svc, vol.id, new.href, "verified")  # both slots in, old not yet removed
    barbican("alice").delete(old, force=True)
    rec = rotation.rotate(svc, vol.id, "", resume_only=True)
    assert rec.key_ref == new.href and rec.state == "available"
    assert len(luks.dump(svc.pool.path(vol.id)).active_slots) == 1  # the old slot is wiped
    assert opens(svc, vol.id, new)


def test_resume_rolls_back_and_wipes_the_slot_of_a_deleted_new_key(svc, make_key, barbican):
    old, _ = make_key("alice")
    new, _ = make_key("alice")
    vol = svc.create(SIZE, old.href)
    _crash_rotation_at(svc, vol.id, new.href, "added")
    assert len(luks.dump(svc.pool.path(vol.id)).active_slots) == 2
    barbican("alice").delete(new, force=True)  # the user changed their mind
    rec = rotation.rotate(svc, vol.id, "", resume_only=True)
    assert rec.key_ref == old.href and rec.state == "available"
    assert len(luks.dump(svc.pool.path(vol.id)).active_slots) == 1  # nothing else opens it
    assert opens(svc, vol.id, old)


def test_a_crashed_rotation_blocks_copies_and_header_restore_until_resumed(svc, make_key):
    old, _ = make_key("alice")
    new, _ = make_key("alice")
    vol = svc.create(SIZE, old.href)
    svc.header_backup(vol.id)
    _crash_rotation_at(svc, vol.id, new.href, "removed")  # header: new only; record: old
    before = {r.id for r in svc.pool.list()}
    for op in (lambda: svc.clone(vol.id), lambda: svc.backup(vol.id),
               lambda: svc.header_restore(vol.id), lambda: svc.delete(vol.id)):
        with pytest.raises(VolumeBusy, match="unfinished rotation"):
            op()
    assert {r.id for r in svc.pool.list()} == before  # no stuck half-copy
    rotation.rotate(svc, vol.id, "", resume_only=True)
    clone = svc.clone(vol.id)
    assert clone.key_ref == new.href and opens(svc, clone.id, new)


def test_header_restore_never_brings_back_a_pre_rotation_header(svc, make_key):
    """A header backup keeps the keyslots of its time. After a rotation, the pre-rotation
    copies open only with the old key; restore picks the newest one that opens with the
    current key, and refuses an explicit old one."""
    old, _ = make_key("alice")
    new, _ = make_key("alice")
    vol = svc.create(SIZE, old.href)
    before_rotation = svc.header_backup(vol.id)
    rotation.rotate(svc, vol.id, new.href)  # takes its own pre-rotation backup too
    after_rotation = svc.header_backup(vol.id)
    path = svc.pool.path(vol.id)
    with open(path, "r+b") as f:
        f.write(bytes(1 << 20))  # the header is gone
    with pytest.raises(VolumeError, match="opens with its current key"):
        svc.header_restore(vol.id, before_rotation)
    assert svc.header_restore(vol.id) == after_rotation
    assert opens(svc, vol.id, new) and not opens(svc, vol.id, old)
    # Another volume's header is refused by UUID, even with the same key.
    other = svc.create(SIZE, new.href)
    with pytest.raises(VolumeError, match="belongs to LUKS volume"):
        svc.header_restore(vol.id, svc.header_backup(other.id))
    svc.delete(vol.id)
    assert svc.header_backups(vol.id) == []  # backups hold keyslots: they go with the volume


def test_a_killed_operation_keeps_the_volume_locked_while_its_cryptsetup_runs(svc, make_key):
    """The lock descriptor is inherited by byok's children: if byok dies with -9, an orphaned
    child still holds the volume's lock until it exits, so no resume can race it."""
    from byok.common import proc

    vol = svc.create(SIZE, make_key("alice")[0].href)
    pid = os.fork()
    if pid == 0:
        with svc.pool.lock(vol.id, shared=False):
            child = proc.start(["sleep", "3"])
            os.kill(os.getpid(), signal.SIGKILL)  # the operation dies; its child lives on
            child.wait()
        os._exit(0)
    os.waitpid(pid, 0)
    with pytest.raises(VolumeBusy):
        with svc.pool.lock(vol.id, shared=False, wait=0.5):
            pass
    with svc.pool.lock(vol.id, shared=False, wait=10):  # free once the orphan has exited
        pass


@pytest.mark.parametrize("point", ["reencrypt:started", "reencrypt:added", "reencrypt:reencrypted",
                                   "reencrypt:saved"])
def test_reencryption_crash_at_a_step_resumes_to_the_new_key(svc, make_key, tmp_path, point):
    old, _ = make_key("alice")
    new, _ = make_key("alice")
    raw = tmp_path / "raw.img"
    raw.write_bytes(pattern(5, 4 << 20))
    vol = svc.create_from_image(svc.image_from_raw(raw, old.href).id)
    path = svc.pool.path(vol.id)
    vk_before = luks.volume_key(path, keys.passphrase(svc.key(old)))
    env = os.environ | {"BYOK_POOL_DIR": str(svc.pool.root), "BYOK_CRASH_AT": point}
    r = subprocess.run([sys.executable, "-m", "byok.cli", "volume", "reencrypt", vol.id,
                        "--key-ref", new.href, "--as", "alice"], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr
    rec = svc.pool.load(vol.id)
    assert rec.state == ("available" if point == "reencrypt:saved" else "reencrypting")
    if point != "reencrypt:saved":
        with pytest.raises(VolumeBusy):
            svc.clone(vol.id)
    rec = rotation.rotate(svc, vol.id, "", resume_only=True)
    assert rec.key_ref == new.href and rec.state == "available"
    assert not rotation.reencrypt_journal_for(svc, vol.id).path.exists()
    new_pw = keys.passphrase(svc.key(new))
    assert luks.volume_key(path, new_pw) != vk_before
    with pytest.raises(WrongKey):  # the old key opens nothing any more
        luks.test_key(path, keys.passphrase(svc.key(old)))
    assert svc.header_backups(vol.id) == []
    out = tmp_path / "out.plain"
    recovery.recover(path, out, passphrase=new_pw)
    assert out.read_bytes() == raw.read_bytes()
