"""The prototype "Cinder side": file-backed volumes whose key is the user's, never Cinder's.

A pool (``.byok/pool``) holds records, sparse images of four kinds (volume, snapshot, backup,
image), locks, journals and header backups. Create formats with the user's key and binds it (a
Barbican consumer); copies share the key reference, never a secret; delete releases the consumer
and never the key. Every operation leaves the pool as it was on failure, and an intent journal
lets the next call settle one that was killed. Why each rule, and the crash evidence:
design/notes/lifecycle.md.
"""

from __future__ import annotations

import builtins
import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from byok.common import paths, proc, sparse
from byok.common.errors import (
    ByokError,
    KeyAccessDenied,
    KeyNotFound,
    VolumeBusy,
    VolumeError,
    VolumeNotFound,
    WrongKey,
)
from byok.common.sensitive import Sensitive
from byok.keys import guard
from byok.keys import resolver as keys
from byok.keys.barbican import DEFAULT_DEADLINE
from byok.keys.identity import Identity
from byok.keys.ref import KeyRef
from byok.keys.resolver import KeyMaterial, Resolver
from byok.lifecycle.rotation import Journal
from byok.luks import cryptsetup as luks
from byok.luks import sealed

LOG = logging.getLogger(__name__)

KINDS = ("volume", "snapshot", "backup", "image")
INTENTS = ("create", "delete", "escrow")
ESCROW_NAME = "byok-escrow-{rid}"


@dataclass
class VolumeRecord:
    """What the pool knows about one resource (Cinder's volume row, in miniature)."""

    id: str
    kind: str
    size: int
    key_ref: str
    secret_type: str
    luks_type: str = "luks2"
    cipher: str = luks.DEFAULT_CIPHER
    key_bits: int = 512
    name: str = ""
    state: str = "available"  # available | new-blank | rotating | reencrypting | error
    key_owner: str = "user"
    project_id: str = ""
    user_id: str = ""
    created: str = ""
    source: dict = field(default_factory=dict)
    escrow_ref: str | None = None
    luks_uuid: str = ""
    history: list = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict) -> VolumeRecord:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


class Pool:
    """Records, files and locks of the prototype volume service."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = (root or paths.pool_dir()).resolve()
        for sub in ("records", "data", "locks", "journal", "headers", "staging"):
            paths.private_dir(self.root / sub)
        self._global = threading.Lock()

    def path(self, rid: str) -> Path:
        return self.root / "data" / f"{rid}.img"

    def record_file(self, rid: str) -> Path:
        return self.root / "records" / f"{rid}.json"

    def load(self, rid: str) -> VolumeRecord:
        try:
            return VolumeRecord.from_json(json.loads(self.record_file(rid).read_text()))
        except FileNotFoundError:
            raise VolumeNotFound(f"no volume, snapshot, backup or image {rid!r} in {self.root}",
                                 hint="list them with: byok volume list") from None

    def save(self, rec: VolumeRecord) -> None:
        paths.write_private(self.record_file(rec.id), json.dumps(asdict(rec), indent=2) + "\n")

    def remove(self, rid: str) -> None:
        self.path(rid).unlink(missing_ok=True)
        self.record_file(rid).unlink(missing_ok=True)

    def list(self, kind: str | None = None) -> list[VolumeRecord]:
        out = []
        for f in sorted((self.root / "records").glob("*.json")):
            rec = VolumeRecord.from_json(json.loads(f.read_text()))
            if kind is None or rec.kind == kind:
                out.append(rec)
        return out

    def staging(self, rid: str) -> Path:
        """A private work directory of one creation (cryptsetup's temporary header lands here
        if it is killed); removed with the creation, whether it finished or not."""
        return self.root / "staging" / rid

    def intent(self, rid: str, op: str) -> Journal:
        """The intent of an operation on ``rid`` that a crash must not leave half done."""
        return Journal(self.root / "journal" / f"{rid}.{op}.json")

    def intents(self) -> builtins.list[tuple[str, str]]:
        """(resource id, operation) of every intent present, oldest name first."""
        out = []
        for f in sorted((self.root / "journal").glob("*.json")):
            rid, _, op = f.name.removesuffix(".json").rpartition(".")
            if op in INTENTS:
                out.append((rid, op))
        return out

    def leftovers(self) -> builtins.list[Path]:
        """Temporary files of atomic writes (records, journals) whose rename never came: each
        is written under its resource's lock, so one found under that lock is an orphan."""
        return sorted([*(self.root / "records").glob("*.tmp"),
                       *(self.root / "journal").glob("*.tmp")])

    def header_backup_path(self, rid: str, suffix: str = "") -> Path:
        """A new header backup name; UTC stamps, so names sort by time."""
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
        return self.root / "headers" / f"{rid}-{stamp}{suffix}.hdr"

    @contextlib.contextmanager
    def lock(self, rid: str, *, shared: bool, wait: float = 30.0) -> Iterator[None]:
        """flock on the resource: many readers (copies) or one writer (rotate, delete...)."""
        fd = os.open(self.root / "locks" / f"{rid}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        deadline = time.monotonic() + wait
        try:
            while True:
                try:
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise VolumeBusy(
                            f"{rid} is busy (another operation holds its lock)",
                            hint="wait for it to finish; a rotation in progress can be resumed "
                            "with: byok volume rotate VOL --resume",
                        ) from None
                    time.sleep(0.02)
            with proc.inheriting(fd):  # children (cryptsetup) hold the lock until they exit
                yield
        finally:
            os.close(fd)  # releases the flock (once no child holds it either)


def _refuse_if_busy(rec: VolumeRecord, consequence: str = "") -> None:
    """VolumeBusy if a crashed rotation or re-encryption still owns ``rec``."""
    if rec.state in ("rotating", "reencrypting"):
        what = "rotation" if rec.state == "rotating" else "re-encryption"
        raise VolumeBusy(f"{rec.id} has an unfinished {what}" +
                         (f"; {consequence}" if consequence else ""),
                         hint=f"finish it first: byok volume rotate {rec.id} --resume")


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class VolumeService:
    """Lifecycle operations for one user (and optionally the service identity)."""

    def __init__(
        self,
        pool: Pool,
        user: Identity,
        *,
        service: Identity | None = None,
        endpoint: str | None = None,
        lock_mode: str = "per-volume",
        service_name: str = guard.DEFAULT_SERVICE,
        deadline: float = DEFAULT_DEADLINE,
    ) -> None:
        self.pool = pool
        self.user = user
        self.service = service
        self.deadline = deadline
        self.resolver = Resolver(user, endpoint=endpoint, deadline=deadline)
        self.endpoint = self.resolver.endpoint
        self.lock_mode = lock_mode
        self.service_name = service_name
        self.lock_waits: list[float] = []  # seconds each copy waited for its read lock

    # -- helpers -----------------------------------------------------------------------------
    def _bind(self, ref: KeyRef | str, rid: str, kind: str) -> keys.SecretInfo:
        return guard.bind(ref, user=self.user, volume_id=rid, service=self.service_name,
                          endpoint=self.endpoint, resource_type=kind, deadline=self.deadline)

    def _release(self, rec: VolumeRecord) -> None:
        with contextlib.suppress(KeyNotFound, ByokError):
            guard.release(rec.key_ref, identity=self.user, volume_id=rec.id,
                          service=self.service_name, endpoint=self.endpoint,
                          resource_type=rec.kind, deadline=self.deadline)

    def _release_or_raise(self, key_ref: str, rid: str, kind: str) -> None:
        """Remove the consumer ``(service, kind, rid)`` from ``key_ref``. Gone already (or the
        key gone) is success; a refusal is logged (the user's token can no longer see the key,
        so nothing byok does later could remove it); an outage raises, so the intent that
        called this stays and the next call tries again."""
        try:
            guard.release(key_ref, identity=self.user, volume_id=rid, service=self.service_name,
                          endpoint=self.endpoint, resource_type=kind, deadline=self.deadline)
        except KeyNotFound:
            pass
        except KeyAccessDenied as e:
            LOG.warning("consumer %s/%s of %s not removed: %s", kind, rid, key_ref, e.message)

    def key(self, ref: KeyRef | str) -> KeyMaterial:
        return self.resolver.resolve(ref)

    def passphrase(self, ref: KeyRef | str) -> tuple[KeyMaterial, Sensitive]:
        km = self.key(ref)
        return km, keys.passphrase(km)

    @contextlib.contextmanager
    def _reading(self, rid: str) -> Iterator[None]:
        """Hold ``rid`` for reading (a copy): a shared per-volume lock, or — for comparison, the
        discipline the PTG warned about — one exclusive lock for the whole pool. The time spent
        waiting for it is appended to ``lock_waits`` (E06 measures it)."""
        t0 = time.monotonic()
        if self.lock_mode == "global":
            with self.pool._global, self.pool.lock("pool", shared=False, wait=600):
                self.lock_waits.append(time.monotonic() - t0)
                yield
        else:
            with self.pool.lock(rid, shared=True):
                self.lock_waits.append(time.monotonic() - t0)
                yield

    def _new_record(self, kind: str, size: int, key: KeyMaterial, **kw) -> VolumeRecord:
        return VolumeRecord(
            id=str(uuid.uuid4()), kind=kind, size=size, key_ref=key.ref.href,
            secret_type=key.info.secret_type, project_id=self.user.project_id(),
            user_id=self.user.user_id(), created=_now(), **kw,
        )

    @contextlib.contextmanager
    def _creating(self, rec: VolumeRecord, bind_ref: str, *, escrow: bool = False
                  ) -> Iterator[None]:
        """Make ``rec`` all or nothing: under its exclusive lock, write the intent, bind the
        key, yield for the file work, save the record, drop the intent. A failure undoes it
        here; a kill leaves the intent, and :meth:`resume_interrupted` undoes it."""
        with self.pool.lock(rec.id, shared=False):
            intent = self.pool.intent(rec.id, "create")
            doc = {"op": "create", "kind": rec.kind, "key_ref": bind_ref, "escrow": escrow,
                   "started": _now()}
            intent.write(doc)  # first: whatever happens next, the next call knows of it
            try:
                self._bind(bind_ref, rec.id, rec.kind)
                yield
                if rec.state != "new-blank":
                    rec.luks_uuid = luks.dump(self.pool.path(rec.id)).uuid
                self.pool.save(rec)
            except BaseException:
                try:
                    self._settle_create(rec.id, doc, failed=True)
                except ByokError as e:  # the intent stays: the next call finishes the undo
                    LOG.warning("undoing the creation of %s is incomplete: %s", rec.id, e)
                raise
            intent.clear()

    # -- crash recovery ----------------------------------------------------------------------
    def resume_interrupted(self, *, strict: bool = False) -> list[str]:
        """Settle what a killed byok left half done, one intent at a time, each under its
        resource's exclusive lock (a live operation holds it: skipped): a creation without a
        record is rolled back (consumer released, escrow secret deleted, files removed), one
        with a record only loses its intent; a deletion is finished; an escrow addition keeps
        the escrow key that opens the volume and drops any other. Every step is idempotent, so
        a crash in here is resumed the same way. Returns what was done; a step that fails (an
        outage) leaves its intent for the next call (``strict``: raises)."""
        done = []
        for tmp in self.pool.leftovers():
            rid = tmp.name.split(".", 1)[0]
            if not rid:  # not one of write_private's <rid>.<...>.tmp
                continue
            with contextlib.ExitStack() as held:
                try:
                    held.enter_context(self.pool.lock(rid, shared=False, wait=0))
                except VolumeBusy:
                    continue
                # Its writer is gone (we hold the lock it wrote under): the rename that would
                # have published it never happened, and the file it would have replaced is
                # intact.
                tmp.unlink(missing_ok=True)
                done.append(f"temp file {tmp.name}: removed")
        for rid, op in self.pool.intents():
            with contextlib.ExitStack() as held:
                try:
                    held.enter_context(self.pool.lock(rid, shared=False, wait=0))
                except VolumeBusy:
                    continue  # its operation is still running
                intent = self.pool.intent(rid, op)
                doc = intent.read()
                if doc is None:
                    continue  # finished while we waited
                settle = {"create": self._settle_create, "delete": self._settle_delete,
                          "escrow": self._settle_escrow}[op]
                try:
                    done.append(f"{op} {rid}: {settle(rid, doc)}")
                except ByokError as e:
                    if strict:
                        raise
                    LOG.warning("interrupted %s of %s not settled yet: %s", op, rid, e)
        return done

    def _settle_create(self, rid: str, doc: dict, *, failed: bool = False) -> str:
        intent = self.pool.intent(rid, "create")
        if not failed and self.pool.record_file(rid).exists():
            # The record is saved last: the creation finished, only the intent was left.
            self._clear_staging(rid)
            intent.clear()
            return "completed"
        self.pool.record_file(rid).unlink(missing_ok=True)
        if doc.get("key_ref"):
            self._release_or_raise(doc["key_ref"], rid, doc.get("kind", "volume"))
        if doc.get("escrow"):
            self._drop_escrow_secrets(rid)
        self.pool.path(rid).unlink(missing_ok=True)
        self._clear_staging(rid)
        for hdr in (self.pool.root / "headers").glob(f"{rid}-*"):
            sealed.shred(hdr)
        intent.clear()
        return "rolled back"

    def _settle_delete(self, rid: str, doc: dict) -> str:
        rec = VolumeRecord.from_json(doc["record"])
        self.pool.record_file(rid).unlink(missing_ok=True)  # gone from the user's view first
        self._release_or_raise(rec.key_ref, rid, rec.kind)
        if rec.escrow_ref:
            self.drop_escrow_secret(rec.escrow_ref, strict=True)
        self.pool.path(rid).unlink(missing_ok=True)
        # Header backups (plain, and a rotation's sealed one) hold keyslots: they go too.
        for hdr in (self.pool.root / "headers").glob(f"{rid}-*"):
            sealed.shred(hdr)
        self.pool.intent(rid, "delete").clear()
        return "deleted"

    def _settle_escrow(self, rid: str, doc: dict) -> str:
        """An escrow addition killed half way: keep the escrow key that opens the volume (and
        record it), wipe the keyslot of and delete every other escrow secret of ``rid``."""
        intent = self.pool.intent(rid, "escrow")
        try:
            rec = self.pool.load(rid)
        except VolumeNotFound:
            self._drop_escrow_secrets(rid)
            intent.clear()
            return "volume gone; escrow secrets dropped"
        path = self.pool.path(rid)
        user_pw = self.passphrase(rec.key_ref)[1]
        api = self._service_api()
        found = [KeyRef(d["secret_ref"].rsplit("/", 1)[1], self.endpoint)
                 for d in api.list_secrets(name=ESCROW_NAME.format(rid=rid))]
        keep = rec.escrow_ref
        if keep is None:
            for ref in found:
                if self._escrow_slot(path, ref) is not None:
                    keep = ref.href
                    break
        for ref in found:
            if ref.href == keep:
                continue
            slot = self._escrow_slot(path, ref)
            if slot is not None:
                luks.kill_slot(path, slot, authorising=user_pw)
            with contextlib.suppress(KeyNotFound):
                api.delete(ref, force=True)
        if keep and rec.escrow_ref != keep:
            rec.escrow_ref = keep
            rec.history.append({"at": _now(), "op": "escrow keyslot added (resumed)"})
            self.pool.save(rec)
        intent.clear()
        return "escrow kept" if keep else "no escrow"

    def _escrow_slot(self, path: Path, ref: KeyRef) -> int | None:
        """The keyslot of ``path`` the escrow secret ``ref`` opens, or None."""
        try:
            km = self._service_resolver().resolve(ref)
        except KeyNotFound:
            return None
        try:
            return luks.test_key(path, keys.passphrase(km))
        except WrongKey:
            return None

    def _service_resolver(self) -> Resolver:
        if self.service is None:
            raise VolumeError("escrow needs the service identity (the deployment's key holder)")
        return Resolver(self.service, endpoint=self.endpoint)

    def _service_api(self):
        return self._service_resolver().api

    def _drop_escrow_secrets(self, rid: str) -> None:
        """Delete every escrow secret made for ``rid`` (found by name: a kill between storing
        it and recording its reference leaves nothing else to find it by)."""
        api = self._service_api()
        for d in api.list_secrets(name=ESCROW_NAME.format(rid=rid)):
            with contextlib.suppress(KeyNotFound):
                api.delete(KeyRef(d["secret_ref"].rsplit("/", 1)[1], self.endpoint), force=True)

    def _clear_staging(self, rid: str) -> None:
        work = self.pool.staging(rid)
        if work.exists():
            for f in work.iterdir():
                sealed.shred(f)  # a killed cryptsetup's temporary header holds keyslots
            work.rmdir()

    # -- create / delete ---------------------------------------------------------------------
    def create(
        self,
        size: int,
        key_ref: str,
        *,
        name: str = "",
        provider: str = "luks2",
        sector_size: int | None = None,
        policy: str | luks.PbkdfPolicy | None = None,
        escrow: bool = False,
        format: bool = True,
    ) -> VolumeRecord:
        """A new volume encrypted with the user's key (or blank, for the hook to format)."""
        if size < (32 << 20):
            raise VolumeError("a volume must be at least 32 MiB (LUKS2 headers take 16 MiB)")
        if escrow and self.service is None:
            raise VolumeError("escrow needs the service identity (the deployment's key holder)")
        self.resume_interrupted()
        km, pw = self.passphrase(key_ref)
        luks_type = luks.PROVIDER_TO_TYPE[provider]
        rec = self._new_record("volume", size, km, name=name, luks_type=luks_type)
        path = self.pool.path(rec.id)
        with self._creating(rec, km.ref.href, escrow=escrow and format):
            sparse.create(path, size)
            if format:
                luks.format(path, pw, luks_type=luks_type, key_bits=rec.key_bits,
                            sector_size=sector_size,
                            policy=policy or luks.policy_for(km.info.secret_type))
                if escrow:
                    rec.escrow_ref = self._add_escrow(path, pw, rec.id)
            else:
                rec.state = "new-blank"  # the attach hook formats it on first attach
            rec.history.append({"at": _now(), "op": "create", "blank": not format})
        return rec

    def delete(self, rid: str) -> None:
        """Remove the resource and its consumer; the user's key stays in Barbican.

        Journaled: the intent (with the record) is written first, then record, consumer,
        escrow secret, file and header backups go; a kill is finished by the next call. A
        deletion that such a call has just finished is not an error."""
        if any(line.startswith(f"delete {rid}:") for line in self.resume_interrupted()):
            return
        with self.pool.lock(rid, shared=False):
            rec = self.pool.load(rid)
            _refuse_if_busy(rec)
            doc = {"op": "delete", "record": asdict(rec), "started": _now()}
            self.pool.intent(rid, "delete").write(doc)
            self._settle_delete(rid, doc)

    # -- copies ------------------------------------------------------------------------------
    def _copy(self, src_id: str, kind: str, *, key_ref: str | None = None,
              name: str = "") -> VolumeRecord:
        self.resume_interrupted()
        with self._reading(src_id):
            src = self.pool.load(src_id)
            # Only a crashed rotation leaves these states behind (a live one holds the
            # exclusive lock): its header and record disagree until it is resumed.
            _refuse_if_busy(src, "nothing was copied")
            if src.state == "new-blank" and kind != "volume":
                raise VolumeError(f"{src_id} was never formatted; attach it once first")
            src_km, src_pw = self.passphrase(src.key_ref)
            km, pw = src_km, src_pw
            if key_ref is not None and self.resolver.parse(key_ref) != src_km.ref:
                if src.state == "new-blank":
                    raise VolumeError(f"{src_id} has never been formatted: there is no keyslot "
                                      "to rekey; attach it once first")
                km, pw = self.passphrase(key_ref)  # the user may use it: checked before any copy
            rec = self._new_record(kind, src.size, km, name=name, luks_type=src.luks_type,
                                   cipher=src.cipher, key_bits=src.key_bits,
                                   source={"kind": src.kind, "id": src.id}, state=src.state)
            rec.escrow_ref = None
            path = self.pool.path(rec.id)
            with self._creating(rec, km.ref.href):
                sparse.copy_sparse(self.pool.path(src.id), path)
                rec.history.append({"at": _now(), "op": f"{kind} of {src.kind} {src.id}"})
                if src.escrow_ref:
                    # The copy carries the source's escrow keyslot; wipe it (escrow is per volume).
                    self._drop_escrow_slot(path, src_pw)
                if km is not src_km:
                    self._rekey_copy(path, src_pw, km, pw)
                    rec.history.append({"at": _now(), "op": "rekey", "from": src.key_ref,
                                        "to": km.ref.href})
        return rec

    @staticmethod
    def _rekey_copy(path: Path, old_pw: Sensitive, new_km: KeyMaterial, new_pw: Sensitive
                    ) -> None:
        """Move a copy that has no record yet to another key: add its keyslot, check it opens,
        wipe every other (the volume key stays — see design/notes/lifecycle.md). No journal:
        until the record is saved a crash discards the whole copy."""
        new_slot = luks.add_key(path, old_pw, new_pw,
                                policy=luks.policy_for(new_km.info.secret_type))
        if luks.test_key(path, new_pw) != new_slot:
            raise VolumeError(f"the new key does not open {path.name} after adding it")
        for slot in luks.dump(path).active_slots:
            if slot != new_slot:
                luks.kill_slot(path, slot, authorising=new_pw)

    def clone(self, src_id: str, *, key_ref: str | None = None, name: str = "") -> VolumeRecord:
        """A new volume from ``src_id``: same key (shared) or rekeyed to ``key_ref``."""
        return self._copy(src_id, "volume", key_ref=key_ref, name=name)

    def snapshot(self, vol_id: str, *, name: str = "") -> VolumeRecord:
        return self._copy(vol_id, "snapshot", name=name)

    def backup(self, vol_id: str, *, name: str = "") -> VolumeRecord:
        """Ciphertext and header as they are now: restoring needs a key valid *now*."""
        return self._copy(vol_id, "backup", name=name)

    def upload_image(self, vol_id: str, *, name: str = "") -> VolumeRecord:
        """Cinder's upload-to-image of an encrypted volume: a LUKS image sharing the key ref."""
        return self._copy(vol_id, "image", name=name)

    def restore(self, backup_id: str, *, key_ref: str | None = None) -> VolumeRecord:
        """A new volume from a backup. ``key_ref``: a key that opens the backup if the user
        has rotated since (the backup keeps its keyslots of backup time)."""
        self.resume_interrupted()
        src = self.pool.load(backup_id)
        if src.kind != "backup":
            raise VolumeError(f"{backup_id} is a {src.kind}, not a backup")
        opener = key_ref or src.key_ref
        km, pw = self.passphrase(opener)
        luks.test_key(self.pool.path(backup_id), pw)  # WrongKey names the problem up front
        with self._reading(backup_id):
            rec = self._new_record("volume", src.size, km, luks_type=src.luks_type,
                                   cipher=src.cipher, key_bits=src.key_bits,
                                   source={"kind": "backup", "id": backup_id})
            with self._creating(rec, km.ref.href):
                sparse.copy_sparse(self.pool.path(backup_id), self.pool.path(rec.id))
                rec.history.append({"at": _now(), "op": f"restore of backup {backup_id}",
                                    "opened_with": km.ref.secret_id})
        return rec

    def create_from_image(self, image_id: str, *, key_ref: str | None = None) -> VolumeRecord:
        src = self.pool.load(image_id)
        if src.kind != "image":
            raise VolumeError(f"{image_id} is a {src.kind}, not an image")
        return self._copy(image_id, "volume", key_ref=key_ref)

    def image_from_raw(self, raw: Path, key_ref: str, *, name: str = "",
                       policy: str | luks.PbkdfPolicy | None = None) -> VolumeRecord:
        """Glance's LUKS case: a LUKS2 image built from a plaintext file, with the user's key,
        without root or device-mapper (cryptsetup reencrypt --encrypt on a file)."""
        self.resume_interrupted()
        km, pw = self.passphrase(key_ref)
        rec = self._new_record("image", 0, km, name=name or raw.name, luks_type="luks2",
                               source={"kind": "raw", "path": str(raw)})
        with self._creating(rec, km.ref.href):
            work = paths.private_dir(self.pool.staging(rec.id))
            luks.encrypt_file(raw, self.pool.path(rec.id), pw,
                              policy=policy or luks.policy_for(km.info.secret_type),
                              workdir=work)
            rec.size = self.pool.path(rec.id).stat().st_size
            rec.history.append({"at": _now(), "op": f"image from raw {raw}"})
            self._clear_staging(rec.id)
        return rec

    # -- attach ------------------------------------------------------------------------------
    def attach_args(self, rid: str, key_ref: str | None = None) -> tuple[dict, dict, bool]:
        """(connection_info, encryption, new_volume) for :class:`byok.attach.hook.AttachHook`."""
        from byok.attach.hook import connection_info_for

        rec = self.pool.load(rid)
        enc = {"key_ref": key_ref or rec.key_ref, "provider": luks.TYPE_TO_PROVIDER[rec.luks_type]}
        return connection_info_for(self.pool.path(rid), rid), enc, rec.state == "new-blank"

    def mark_formatted(self, rid: str) -> None:
        """The attach hook formatted a new blank volume: it is an ordinary volume now."""
        with self.pool.lock(rid, shared=False):
            rec = self.pool.load(rid)
            if rec.state == "new-blank":
                rec.state = "available"
                rec.luks_uuid = luks.dump(self.pool.path(rid)).uuid
                rec.history.append({"at": _now(), "op": "formatted on first attach"})
                self.pool.save(rec)

    # -- keys --------------------------------------------------------------------------------
    def rekey(self, rid: str, new_key_ref: str, *, policy: str | None = None) -> VolumeRecord:
        """Move ``rid`` to another user key (keyslot change; the volume key stays)."""
        from byok.lifecycle import rotation

        return rotation.rotate(self, rid, new_key_ref, policy=policy)

    def add_escrow(self, rid: str) -> VolumeRecord:
        """Give an existing volume an escrow keyslot (deployment key in the service project).

        Journaled (intent ``escrow``): a kill between storing the escrow secret, adding its
        keyslot and saving the record is settled by the next call from what opens the volume;
        calling this again then adds the escrow if it is still missing."""
        if self.service is None:
            raise VolumeError("escrow needs the service identity (the deployment's key holder)")
        self.resume_interrupted()
        with self.pool.lock(rid, shared=False):
            rec = self.pool.load(rid)
            if rec.escrow_ref:
                return rec
            _refuse_if_busy(rec, "no escrow was added")
            if rec.state == "new-blank":
                raise VolumeError(f"{rid} has never been formatted; attach it once first")
            intent = self.pool.intent(rid, "escrow")
            intent.write({"op": "escrow", "started": _now()})
            try:
                rec.escrow_ref = self._add_escrow(self.pool.path(rid),
                                                  self.passphrase(rec.key_ref)[1], rid)
                rec.history.append({"at": _now(), "op": "escrow keyslot added"})
                self.pool.save(rec)
            except BaseException:
                with contextlib.suppress(ByokError):  # else the intent stays for the next call
                    self._settle_escrow(rid, {})
                raise
            intent.clear()
            return rec

    def _add_escrow(self, path: Path, user_pw: Sensitive, rid: str) -> str:
        api = self._service_api()
        escrow = Sensitive(os.urandom(64))
        ref = api.store(escrow, secret_type="symmetric", name=ESCROW_NAME.format(rid=rid),
                        algorithm="aes", bit_length=512)
        escrow_pw = keys.passphrase(KeyMaterial(
            keys.SecretInfo(ref, "symmetric", "aes", 512, None, None, "ACTIVE", None, None,
                            "application/octet-stream"), escrow))
        try:
            api.set_metadata(ref, {"byok-owner": "service", "byok-escrow-for": rid})
            luks.add_key(path, user_pw, escrow_pw)
        except BaseException:
            # A cryptsetup killed inside luksAddKey may have committed the keyslot: wipe it
            # first, and delete the secret only then (if the wipe fails, the secret stays for
            # resume_interrupted to find by name — else nothing could ever tell the slot).
            with contextlib.suppress(WrongKey):
                luks.kill_slot(path, luks.test_key(path, escrow_pw), authorising=user_pw)
            api.delete(ref, force=True)
            raise
        return ref.href

    def _drop_escrow_slot(self, path: Path, user_pw: Sensitive) -> None:
        keep = luks.test_key(path, user_pw)
        for slot in luks.dump(path).active_slots:
            if slot != keep:
                luks.kill_slot(path, slot, authorising=user_pw)

    def drop_escrow_secret(self, escrow_ref: str, *, strict: bool = False) -> None:
        """Delete a volume's escrow secret (the deployment's, never the user's); only with the
        service identity that holds it. Best effort, unless ``strict``: then an outage raises
        (a deletion's intent keeps it for the next call); gone already is success."""
        if self.service is None:
            LOG.warning("escrow secret %s kept: no service identity to delete it with",
                        escrow_ref)
            return
        try:
            Resolver(self.service, endpoint=self.endpoint).api.delete(
                KeyRef(escrow_ref.rsplit("/", 1)[1], self.endpoint), force=True)
        except KeyNotFound:
            pass
        except ByokError:
            if strict:
                raise

    def escrow_passphrase(self, rec: VolumeRecord) -> Sensitive:
        """The deployment's escrow passphrase of ``rec`` (service identity)."""
        if not rec.escrow_ref or self.service is None:
            raise VolumeError(f"{rec.id} has no escrow keyslot (or no service identity)")
        km = Resolver(self.service, endpoint=self.endpoint).resolve(rec.escrow_ref)
        return keys.passphrase(km)

    # -- headers -----------------------------------------------------------------------------
    def header_backup(self, rid: str) -> Path:
        with self.pool.lock(rid, shared=True):
            return luks.header_backup(self.pool.path(rid), self.pool.header_backup_path(rid))

    def header_backups(self, rid: str) -> list[Path]:
        """Header backups of ``rid``, newest first (rotation's own pre-rotation copies too)."""
        return sorted((self.pool.root / "headers").glob(f"{rid}-*.hdr"), reverse=True)

    def header_restore(self, rid: str, backup: Path | None = None) -> Path:
        """Write back a header backup that opens with the volume's *current* key.

        A header backup keeps the keyslots of its time: one taken before a rotation opens only
        with the old key, so restoring it would lock the recorded key out (and revive a key the
        user may have revoked). Without ``backup`` the newest backup that opens with the
        recorded key and carries the volume's LUKS UUID is chosen; an explicit ``backup`` must
        pass the same checks.
        """
        self.resume_interrupted()
        with self.pool.lock(rid, shared=False):
            rec = self.pool.load(rid)
            _refuse_if_busy(rec, "nothing was written")
            pw = self.passphrase(rec.key_ref)[1]
            candidates = [backup] if backup else self.header_backups(rid)
            if not candidates:
                raise VolumeError(f"no header backup of {rid}",
                                  hint=f"make one while the volume is healthy: byok volume "
                                  f"header-backup {rid}")
            refused = []
            for cand in candidates:
                why = self._header_mismatch(cand, rec, pw)
                if why is None:
                    luks.header_restore(self.pool.path(rid), cand)
                    luks.test_key(self.pool.path(rid), pw)  # it opens now, or a typed error
                    rec.history.append({"at": _now(), "op": f"header restored from {cand.name}"})
                    self.pool.save(rec)
                    return cand
                refused.append(f"{cand.name}: {why}")
            raise VolumeError(
                f"no header backup of {rid} opens with its current key; nothing was written",
                hint="; ".join(refused[:5]),
            )

    @staticmethod
    def _header_mismatch(backup: Path, rec: VolumeRecord, pw: Sensitive) -> str | None:
        """Why ``backup`` must not be restored onto ``rec`` (None: it may)."""
        try:
            info = luks.dump(backup)
            if rec.luks_uuid and info.uuid != rec.luks_uuid:
                return f"belongs to LUKS volume {info.uuid}, not {rec.luks_uuid}"
            luks.test_key(backup, pw)
        except WrongKey:
            return "does not open with the current key (taken before a rotation?)"
        except ByokError as e:
            return e.message
        return None
