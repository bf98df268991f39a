"""Crash-safe key rotation (keyslot rekey) and full re-encryption of a volume.

**Rotation** moves a volume from the user's old key to a new one by changing keyslots only:
add the new key in a free slot → verify it opens → remove the old slot. Each step is recorded in
a journal (``journal/<id>.rotation.json``, written atomically) before the next begins, and a
header backup is taken first. A crash (kill -9) between or *during* any two steps leaves a
volume that opens with the old or the new key: the next ``rotate`` (or ``--resume``) looks at
what actually opens, then completes (new key opens) or rolls back (only the old one does);
if the header itself was damaged mid-write it is restored from the backup. Concurrent rotations
of one volume are refused (exclusive lock).

The pre-rotation header backup exists only for that resume (a keyslot write that tore the
header); it holds the old keyslots, so it is sealed under the *new* key (:mod:`byok.luks.sealed`),
fsynced before cryptsetup starts, and shredded once the rotation is verified; plain header
backups that still open with the old key are shredded then too (they could only undo it).

A keyslot change is **not** a volume-key change: the data stays encrypted with the same volume
key, so anyone who ever held the volume key (or an old header/backup plus the old key) can still
decrypt it. **Full re-encryption** (LUKS2, ``cryptsetup reencrypt`` offline) gives the volume a
new volume key; it is what revocation of a possibly leaked key needs. The new user key is added
first and cryptsetup re-encrypts from *its* keyslot, so the new volume key is only ever wrapped
by the new user key, and cryptsetup's own teardown removes every keyslot of the old volume key
(the old user key's, the escrow's). An interrupted re-encryption is finished from the on-disk
state alone (:func:`finish_reencryption`), never from the journal alone.

``crash_point(name)`` is the named fault injector for tests and experiments: when
``BYOK_CRASH_AT`` equals ``name`` the process kills itself with SIGKILL at that point.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from byok.common import paths
from byok.common.errors import (
    ByokError,
    HeaderCorrupt,
    KeyAccessDenied,
    KeyNotFound,
    KeyTypeMismatch,
    NotLuks,
    RotationError,
    WrongKey,
)
from byok.common.sensitive import Sensitive
from byok.keys import guard
from byok.luks import cryptsetup as luks
from byok.luks import header as luksheader
from byok.luks import luks2edit, recovery, reencstate, sealed

PHASES = ("started", "backed-up", "added", "verified", "removed", "done")


if TYPE_CHECKING:
    from byok.keys.identity import Identity
    from byok.keys.ref import KeyRef
    from byok.keys.resolver import KeyMaterial, Resolver, SecretInfo
    from byok.lifecycle.volumes import Pool, VolumeRecord


class RotationService(Protocol):
    """What rotation and re-encryption need of the volume service
    (:class:`byok.lifecycle.volumes.VolumeService`): its pool, the user's key resolution and the
    consumer bookkeeping — typed here so that rotation does not import the service's module."""

    pool: Pool
    user: Identity
    resolver: Resolver
    endpoint: str
    service_name: str
    deadline: float

    def key(self, ref: KeyRef | str) -> KeyMaterial: ...

    def passphrase(self, ref: KeyRef | str) -> tuple[KeyMaterial, Sensitive]: ...

    def drop_escrow_secret(self, escrow_ref: str) -> None: ...

    def resume_interrupted(self, *, strict: bool = False) -> list[str]: ...

    def _bind(self, ref: KeyRef | str, rid: str, kind: str) -> SecretInfo: ...

    def _release(self, rec: VolumeRecord) -> None: ...


def crash_point(name: str) -> None:
    """Fault injection at a step boundary: SIGKILL ourselves if BYOK_CRASH_AT names this point."""
    if os.environ.get("BYOK_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class Journal:
    path: Path

    def read(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except ValueError:
            # A torn journal write cannot happen (atomic replace); treat garbage as "unknown
            # phase" so resume decides from what the header opens with.
            return {"phase": "unknown"}

    def write(self, doc: dict) -> None:
        paths.write_private(self.path, json.dumps(doc, indent=2) + "\n")

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def journal_for(svc: RotationService, rid: str) -> Journal:
    return Journal(svc.pool.root / "journal" / f"{rid}.rotation.json")


def _opens(path: Path, pw: Sensitive) -> int | None:
    """The slot ``pw`` opens, None if it opens none; header damage propagates."""
    try:
        return luks.test_key(path, pw)
    except WrongKey:
        return None


def rotate(svc: RotationService, rid: str, new_key_ref: str, *, policy: str | None = None,
           resume_only: bool = False):
    """Rotate ``rid`` to ``new_key_ref`` (or finish an interrupted rotation first)."""
    pool = svc.pool
    svc.resume_interrupted()  # e.g. a killed deletion of rid: finished, not rotated
    if reencrypt_journal_for(svc, rid).read() is not None:
        # An interrupted re-encryption owns the volume: finish it (it includes a rotation).
        rec, _ = reencrypt(svc, rid, resume_only=True)
        if resume_only or svc.resolver.parse(new_key_ref).href == rec.key_ref:
            return rec
    with pool.lock(rid, shared=False, wait=1.0):
        journal = journal_for(svc, rid)
        pending = journal.read()
        if pending is not None:
            rec = _resume(svc, rid, pending, journal)
            if resume_only or svc.resolver.parse(new_key_ref).href == rec.key_ref:
                return rec
        elif resume_only:
            return pool.load(rid)
        return _rotate(svc, rid, new_key_ref, policy, journal)


def _rotate(svc: RotationService, rid: str, new_key_ref: str, policy: str | None, journal: Journal):
    pool = svc.pool
    rec = pool.load(rid)
    path = pool.path(rid)
    if rec.state == "new-blank":
        raise RotationError(f"{rid} has never been formatted; attach it once first")
    old_km, old_pw = svc.passphrase(rec.key_ref)
    new_ref = svc.resolver.parse(new_key_ref)
    if new_ref.href == rec.key_ref:
        raise RotationError(f"{rid} already uses key {new_ref.secret_id}")
    new_km, new_pw = svc.passphrase(new_ref)  # the user may read the new key (no side effect)
    old_slot = _opens(path, old_pw)
    if old_slot is None:
        raise RotationError(f"the recorded key of {rid} does not open it; nothing changed")
    doc = {"phase": "started", "volume": rid, "old_ref": rec.key_ref, "new_ref": new_ref.href,
           "old_slot": old_slot, "started_at": time.time()}
    journal.write(doc)  # first, so that a rollback also releases the consumer registered next
    rec.state = "rotating"
    pool.save(rec)
    try:
        svc._bind(new_ref, rid, rec.kind)  # the volume becomes a consumer of the new key
    except BaseException:
        rec.state = "available"
        pool.save(rec)
        journal.clear()
        raise
    crash_point("started")
    backup = _sealed_backup(pool, rid, path, new_pw, human=new_km.info.secret_type == "passphrase")
    doc |= {"phase": "backed-up", "header_backup": str(backup)}
    journal.write(doc)
    crash_point("backed-up")
    new_slot = luks.add_key(path, old_pw, new_pw,
                            policy=policy or luks.policy_for(new_km.info.secret_type))
    doc |= {"phase": "added", "new_slot": new_slot}
    journal.write(doc)
    crash_point("added")
    if _opens(path, new_pw) is None:
        raise RotationError(f"the new key does not open {rid} after adding it")
    doc["phase"] = "verified"
    journal.write(doc)
    crash_point("verified")
    luks.kill_slot(path, old_slot, authorising=new_pw)
    doc["phase"] = "removed"
    journal.write(doc)
    crash_point("removed")
    return _finish(svc, rid, doc, journal, old_km.ref.href, old_pw)


def _finish(svc: RotationService, rid: str, doc: dict, journal: Journal, old_ref: str,
            old_pw: Sensitive | None):
    pool = svc.pool
    rec = pool.load(rid)
    rec.key_ref = doc["new_ref"]
    rec.secret_type = svc.key(doc["new_ref"]).info.secret_type
    rec.state = "available"
    rec.history.append({"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "op": "rotate", "from": old_ref, "to": doc["new_ref"]})
    pool.save(rec)
    crash_point("saved")
    svc._release(dataclasses.replace(rec, key_ref=old_ref))  # no longer a consumer of the old key
    _retire_backups(svc, rid, old_pw)
    journal.clear()
    return rec


def _sealed_backup(pool, rid: str, path: Path, seal_pw: Sensitive, *, human: bool) -> Path:
    """The pre-rotation header backup, sealed under the new key and durable before any
    keyslot changes (see :mod:`byok.luks.sealed`)."""
    target = pool.header_backup_path(rid, "-pre-rotate").with_suffix(".hdr" + sealed.SUFFIX)
    plain = target.with_name(target.name + ".plain")
    plain.unlink(missing_ok=True)
    luks.header_backup(path, plain)
    try:
        sealed.write_durable(target, sealed.seal(plain.read_bytes(), seal_pw, human=human,
                                                 context=rid))
    finally:
        sealed.shred(plain)
    return target


def _restore_sealed(path: Path, backup: Path, pw: Sensitive, rid: str) -> None:
    plain = backup.with_name(backup.name + ".plain")
    plain.unlink(missing_ok=True)
    sealed.write_durable(plain, sealed.unseal(backup.read_bytes(), pw, context=rid))
    try:
        luks.header_restore(path, plain)
    finally:
        sealed.shred(plain)


def _retire_backups(svc: RotationService, rid: str, old_pw: Sensitive | None) -> None:
    """After a verified rotation or re-encryption: shred its sealed pre-rotation backup and
    leftovers, and every plain header backup of ``rid`` that still opens with the old key
    (``old_pw``; None: the old key is gone, nothing can open them with it) —
    ``header-restore`` refuses those, so they could only serve the revoked key."""
    headers = svc.pool.root / "headers"
    for f in headers.glob(f"{rid}-*"):
        if f.name.endswith((sealed.SUFFIX, ".plain", ".tmp", ".finalise.hdr")):
            sealed.shred(f)
    if old_pw is None:
        return
    for f in headers.glob(f"{rid}-*.hdr"):
        with contextlib.suppress(ByokError):
            luks.test_key(f, old_pw)
            sealed.shred(f)


def _passphrase_if_available(svc: RotationService, ref: str | None) -> Sensitive | None:
    """The key's passphrase, or None if Barbican no longer gives it to the user.

    A user who rotates because a key is compromised may delete the old key before a crashed
    rotation is resumed (or the new one, having changed their mind). Resume decides from what
    is still available *and* opens; an outage (KeyServiceUnavailable) is not "unavailable" —
    it propagates, because deciding on it could roll back a finished rotation.
    """
    if not ref:
        return None
    try:
        return svc.passphrase(ref)[1]
    except (KeyNotFound, KeyAccessDenied, KeyTypeMismatch):
        return None


def _active(path: Path) -> set[int]:
    try:
        return set(luks.dump(path).active_slots)
    except ByokError:
        return set()


def _resume(svc: RotationService, rid: str, doc: dict, journal: Journal):
    """Finish or roll back an interrupted rotation from what the header opens with."""
    pool = svc.pool
    path = pool.path(rid)
    rec = pool.load(rid)
    old_ref = doc.get("old_ref") or rec.key_ref
    new_ref = doc.get("new_ref")
    old_pw = _passphrase_if_available(svc, old_ref)
    new_pw = _passphrase_if_available(svc, new_ref)
    if old_pw is None and new_pw is None:
        raise RotationError(
            f"{rid}: neither the old nor the new key of the interrupted rotation can be read "
            "from Barbican any more; nothing was changed",
            hint="offline recovery still works with either key's bytes: byok recover",
        )
    try:
        old_slot = _opens(path, old_pw) if old_pw else None
        new_slot = _opens(path, new_pw) if new_pw else None
    except (HeaderCorrupt, NotLuks):
        old_slot = new_slot = None
    if old_slot is None and new_slot is None and old_pw is not None:
        backup = doc.get("header_backup")
        if not backup or not Path(backup).exists():
            raise RotationError(
                f"{rid}: neither key opens the header and there is no pre-rotation backup",
                hint="restore a header backup: byok volume header-restore " + rid,
            )
        if new_pw is None:
            raise RotationError(
                f"{rid}: neither key opens the header, and its pre-rotation backup is sealed "
                "under the new key, which Barbican no longer gives; nothing was changed",
                hint="restore the new key, or recover offline with either key's bytes")
        _restore_sealed(path, Path(backup), new_pw, rid)  # the backup has the old keyslots
        old_slot = _opens(path, old_pw)
        if old_slot is None:
            raise RotationError(f"{rid}: the pre-rotation header backup does not open either")
    if new_slot is not None:  # the new key is in: complete
        # The old slot is known from the journal even when the old key itself is gone.
        stale = old_slot if old_slot is not None else doc.get("old_slot")
        if stale is not None and stale != new_slot and stale in _active(path):
            assert new_pw is not None  # new_slot was found by opening with it
            luks.kill_slot(path, stale, authorising=new_pw)
        doc["phase"] = "removed"
        doc["resumed"] = True
        journal.write(doc)
        return _finish(svc, rid, doc, journal, old_ref, old_pw)
    if old_slot is None:
        raise RotationError(
            f"{rid}: only the new key was added, but Barbican no longer gives the new key and "
            "the old one does not open the header; nothing was changed",
            hint="restore the pre-rotation header (byok volume header-restore) or recover "
            "offline with the new key's bytes",
        )
    # Only the old key opens: roll back. If the new key's slot was added but that key can no
    # longer be read (deleted by its owner), wipe the slot: nothing may open with it later.
    added = doc.get("new_slot")
    if new_pw is None and added is not None and added != old_slot and added in _active(path):
        assert old_pw is not None  # old_slot was found by opening with it
        luks.kill_slot(path, added, authorising=old_pw)
    rec.state = "available"
    rec.history.append({"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "op": "rotation rolled back", "to": new_ref})
    pool.save(rec)
    if new_ref:
        with contextlib.suppress(ByokError):
            guard.release(new_ref, identity=svc.user, volume_id=rid, service=svc.service_name,
                          endpoint=svc.endpoint, resource_type=rec.kind, deadline=svc.deadline)
    for f in (svc.pool.root / "headers").glob(f"{rid}-*"):
        if f.name.endswith((sealed.SUFFIX, ".plain")):
            sealed.shred(f)  # rolled back: the header is the pre-rotation one again
    journal.clear()
    return rec


def reencrypt_journal_for(svc: RotationService, rid: str) -> Journal:
    return Journal(svc.pool.root / "journal" / f"{rid}.reencrypt.json")


def reencrypt(svc: RotationService, rid: str, new_key_ref: str | None = None, *,
              policy: str | None = None, resume_only: bool = False):
    """Full re-encryption: a new volume key for all data, wrapped only by the new user key.

    Journaled, under one exclusive lock from start to end: ``started`` (the volume is
    ``reencrypting``; nothing may copy it; the new key's consumer is registered) → the new user
    key is added (a keyslot of the *old* volume key) → ``cryptsetup reencrypt --key-slot`` that
    keyslot, so the new volume key's keyslot is made from the new user key, and cryptsetup's
    teardown removes every keyslot of the old volume key → verified from the header → record,
    consumers and escrow updated, stale keyslots and header backups removed → done. After a
    crash, calling this again (or ``rotate --resume``) looks at the header and finishes.
    Returns ``(record, seconds of re-encryption)``.
    """
    pool = svc.pool
    svc.resume_interrupted()
    with pool.lock(rid, shared=False, wait=1.0):
        journal = reencrypt_journal_for(svc, rid)
        doc = journal.read()
        if doc is None:
            if resume_only:
                return pool.load(rid), 0.0
            if not new_key_ref:
                raise RotationError("re-encryption needs the new user key (--key-ref)")
            doc = _reencrypt_start(svc, rid, new_key_ref, journal)
        elif doc.get("phase") == "unknown":
            raise RotationError(f"{rid}: the re-encryption journal is unreadable; nothing was "
                                "changed", hint="inspect the volume with 'byok recover --check'")
        return _reencrypt_continue(svc, rid, doc, journal, policy)


def _reencrypt_start(svc: RotationService, rid: str, new_key_ref: str, journal: Journal) -> dict:
    pool = svc.pool
    rec = pool.load(rid)
    path = pool.path(rid)
    if rec.state in ("rotating", "new-blank"):
        raise RotationError(f"{rid} is {rec.state}; resume or format it first")
    if rec.luks_type != "luks2":
        raise RotationError(
            f"{rid} is LUKS1; offline re-encryption needs LUKS2 (LUKS1 reencrypt needs dm)",
            hint="convert it (cryptsetup convert --type luks2) or re-encrypt in the guest",
        )
    new_ref = svc.resolver.parse(new_key_ref).href
    if new_ref == rec.key_ref:
        raise RotationError(f"{rid} already uses key {new_ref}; re-encryption needs a new one")
    svc.passphrase(new_ref)  # the user may use the new key: fail before anything changes
    old_pw = svc.passphrase(rec.key_ref)[1]
    h = luksheader.read(str(path))
    if reencstate.read(h).status != reencstate.NONE:
        raise RotationError(f"{rid} is already in the middle of a re-encryption that byok did "
                            "not start; nothing was changed",
                            hint="finish it with cryptsetup, or recover offline")
    key = _data_key(h, path, old_pw)
    if key is None:
        raise RotationError(f"the recorded key of {rid} does not open it")
    doc = {"phase": "started", "volume": rid, "old_ref": rec.key_ref, "new_ref": new_ref,
           "old_slot": key.slot, "escrow_ref": rec.escrow_ref, "started_at": time.time(),
           "volume_key_before": key.volume_key.fingerprint()}
    journal.write(doc)
    rec.state = "reencrypting"
    pool.save(rec)
    svc._bind(new_ref, rid, rec.kind)  # a consumer of the new key from now on
    crash_point("reencrypt:started")
    return doc


def _data_key(h, path: Path, pw: Sensitive | None) -> recovery.Unlocked | None:
    """The key ``pw`` opens for segment 0 (from a keyslot bound to its digest), or None."""
    if pw is None:
        return None
    ds = reencstate.digest_of_segment(h, 0)
    got = recovery.unlock_digests(h, path, pw, {d.id for d in ds})
    return next(iter(got.values()), None)


def _remove_unbound_keyslots(path: Path, pw: Sensitive) -> list[int]:
    """Remove every keyslot whose digest decrypts no data segment (a crashed cryptsetup's new
    keyslot, the old volume key's after a finished re-encryption); ``pw`` must open a bound
    one. Returns the slots removed."""
    h = luksheader.read(str(path))
    bound = reencstate.bound_keyslots(h)
    stale = sorted({k.slot for k in h.keyslots} - bound)
    for slot in stale:
        luks.kill_slot(path, slot, authorising=pw)
    return stale


def _reencrypt_continue(svc: RotationService, rid: str, doc: dict, journal: Journal,
                        policy: str | luks.PbkdfPolicy | None):
    pool = svc.pool
    path = pool.path(rid)
    rec = pool.load(rid)
    try:
        new_km, new_pw = svc.passphrase(doc["new_ref"])
    except (KeyNotFound, KeyAccessDenied, KeyTypeMismatch) as e:
        raise RotationError(
            f"{rid}: the interrupted re-encryption needs its new key, which Barbican no longer "
            f"gives ({e.message}); nothing was changed",
            hint="part of the data may already be under the new volume key: restore the new "
            "key, or recover offline with its bytes (byok recover)") from None
    old_pw = _passphrase_if_available(svc, doc["old_ref"])
    policy = policy or luks.policy_for(new_km.info.secret_type)
    t0 = time.monotonic()
    how = _drive_reencryption(path, old_pw, new_pw, doc, journal, policy)
    # Verify from the header, not from what was done: not reencrypting, segment 0's key is a
    # new one, the new user key opens it, the old one opens nothing.
    h = luksheader.read(str(path))
    key = _data_key(h, path, new_pw)
    if reencstate.read(h).status != reencstate.NONE or key is None:
        raise RotationError(f"re-encryption of {rid} did not finish ({how})")
    if key.volume_key.fingerprint() == doc["volume_key_before"]:
        raise RotationError(f"re-encryption of {rid} did not change its volume key")
    removed = _remove_unbound_keyslots(path, new_pw)
    if old_pw is not None and _opens(path, old_pw) is not None:
        raise RotationError(f"{rid}: the old key still opens the re-encrypted volume")
    luks2edit.wipe_unused_keyslot_area(path)
    doc |= {"phase": "reencrypted", "finished_by": how,
            "seconds": round(doc.get("seconds", 0) + time.monotonic() - t0, 3)}
    journal.write(doc)
    crash_point("reencrypt:reencrypted")
    rec = pool.load(rid)
    if doc.get("escrow_ref") and rec.escrow_ref:
        # The escrow keyslot went with the old volume key, so its secret in the service
        # project can go too.
        svc.drop_escrow_secret(rec.escrow_ref)
        rec.escrow_ref = None
        rec.history.append({"op": "escrow slot dropped by re-encryption"})
    rec.key_ref = doc["new_ref"]
    rec.secret_type = new_km.info.secret_type
    rec.state = "available"
    rec.history.append({"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "op": "reencrypt", "from": doc["old_ref"], "to": doc["new_ref"],
                        "seconds": doc.get("seconds"), "finished_by": how,
                        **({"stale_keyslots_removed": removed} if removed else {})})
    pool.save(rec)
    crash_point("reencrypt:saved")
    if doc["old_ref"] != doc["new_ref"]:  # no longer a consumer of the old key (idempotent)
        svc._release(dataclasses.replace(rec, key_ref=doc["old_ref"]))
    _retire_backups(svc, rid, old_pw)
    journal.clear()
    return rec, float(doc.get("seconds") or 0.0)


def _drive_reencryption(path: Path, old_pw: Sensitive | None, new_pw: Sensitive, doc: dict,
                        journal: Journal, policy) -> str:
    """Bring the volume to "re-encrypted, new user key only", deciding every step from the
    header: not started (re)starts it, a cryptsetup state finishes it. Returns how."""
    steps = []
    for _ in range(8):
        h = luksheader.read(str(path))
        st = reencstate.read(h)
        if st.status != reencstate.NONE:
            steps.append(finish_reencryption(path, new_pw))
            continue
        new_key = _data_key(h, path, new_pw)
        old_key = _data_key(h, path, old_pw)
        key = new_key or old_key
        if key is None:
            raise RotationError("neither the old nor the new key opens segment 0 of the volume; "
                                "nothing was changed", hint="recover offline: byok recover")
        if key.volume_key.fingerprint() != doc["volume_key_before"]:
            if new_key is None:
                raise RotationError("the volume has a volume key this re-encryption did not "
                                    "start from, and the new key does not open it; nothing "
                                    "was changed")
            return "+".join(steps) or "finished before the crash"
        # Not (or no longer) re-encrypting, still the old volume key: start (again).
        authorising = new_pw if new_key else old_pw
        if authorising is None:
            raise RotationError(f"{path.name}: the old key is gone and the new one does not open "
                                "the header; nothing was changed")
        stale = _remove_unbound_keyslots(path, authorising)
        if stale:
            steps.append(f"removed stale keyslots {stale}")
        if new_key is None:
            if old_pw is None:
                raise RotationError("re-encryption has not started and the old key is no "
                                    "longer available to add the new one; nothing was changed")
            luks.add_key(path, old_pw, new_pw, policy=policy)
            new_key = _data_key(luksheader.read(str(path)), path, new_pw)
            if new_key is None:
                raise RotationError("the new key does not open the volume after adding it")
        doc |= {"phase": "reencrypting", "new_slot": new_key.slot}
        journal.write(doc)
        crash_point("reencrypt:added")
        luks.reencrypt(path, new_pw, slot=new_key.slot, policy=policy)
        steps.append("reencrypted")
    raise RotationError("re-encryption did not converge in 8 steps: " + ", ".join(steps))


def finish_reencryption(path: Path, pw: Sensitive) -> str:
    """Finish an interrupted LUKS2 re-encryption of ``path`` from its on-disk state; say how.

    ``pw`` must open both the old and the new volume key (cryptsetup makes the new keyslot from
    the one it re-encrypts from). The state is read with :mod:`byok.luks.reencstate` and checked
    with :func:`byok.luks.recovery.plan` — reencrypt metadata authenticated, every byte of the
    hotzone explained — before anything is written; then, per state:

    * a hotzone (cryptsetup's crash state): blocks a torn write left half old, half new (which
      cryptsetup's checksum repair would take for new and garble) are rewritten in the new key
      first; then ``cryptsetup repair``;
    * data still in progress (or not started): ``cryptsetup reencrypt --resume-only``;
    * every data segment already in the new key, only the metadata unfinished: cryptsetup
      2.6.1's resume would re-encrypt the finished data again and destroy it, so byok does the
      teardown itself (:mod:`byok.luks.luks2edit`): old keyslots, backup segments, the reencrypt
      keyslot and the requirement dropped, the header validated and written by cryptsetup.

    Where the state cannot be decided (resilience ``none``, metadata that does not verify, a
    hotzone block nothing explains) it raises RotationError and changes nothing.
    """
    steps: list[str] = []
    for _ in range(8):
        h = luksheader.read(str(path))
        st = reencstate.read(h)
        if st.status == reencstate.NONE:
            return "+".join(steps) or "not reencrypting"
        if st.slot is None:
            raise RotationError(f"{path.name}: the header says re-encrypting but has no "
                                "reencrypt keyslot; nothing was changed",
                                hint="recover offline: byok recover --check")
        if st.slot.mode != "reencrypt" or st.slot.resilience not in ("checksum", "journal"):
            raise RotationError(
                f"{path.name}: an interrupted {st.slot.mode} with resilience "
                f"{st.slot.resilience!r} is not one byok finishes; nothing was changed",
                hint="finish it with cryptsetup, or recover offline: byok recover --check")
        p = recovery.plan(path, passphrase=pw)
        if p.refused:
            a, b, why = p.refused[0]
            raise RotationError(f"{path.name}: cannot tell what bytes {a}-{b - 1} hold ({why}); "
                                "nothing was changed")
        done = st.status == reencstate.CLEAN and all(
            d.id == st.digest_new for seg in st.data
            for d in reencstate.digest_of_segment(h, seg.id))
        if done and st.digest_new in p.keys:
            # All data is in the new key (its digest verified the key); only the teardown is
            # missing, which needs no reencrypt metadata — and cryptsetup's resume must not run.
            _finalise(path, st)
            steps.append("metadata finalised by byok")
            continue
        if p.notes.get("metadata_verified") is not True:
            raise RotationError(f"{path.name}: the re-encryption metadata cannot be verified "
                                "with this key (it must open the old and the new volume key); "
                                "nothing was changed")
        if st.status == reencstate.CRASH:
            torn = [pc for pc in p.pieces if pc.how == "bytes"]
            if torn:
                _rewrite_new(path, torn)
                steps.append(f"{len(torn)} torn hotzone blocks rewritten")
            luks.repair(path, pw)
            steps.append("repaired")
            continue
        luks.reencrypt(path, pw, resume=True)
        steps.append("resumed")
    raise RotationError(f"{path.name}: the re-encryption did not finish in 8 steps: "
                        + ", ".join(steps))


def finish_interrupted_reencryption(svc: RotationService, rid: str, pw: Sensitive,
                                    policy: object = None) -> str:
    """:func:`finish_reencryption` for a pool volume (kept for callers by volume id)."""
    return finish_reencryption(svc.pool.path(rid), pw)


def _rewrite_new(path: Path, torn: list[recovery.Piece]) -> None:
    """Write the verified plaintext of torn hotzone blocks back in the new key, so that the
    checksum repair sees whole new blocks (XTS is deterministic: the bytes cryptsetup meant)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        for pc in torn:
            data = pc.cipher.encrypt(pc.data, pc.iv) if pc.cipher is not None else pc.data
            os.pwrite(fd, data, pc.offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def _finalise(path: Path, st: reencstate.State) -> None:
    tmp = path.with_name(f".{path.name}.finalise.hdr")
    tmp.unlink(missing_ok=True)
    luks.header_backup(path, tmp)
    try:
        luks2edit.rewrite_backup(tmp, str(st.digest_new))
        luks.dump(tmp)  # cryptsetup must accept the rewritten header before it is written
        luks.header_restore(path, tmp)
    finally:
        sealed.shred(tmp)
