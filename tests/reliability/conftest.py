"""Reliability and security suite: counts that the terminal summary prints at the end."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from byok.common.sensitive import Sensitive
from byok.luks import recovery

COUNTS: dict[str, int] = {}


def count(name: str, n: int = 1) -> None:
    COUNTS[name] = COUNTS.get(name, 0) + n


@pytest.fixture(scope="session")
def counts():
    return count


def plaintext_sha(path: Path, pw: Sensitive, nbytes: int = 1 << 20) -> str:
    """SHA-256 of the first ``nbytes`` of plaintext, decrypted offline (no dm)."""
    return hashlib.sha256(recovery.read_plaintext(path, pw, nbytes)).hexdigest()


def file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def descendants(pid: int) -> list[int]:
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


__all__ = ["COUNTS", "count", "descendants", "file_sha", "plaintext_sha"]
