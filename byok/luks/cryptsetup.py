"""LUKS operations over cryptsetup (through :mod:`byok.common.proc`).

Everything here works on plain files on a host without device-mapper: format, test a key, add,
remove, change and kill keyslots, dump metadata, back up and restore headers. Opening a mapping
needs dm-crypt and runs in the guest (:mod:`byok.guest`). This layer sees passphrases, never key
references, and never formats a device that already carries a LUKS header.

PBKDF policy (``POLICIES``; why in design/notes/pbkdf-policy.md): a key Barbican generated or a
user uploaded as a 256/512-bit symmetric secret becomes a 64/128-hex-character passphrase with
full entropy, so key stretching buys nothing — ``machine-key`` uses PBKDF2 with the minimum 1000
iterations and no memory. A human passphrase needs a memory-hard KDF — ``passphrase`` uses
argon2id with fixed, documented costs. ``osbrick-default`` leaves the choice to cryptsetup's
benchmark (argon2id with up to 1 GiB), which is what os-brick does when it formats.
"""

from __future__ import annotations

import binascii
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from byok.common import proc
from byok.common.errors import (
    ByokError,
    CommandFailed,
    DeviceMapperUnavailable,
    HeaderCorrupt,
    NotLuks,
    UsageError,
    VolumeBusy,
    VolumeError,
    WrongKey,
)
from byok.common.sensitive import Sensitive
from byok.luks import header as luksheader

CRYPTSETUP = "cryptsetup"
DEFAULT_CIPHER = "aes-xts-plain64"
LUKS_TYPES = ("luks1", "luks2")
#: os-brick's encryption provider names (Cinder volume-type metadata) and the LUKS type each means.
PROVIDER_TO_TYPE = {"luks": "luks1", "luks2": "luks2"}
TYPE_TO_PROVIDER = {v: k for k, v in PROVIDER_TO_TYPE.items()}


@dataclass(frozen=True)
class PbkdfPolicy:
    """How a keyslot's passphrase is stretched. ``None`` fields mean cryptsetup's default."""

    name: str
    pbkdf: str | None  # pbkdf2 | argon2id | argon2i | None (cryptsetup decides)
    iterations: int | None = None  # pbkdf2 iterations, or argon2 time cost
    memory_kib: int | None = None  # argon2 only
    parallel: int | None = None  # argon2 only
    why: str = ""

    def args(self, luks_type: str) -> list[str]:
        if self.pbkdf is None:
            return []
        if luks_type == "luks1":
            # LUKS1 knows only PBKDF2; memory-hard policies fall back to a 2 s PBKDF2 benchmark.
            if self.pbkdf == "pbkdf2" and self.iterations:
                return ["--pbkdf-force-iterations", str(self.iterations)]
            return ["--iter-time", "2000"]
        out = ["--pbkdf", self.pbkdf]
        if self.iterations:
            out += ["--pbkdf-force-iterations", str(self.iterations)]
        if self.memory_kib and self.pbkdf != "pbkdf2":
            out += ["--pbkdf-memory", str(self.memory_kib)]
        if self.parallel and self.pbkdf != "pbkdf2":
            out += ["--pbkdf-parallel", str(self.parallel)]
        return out


POLICIES: dict[str, PbkdfPolicy] = {
    p.name: p
    for p in (
        PbkdfPolicy(
            "machine-key", "pbkdf2", iterations=1000,
            why="256/512-bit random key: the passphrase already has full entropy",
        ),
        PbkdfPolicy(
            "passphrase", "argon2id", iterations=4, memory_kib=131072, parallel=1,
            why="human-chosen text: memory-hard stretching, 128 MiB x 4 passes",
        ),
        PbkdfPolicy(
            "osbrick-default", None,
            why="what os-brick gets today: cryptsetup's benchmark (argon2id, up to 1 GiB)",
        ),
    )
}


def policy_for(secret_type: str) -> PbkdfPolicy:
    """The PBKDF policy byok uses for a Barbican secret type."""
    return POLICIES["passphrase" if secret_type == "passphrase" else "machine-key"]


def get_policy(name: str | PbkdfPolicy) -> PbkdfPolicy:
    if isinstance(name, PbkdfPolicy):
        return name
    try:
        return POLICIES[name]
    except KeyError:
        raise UsageError(f"unknown PBKDF policy {name!r}; known: {', '.join(POLICIES)}") from None


@dataclass(frozen=True)
class LuksInfo:
    """What ``dump`` reports: version, cipher, key size, sectors, offsets, keyslots."""

    version: int
    uuid: str
    label: str
    cipher: str
    key_bits: int
    sector_size: int
    data_offset: int
    keyslots: dict[int, dict[str, Any]]
    tokens: dict[str, dict[str, Any]]
    requirements: tuple[str, ...] = ()  # LUKS2 config.requirements.mandatory

    @property
    def active_slots(self) -> list[int]:
        return sorted(self.keyslots)

    @property
    def reencrypting(self) -> bool:
        """An interrupted ``cryptsetup reencrypt`` (LUKS2 marks it as a mandatory requirement)."""
        return reencrypt_required(self.requirements)


# --- error mapping ---------------------------------------------------------------------------


def _classify(path: Path, res: proc.Result, what: str) -> ByokError:
    """Turn a cryptsetup failure into the error a user can act on."""
    text = res.err + res.out
    if res.returncode == 2 or "No key available with this passphrase" in text:
        return WrongKey(f"{what}: no keyslot of {path.name} opens with this key")
    if "Cannot initialize device-mapper" in text or "dm_mod" in text:
        # Nothing in this module needs dm; cryptsetup only reaches for it when the header asks
        # for a cipher it cannot use otherwise — i.e. the header is damaged or exotic.
        problem = header_problem(path, what)
        if isinstance(problem, HeaderCorrupt):
            return HeaderCorrupt(
                f"{what}: {path.name}'s header names a cipher this system cannot use",
                hint="the header is probably damaged; restore a header backup",
            )
        return DeviceMapperUnavailable(
            f"{what}: this kernel has no device-mapper",
            hint="opening a volume runs in a guest kernel (byok.guest; byok doctor)",
        )
    if "No usable keyslot" in text:
        return HeaderCorrupt(f"{what}: {path.name}'s header has no usable keyslot",
                             hint="restore a header backup: byok volume header-restore")
    if res.returncode == 5 or "is in use" in text or "Device or resource busy" in text:
        return VolumeBusy(f"{what}: {path.name} is busy: {res.tail(2)}")
    if "not a valid LUKS device" in text or "Device is not a valid" in text:
        return header_problem(path, what)
    return CommandFailed(
        f"{what} failed (cryptsetup exit {res.returncode}): {res.tail(3)}",
        argv=res.argv, returncode=res.returncode, stderr=res.tail(),
    )


def header_problem(path: Path, what: str = "open") -> ByokError:
    """NotLuks if the device carries no trace of LUKS, else HeaderCorrupt."""
    try:
        with open(path, "rb") as f:
            head = f.read(luksheader.READ_SIZE)
    except OSError as e:
        return VolumeError(f"{what}: cannot read {path}: {e}")
    if luksheader.detect(head) is not None or any(
        head[o : o + 6] == luksheader.MAGIC2_SECONDARY for o in luksheader.LUKS2_SECONDARY_OFFSETS
    ):
        return HeaderCorrupt(
            f"{what}: {path.name} has a damaged LUKS header",
            hint="restore it from a header backup: byok volume header-restore",
        )
    return NotLuks(f"{what}: {path.name} is not a LUKS volume")


def _run(
    path: Path,
    args: list[str],
    *,
    what: str,
    key: Sensitive | None = None,
    pass_fds: tuple[int, ...] = (),
    redact: tuple[Sensitive, ...] = (),
    timeout: float = 300.0,
    cwd: Path | None = None,
) -> proc.Result:
    res = proc.run(
        [CRYPTSETUP, *args], input=key, timeout=timeout, check=False, pass_fds=pass_fds,
        redact=redact, what=f"cryptsetup {what}", cwd=cwd,
    )
    if res.returncode != 0:
        raise _classify(path, res, what)
    return res


def _header_args(header: Path | None) -> list[str]:
    return ["--header", str(header)] if header else []


# --- operations ------------------------------------------------------------------------------


def is_luks(path: Path, *, header: Path | None = None) -> bool:
    res = proc.run([CRYPTSETUP, "isLuks", str(header or path)], check=False, timeout=60)
    return res.returncode == 0


def format(
    path: Path,
    passphrase: Sensitive,
    *,
    luks_type: str = "luks2",
    cipher: str = DEFAULT_CIPHER,
    key_bits: int = 512,
    sector_size: int | None = None,
    policy: str | PbkdfPolicy = "machine-key",
    label: str | None = None,
    header: Path | None = None,
    volume_key: Sensitive | None = None,
    compact: bool = False,
) -> LuksInfo:
    """Create a LUKS header on ``path``; refuses if ``path`` (or ``header``) is already LUKS.

    ``compact`` (LUKS2): 16 KiB metadata and 1 MiB of keyslots instead of 16 MiB, for the many
    tiny volumes of the parallel-attach measurements.

    ``volume_key`` sets the volume (master) key explicitly (used to build images that share a
    volume key); by default cryptsetup generates it.
    """
    if luks_type not in LUKS_TYPES:
        raise UsageError(f"unknown LUKS type {luks_type!r}; use luks1 or luks2")
    target = header or path
    if target.exists() and target.stat().st_size:
        if is_luks(path, header=header):
            raise VolumeError(
                f"refusing to format {target}: it already carries a LUKS header",
                hint="formatting would destroy the volume key; delete the volume instead",
            )
        problem = header_problem(target, "format")
        if isinstance(problem, HeaderCorrupt):  # a damaged header is a volume, not a blank
            raise problem
    pol = get_policy(policy)
    args = ["luksFormat", "--batch-mode", "--type", luks_type, "--cipher", cipher,
            "--key-size", str(key_bits), *pol.args(luks_type)]
    if sector_size and luks_type == "luks2":
        args += ["--sector-size", str(sector_size)]
    if label and luks_type == "luks2":
        args += ["--label", label]
    if compact and luks_type == "luks2":
        args += ["--luks2-metadata-size", "16k", "--luks2-keyslots-size", "1m"]
    args += _header_args(header)
    if volume_key is None:
        args += ["--key-file=-", str(path)]
        _run(path, args, what="luksFormat", key=passphrase)
    else:
        with proc.secret_fd(volume_key, "byok-vk") as (fd, fd_path):
            args += ["--volume-key-file", fd_path, "--key-file=-", str(path)]
            _run(path, args, what="luksFormat", key=passphrase, pass_fds=(fd,),
                 redact=(volume_key,))
    return dump(path, header=header)


def repair(path: Path, passphrase: Sensitive) -> None:
    """``cryptsetup repair``: what cryptsetup asks for after some interrupted reencryptions
    ("Device requires reencryption recovery")."""
    _run(path, ["repair", "--batch-mode", "--key-file=-", str(path)], what="repair",
         key=passphrase, timeout=3600.0)


def reencrypt_required(reqs: tuple[str, ...]) -> bool:
    return any("reencrypt" in r for r in reqs)


def requirements(meta: dict[str, Any]) -> tuple[str, ...]:
    """LUKS2 ``config.requirements.mandatory`` of a metadata document."""
    return tuple(meta.get("config", {}).get("requirements", {}).get("mandatory", []))


def metadata(path: Path) -> dict[str, Any]:
    """The LUKS2 JSON metadata as cryptsetup reports it."""
    res = _run(path, ["luksDump", "--dump-json-metadata", str(path)], what="dump")
    doc: dict[str, Any] = json.loads(res.stdout)
    return doc


def test_key(
    path: Path, passphrase: Sensitive, *, header: Path | None = None, slot: int | None = None
) -> int:
    """The keyslot ``passphrase`` opens (no dm needed). Raises WrongKey/NotLuks/HeaderCorrupt."""
    args = ["open", "--test-passphrase", "--verbose", *_header_args(header)]
    if slot is not None:
        args += ["--key-slot", str(slot)]
    res = _run(path, [*args, "--key-file=-", str(path)], what="test key", key=passphrase)
    m = re.search(r"Key slot (\d+) unlocked", res.err + res.out)
    return int(m.group(1)) if m else -1


def add_key(
    path: Path,
    existing: Sensitive,
    new: Sensitive,
    *,
    slot: int | None = None,
    policy: str | PbkdfPolicy = "machine-key",
    header: Path | None = None,
) -> int:
    """Add ``new`` in a free (or the given) slot, authorised by ``existing``; returns the slot."""
    info = dump(path, header=header)
    luks_type = f"luks{info.version}"
    args = ["luksAddKey", "--batch-mode", "--verbose", *get_policy(policy).args(luks_type),
            *_header_args(header)]
    if slot is not None:
        args += ["--key-slot", str(slot)]
    with proc.secret_fd(new, "byok-newkey") as (fd, fd_path):
        res = _run(path, [*args, "--key-file=-", str(path), fd_path], what="add key",
                   key=existing, pass_fds=(fd,), redact=(new,))
    m = re.search(r"Key slot (\d+) created", res.err + res.out)
    if m:
        return int(m.group(1))
    added = set(dump(path, header=header).keyslots) - set(info.keyslots)
    return added.pop() if added else -1


def remove_key(path: Path, passphrase: Sensitive, *, header: Path | None = None) -> None:
    """Remove the keyslot that ``passphrase`` opens."""
    _run(path, ["luksRemoveKey", "--batch-mode", *_header_args(header), "--key-file=-", str(path)],
         what="remove key", key=passphrase)


def kill_slot(
    path: Path, slot: int, *, authorising: Sensitive, header: Path | None = None
) -> None:
    """Wipe keyslot ``slot``; ``authorising`` must open another slot (never leaves zero keys)."""
    _run(path, ["luksKillSlot", "--batch-mode", *_header_args(header), "--key-file=-", str(path),
                str(slot)], what=f"kill slot {slot}", key=authorising)


def change_key(
    path: Path,
    old: Sensitive,
    new: Sensitive,
    *,
    policy: str | PbkdfPolicy = "machine-key",
    header: Path | None = None,
) -> None:
    """Replace the passphrase of the slot ``old`` opens (cryptsetup writes the new one first)."""
    luks_type = f"luks{dump(path, header=header).version}"
    with proc.secret_fd(new, "byok-newkey") as (fd, fd_path):
        _run(path, ["luksChangeKey", "--batch-mode", *get_policy(policy).args(luks_type),
                    *_header_args(header), "--key-file=-", str(path), fd_path],
             what="change key", key=old, pass_fds=(fd,), redact=(new,))


def volume_key(path: Path, passphrase: Sensitive, *, header: Path | None = None) -> Sensitive:
    """The raw volume (master) key, unlocked by ``passphrase`` (no dm).

    Read from cryptsetup's stdout pipe (``MK dump``), never through a file: a file — even on
    tmpfs — is left behind holding the volume key when byok is killed with -9 mid-call."""
    res = _run(path, ["luksDump", "--batch-mode", "--dump-volume-key", *_header_args(header),
                      "--key-file=-", str(path)], what="read volume key", key=passphrase)
    bits = re.search(rb"MK bits:\s*(\d+)", res.stdout)
    dumped = re.search(rb"MK dump:\s*((?:[0-9a-fA-F]{2}\s+)+)", res.stdout + b"\n")
    if not bits or not dumped:
        raise HeaderCorrupt(f"read volume key: cryptsetup printed no volume key for {path.name}")
    raw = binascii.unhexlify(re.sub(rb"\s+", b"", dumped.group(1)))
    if len(raw) * 8 != int(bits.group(1)):
        raise HeaderCorrupt(f"read volume key: {path.name}: {len(raw) * 8} bits read, "
                            f"{int(bits.group(1))} announced")
    return Sensitive(raw)


def dump(path: Path, *, header: Path | None = None) -> LuksInfo:
    """Metadata of a LUKS1 or LUKS2 volume (no key needed)."""
    src = header or path
    try:
        with open(src, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise VolumeError(f"cannot read {src}: {e}") from e
    version = luksheader.detect(head)
    if version is None:
        raise header_problem(src, "dump")
    if version == 1:
        h = luksheader.read(str(src))
        slots = {
            k.slot: {"type": "luks1", "kdf": "pbkdf2", "iterations": k.kdf.iterations,
                     "hash": k.kdf.hash, "stripes": k.af_stripes}
            for k in h.keyslots
        }
        return LuksInfo(1, h.uuid, "", h.cipher, h.key_bytes * 8, 512, h.segment.offset, slots, {})
    res = _run(src, ["luksDump", "--dump-json-metadata", str(src)], what="dump")
    meta = json.loads(res.stdout)
    seg = meta["segments"]["0"]
    slots = {}
    for sid, k in meta.get("keyslots", {}).items():
        kdf = k.get("kdf", {})
        slots[int(sid)] = {
            "type": k.get("type"), "kdf": kdf.get("type"), "iterations": kdf.get("iterations"),
            "time": kdf.get("time"), "memory_kib": kdf.get("memory"), "cpus": kdf.get("cpus"),
            "key_bits": int(k.get("key_size", 0)) * 8, "priority": k.get("priority"),
        }
    try:
        binary = luksheader.read(str(src))  # uuid and label live in the binary header
        uuid, label = binary.uuid, binary.label
    except ByokError:
        uuid, label = "", ""
    key_bits = int(next(iter(slots.values()))["key_bits"] or 0) if slots else 0
    return LuksInfo(
        version=2,
        uuid=uuid,
        label=label,
        cipher=seg.get("encryption", seg.get("type", "")),
        key_bits=key_bits,
        sector_size=int(seg.get("sector_size", 512)),
        data_offset=int(seg["offset"]),
        keyslots=slots,
        tokens=dict(meta.get("tokens", {})),
        requirements=requirements(meta),
    )


def header_backup(path: Path, backup: Path) -> Path:
    """Write the header and keyslots of ``path`` to ``backup`` (never overwrites a backup)."""
    if backup.exists():
        raise VolumeError(f"header backup {backup} already exists; choose another name")
    backup.parent.mkdir(parents=True, exist_ok=True)
    _run(path, ["luksHeaderBackup", str(path), "--header-backup-file", str(backup)],
         what="header backup")
    return backup


def header_restore(path: Path, backup: Path) -> None:
    """Write a header backup back onto ``path``."""
    _run(path, ["luksHeaderRestore", "--batch-mode", str(path), "--header-backup-file",
                str(backup)], what="header restore")


def encrypt_file(
    raw: Path,
    out: Path,
    passphrase: Sensitive,
    *,
    policy: str | PbkdfPolicy = "machine-key",
    cipher: str = DEFAULT_CIPHER,
    key_bits: int = 512,
    workdir: Path | None = None,
    sector_size: int | None = None,
) -> LuksInfo:
    """Build a LUKS2 image ``out`` whose plaintext is the file ``raw`` — without root or dm.

    cryptsetup runs in ``workdir`` (default: ``out``'s directory): a run killed early leaves its
    temporary header (``LUKS2-temp-<uuid>.new``) there, for the caller to remove.

    ``cryptsetup reencrypt --encrypt`` converts plaintext in place; it needs spare room for the
    header, so the copy is grown by ``reduce`` bytes first, and afterwards truncated to
    ``data offset + len(raw)`` so that the image's plaintext is exactly ``raw`` (cryptsetup
    leaves the unused tail of the reduction behind otherwise). ``sector_size`` is the encryption
    sector in bytes (512 or 4096; cryptsetup's choice if None).
    """
    from byok.common import sparse

    reduce = 32 << 20
    size = raw.stat().st_size
    if size % 4096:
        raise VolumeError(f"{raw} is {size} bytes; image sources must be a multiple of 4096")
    sparse.copy_sparse(raw, out)
    try:
        os.truncate(out, size + reduce)
        pol = get_policy(policy)
        sector = ["--sector-size", str(sector_size)] if sector_size else []
        _run(out, ["reencrypt", "--encrypt", "--type", "luks2", "--batch-mode",
                   "--force-offline-reencrypt", "--reduce-device-size", f"{reduce >> 20}M",
                   "--cipher", cipher, "--key-size", str(key_bits), *sector, *pol.args("luks2"),
                   "--key-file=-", str(out)], what="encrypt image", key=passphrase,
             cwd=workdir or out.parent)  # a killed run leaves its temporary header there
        info = dump(out)
        os.truncate(out, info.data_offset + size)
        return info
    except BaseException:
        out.unlink(missing_ok=True)
        raise


def reencrypt(path: Path, passphrase: Sensitive, *, slot: int | None = None,
              resume: bool = False, policy: str | PbkdfPolicy | None = None,
              timeout: float = 3600.0) -> None:
    """Re-encrypt all data of a LUKS2 file with a new volume key, offline (no dm needed).

    The keyslot ``slot`` (which ``passphrase`` opens) is re-made around the new volume key
    (with ``policy``'s PBKDF); every other keyslot of the old volume key is removed when
    cryptsetup finishes. An interrupted run is resumed with ``resume=True``
    (``--resume-only``) — but see :func:`byok.lifecycle.rotation.finish_reencryption` for the states
    where cryptsetup 2.6.1's resume must not be used.
    """
    args = ["reencrypt", "--batch-mode", "--force-offline-reencrypt"]
    if resume:
        args.append("--resume-only")
    else:
        if slot is not None:
            args += ["--key-slot", str(slot)]
        if policy is not None:
            args += get_policy(policy).args("luks2")
    _run(path, [*args, "--key-file=-", str(path)], what="reencrypt", key=passphrase,
         timeout=timeout)
