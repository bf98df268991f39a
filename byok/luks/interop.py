"""Independent readers of LUKS volumes, to show byok's volumes are ordinary LUKS.

* Nova's native path decrypts in QEMU with the same passphrase os-brick derives; qemu 7.2 reads
  LUKS1 only (``qemu-img convert`` with a ``secret`` object read from an inherited fd).
* LUKS2 (and LUKS1) are read by ``dissect.fve``, a pure-Python implementation unrelated to
  cryptsetup.
Both return the SHA-256 of the first ``size`` plaintext bytes.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from byok.common import proc
from byok.common.errors import CommandFailed, WrongKey
from byok.common.retry import retry
from byok.common.sensitive import Sensitive


def qemu_sha256(path: Path, passphrase: Sensitive, size: int) -> str:
    """Plaintext SHA-256 via qemu-img's LUKS driver (LUKS1)."""
    with proc.secret_fd(passphrase, "byok-qemu-secret") as (fd, fd_path), \
            tempfile.TemporaryDirectory(prefix="byok-qemu-") as tmp:
        out = Path(tmp) / "plain.raw"
        res = proc.run(
            ["qemu-img", "convert", "--object", f"secret,id=sec0,file={fd_path}",
             "--image-opts", f"driver=luks,key-secret=sec0,file.filename={path}",
             "-O", "raw", str(out)],
            pass_fds=(fd,), check=False, timeout=300, what="qemu-img convert",
        )
        if res.returncode != 0:
            if "Invalid password" in res.err:
                raise WrongKey(f"qemu: no keyslot of {path.name} opens with this passphrase")
            raise CommandFailed(f"qemu-img could not read {path.name}: {res.tail(2)}")
        h = hashlib.sha256()
        with open(out, "rb") as f:
            h.update(f.read(size))
        return h.hexdigest()


def dissect_sha256(path: Path, passphrase: Sensitive, size: int) -> str:
    """Plaintext SHA-256 via dissect.fve (LUKS1 and LUKS2, pure Python)."""
    from dissect.fve.luks import LUKS

    with open(path, "rb") as f:
        volume = LUKS(f)
        try:
            volume.unlock_with_passphrase(passphrase.reveal())
        except ValueError as e:
            raise WrongKey(f"dissect.fve: {e}") from None
        stream = volume.open()
        stream.seek(0)
        return hashlib.sha256(stream.read(size)).hexdigest()


def qemu_encrypt_luks1(raw: Path, out: Path, passphrase: Sensitive, *, attempts: int = 20,
                       cipher_mode: str = "xts", ivgen: str = "plain64") -> None:
    """A LUKS1 image of ``raw`` made by qemu-img (what Nova/Glance tooling produces), AES-256
    in ``cipher_mode`` (xts, cbc) with ``ivgen`` (plain64, essiv: sha256 as its hash).

    qemu-img benchmarks its PBKDF and, on this VM's coarse CPU accounting, sometimes fails with
    "Unable to get accurate CPU usage"; that one error is retried (:func:`byok.common.retry`).
    """
    @retry(CommandFailed, retries=attempts, interval=0,
           when=lambda e: "accurate CPU usage" in str(e))
    def once() -> None:
        out.unlink(missing_ok=True)
        with proc.secret_fd(passphrase, "byok-qemu-secret") as (fd, fd_path):
            res = proc.run(
                ["qemu-img", "convert", "-f", "raw", "-O", "luks",
                 "--object", f"secret,id=sec0,file={fd_path}",
                 "-o", f"key-secret=sec0,iter-time=10,cipher-alg=aes-256,"
                 f"cipher-mode={cipher_mode},ivgen-alg={ivgen}"
                 + (",ivgen-hash-alg=sha256" if ivgen == "essiv" else ""),
                 str(raw), str(out)],
                pass_fds=(fd,), check=False, timeout=300, what="qemu-img convert",
            )
        if res.returncode:
            raise CommandFailed(f"qemu-img could not create a LUKS image: {res.tail(2)}")

    once()
