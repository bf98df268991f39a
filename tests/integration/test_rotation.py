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

from byok import keys, luks, recovery, rotation
from byok.errors import VolumeBusy, WrongKey
from byok.pattern import pattern
from byok.volumes import Pool, VolumeService

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
