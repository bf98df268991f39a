"""A LUKS2 header's re-encryption state, read the way cryptsetup writes and reads it.

cryptsetup's LUKS2 re-encryption (``lib/luks2/luks2_reencrypt.c``) keeps its progress in the
header: a mandatory requirement ``online-reencrypt-v2`` (``-v3`` for decryption with a data
shift) marks the volume; a ``reencrypt`` keyslot (no key) holds the mode (reencrypt / encrypt /
decrypt), the direction and the hotzone resilience (``checksum``, ``journal``, ``datashift``,
``none``, ``datashift-checksum``, ``datashift-journal``) with its area; ``backup-previous`` and
``backup-final`` segments describe the old and new layout and are bound to the old and new key
digests; ``backup-moved-segment`` is the copy of the first segment an in-place encryption moved
away. The *data* segments cover the device in order; the one flagged ``in-reencryption`` is the
hotzone being rewritten when cryptsetup stopped (``LUKS2_reencrypt_status``: no hotzone =
``clean``, a hotzone = ``crash``). A reencrypt digest, keyed by the volume keys, authenticates
that metadata (``luks2_reencrypt_digest.c``); :func:`verification_data` rebuilds what it covers.

This module only interprets; :mod:`byok.luks.recovery` reads the bytes and
:mod:`byok.lifecycle.rotation` decides how to finish. Nothing here needs cryptsetup, a key or
device-mapper.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Any

from byok.common.errors import HeaderCorrupt
from byok.luks.header import Digest, LuksHeader, ReencryptSlot, Segment

NONE, CLEAN, CRASH = "none", "clean", "crash"


@dataclass(frozen=True)
class Extent:
    """Logical bytes ``[start, start + length)`` of the plaintext device, held by ``segment``."""

    start: int
    length: int
    segment: Segment

    @property
    def device_offset(self) -> int:
        return self.segment.offset


@dataclass(frozen=True)
class State:
    status: str  # none | clean | crash
    version: int | None  # 1 (legacy "online-reencrypt"), 2, 3
    slot: ReencryptSlot | None
    previous: Segment | None  # backup-previous: the old layout
    final: Segment | None  # backup-final: the new layout
    moved: Segment | None  # backup-moved-segment
    digest_old: int | None  # the digest bound to backup-previous (None: old is plaintext)
    digest_new: int | None  # the digest bound to backup-final (None: new is plaintext)
    data: tuple[Segment, ...]  # data segments, by id
    data_offset: int  # cryptsetup's LUKS2_get_data_offset: backup-final's offset if any

    @property
    def hot(self) -> Segment | None:
        return next((s for s in self.data if s.hot), None)

    @property
    def mode(self) -> str | None:
        return self.slot.mode if self.slot else None

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status}
        if self.slot is not None:
            out |= {"requirement_version": self.version, "mode": self.slot.mode,
                    "direction": self.slot.direction, "resilience": self.slot.resilience,
                    "old_digest": self.digest_old, "new_digest": self.digest_new}
        return out


def requirement_version(reqs: tuple[str, ...]) -> int | None:
    """The re-encryption requirement's version: ``online-reencrypt`` is 1, ``-vN`` is N."""
    for r in reqs:
        if r == "online-reencrypt":
            return 1
        if r.startswith("online-reencrypt-v") and r[len("online-reencrypt-v"):].isdigit():
            return int(r[len("online-reencrypt-v"):])
    return None


def digest_of_segment(h: LuksHeader, seg_id: int) -> list[Digest]:
    return [d for d in h.digests if seg_id in d.segments]


def digest_of_keyslot(h: LuksHeader, slot: int) -> Digest | None:
    return next((d for d in h.digests if slot in d.keyslots), None)


def _flagged(h: LuksHeader, flag: str) -> Segment | None:
    found = [s for s in h.segments if flag in s.flags]
    if len(found) > 1:
        raise HeaderCorrupt(f"LUKS2 header has {len(found)} segments flagged {flag}")
    return found[0] if found else None


def _digest_id(h: LuksHeader, seg: Segment | None) -> int | None:
    if seg is None or seg.type != "crypt":
        return None
    ds = digest_of_segment(h, seg.id)
    if len(ds) != 1:
        raise HeaderCorrupt(f"LUKS2 segment {seg.id} is bound to {len(ds)} digests, not 1")
    return ds[0].id


def read(h: LuksHeader) -> State:
    """What ``h`` says about re-encryption (HeaderCorrupt where it contradicts itself)."""
    data = tuple(s for s in h.segments if not s.backup)
    if not data:
        raise HeaderCorrupt("LUKS2 header has no data segment")
    hots = [s for s in data if s.hot]
    if len(hots) > 1:
        raise HeaderCorrupt("LUKS2 header has two segments in re-encryption")
    version = requirement_version(h.requirements) if h.version == 2 else None
    previous, final = _flagged(h, "backup-previous"), _flagged(h, "backup-final")
    moved = _flagged(h, "backup-moved-segment")
    if version is None:
        if h.reencrypt is not None or hots or previous or final:
            # cryptsetup treats a header like this as not in re-encryption; so do we, but the
            # leftovers are worth saying (they appear only after a crash mid-finalisation).
            pass
        return State(NONE, None, None, None, None, None, None, None, data,
                     min(s.offset for s in data))
    if h.reencrypt is None or previous is None or final is None:
        raise HeaderCorrupt("LUKS2 header requires re-encryption but lacks its reencrypt "
                            "keyslot or its backup segments")
    return State(CRASH if hots else CLEAN, version, h.reencrypt, previous, final, moved,
                 _digest_id(h, previous), _digest_id(h, final), data, final.offset)


def extents(state: State, device_size: int) -> list[Extent]:
    """The plaintext device as cryptsetup would map it: data segments in id order, each
    contiguous after the previous; a "dynamic" size runs to the end of the device."""
    out = []
    mapping = device_size - state.data_offset
    pos = 0
    for i, seg in enumerate(state.data):
        if seg.size is None:
            if i != len(state.data) - 1:
                raise HeaderCorrupt(f"LUKS2 segment {seg.id} is dynamic but not the last")
            length = mapping - pos
        else:
            length = seg.size
        if length < 0 or seg.offset + length > device_size:
            raise HeaderCorrupt(f"LUKS2 segment {seg.id} ({seg.offset}+{length}) lies beyond "
                                f"the {device_size}-byte device")
        if length:
            out.append(Extent(pos, length, seg))
        pos += length
    return out


# --- the reencrypt digest (luks2_reencrypt_digest.c) -----------------------------------------

def _u64(v: int | str) -> bytes:
    return struct.pack(">Q", int(v))


def _segment_bytes(seg: dict[str, Any]) -> bytes:
    kind = seg["type"]
    out: bytes = kind.encode()
    out += _u64(seg["offset"])
    out += b"dynamic" if seg["size"] == "dynamic" else _u64(seg["size"])
    if kind == "crypt":
        out += _u64(seg["iv_tweak"]) + seg["encryption"].encode()
        out += struct.pack(">I", int(seg["sector_size"]))
    return out


def _keyslot_bytes(k: dict[str, Any]) -> bytes:
    area = k["area"]
    t = area["type"]
    out: bytes = k["mode"].encode() + k["direction"].encode() + t.encode()
    out += _u64(area["offset"]) + _u64(area["size"])
    if t in ("checksum", "datashift-checksum"):
        out += area["hash"].encode() + struct.pack(">I", int(area["sector_size"]))
    if t in ("datashift", "datashift-journal", "datashift-checksum"):
        out += _u64(area["shift_size"])
    return out


def verification_data(h: LuksHeader, state: State, vk_old: bytes | None,
                      vk_new: bytes | None) -> bytes:
    """The bytes cryptsetup's reencrypt digest covers: version, the volume keys, the reencrypt
    keyslot's parameters and the backup segments (in that order, big-endian numbers)."""
    meta = h.json
    segs = meta["segments"]
    out = bytes([0x76, 0x30 + (state.version or 0)])
    if state.digest_old is not None:
        if vk_old is None:
            raise KeyError("old volume key")
        out += vk_old
    if state.digest_new is not None and state.digest_new != state.digest_old:
        if vk_new is None:
            raise KeyError("new volume key")
        out += vk_new
    if state.slot is None:
        raise KeyError("reencrypt keyslot")
    out += _keyslot_bytes(meta["keyslots"][str(state.slot.slot)])
    for seg in (state.previous, state.final, state.moved):
        if seg is not None:
            out += _segment_bytes(segs[str(seg.id)])
    return out


def verify_metadata(h: LuksHeader, state: State, vk_old: bytes | None,
                    vk_new: bytes | None) -> bool:
    """True if the reencrypt digest authenticates this metadata with these keys."""
    d = digest_of_keyslot(h, state.slot.slot) if state.slot else None
    if d is None:
        return False
    try:
        data = verification_data(h, state, vk_old, vk_new)
    except (KeyError, TypeError, ValueError):
        return False
    got = hashlib.pbkdf2_hmac(d.hash, data, d.salt, d.iterations, dklen=len(d.digest))
    return got == d.digest


def bound_keyslots(h: LuksHeader) -> set[int]:
    """Keyslots whose digest is bound to a data segment — the only ones that open the data."""
    data = {s.id for s in h.segments if not s.backup}
    return {k.slot for k in h.keyslots
            if (d := digest_of_keyslot(h, k.slot)) is not None and data & set(d.segments)}


__all__ = ["CLEAN", "CRASH", "NONE", "Extent", "State", "bound_keyslots", "digest_of_keyslot",
           "digest_of_segment", "extents", "read", "requirement_version", "verification_data",
           "verify_metadata"]
