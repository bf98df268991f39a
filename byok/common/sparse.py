"""Sparse files: copy without filling holes, find data extents, check blankness.

Volumes are sparse files; cloning, backing up and recovering them must not turn a mostly-empty
16 GiB volume into 16 GiB of written zeros.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

CHUNK = 1 << 20


def data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(offset, length) of every data region of an open file (holes skipped)."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:  # ENXIO: no data after pos
            return
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, min(end, size) - start
        pos = end


def copy_sparse(src: Path, dst: Path) -> int:
    """Copy ``src`` to a new file ``dst`` keeping holes; returns bytes of data copied."""
    copied = 0
    fi = os.open(src, os.O_RDONLY)
    try:
        size = os.fstat(fi).st_size
        fo = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fo, size)
            for off, length in data_extents(fi, size):
                done = 0
                while done < length:
                    n = os.copy_file_range(fi, fo, length - done, off + done, off + done)
                    if n == 0:
                        break
                    done += n
                copied += done
            os.fsync(fo)
        finally:
            os.close(fo)
    finally:
        os.close(fi)
    return copied


def is_blank(path: Path, chunk: int = CHUNK) -> bool:
    """True if every byte of ``path`` is zero (holes are not read)."""
    zero = bytes(chunk)
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size or os.lseek(fd, 0, os.SEEK_END)
        for off, length in data_extents(fd, size):
            pos = off
            while pos < off + length:
                data = os.pread(fd, min(chunk, off + length - pos), pos)
                if not data:
                    break
                if data != zero[: len(data)]:
                    return False
                pos += len(data)
        return True
    finally:
        os.close(fd)


def create(path: Path, size: int) -> None:
    """A new sparse file of ``size`` bytes (fails if it exists)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)
