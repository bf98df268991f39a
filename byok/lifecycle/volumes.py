"""The prototype "Cinder side": file-backed volumes whose key is the user's.

A pool (``.byok/pool`` by default) holds records (``records/<id>.json``) and sparse image files
(``data/<id>.img``) of four kinds — volume, snapshot, backup, image — plus per-resource lock
files, rotation journals and header backups. What differs from Cinder today:

* **create** formats with the *user's* key (never a generated one) and records
  ``key_owner = user``; the key is bound to the new resource through :func:`byok.keys.guard.bind`
  (user's token; a Barbican consumer ``(cinder, <kind>, <id>)``). ``format=False`` creates a
  blank volume that the attach hook formats on first attach (Cinder's flow today).
* **clone / snapshot / backup / upload** copy ciphertext (sparse) and *share* the user's key
  reference, adding a consumer — nothing is copied in Barbican. A clone may be **rekeyed** to
  another user key: the clone's keyslot changes, its volume key does not (see
  design/notes/lifecycle.md for what that means for revocation).
* **delete** removes the file and this resource's consumer, never the user's key.
* Copies take a **shared** lock on the source, writers (rotate, delete, header restore) an
  exclusive one — parallel clones of one source do not serialise (``lock_mode="global"`` is the
  one-big-lock alternative, for the measurement).
* **escrow** (optional): a second keyslot opened by a deployment secret the service stores in
  its own project, so either party can recover the data.

Every operation leaves the pool as it was if it fails (no half-made records, no stray files).
"""

from __future__ import annotations

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
from byok.luks import cryptsetup as luks

LOG = logging.getLogger(__name__)

KINDS = ("volume", "snapshot", "backup", "image")


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
        for sub in ("records", "data", "locks", "journal", "headers"):
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
    def _creating(self, rec: VolumeRecord, bind_ref: str) -> Iterator[None]:
        """Bind the key, yield for the file work, save the record; undo everything on failure."""
        self._bind(bind_ref, rec.id, rec.kind)
        try:
            yield
            if rec.state != "new-blank":
                rec.luks_uuid = luks.dump(self.pool.path(rec.id)).uuid
            self.pool.save(rec)
        except BaseException:
            self.pool.remove(rec.id)
            self._release(rec)
            raise

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
        km, pw = self.passphrase(key_ref)
        luks_type = luks.PROVIDER_TO_TYPE[provider]
        rec = self._new_record("volume", size, km, name=name, luks_type=luks_type)
        path = self.pool.path(rec.id)
        with self._creating(rec, km.ref.href):
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
        """Remove the resource and its consumer; the user's key stays in Barbican."""
        with self.pool.lock(rid, shared=False):
            rec = self.pool.load(rid)
            _refuse_if_busy(rec)
            self._release(rec)
            if rec.escrow_ref:
                self.drop_escrow_secret(rec.escrow_ref)
            self.pool.remove(rid)
            from byok.luks import sealed

            # Header backups (plain, and a rotation's sealed one) hold keyslots: they go too.
            for hdr in (self.pool.root / "headers").glob(f"{rid}-*"):
                sealed.shred(hdr)

    # -- copies ------------------------------------------------------------------------------
    def _copy(self, src_id: str, kind: str, *, key_ref: str | None = None,
              name: str = "") -> VolumeRecord:
        with self._reading(src_id):
            src = self.pool.load(src_id)
            # Only a crashed rotation leaves these states behind (a live one holds the
            # exclusive lock): its header and record disagree until it is resumed.
            _refuse_if_busy(src, "nothing was copied")
            if src.state == "new-blank" and kind != "volume":
                raise VolumeError(f"{src_id} was never formatted; attach it once first")
            km = self.key(src.key_ref)
            rec = self._new_record(kind, src.size, km, name=name, luks_type=src.luks_type,
                                   cipher=src.cipher, key_bits=src.key_bits,
                                   source={"kind": src.kind, "id": src.id}, state=src.state)
            rec.escrow_ref = None
            with self._creating(rec, km.ref.href):
                sparse.copy_sparse(self.pool.path(src.id), self.pool.path(rec.id))
                rec.history.append({"at": _now(), "op": f"{kind} of {src.kind} {src.id}"})
                if src.escrow_ref:
                    # The copy carries the source's escrow keyslot; wipe it (escrow is per volume).
                    self._drop_escrow_slot(self.pool.path(rec.id), keys.passphrase(km))
        if key_ref is not None and self.resolver.parse(key_ref) != km.ref:
            self.rekey(rec.id, key_ref)
            rec = self.pool.load(rec.id)
        return rec

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
        km, pw = self.passphrase(key_ref)
        rec = self._new_record("image", 0, km, name=name or raw.name, luks_type="luks2",
                               source={"kind": "raw", "path": str(raw)})
        with self._creating(rec, km.ref.href):
            luks.encrypt_file(raw, self.pool.path(rec.id), pw,
                              policy=policy or luks.policy_for(km.info.secret_type))
            rec.size = self.pool.path(rec.id).stat().st_size
            rec.history.append({"at": _now(), "op": f"image from raw {raw}"})
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
        """Give an existing volume an escrow keyslot (deployment key in the service project)."""
        with self.pool.lock(rid, shared=False):
            rec = self.pool.load(rid)
            if rec.escrow_ref:
                return rec
            rec.escrow_ref = self._add_escrow(self.pool.path(rid),
                                              self.passphrase(rec.key_ref)[1], rid)
            rec.history.append({"at": _now(), "op": "escrow keyslot added"})
            self.pool.save(rec)
            return rec

    def _add_escrow(self, path: Path, user_pw: Sensitive, rid: str) -> str:
        if self.service is None:
            raise VolumeError("escrow needs the service identity (the deployment's key holder)")
        api = Resolver(self.service, endpoint=self.endpoint).api
        escrow = Sensitive(os.urandom(64))
        ref = api.store(escrow, secret_type="symmetric", name=f"byok-escrow-{rid}",
                        algorithm="aes", bit_length=512)
        api.set_metadata(ref, {"byok-owner": "service", "byok-escrow-for": rid})
        try:
            luks.add_key(path, user_pw, keys.passphrase(KeyMaterial(
                keys.SecretInfo(ref, "symmetric", "aes", 512, None, None, "ACTIVE", None, None,
                                "application/octet-stream"), escrow)))
        except BaseException:
            api.delete(ref, force=True)
            raise
        return ref.href

    def _drop_escrow_slot(self, path: Path, user_pw: Sensitive) -> None:
        keep = luks.test_key(path, user_pw)
        for slot in luks.dump(path).active_slots:
            if slot != keep:
                luks.kill_slot(path, slot, authorising=user_pw)

    def drop_escrow_secret(self, escrow_ref: str) -> None:
        """Delete a volume's escrow secret (the deployment's, never the user's); best effort,
        and only with the service identity that holds it."""
        if self.service is None:
            LOG.warning("escrow secret %s kept: no service identity to delete it with",
                        escrow_ref)
            return
        with contextlib.suppress(ByokError):
            Resolver(self.service, endpoint=self.endpoint).api.delete(
                KeyRef(escrow_ref.rsplit("/", 1)[1], self.endpoint), force=True)

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

