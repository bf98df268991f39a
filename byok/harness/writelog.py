"""Power loss, replayed: read a dm-log-writes log and rebuild the disk as a power cut could
have left it (the approach of xfstests' replay-log and CrashMonkey).

The kernel's ``log-writes`` target logs each write *after it completed*, so the log's order is
the order writes became durable; a FLUSH entry says everything before it is on stable storage.
A power cut between two flushes keeps everything up to the first one and any subset of the
writes after it. :func:`crash_states` yields exactly those states: every flush point, and for
each flush interval a few seeded random subsets of its unflushed writes.

Log layout (drivers/md/dm-log-writes.c): block 0 is the super (magic, version, nr_entries,
sectorsize, little-endian); then each entry is one block holding its header (sector,
nr_sectors, flags, data_len; a MARK's name follows the header) and, for a write, nr_sectors
blocks of data. Sectors and lengths are in units of ``sectorsize``.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from byok.common.errors import ExperimentError

MAGIC = 0x6A736677736872
VERSION = 1
FLUSH, FUA, DISCARD, MARK = 1, 2, 4, 8
_SUPER = struct.Struct("<QQQI")
_ENTRY = struct.Struct("<QQQQ")


@dataclass(frozen=True)
class Entry:
    index: int
    sector: int       # in ``sectorsize`` units
    nr_sectors: int
    flags: int
    data_offset: int  # where this write's data starts in the log file (bytes)
    mark: str = ""

    @property
    def is_write(self) -> bool:
        return self.nr_sectors > 0 and not self.flags & (DISCARD | MARK)


@dataclass(frozen=True)
class WriteLog:
    sectorsize: int
    entries: tuple[Entry, ...]

    def flush_points(self) -> list[int]:
        """Indices i such that entries[:i] are all durable (just after each FLUSH or FUA)."""
        return [e.index + 1 for e in self.entries if e.flags & (FLUSH | FUA)]

    def mark(self, name: str) -> int:
        for e in self.entries:
            if e.flags & MARK and e.mark == name:
                return e.index
        raise ExperimentError(f"the write log has no mark {name!r}")


def parse(data: bytes) -> WriteLog:
    """The log in ``data``; :class:`ExperimentError` for anything that is not a complete log."""
    if len(data) < _SUPER.size:
        raise ExperimentError("write log too short for its super block")
    magic, version, nr, sectorsize = _SUPER.unpack_from(data, 0)
    if magic != MAGIC or version != VERSION:
        raise ExperimentError(f"not a dm-log-writes log (magic {magic:#x}, version {version})")
    if sectorsize < _ENTRY.size or sectorsize & (sectorsize - 1) or sectorsize > 1 << 16:
        raise ExperimentError(f"write log with an impossible sector size {sectorsize}")
    entries = []
    pos = sectorsize
    for i in range(nr):
        if pos + sectorsize > len(data):
            raise ExperimentError(f"write log truncated at entry {i} of {nr}")
        sector, nsec, flags, dlen = _ENTRY.unpack_from(data, pos)
        mark = ""
        if flags & MARK:
            if dlen > sectorsize - _ENTRY.size:
                raise ExperimentError(f"write log entry {i}: mark longer than its block")
            mark = data[pos + _ENTRY.size: pos + _ENTRY.size + dlen].decode(errors="replace")
        pos += sectorsize
        entry = Entry(i, sector, nsec, flags, pos, mark)
        if entry.is_write:
            pos += nsec * sectorsize
            if pos > len(data):
                raise ExperimentError(f"write log truncated inside the data of entry {i}")
        entries.append(entry)
    return WriteLog(sectorsize, tuple(entries))


def apply(image: bytearray, log: WriteLog, data: bytes, entries: list[Entry]) -> None:
    """Apply ``entries`` (writes; discards zero their range) to ``image`` in the given order."""
    ss = log.sectorsize
    for e in entries:
        start, length = e.sector * ss, e.nr_sectors * ss
        if start + length > len(image):
            raise ExperimentError(f"write log entry {e.index} lies beyond the image")
        if e.flags & DISCARD:
            image[start:start + length] = bytes(length)
        elif e.is_write:
            image[start:start + length] = data[e.data_offset:e.data_offset + length]


@dataclass(frozen=True)
class CrashState:
    """A disk a power cut could leave: all writes before ``durable`` plus ``extra``."""

    durable: int
    extra: tuple[int, ...] = ()

    @property
    def label(self) -> str:
        return f"flush@{self.durable}" + (f"+{len(self.extra)}of-next" if self.extra else "")


def crash_states(log: WriteLog, *, start: int = 0, subsets: int = 3,
                 seed: int = 0) -> Iterator[CrashState]:
    """Every flush point at or after ``start`` (and ``start`` itself, and the end of the log),
    and for each interval between two such points ``subsets`` random non-empty subsets of its
    writes applied on top of the earlier point (a power cut reorders what was not flushed)."""
    rng = random.Random(seed)
    points = sorted({start, *(p for p in log.flush_points() if p >= start), len(log.entries)})
    for a, b in zip(points, [*points[1:], None], strict=False):
        yield CrashState(a)
        if b is None:
            continue
        writes = [e.index for e in log.entries[a:b] if e.is_write]
        for _ in range(subsets if len(writes) > 1 else 0):
            k = rng.randint(1, len(writes) - 1)
            yield CrashState(a, tuple(sorted(rng.sample(writes, k))))


def replay(base: bytes, log: WriteLog, data: bytes, state: CrashState) -> bytearray:
    """The disk of ``state``: ``base`` (the disk when logging began) plus the durable writes
    and the state's extra ones, in log order."""
    image = bytearray(base)
    chosen = [*log.entries[: state.durable],
              *(log.entries[i] for i in state.extra)]
    apply(image, log, data, chosen)
    return image


def read(path: Path) -> tuple[WriteLog, bytes]:
    data = path.read_bytes()
    return parse(data), data
