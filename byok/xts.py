"""Sector decryption for offline recovery: dm-crypt's IV schemes over the ``cryptography`` AES.

LUKS data is encrypted per sector; the IV of a sector is its number (``plain64``: 64-bit
little-endian, counted in 512-byte units even for 4096-byte sectors, as dm-crypt does without
``iv_large_sectors``). This module decrypts runs of sectors for the cipher specs cryptsetup,
os-brick and qemu-img produce: ``aes-xts-plain64`` (the default everywhere), ``aes-xts-plain``,
``aes-cbc-essiv:sha256`` and ``aes-cbc-plain64``.

The XTS path uses a native batch kernel when one is available (:mod:`byok._xtsfast`, see
``native/xts_aesni.c``) and falls back to one ``cryptography`` XTS context per sector.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from byok.errors import RecoveryError

Decryptor = Callable[[bytes, int], bytes]  # (ciphertext of whole sectors, first IV) -> plaintext


def _native():
    try:
        from byok import _xtsfast  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _xtsfast


def backend_name() -> str:
    return "native-aesni" if _native() is not None else "cryptography-per-sector"


def make_decryptor(cipher_spec: str, key: bytes, sector_size: int = 512) -> Decryptor:
    """A function decrypting whole sectors; IVs count 512-byte units from ``first_iv``."""
    spec = cipher_spec.lower()
    try:
        algo, mode, ivgen = spec.split("-", 2)
    except ValueError:
        raise RecoveryError(f"unsupported cipher spec {cipher_spec!r}") from None
    if algo != "aes":
        raise RecoveryError(f"unsupported cipher {algo!r} (only AES)")
    step = sector_size // 512
    if mode == "xts" and ivgen in ("plain64", "plain"):
        mask = (1 << 64) - 1 if ivgen == "plain64" else (1 << 32) - 1
        native = _native()
        if native is not None and len(key) in (32, 64) and ivgen == "plain64":
            return lambda data, first: native.decrypt(key, data, first, sector_size, step)

        def xts(data: bytes, first: int) -> bytes:
            out = bytearray(len(data))
            alg = algorithms.AES(key)
            for i in range(0, len(data), sector_size):
                iv = ((first + (i // sector_size) * step) & mask).to_bytes(16, "little")
                d = Cipher(alg, modes.XTS(iv)).decryptor()
                out[i : i + sector_size] = d.update(data[i : i + sector_size])
            return bytes(out)

        return xts
    if mode == "cbc" and (ivgen.startswith("essiv:") or ivgen == "plain64"):
        if ivgen.startswith("essiv:"):
            h = ivgen.split(":", 1)[1]
            salt = hashlib.new(h, key).digest()
            essiv = Cipher(algorithms.AES(salt), modes.ECB()).encryptor()  # noqa: S305 - ESSIV

            def iv_of(n: int) -> bytes:
                return essiv.update(n.to_bytes(16, "little"))
        else:

            def iv_of(n: int) -> bytes:
                return n.to_bytes(16, "little")

        def cbc(data: bytes, first: int) -> bytes:
            out = bytearray(len(data))
            alg = algorithms.AES(key)
            for i in range(0, len(data), sector_size):
                d = Cipher(alg, modes.CBC(iv_of(first + (i // sector_size) * step))).decryptor()
                out[i : i + sector_size] = d.update(data[i : i + sector_size])
            return bytes(out)

        return cbc
    raise RecoveryError(f"unsupported cipher spec {cipher_spec!r}")
