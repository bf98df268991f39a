"""One guest job: its disks, the job/result channels, and what came back.

The job document (steps, disks, key material) travels in an in-memory file (memfd) that the
guest sees as a read-only block device, and the result comes back in a second one: nothing
secret touches the disk or a command line, and every backend uses the same two channels.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from byok.common.sensitive import Sensitive

RESULT_SIZE = 8 << 20


@dataclass
class Disk:
    """A host file the guest sees as a block device; ``link`` is a /dev path created for it.

    ``native_luks``: attach the file through QEMU's own ``luks`` block driver with this
    passphrase (what Nova's libvirt driver does for LUKS1 volumes), so the guest sees the
    *plaintext*; only QEMU backends can.
    """

    path: Path
    name: str
    writable: bool = True
    link: str | None = None
    native_luks: Sensitive | None = None


@dataclass
class GuestRun:
    """What came back: the agent's result document, the console text, timings."""

    result: dict
    console: str
    returncode: int
    seconds: float
    steps: list[dict] = field(default_factory=list)
    session_id: int = 0  # the guest's process session: every helper process belongs to it
    backend: str = ""
    boot_seconds: float | None = None  # start to the guest's boot marker

    def step(self, name: str) -> dict:
        for s in self.steps:
            if s.get("name") == name:
                return s
        raise KeyError(name)


def channel(data: bytes = b"", size: int | None = None) -> int:
    """A memfd holding ``len(data)`` (8 bytes, big-endian) + data, padded to a 4 KiB multiple."""
    fd = os.memfd_create("byok-guest-channel")
    fill_channel(fd, data, size)
    return fd


def fill_channel(fd: int, data: bytes, size: int | None = None) -> None:
    """(Re)write a channel's content; its size is fixed before the guest starts."""
    payload = struct.pack(">Q", len(data)) + data
    total = size or (len(payload) + 4095) // 4096 * 4096
    os.ftruncate(fd, max(total, 4096))
    os.pwrite(fd, payload, 0)


def read_channel(fd: int) -> bytes:
    """The payload of a channel, or b"" if the guest never wrote a sane one."""
    head = os.pread(fd, 8, 0)
    if len(head) < 8:
        return b""
    (n,) = struct.unpack(">Q", head)
    if n == 0 or n > RESULT_SIZE - 8:
        return b""
    return os.pread(fd, n, 8)


def secret_blob(secret: Sensitive) -> int:
    """A memfd holding just ``secret`` (QEMU ``secret`` objects read raw files)."""
    fd = os.memfd_create("byok-guest-secret")
    os.write(fd, secret.reveal())
    return fd
