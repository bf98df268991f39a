"""Deterministic test data: the same (seed, size) gives the same bytes on the host and in the
guest, so a sha256 written through dm-crypt can be checked anywhere (recovery, qemu, dissect)."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator

CHUNK = 1 << 20


def pattern_chunks(seed: int, size: int, chunk: int = CHUNK) -> Iterator[bytes]:
    """``size`` pseudo-random bytes derived from ``seed``, in chunks (not for keys)."""
    rng = random.Random(seed)
    left = size
    while left > 0:
        n = min(chunk, left)
        yield rng.randbytes(n)
        left -= n


def pattern(seed: int, size: int) -> bytes:
    return b"".join(pattern_chunks(seed, size))


def pattern_sha256(seed: int, size: int) -> str:
    h = hashlib.sha256()
    for c in pattern_chunks(seed, size):
        h.update(c)
    return h.hexdigest()
