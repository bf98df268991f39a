"""Sector decryption (and, for checking re-encryption hotzones, encryption) for offline recovery:
dm-crypt's IV schemes over AES.

LUKS data is encrypted per sector; the IV of a sector is its number (``plain64``: 64-bit
little-endian, counted in 512-byte units even for 4096-byte sectors, as dm-crypt does without
``iv_large_sectors``). This module decrypts runs of sectors for the cipher specs cryptsetup,
os-brick and qemu-img produce: ``aes-xts-plain64`` (the default everywhere), ``aes-xts-plain``,
``aes-cbc-essiv:sha256`` and ``aes-cbc-plain64``.

``aes-xts-plain64`` uses the native loop :mod:`byok._xtsfast` (``native/xts_evp.c``: OpenSSL's
libcrypto, one EVP context per call and one IV reset per sector) when it was built, and
otherwise one ``cryptography`` XTS context per sector (correct, much slower). No AES is
implemented in byok; everything is checked against ``cryptography``.
"""

from __future__ import annotations

import hashlib
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from byok.common.errors import RecoveryError


def _native() -> Any:
    try:
        from byok import _xtsfast  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _xtsfast


def backend_name() -> str:
    native = _native()
    return f"native-{native.kernel}" if native is not None else "cryptography-per-sector"


class SectorCipher:
    """Decrypts whole sectors; IVs count 512-byte units from ``first_iv``."""

    def __init__(self, cipher_spec: str, key: bytes, sector_size: int = 512) -> None:
        spec = cipher_spec.lower()
        try:
            algo, mode, ivgen = spec.split("-", 2)
        except ValueError:
            raise RecoveryError(f"unsupported cipher spec {cipher_spec!r}") from None
        if algo != "aes":
            raise RecoveryError(f"unsupported cipher {algo!r} (only AES)")
        if not (mode == "xts" and ivgen in ("plain64", "plain")) and not (
            mode == "cbc" and (ivgen.startswith("essiv:") or ivgen == "plain64")
        ):
            raise RecoveryError(f"unsupported cipher spec {cipher_spec!r}")
        self.key = key
        self.sector = sector_size
        self.step = sector_size // 512
        self.mode = mode
        self.ivgen = ivgen
        self._native = (_native() if mode == "xts" and ivgen == "plain64"
                        and len(key) in (32, 64) else None)
        self._essiv = None
        if ivgen.startswith("essiv:"):
            salt = hashlib.new(ivgen.split(":", 1)[1], key).digest()
            self._essiv = Cipher(algorithms.AES(salt), modes.ECB()).encryptor()  # noqa: S305

    def _iv(self, n: int) -> bytes:
        if self._essiv is not None:
            return self._essiv.update(n.to_bytes(16, "little"))
        if self.ivgen == "plain":
            n &= (1 << 32) - 1
        return (n & ((1 << 64) - 1)).to_bytes(16, "little")

    def decrypt_into(self, data: bytes | bytearray | memoryview, out: bytearray | memoryview,
                     first_iv: int) -> None:
        """Decrypt ``data`` (whole sectors) into ``out`` (at least as long)."""
        if self._native is not None:
            self._native.decrypt_into(self.key, data, out, first_iv, self.sector, self.step)
            return
        alg = algorithms.AES(self.key)
        view = memoryview(data)
        for i in range(0, len(view), self.sector):
            iv = self._iv(first_iv + (i // self.sector) * self.step)
            m = modes.XTS(iv) if self.mode == "xts" else modes.CBC(iv)
            out[i : i + self.sector] = Cipher(alg, m).decryptor().update(
                view[i : i + self.sector])

    def decrypt(self, data: bytes, first_iv: int) -> bytes:
        out = bytearray(len(data))
        self.decrypt_into(data, out, first_iv)
        return bytes(out)

    def encrypt(self, data: bytes | bytearray | memoryview, first_iv: int) -> bytes:
        """Encrypt whole sectors: what cryptsetup would have written for this plaintext.

        Recovery uses it only to *check* candidates (a hotzone block's old ciphertext against
        cryptsetup's stored checksum), never to write a volume."""
        out = bytearray(len(data))
        if self._native is not None:
            self._native.encrypt_into(self.key, data, out, first_iv, self.sector, self.step)
            return bytes(out)
        alg = algorithms.AES(self.key)
        view = memoryview(data)
        for i in range(0, len(view), self.sector):
            iv = self._iv(first_iv + (i // self.sector) * self.step)
            m = modes.XTS(iv) if self.mode == "xts" else modes.CBC(iv)
            out[i : i + self.sector] = Cipher(alg, m).encryptor().update(view[i : i + self.sector])
        return bytes(out)
