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

from byok import guard, luks, paths
from byok.errors import ByokError, HeaderCorrupt, NotLuks, RotationError, WrongKey
from byok.sensitive import Sensitive

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
    svc._bind(new_ref, rid, rec.kind)  # the user may use the new key; consumer registered
    new_km, new_pw = svc.passphrase(new_ref)
    old_slot = _opens(path, old_pw)
    if old_slot is None:
        raise RotationError(f"the recorded key of {rid} does not open it; nothing changed")
    doc = {"phase": "started", "volume": rid, "old_ref": rec.key_ref, "new_ref": new_ref.href,
           "old_slot": old_slot, "started_at": time.time()}
    journal.write(doc)
    rec.state = "rotating"
    pool.save(rec)
    crash_point("started")
    stamp = time.strftime("%Y%m%dT%H%M%S") + f"{time.time() % 1:.6f}"[1:]
    backup = pool.root / "headers" / f"{rid}-{stamp}-pre-rotate.hdr"
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


def _resume(svc, rid: str, doc: dict, journal: Journal):
    """Finish or roll back an interrupted rotation from what the header opens with."""
    pool = svc.pool
    path = pool.path(rid)
    rec = pool.load(rid)
    old_ref = doc.get("old_ref") or rec.key_ref
    new_ref = doc.get("new_ref")
    old_pw = svc.passphrase(old_ref)[1]
    new_pw = svc.passphrase(new_ref)[1] if new_ref else None
    try:
        old_slot = _opens(path, old_pw)
        new_slot = _opens(path, new_pw) if new_pw else None
    except (HeaderCorrupt, NotLuks):
        old_slot = new_slot = None
    if old_slot is None and new_slot is None:
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
        if old_slot is not None and old_slot != new_slot:
            luks.kill_slot(path, old_slot, authorising=new_pw)
        doc["phase"] = "removed"
        doc["resumed"] = True
        journal.write(doc)
        return _finish(svc, rid, doc, journal, old_ref)
    # Only the old key opens: roll back (nothing of the new key is usable).
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


def reencrypt(svc, rid: str, new_key_ref: str, *, policy: str | None = None):
    """Full re-encryption: a new volume key for all data, then the new user key (LUKS2)."""
    pool = svc.pool
    with pool.lock(rid, shared=False, wait=1.0):
        rec = pool.load(rid)
        path = pool.path(rid)
        if rec.luks_type != "luks2":
            raise RotationError(
                f"{rid} is LUKS1; offline re-encryption needs LUKS2 (LUKS1 reencrypt needs dm)",
                hint="convert it (cryptsetup convert --type luks2) or re-encrypt in the guest",
            )
        old_pw = svc.passphrase(rec.key_ref)[1]
        old_slot = _opens(path, old_pw)
        if old_slot is None:
            raise RotationError(f"the recorded key of {rid} does not open it")
        if rec.escrow_ref:  # reencrypt keeps only the user's slot: the escrow slot is gone
            rec.escrow_ref = None
            rec.history.append({"op": "escrow slot dropped by re-encryption"})
            pool.save(rec)
        before = luks.volume_key(path, old_pw).fingerprint()
        t0 = time.monotonic()
        luks.reencrypt(path, old_pw, slot=old_slot)
        seconds = time.monotonic() - t0
        after = luks.volume_key(path, old_pw).fingerprint()
        if before == after:
            raise RotationError(f"re-encryption of {rid} did not change its volume key")
    rec = rotate(svc, rid, new_key_ref, policy=policy)
    rec.history.append({"op": "reencrypt", "seconds": round(seconds, 3)})
    pool.save(rec)
    return rec, seconds
