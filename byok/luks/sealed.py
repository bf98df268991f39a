"""Header backups that cannot undo a revocation: sealed under the key that replaces the old one.

A rotation takes a header backup before it changes any keyslot, for one purpose: if a keyslot
write tears the header (LUKS1 has a single copy), put it back and roll back or finish. That
backup holds the old keyslots — with the old key it opens the volume key — so kept in the clear
it would be the old key's door back in after the rotation. byok therefore (a) seals it with
AES-256-GCM under a key derived from the *new* key (HKDF for a machine key, argon2id for a
human passphrase), so the old key alone can never use it; (b) fsyncs it (and its directory)
before cryptsetup starts; (c) shreds it as soon as the rotation is verified.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from byok.common.errors import VolumeError
from byok.common.sensitive import Sensitive

MAGIC = b"BYOK-SEALED-HEADER-1\n"
SUFFIX = ".sealed"


def _key(secret: Sensitive, salt: bytes, human: bool) -> bytes:
    if human:
        from argon2.low_level import Type, hash_secret_raw

        return hash_secret_raw(secret.reveal(), salt, time_cost=3, memory_cost=65536,
                               parallelism=1, hash_len=32, type=Type.ID)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt,
                info=b"byok header backup").derive(secret.reveal())


def seal(data: bytes, secret: Sensitive, *, human: bool, context: str) -> bytes:
    salt, nonce = os.urandom(16), os.urandom(12)
    box = AESGCM(_key(secret, salt, human)).encrypt(nonce, data, context.encode())
    return MAGIC + bytes([human]) + salt + nonce + box


def unseal(blob: bytes, secret: Sensitive, *, context: str) -> bytes:
    if not blob.startswith(MAGIC):
        raise VolumeError("not a sealed header backup")
    rest = blob[len(MAGIC):]
    human, salt, nonce, box = bool(rest[0]), rest[1:17], rest[17:29], rest[29:]
    from cryptography.exceptions import InvalidTag

    try:
        return AESGCM(_key(secret, salt, human)).decrypt(nonce, box, context.encode())
    except InvalidTag:
        raise VolumeError("the sealed header backup does not open with this key") from None


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durable(path: Path, data: bytes) -> None:
    """Write ``data`` to a new private file and make it (and its name) durable."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def shred(path: Path) -> None:
    """Overwrite a file with zeros, make that durable, then remove it (best effort on media
    that remap writes; the file's contents are sealed or unusable by then anyway)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    fd = os.open(path, os.O_WRONLY)
    try:
        pos = 0
        while pos < size:
            n = min(1 << 20, size - pos)
            os.pwrite(fd, bytes(n), pos)
            pos += n
        os.fsync(fd)
    finally:
        os.close(fd)
    path.unlink(missing_ok=True)
    fsync_dir(path.parent)
