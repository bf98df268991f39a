"""The attach-path hook: a user's key reference unlocks a LUKS volume through os-brick.

``AttachHook(identity).attach(connection_info, encryption)`` resolves the key with the caller's
identity (:func:`byok.keys.guard.resolve_volume_key`, the castellan backend's own path), decides
on the host what the device is without writing to it (LUKS goes on; a damaged header is
``HeaderCorrupt``; only a volume marked new *and* blank is formatted, with byok's PBKDF policy),
checks the key against the header (``WrongKey`` fast), then runs os-brick's guarded encryptor on
real dm-crypt in a guest kernel. The four steps and why: design/notes/attach.md.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from byok.common.errors import (
    ByokError,
    EncryptionSpecInvalid,
    GuestError,
    HeaderCorrupt,
    NotLuks,
    WrongKey,
)
from byok.common.sensitive import Sensitive
from byok.common.sparse import is_blank
from byok.guest import Disk, Guest, GuestRun
from byok.keys import guard
from byok.keys import resolver as keys
from byok.keys.identity import Identity
from byok.keys.resolver import KeyMaterial
from byok.luks import cryptsetup as luks
from byok.luks import header as luksheader


@dataclass(frozen=True)
class Encryption:
    """Cinder's volume-type encryption metadata plus the user's key reference."""

    key_ref: str
    provider: str = "luks2"
    cipher: str = "aes-xts-plain64"
    key_size: int = 512
    control_location: str = "front-end"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Encryption:
        ref = d.get("key_ref") or d.get("encryption_key_id")
        if not ref:
            raise EncryptionSpecInvalid("encryption metadata has no key_ref (the user's key "
                                        "reference)")
        provider = d.get("provider", "luks2")
        if provider not in luks.PROVIDER_TO_TYPE:
            raise EncryptionSpecInvalid(f"unsupported encryption provider {provider!r} (luks or "
                                        "luks2)")
        return cls(
            key_ref=str(ref),
            provider=provider,
            cipher=d.get("cipher") or "aes-xts-plain64",
            key_size=int(d.get("key_size") or 512),
            control_location=d.get("control_location", "front-end"),
        )

    @property
    def luks_type(self) -> str:
        return luks.PROVIDER_TO_TYPE[self.provider]


@dataclass
class PreparedVolume:
    """A volume checked and ready for the guest: its key and what the guard found."""

    volume_id: str
    path: Path
    encryption: Encryption
    key: KeyMaterial
    state: str  # "luks" or "formatted" (a new blank volume the hook formatted)
    link: str = ""
    key_name: str = ""

    def __post_init__(self) -> None:
        self.link = self.link or f"/dev/disk/by-id/byok-{self.volume_id}"
        self.key_name = self.key_name or f"key-{self.key.ref.secret_id}"

    @property
    def mapper_name(self) -> str:
        return "crypt-" + os.path.basename(self.link)


# --- the blank check and the guard ------------------------------------------------------------


def looks_like_overwritten_luks1(path: Path) -> bool:
    """No magic, but high-entropy bytes where a LUKS1 keyslot area starts (4 KiB): a LUKS1
    volume whose 592-byte header was destroyed."""
    with open(path, "rb") as f:
        f.seek(4096)
        sample = f.read(4096)
    return len(set(sample)) > 200


def guard_device(
    path: Path,
    passphrase: Sensitive,
    encryption: Encryption,
    *,
    secret_type: str,
    new_volume: bool,
    policy: str | luks.PbkdfPolicy | None = None,
) -> str:
    """Decide, without writing anything unless it is safe, what the device is.

    Returns ``"luks"`` or ``"formatted"``; raises HeaderCorrupt / NotLuks otherwise.
    """
    with open(path, "rb") as f:
        head = f.read(luksheader.READ_SIZE)
    if luksheader.detect(head) is not None or luks.is_luks(path):
        return "luks"
    problem = luks.header_problem(path, "attach")
    if isinstance(problem, HeaderCorrupt):
        raise problem
    if new_volume and is_blank(path):
        luks.format(
            path, passphrase, luks_type=encryption.luks_type, cipher=encryption.cipher,
            key_bits=encryption.key_size,
            policy=policy or luks.policy_for(secret_type),
        )
        return "formatted"
    if looks_like_overwritten_luks1(path):
        raise HeaderCorrupt(
            f"attach: {path.name} has no LUKS header but its keyslot area is still there",
            hint="its header was overwritten; restore a header backup (byok volume "
            "header-restore), never reformat",
        )
    if new_volume:
        raise NotLuks(f"attach: {path.name} is marked new but is not blank; refusing to format")
    raise NotLuks(
        f"attach: {path.name} is not a LUKS volume and is not marked new; refusing to format",
        hint="only a volume the lifecycle created blank is ever formatted on attach",
    )


# --- steps ------------------------------------------------------------------------------------


OP_MODULES = ("byok.attach.guest_ops",)  # the os-brick steps the guest agent runs for us


def attach_step(v: PreparedVolume, *, guard: bool = True, name: str | None = None,
                **kw: Any) -> dict:
    return {
        "op": "osbrick_attach", "disk": v.volume_id, "key": v.key_name,
        "key_id": v.key.ref.secret_id, "secret_type": v.key.info.secret_type,
        "provider": v.encryption.provider, "cipher": v.encryption.cipher,
        "key_size": v.encryption.key_size, "guard": guard,
        "name": name or f"attach:{v.volume_id}", **kw,
    }


def detach_step(v: PreparedVolume, *, name: str | None = None) -> dict:
    return {"op": "osbrick_detach", "disk": v.volume_id, "name": name or f"detach:{v.volume_id}"}


def write_step(v: PreparedVolume, seed: int, size: int, *, name: str | None = None,
               offset: int = 0) -> dict:
    return {"op": "write", "mapper": v.mapper_name, "seed": seed, "size": size, "offset": offset,
            "name": name or f"write:{v.volume_id}"}


def read_step(v: PreparedVolume, size: int, *, name: str | None = None, offset: int = 0) -> dict:
    return {"op": "sha256", "mapper": v.mapper_name, "size": size, "offset": offset,
            "name": name or f"read:{v.volume_id}"}


def wait_step(token: str) -> dict:
    return {"op": "wait", "token": token, "name": f"wait:{token}"}


# --- the hook ---------------------------------------------------------------------------------


def error_for(step: dict, path: Path | None = None) -> ByokError:
    """The typed error a failed guest attach step stands for."""
    detail = step.get("detail") or {}
    code = detail.get("exit_code")
    where = f" ({path.name})" if path else ""
    if step.get("error") == "FormatRefused":
        if path is not None:
            return luks.header_problem(path, "attach")
        return NotLuks(f"attach{where}: os-brick wanted to format the device; refused")
    if code == 2:
        return WrongKey(f"attach{where}: no keyslot opens with this key (luksOpen exit 2)")
    if code == 1 and path is not None:
        return luks.header_problem(path, "attach")
    return GuestError(
        f"guest step {step.get('name')} failed: {step.get('error')}: "
        f"{detail.get('stderr') or step.get('message') or detail}"
    )


class AttachHook:
    """Resolve → guard → os-brick in the guest, for one identity."""

    def __init__(
        self,
        identity: Identity | None = None,
        *,
        resolve: Callable[[str, str], KeyMaterial] | None = None,
        guest: Guest | None = None,
        precheck: bool = True,
        endpoint: str | None = None,
    ) -> None:
        if resolve is None:
            if identity is None:
                raise TypeError("AttachHook needs an identity or a resolve function")
            def resolve(ref: str, volume_id: str) -> KeyMaterial:
                return guard.resolve_volume_key(ref, identity=identity, volume_id=volume_id,
                                                endpoint=endpoint)
        self.resolve = resolve
        self.guest = guest or Guest()
        self.precheck = precheck

    def prepare(
        self,
        connection_info: dict,
        encryption: Encryption | dict,
        *,
        new_volume: bool = False,
        policy: str | luks.PbkdfPolicy | None = None,
    ) -> PreparedVolume:
        enc = encryption if isinstance(encryption, Encryption) else Encryption.from_dict(encryption)
        data = connection_info.get("data", {})
        path = Path(data["device_path"])
        volume_id = str(data.get("volume_id") or path.stem)
        key = self.resolve(enc.key_ref, volume_id)
        pw = keys.passphrase(key)
        state = guard_device(path, pw, enc, secret_type=key.info.secret_type,
                             new_volume=new_volume, policy=policy)
        if self.precheck:
            luks.test_key(path, pw)
        return PreparedVolume(volume_id, path, enc, key, state)

    def run(
        self,
        volumes: Sequence[PreparedVolume],
        steps: Sequence[dict],
        *,
        on_wait: Callable[[str], None] | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> GuestRun:
        # Several prepared volumes may share one disk (the same volume tried with two keys).
        disks = list({v.volume_id: Disk(v.path, v.volume_id, link=v.link) for v in volumes}
                     .values())
        secrets = {v.key_name: v.key.payload for v in volumes}
        return self.guest.run(steps, disks=disks, secrets=secrets, on_wait=on_wait,
                              progress=progress, op_modules=OP_MODULES)

    def attach(
        self,
        connection_info: dict,
        encryption: Encryption | dict,
        *,
        then: Callable[[PreparedVolume], Sequence[dict]] | None = None,
        new_volume: bool = False,
        on_wait: Callable[[str], None] | None = None,
    ) -> tuple[PreparedVolume, GuestRun]:
        """One session: attach, the ``then`` steps, detach. Typed error if attach fails."""
        v = self.prepare(connection_info, encryption, new_volume=new_volume)
        steps = [attach_step(v), *(then(v) if then else []), detach_step(v)]
        run = self.run([v], steps, on_wait=on_wait)
        raise_for(run, {v.volume_id: v.path})
        return v, run


def raise_for(run: GuestRun, paths: dict[str, Path] | None = None) -> None:
    """Raise the typed error of the first failed step of ``run`` (if any)."""
    for s in run.steps:
        if not s.get("ok"):
            disk = s.get("disk") or s.get("name", "").partition(":")[2]
            raise error_for(s, (paths or {}).get(disk))


def connection_info_for(path: Path, volume_id: str | None = None) -> dict:
    """The connection_info a file-backed volume presents (Cinder's 'data.device_path')."""
    return {
        "driver_volume_type": "file",
        "data": {"device_path": str(path), "volume_id": volume_id or path.stem},
    }
