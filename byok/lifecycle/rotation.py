"""Crash-safe key rotation (keyslot rekey) and full re-encryption of a volume.

**Rotation** moves a volume from the user's old key to a new one by changing keyslots only:
add the new key in a free slot → verify it opens → remove the old slot. Each step is recorded in
a journal (``journal/<id>.rotation.json``, written atomically) before the next begins, and a
header backup is taken first. A crash (kill -9) between or *during* any two steps leaves a
volume that opens with the old or the new key: the next ``rotate`` (or ``--resume``) looks at
what actually opens, then completes (new key opens) or rolls back (only the old one does);
if the header itself was damaged mid-write it is restored from the backup. Concurrent rotations
of one volume are refused (exclusive lock).

A keyslot change is **not** a volume-key change: the data stays encrypted with the same volume
key, so anyone who ever held the volume key (or an old header/backup plus the old key) can still
decrypt it. **Full re-encryption** (LUKS2, ``cryptsetup reencrypt`` offline) gives the volume a
new volume key; it is what revocation of a possibly leaked key needs. It is resumable too.

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
from byok.luks import recovery

PHASES = ("started", "backed-up", "added", "verified", "removed", "done")


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


def journal_for(svc, rid: str) -> Journal:
    return Journal(svc.pool.root / "journal" / f"{rid}.rotation.json")


def _opens(path: Path, pw: Sensitive) -> int | None:
    """The slot ``pw`` opens, None if it opens none; header damage propagates."""
    try:
        return luks.test_key(path, pw)
    except WrongKey:
        return None


def rotate(svc, rid: str, new_key_ref: str, *, policy: str | None = None,
           resume_only: bool = False):
    """Rotate ``rid`` to ``new_key_ref`` (or finish an interrupted rotation first)."""
    pool = svc.pool
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


def _rotate(svc, rid: str, new_key_ref: str, policy: str | None, journal: Journal):
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
    backup = pool.header_backup_path(rid, "-pre-rotate")
    luks.header_backup(path, backup)
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
    return _finish(svc, rid, doc, journal, old_km.ref.href)


def _finish(svc, rid: str, doc: dict, journal: Journal, old_ref: str):
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
    journal.clear()
    return rec


def _passphrase_if_available(svc, ref: str | None) -> Sensitive | None:
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


def _resume(svc, rid: str, doc: dict, journal: Journal):
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
        luks.header_restore(path, Path(backup))  # the backup was taken with the old key
        old_slot = _opens(path, old_pw)
        if old_slot is None:
            raise RotationError(f"{rid}: the pre-rotation header backup does not open either")
    if new_slot is not None:  # the new key is in: complete
        # The old slot is known from the journal even when the old key itself is gone.
        stale = old_slot if old_slot is not None else doc.get("old_slot")
        if stale is not None and stale != new_slot and stale in _active(path):
            luks.kill_slot(path, stale, authorising=new_pw)
        doc["phase"] = "removed"
        doc["resumed"] = True
        journal.write(doc)
        return _finish(svc, rid, doc, journal, old_ref)
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
        luks.kill_slot(path, added, authorising=old_pw)
    rec.state = "available"
    rec.history.append({"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "op": "rotation rolled back", "to": new_ref})
    pool.save(rec)
    if new_ref:
        with contextlib.suppress(ByokError):
            guard.release(new_ref, identity=svc.user, volume_id=rid, service=svc.service_name,
                          endpoint=svc.endpoint, resource_type=rec.kind, deadline=svc.deadline)
    journal.clear()
    return rec


def reencrypt_journal_for(svc, rid: str) -> Journal:
    return Journal(svc.pool.root / "journal" / f"{rid}.reencrypt.json")


def reencrypt(svc, rid: str, new_key_ref: str | None = None, *, policy: str | None = None,
              resume_only: bool = False):
    """Full re-encryption: a new volume key for all data, then the new user key (LUKS2).

    Journaled like rotation, under one exclusive lock from start to end: ``started`` (the
    volume is ``reencrypting``; nothing may copy it) → cryptsetup's own resilient LUKS2
    reencryption → ``reencrypted`` (the volume key changed; the escrow slot, which
    reencryption does not keep, is dropped from the record only now) → the keyslot rotation to
    the new user key (its own journal) → done. After a crash, calling this again (or
    ``rotate --resume``) resumes cryptsetup's reencryption where it stopped and goes on.
    Returns ``(record, seconds of re-encryption)``.
    """
    pool = svc.pool
    with pool.lock(rid, shared=False, wait=1.0):
        journal = reencrypt_journal_for(svc, rid)
        doc = journal.read()
        if doc is None:
            if resume_only:
                return pool.load(rid), 0.0
            if not new_key_ref:
                raise RotationError("re-encryption needs the new user key (--key-ref)")
            doc = _reencrypt_start(svc, rid, new_key_ref, journal)
        return _reencrypt_continue(svc, rid, doc, journal, policy)


def _reencrypt_start(svc, rid: str, new_key_ref: str, journal: Journal) -> dict:
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
    svc.passphrase(new_ref)  # the user may use the new key: fail before anything changes
    old_pw = svc.passphrase(rec.key_ref)[1]
    old_slot = _opens(path, old_pw)
    if old_slot is None:
        raise RotationError(f"the recorded key of {rid} does not open it")
    doc = {"phase": "started", "volume": rid, "old_ref": rec.key_ref, "new_ref": new_ref,
           "old_slot": old_slot, "escrow_ref": rec.escrow_ref, "started_at": time.time(),
           "volume_key_before": luks.volume_key(path, old_pw).fingerprint()}
    journal.write(doc)
    rec.state = "reencrypting"
    pool.save(rec)
    crash_point("reencrypt:started")
    return doc


def finish_interrupted_reencryption(svc, rid: str, pw: Sensitive, policy) -> str:
    """Bring cryptsetup's interrupted LUKS2 reencryption of ``rid`` to its end; say how.

    Measured here (cryptsetup 2.6.1, kill -9 at random moments, data checked after each):

    * killed while data was still being re-encrypted, ``cryptsetup reencrypt --resume-only``
      finishes it (``resume``); some of those interruptions need ``cryptsetup repair`` first;
    * killed after the last data was written — segment 0, the whole device, already bound to
      the *final* segment's key digest — resume is wrong: with the old keyslot already wiped
      it refuses (and so does repair), and with the old keyslot still there it reports success
      but **re-processes the finished data and destroys it** (twice in 100 kills here). In that
      state the data is wholly in the new key and only the metadata is unfinished, so byok
      never resumes it: the header is **rebuilt** around the verified new volume key (same UUID,
      cipher, sector size and data offset; the old header is backed up first; data untouched).
    """
    path = svc.pool.path(rid)
    for how in ("resume", "repair", "resume"):
        if _data_wholly_reencrypted(path):
            return _rebuild_header(svc, rid, pw, policy)
        with contextlib.suppress(ByokError):
            if how == "repair":
                luks.repair(path, pw)
            else:
                luks.reencrypt(path, pw, resume=True)
        if not luks.dump(path).reencrypting:
            return how
    if _data_wholly_reencrypted(path):
        return _rebuild_header(svc, rid, pw, policy)
    raise RotationError(
        f"{rid}: cryptsetup cannot finish its interrupted re-encryption and the data is split "
        "between two volume keys; nothing was changed",
        hint="keep the volume as it is and run 'cryptsetup reencrypt --resume-only' with the "
        "key by hand, or recover offline from a backup",
    )


def _final_digest(meta: dict) -> dict | None:
    """The key digest of the reencryption's final segment, if segment 0 — the whole device —
    is already bound to it (all data written with the new key); else None."""
    segs = meta.get("segments", {})
    live = {k: v for k, v in segs.items()
            if not any(f.startswith("backup-") for f in v.get("flags", []))}
    final = [k for k, v in segs.items() if "backup-final" in v.get("flags", [])]
    seg = live.get("0", {})
    if list(live) != ["0"] or seg.get("type") != "crypt" or seg.get("size") != "dynamic":
        return None
    for d in meta.get("digests", {}).values():
        if "0" in d.get("segments", []) and final and final[0] in d.get("segments", []):
            return d
    return None


def _data_wholly_reencrypted(path: Path) -> bool:
    meta = luks.metadata(path)  # one luksDump: the requirement and the segments
    return luks.reencrypt_required(luks.requirements(meta)) and _final_digest(meta) is not None


def _rebuild_header(svc, rid: str, pw: Sensitive, policy) -> str:
    path = svc.pool.path(rid)
    meta = luks.metadata(path)
    digest = _final_digest(meta)
    if digest is None:
        raise RotationError(f"{rid}: the header is not in a state byok may rebuild")
    seg = meta["segments"]["0"]
    header = luksheader.read(str(path))
    # Only the keyslots of the final key: the old one may still open with the same passphrase.
    final_slots = tuple(k for k in header.keyslots if str(k.slot) in digest.get("keyslots", []))
    if not final_slots:
        raise RotationError(f"{rid}: no keyslot holds the re-encrypted data's key")
    unlocked = recovery.unlock(dataclasses.replace(header, keyslots=final_slots), path, pw)
    luks.header_backup(path, svc.pool.header_backup_path(rid, "-pre-rebuild"))
    luks.rewrite_header(path, unlocked.volume_key, pw, uuid=header.uuid,
                        cipher=str(seg["encryption"]), sector_size=int(seg["sector_size"]),
                        data_offset=int(seg["offset"]), policy=policy)
    if luks.volume_key(path, pw) != unlocked.volume_key:
        raise RotationError(f"{rid}: the rebuilt header does not carry the volume key")
    return "rebuilt"


def _reencrypt_continue(svc, rid: str, doc: dict, journal: Journal, policy: str | None):
    pool = svc.pool
    path = pool.path(rid)
    old_pw = svc.passphrase(doc["old_ref"])[1]
    if doc["phase"] == "started":
        t0 = time.monotonic()
        if luks.dump(path).reencrypting:  # cryptsetup was interrupted: let it finish its work
            doc["finished_by"] = finish_interrupted_reencryption(
                svc, rid, old_pw, policy or luks.policy_for(pool.load(rid).secret_type))
        elif luks.volume_key(path, old_pw).fingerprint() == doc["volume_key_before"]:
            luks.reencrypt(path, old_pw, slot=doc["old_slot"])
        # else: cryptsetup had finished when the crash came
        if luks.volume_key(path, old_pw).fingerprint() == doc["volume_key_before"]:
            raise RotationError(f"re-encryption of {rid} did not change its volume key")
        doc |= {"phase": "reencrypted",
                "seconds": round(doc.get("seconds", 0) + time.monotonic() - t0, 3)}
        journal.write(doc)
        crash_point("reencrypt:reencrypted")
    rec = pool.load(rid)
    if doc.get("escrow_ref") and rec.escrow_ref:
        # Reencryption keeps only the user's slot: the escrow slot is gone with the old volume
        # key, so its secret in the service project can go too.
        svc.drop_escrow_secret(rec.escrow_ref)
        rec.escrow_ref = None
        rec.history.append({"op": "escrow slot dropped by re-encryption"})
    if rec.state == "reencrypting":
        rec.state = "available"
    pool.save(rec)
    rot = journal_for(svc, rid)
    pending = rot.read()
    if pending is not None:
        rec = _resume(svc, rid, pending, rot)
    if rec.key_ref != doc["new_ref"]:
        rec = _rotate(svc, rid, doc["new_ref"], policy, rot)
    rec.history.append({"op": "reencrypt", "seconds": doc.get("seconds"),
                        **({"finished_by": doc["finished_by"]} if "finished_by" in doc else {})})
    pool.save(rec)
    journal.clear()
    return rec, float(doc.get("seconds") or 0.0)
