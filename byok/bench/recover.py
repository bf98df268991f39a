"""Recovery throughput: ``byok recover`` against the physical limits measured in the same run.

Same machine, same run, same sector size. The image is LUKS2 aes-xts-plain64 with a 512-bit
key, made by ``cryptsetup reencrypt --encrypt`` from random data (nothing sparse to skip), read
from the page cache (warmed first). Medians of ``repeat`` runs of:

* ``byok_recover_to_file_mb_s`` — ``byok recover --out FILE``, what a user runs;
* ``byok_decrypt_mb_s`` — ``byok recover --check`` (read + decrypt on every core, nothing
  written);
* the disk's own O_DIRECT write ceiling on the same filesystem (``disk_write_ceiling_mb_s``);
* ``openssl speed -evp aes-256-xts`` at the same block size on one core and on all cores.

Targets (both must hold at every sector size):

* ``ratio_to_file`` = recover to a file / min(disk write ceiling, openssl on all cores) >= 0.8
  — writing the plaintext cannot beat the slower of the disk and the cipher;
* ``ratio_decrypt_per_core`` = (decrypt-only / cores) / openssl on one core >= 0.8 — the
  decryption loop itself (OpenSSL EVP, one IV reset per sector; ``openssl speed`` never
  changes the IV, so at 512-byte sectors the IV resets are the gap).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

from byok.common import proc, sparse
from byok.common.sensitive import Sensitive
from byok.harness.measures import openssl_mb_s
from byok.luks import cryptsetup as luks
from byok.luks import recovery
from byok.luks import sectors as xts

TARGET_RATIO = 0.8


def make_image(raw_size: int, sector: int, workdir: Path) -> tuple[Path, Sensitive]:
    pw = Sensitive(os.urandom(32).hex())
    raw = workdir / "raw.img"
    with open(raw, "wb") as f:
        for _ in range(raw_size // (8 << 20)):
            f.write(os.urandom(8 << 20))
    img = workdir / f"img-{sector}.luks"
    sparse.copy_sparse(raw, img)
    raw.unlink()
    os.truncate(img, raw_size + (32 << 20))
    proc.run(["cryptsetup", "reencrypt", "--encrypt", "--type", "luks2", "--batch-mode",
              "--force-offline-reencrypt", "--reduce-device-size", "32M", "--sector-size",
              str(sector), "--key-size", "512", "--pbkdf", "pbkdf2",
              "--pbkdf-force-iterations", "1000", "--key-file=-", str(img)],
             input=pw, timeout=900)
    os.truncate(img, luks.dump(img).data_offset + raw_size)
    return img, pw


def _write_ceiling(work: Path, size: int) -> float:
    """MB/s of plain O_DIRECT writes of ``size`` bytes on ``work``'s filesystem."""
    import mmap

    chunk = 8 << 20
    buf = mmap.mmap(-1, chunk)
    buf.write(os.urandom(chunk))
    target = work / "ceiling.out"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o600)
    try:
        os.posix_fallocate(fd, 0, size)
        t0 = time.perf_counter()
        for off in range(0, size, chunk):
            os.pwrite(fd, buf, off)
        os.fsync(fd)
        return size / (time.perf_counter() - t0) / 1e6
    finally:
        os.close(fd)
        target.unlink()


def run(*, size_mib: int = 512, sectors: tuple[int, ...] = (4096, 512), repeat: int = 3) -> dict:
    cores = os.cpu_count() or 1
    out: dict = {"name": "recover", "unit": "MB/s", "backend": xts.backend_name(),
                 "size_mib": size_mib, "cores": cores, "by_sector": {}}
    ratios = []
    from byok.common import paths

    paths.base_dir().mkdir(parents=True, exist_ok=True)  # on disk, not tmpfs
    with tempfile.TemporaryDirectory(prefix="bench-", dir=paths.base_dir()) as d:
        work = Path(d)
        for sector in sectors:
            img, pw = make_image(size_mib << 20, sector, work)
            with open(img, "rb") as f:  # warm the page cache: measure decryption, not the disk
                while f.read(64 << 20):
                    pass
            size = size_mib << 20
            pipeline, to_file = [], []
            for _ in range(repeat):
                t0 = time.perf_counter()
                recovery.recover(img, None, passphrase=pw)  # read + decrypt, nothing written
                pipeline.append(size / (time.perf_counter() - t0) / 1e6)
                target = work / "plain.out"
                target.unlink(missing_ok=True)
                t0 = time.perf_counter()
                recovery.recover(img, target, passphrase=pw)
                to_file.append(size / (time.perf_counter() - t0) / 1e6)
                target.unlink()
            ossl = openssl_mb_s(sector)
            ossl_all = openssl_mb_s(sector, cores=cores)
            ceiling = _write_ceiling(work, size_mib << 20)  # interleaved with the rest
            decrypt, written = statistics.median(pipeline), statistics.median(to_file)
            r_file = written / min(ceiling, ossl_all)
            r_core = (decrypt / cores) / ossl
            ratios += [r_file, r_core]
            out["by_sector"][str(sector)] = {
                "byok_recover_to_file_mb_s": round(written, 1),
                "byok_decrypt_mb_s": round(decrypt, 1),
                "openssl_mb_s": round(ossl, 1),
                f"openssl_{cores}_cores_mb_s": round(ossl_all, 1),
                "disk_write_ceiling_mb_s": round(ceiling, 1),
                "ratio_to_file": round(r_file, 3),
                "ratio_decrypt_per_core": round(r_core, 3),
                "ratio_decrypt_all_cores": round(decrypt / ossl_all, 3),
                "samples_decrypt": [round(x, 1) for x in pipeline],
                "samples_to_file": [round(x, 1) for x in to_file],
            }
            img.unlink()
    out["ratio"] = round(min(ratios), 3)
    out["target"] = (f"ratio_to_file (to a file / min(disk ceiling, openssl all cores)) and "
                     f"ratio_decrypt_per_core (decrypt-only per core / openssl one core) both "
                     f">= {TARGET_RATIO} at every sector size")
    out["target_met"] = min(ratios) >= TARGET_RATIO
    return out
