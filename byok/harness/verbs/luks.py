"""LUKS verbs: files, format, test a key, dump, the volume key, damage a header in named ways,
encrypt a file into a LUKS2 image, offline recovery, independent readers (qemu-img's LUKS
driver, dissect.fve) and the KDF/cipher limits the measurements are judged against."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from byok.common import sparse
from byok.common.errors import ExperimentError
from byok.common.sensitive import Sensitive
from byok.harness import measures
from byok.harness.verbs.base import VerbBase
from byok.luks import cryptsetup as luks
from byok.luks import header as luksheader
from byok.luks import interop, recovery

LUKS1_PHDR = 592  # bytes of LUKS1's binary header; its keyslot material lies after it


def _zero(path: Path, ranges: list[tuple[int, int]]) -> None:
    with open(path, "r+b") as f:
        for offset, length in ranges:
            f.seek(offset)
            f.write(bytes(length))
        f.flush()
        os.fsync(f.fileno())


def _damage_ranges(path: Path, how: str) -> list[tuple[int, int]]:
    """The byte ranges each named damage zeroes (header layout read from the file itself)."""
    if how == "luks1-phdr":
        return [(0, LUKS1_PHDR)]
    h = luksheader.read(str(path))
    if how == "primary-header":  # LUKS2: binary header + JSON of copy 1 (copy 2 stays)
        return [(0, h.hdr_size if h.version == 2 else LUKS1_PHDR)]
    if how == "both-headers":  # LUKS2: both copies of the metadata
        if h.version != 2:
            raise ExperimentError("both-headers: LUKS1 has a single header (use luks1-phdr)")
        return [(0, 2 * h.hdr_size)]
    if how == "keyslots":  # every keyslot's key material: the header is fine, no key opens it
        return [(k.area_offset, k.area_size) for k in h.keyslots]
    raise ExperimentError(f"unknown header damage {how!r}; known: {', '.join(DAMAGES)}")


DAMAGES = ("luks1-phdr", "primary-header", "both-headers", "keyslots")


class LuksVerbs(VerbBase):
    # -- files ----------------------------------------------------------------------------------
    def blank_file(self, name: str, size: int) -> Path:
        """A sparse, all-zero file of ``size`` bytes in the scratch directory."""
        p = self.scratch / name
        p.unlink(missing_ok=True)
        sparse.create(p, size)
        return p

    def fill_random(self, path: Path, offset: int, size: int) -> None:
        """Overwrite ``size`` bytes at ``offset`` with random bytes (e.g. "written" ciphertext)."""
        with open(path, "r+b") as f:
            f.seek(offset)
            for _ in range(size >> 20):
                f.write(os.urandom(1 << 20))
            f.write(os.urandom(size & ((1 << 20) - 1)))

    def file_sha256(self, path: Path) -> str:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        return h.hexdigest()

    # -- cryptsetup -----------------------------------------------------------------------------
    def luks_format(self, path: Path, passphrase: Sensitive, **kw: Any) -> luks.LuksInfo:
        """``cryptsetup luksFormat`` (refuses a LUKS or damaged header); kw: luks_type, policy,
        sector_size, compact..."""
        return luks.format(path, passphrase, **kw)

    def test_key(self, path: Path, passphrase: Sensitive, **kw: Any) -> int:
        """The keyslot ``passphrase`` opens; WrongKey / NotLuks / HeaderCorrupt otherwise."""
        return luks.test_key(path, passphrase, **kw)

    def luks_dump(self, path: Path) -> luks.LuksInfo:
        return luks.dump(path)

    def volume_key(self, path: Path, passphrase: Sensitive) -> Sensitive:
        return luks.volume_key(path, passphrase)

    def is_luks(self, path: Path) -> bool:
        return luks.is_luks(path)

    def provider_for(self, luks_type: str) -> str:
        """os-brick's encryption provider name for ``luks1``/``luks2``."""
        return luks.TYPE_TO_PROVIDER[luks_type]

    def damage_header(self, path: Path, how: str) -> list[tuple[int, int]]:
        """Zero part of a LUKS header; returns the (offset, length) ranges zeroed.

        ``luks1-phdr`` the 592-byte LUKS1 header (keyslots remain); ``primary-header`` the first
        metadata copy; ``both-headers`` both LUKS2 copies; ``keyslots`` every keyslot's key
        material (the header still parses, no passphrase opens it).
        """
        ranges = _damage_ranges(path, how)
        _zero(path, ranges)
        return ranges

    def encrypt_file(self, raw: Path, out: Path, passphrase: Sensitive, **kw: Any
                     ) -> luks.LuksInfo:
        """A LUKS2 image of the plaintext file ``raw``, without root or dm (byok's image
        builder); kw: sector_size, cipher, key_bits, policy."""
        return luks.encrypt_file(raw, out, passphrase, **kw)

    # -- offline recovery and other readers -----------------------------------------------------
    def recover(self, image: Path, out: Path | None, passphrase: Sensitive, **kw: Any) -> dict:
        """``byok recover``: the plaintext of ``image`` to ``out`` (None: decrypt, write
        nothing), without dm or a key service; returns its summary."""
        return recovery.recover(image, out, passphrase=passphrase, **kw)

    def recovery_passphrases(self, *, key_file: Path | None = None,
                             passphrase_file: Path | None = None) -> list[Sensitive]:
        """The passphrases ``byok recover`` tries for the key as the user kept it."""
        return recovery.read_passphrase(key_file=key_file, passphrase_file=passphrase_file)

    def passphrase_from_key_bytes(self, raw: bytes) -> Sensitive:
        return recovery.passphrase_from_key_bytes(raw)

    def qemu_img_sha256(self, path: Path, passphrase: Sensitive, size: int) -> str:
        """SHA-256 of the first ``size`` plaintext bytes through qemu-img's LUKS driver."""
        return interop.qemu_sha256(path, passphrase, size)

    def dissect_sha256(self, path: Path, passphrase: Sensitive, size: int) -> str:
        """The same through dissect.fve (pure Python, unrelated to cryptsetup)."""
        return interop.dissect_sha256(path, passphrase, size)

    # -- limits ---------------------------------------------------------------------------------
    def parallel_unlocks(self, path: Path, passphrase: Sensitive, n: int) -> dict:
        """N concurrent key derivations (``cryptsetup open --test-passphrase``): wall, peak
        memory of the N processes, failures."""
        return measures.parallel_unlocks(path, passphrase, n)

    def openssl_mb_s(self, sector: int, seconds: int = 2) -> float:
        """One core's ``openssl speed -evp aes-256-xts`` at ``sector``-byte blocks (MB/s)."""
        return measures.openssl_mb_s(sector, seconds)
