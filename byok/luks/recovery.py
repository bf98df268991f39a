"""Offline recovery: a LUKS volume, backup or image file → its plaintext, with only a key.

No Keystone, no Barbican, no root, no device-mapper, no cryptsetup: the header is parsed by
:mod:`byok.luks.header`, keyslots are opened here (PBKDF2 via hashlib, argon2i/argon2id via
argon2-cffi, the keyslot area decrypted per 512-byte sector, LUKS's anti-forensic merge, the
volume key checked against the header digest), and the data is decrypted sector by sector by
:mod:`byok.luks.sectors`. The key material is whatever the user holds:

* ``--key-file``: the raw key bytes exactly as stored in Barbican (a symmetric secret); the LUKS
  passphrase is derived as os-brick does (lower-case hex);
* ``--passphrase-file``: a passphrase secret's text (a single trailing newline is tolerated).

The key is verified before anything is written; a wrong key leaves no output file. The output is
sparse: regions never written on the encrypted volume, and all-zero plaintext, stay holes.
"""

from __future__ import annotations

import binascii
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from byok.common import sparse
from byok.common.errors import RecoveryError, WrongKey
from byok.common.sensitive import Sensitive
from byok.luks import header as luksheader
from byok.luks import sectors as xts
from byok.luks.header import Keyslot, LuksHeader

CHUNK = 8 << 20
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Unlocked:
    header: LuksHeader
    slot: int
    volume_key: Sensitive


def passphrase_from_key_bytes(raw: bytes) -> Sensitive:
    """os-brick's rule for a symmetric secret: the hex of the key is the passphrase."""
    return Sensitive(binascii.hexlify(raw))


def _kdf(slot: Keyslot, passphrase: bytes) -> bytes:
    k = slot.kdf
    if k.type == "pbkdf2":
        return hashlib.pbkdf2_hmac(k.hash or "sha256", passphrase, k.salt, k.iterations or 1,
                                   dklen=slot.area_key_bytes)
    from argon2.low_level import Type, hash_secret_raw

    return hash_secret_raw(
        passphrase, k.salt, time_cost=k.time or 1, memory_cost=k.memory_kib or 1024,
        parallelism=k.cpus or 1, hash_len=slot.area_key_bytes,
        type=Type.ID if k.type == "argon2id" else Type.I, version=19,
    )


def _diffuse(buf: bytes, hash_name: str) -> bytes:
    ds = hashlib.new(hash_name).digest_size
    out = bytearray()
    for i in range(0, len(buf), ds):
        block = buf[i : i + ds]
        out += hashlib.new(hash_name, (i // ds).to_bytes(4, "big") + block).digest()[: len(block)]
    return bytes(out)


def af_merge(material: bytes, key_bytes: int, stripes: int, hash_name: str) -> bytes:
    """LUKS anti-forensic merge of ``stripes`` stripes into one ``key_bytes`` key."""
    d = bytes(key_bytes)
    for i in range(stripes - 1):
        s = material[i * key_bytes : (i + 1) * key_bytes]
        d = _diffuse(bytes(a ^ b for a, b in zip(d, s, strict=True)), hash_name)
    last = material[(stripes - 1) * key_bytes : stripes * key_bytes]
    return bytes(a ^ b for a, b in zip(d, last, strict=True))


def _verify(header: LuksHeader, slot: int, candidate: bytes) -> bool:
    for d in header.digests:
        if header.version == 2 and d.keyslots and slot not in d.keyslots:
            continue
        got = hashlib.pbkdf2_hmac(d.hash, candidate, d.salt, d.iterations, dklen=len(d.digest))
        if got == d.digest:
            return True
    return False


def unlock(header: LuksHeader, header_file: Path, passphrase: Sensitive) -> Unlocked:
    """Open a keyslot of ``header`` with ``passphrase``; WrongKey if none opens."""
    if not header.keyslots:
        raise RecoveryError("the header has no active keyslot")
    with open(header_file, "rb") as f:
        # Priority order as cryptsetup (high, normal), then "ignore" (0) last: cryptsetup opens
        # those only when named, but recovery must work with whatever slot the key has.
        for slot in sorted(header.keyslots,
                           key=lambda k: (k.priority == 0, -k.priority, k.slot)):
            f.seek(slot.area_offset)
            area = f.read(slot.key_bytes * slot.af_stripes)
            area += bytes(-len(area) % 512)
            kdf_key = _kdf(slot, passphrase.reveal())
            material = xts.SectorCipher(slot.area_cipher, kdf_key, 512).decrypt(area, 0)
            candidate = af_merge(material, slot.key_bytes, slot.af_stripes, slot.af_hash)
            if _verify(header, slot.slot, candidate):
                return Unlocked(header, slot.slot, Sensitive(candidate))
    raise WrongKey("no keyslot of this header opens with the given key")


def recover(
    image: Path,
    out: Path | None,
    *,
    passphrase: Sensitive,
    header: Path | None = None,
    progress: Progress | None = None,
    overwrite: bool = False,
) -> dict:
    """Write the plaintext of ``image`` to ``out``; returns a summary (slot, bytes, seconds).

    ``out=None`` decrypts everything and writes nothing (``byok recover --check``): it proves
    the key opens the volume and measures the decryption path without a disk in the way.
    """
    import time

    hdr_file = header or image
    try:
        h = luksheader.read(str(hdr_file))
    except OSError as e:
        raise RecoveryError(f"cannot read {hdr_file}: {e}") from e
    u = unlock(h, hdr_file, passphrase)  # before touching the output: wrong key writes nothing
    if out is not None and out.exists() and not overwrite:
        raise RecoveryError(f"{out} exists; refusing to overwrite it (remove it or pass --force)")
    seg = h.segment
    t0 = time.monotonic()
    cipher = xts.SectorCipher(seg.cipher, u.volume_key.reveal(), seg.sector_size)
    fi = os.open(image, os.O_RDONLY)
    tmp = out.with_name(out.name + ".partial") if out is not None else None
    written = 0
    try:
        size = os.fstat(fi).st_size
        end = size if seg.size is None else min(size, seg.offset + seg.size)
        plain_size = max(0, end - seg.offset)
        fo = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600) if tmp else -1
        try:
            if fo >= 0:
                os.ftruncate(fo, plain_size)
            jobs = []
            for off, length in sparse.data_extents(fi, end):
                start = max(off, seg.offset)
                stop = min(off + length, end)
                start -= (start - seg.offset) % seg.sector_size  # whole sectors
                while start < stop:
                    n = min(CHUNK, stop - start)
                    jobs.append((start, n + (-n % seg.sector_size)))
                    start += n
            written = _decrypt_jobs(fi, fo, jobs, cipher, seg, plain_size, progress)
            if fo >= 0:
                os.fsync(fo)
        finally:
            if fo >= 0:
                os.close(fo)
        if tmp is not None:
            os.replace(tmp, out)
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fi)
    seconds = time.monotonic() - t0
    return {
        "luks_version": h.version,
        "slot": u.slot,
        "cipher": seg.cipher,
        "sector_size": seg.sector_size,
        "plaintext_bytes": plain_size,
        "written_bytes": written,
        "seconds": round(seconds, 3),
        "backend": xts.backend_name(),
    }


def _decrypt_jobs(fi: int, fo: int, jobs: list[tuple[int, int]], cipher: xts.SectorCipher,
                  seg, plain_size: int, progress: Progress | None) -> int:
    """Decrypt (offset, length) chunks with one worker per CPU; each worker owns its buffers.

    The native kernel releases the GIL, so the workers really run in parallel; reads and writes
    are positional (pread/pwrite), so chunks need no ordering. Returns bytes written.
    """
    import threading

    lock = threading.Lock()
    todo = iter(jobs)
    total = [0, 0]  # written, done
    errors: list[BaseException] = []

    def worker() -> None:
        inbuf = bytearray(CHUNK + seg.sector_size)
        outbuf = bytearray(CHUNK + seg.sector_size)
        while True:
            with lock:
                job = next(todo, None)
            if job is None or errors:
                return
            start, n = job
            try:
                view = memoryview(inbuf)[:n]
                got = os.preadv(fi, [view], start)
                if got < n:
                    view[got:] = bytes(n - got)
                out = memoryview(outbuf)[:n]
                cipher.decrypt_into(view, out, (start - seg.offset) // 512 + seg.iv_tweak)
                pos = start - seg.offset
                keep = min(n, plain_size - pos)
                w = _write_nonzero(fo, out[:keep], pos) if fo >= 0 else 0
            except BaseException as e:  # re-raised in the caller
                errors.append(e)
                return
            with lock:
                total[0] += w
                total[1] = max(total[1], pos + keep)
                if progress:
                    progress(min(total[1], plain_size), plain_size)

    threads = [threading.Thread(target=worker) for _ in range(min(len(jobs), os.cpu_count() or 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return total[0]


HOLE_GRAIN = 64 << 10
_ZERO = bytes(HOLE_GRAIN)


def _write_nonzero(fd: int, data: memoryview, pos: int) -> int:
    """Write ``data`` at ``pos`` except all-zero 64 KiB blocks (left as holes); bytes written."""
    written = 0
    run_start = None
    for i in range(0, len(data), HOLE_GRAIN):
        block = data[i : i + HOLE_GRAIN]
        if block == _ZERO[: len(block)]:
            if run_start is not None:
                written += os.pwrite(fd, data[run_start:i], pos + run_start)
                run_start = None
        elif run_start is None:
            run_start = i
    if run_start is not None:
        written += os.pwrite(fd, data[run_start:], pos + run_start)
    return written


def read_passphrase(*, key_file: Path | None = None, passphrase_file: Path | None = None
                    ) -> list[Sensitive]:
    """Candidate passphrases from the user's files (a passphrase file may end in one newline)."""
    if key_file is not None:
        return [passphrase_from_key_bytes(key_file.read_bytes())]
    if passphrase_file is not None:
        raw = passphrase_file.read_bytes()
        out = [Sensitive(raw)]
        if raw.endswith(b"\n"):
            out.append(Sensitive(raw[:-1]))
        return out
    raise RecoveryError("give --key-file or --passphrase-file")


def recover_with_key(image: Path, out: Path | None, *, key_file: Path | None = None,
                     passphrase_file: Path | None = None, header: Path | None = None,
                     overwrite: bool = False,
                     progress: Callable[[int, int], None] | None = None) -> dict:
    """:func:`recover` with the key as the user holds it (a key file or a passphrase file),
    trying each passphrase that form can stand for.

    :raises WrongKey: none opens the volume.
    """
    last: WrongKey | None = None
    for pw in read_passphrase(key_file=key_file, passphrase_file=passphrase_file):
        try:
            return recover(image, out, passphrase=pw, header=header, progress=progress,
                           overwrite=overwrite)
        except WrongKey as e:
            last = e
    raise last or WrongKey(f"{image.name}: no keyslot opens with this key")
