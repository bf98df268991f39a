"""Parse LUKS1 and LUKS2 headers from bytes; nothing else (no cryptsetup, no keys).

Offline recovery needs the header without cryptsetup (and without root or dm), and the LUKS layer
needs LUKS1 parsed (``cryptsetup luksDump --dump-json-metadata`` is LUKS2-only). Layouts follow
the LUKS1 on-disk format spec (592-byte big-endian header, 8 keyslots) and the LUKS2 spec
(4096-byte binary header + JSON area, SHA-256 header checksum, primary and secondary copies).
Every malformed input raises :class:`~byok.common.errors.HeaderCorrupt` or
:class:`~byok.common.errors.NotLuks` — a hypothesis property test feeds random and bit-flipped
headers to hold it to that.

LUKS2 is read whole, because offline recovery of an interrupted re-encryption depends on all of
it: every segment (``crypt`` or ``linear``, with its flags ``in-reencryption``,
``backup-previous``, ``backup-final``, ``backup-moved-segment``), which digest each segment and
each keyslot is bound to, the ``online-reencrypt-v2``/``-v3`` requirement and the ``reencrypt``
keyslot (mode, direction, resilience area). :mod:`byok.luks.reencstate` interprets them.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field, replace
from typing import Any

from byok.common.errors import HeaderCorrupt, NotLuks

MAGIC1 = b"LUKS\xba\xbe"
MAGIC2_SECONDARY = b"SKUL\xba\xbe"
LUKS1_HEADER_SIZE = 592
LUKS1_SLOT_ACTIVE = 0x00AC71F3
LUKS1_SLOT_INACTIVE = 0x0000DEAD
LUKS2_BIN_SIZE = 4096
#: Where a LUKS2 secondary header may start (the spec's fixed list of header-area sizes).
LUKS2_SECONDARY_OFFSETS = tuple(0x4000 << i for i in range(9))  # 16 KiB .. 4 MiB
#: How many bytes to read to be sure to have both LUKS2 headers (4 MiB + max JSON).
READ_SIZE = 0x400000 * 2


@dataclass(frozen=True)
class Kdf:
    type: str  # pbkdf2, argon2i, argon2id
    salt: bytes
    hash: str | None = None  # pbkdf2
    iterations: int | None = None  # pbkdf2
    time: int | None = None  # argon2
    memory_kib: int | None = None  # argon2
    cpus: int | None = None  # argon2


@dataclass(frozen=True)
class Keyslot:
    slot: int
    kdf: Kdf
    key_bytes: int  # size of the (volume) key this slot unlocks
    area_offset: int  # bytes from the start of the header device
    area_size: int
    area_cipher: str  # e.g. aes-xts-plain64
    area_key_bytes: int
    af_stripes: int
    af_hash: str
    priority: int = 1


@dataclass(frozen=True)
class Digest:
    type: str  # pbkdf2
    hash: str
    iterations: int
    salt: bytes
    digest: bytes
    keyslots: tuple[int, ...] = ()
    segments: tuple[int, ...] = ()  # LUKS2: the data segments this key decrypts
    id: int = 0


@dataclass(frozen=True)
class Segment:
    offset: int  # bytes, where the segment starts on the data device
    size: int | None  # bytes, None = "dynamic" (up to the end of the device)
    cipher: str  # aes-xts-plain64; "" for a linear (plaintext) segment
    sector_size: int
    iv_tweak: int = 0
    id: int = 0
    type: str = "crypt"  # crypt | linear
    flags: tuple[str, ...] = ()

    @property
    def backup(self) -> bool:
        """A re-encryption's description of the old/new/moved layout, not a data segment."""
        return any(f.startswith("backup-") for f in self.flags)

    @property
    def hot(self) -> bool:
        """The hotzone an interrupted re-encryption was rewriting (cryptsetup's crash state)."""
        return "in-reencryption" in self.flags


@dataclass(frozen=True)
class ReencryptSlot:
    """LUKS2's ``reencrypt`` keyslot: no key, only how the re-encryption protects its hotzone."""

    slot: int
    mode: str  # reencrypt | encrypt | decrypt
    direction: str  # forward | backward
    resilience: str  # checksum | journal | datashift | none | datashift-checksum | ...
    area_offset: int
    area_size: int
    hash: str | None = None  # checksum
    hash_block: int | None = None  # checksum: bytes covered by one stored hash
    shift_size: int | None = None  # datashift


@dataclass(frozen=True)
class LuksHeader:
    version: int
    uuid: str
    label: str
    keyslots: tuple[Keyslot, ...]
    digests: tuple[Digest, ...]
    segment: Segment
    key_bytes: int
    header_size: int  # bytes of metadata before the data (LUKS2 hdr_size x2 + keyslots area)
    seqid: int = 0
    used_secondary: bool = False
    json: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    segments: tuple[Segment, ...] = ()  # all of them, backup segments included, by id
    requirements: tuple[str, ...] = ()  # LUKS2 config.requirements.mandatory
    reencrypt: ReencryptSlot | None = None
    hdr_size: int = 0  # LUKS2: bytes of one header copy (binary header + JSON area)
    #: LUKS2: seqid of the other header copy if it is valid (None: absent or damaged)
    other_seqid: int | None = None
    #: LUKS2: the seqid field of the other copy when that copy fails its checksum
    other_torn_seqid: int | None = None

    @property
    def commit_in_flight(self) -> bool:
        """The process stopped inside this very header write, after nothing else: cryptsetup
        writes the primary copy, then the secondary (its binary header first, with the new
        seqid), and starts nothing else before both are written. So: the primary was read, and
        the secondary is either valid and older, or torn with this commit's seqid."""
        if self.version != 2 or self.used_secondary:
            return False
        if self.other_seqid is not None:
            return self.other_seqid < self.seqid
        return self.other_torn_seqid == self.seqid

    @property
    def cipher(self) -> str:
        return self.segment.cipher

    @property
    def active_slots(self) -> list[int]:
        return [k.slot for k in self.keyslots]


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("ascii", errors="strict")


def detect(data: bytes) -> int | None:
    """LUKS version (1 or 2) from the first bytes, or None if there is no LUKS magic."""
    if len(data) >= 8 and data[:6] == MAGIC1:
        version = struct.unpack(">H", data[6:8])[0]
        return version if version in (1, 2) else None
    return None


def parse(data: bytes) -> LuksHeader:
    """Parse the header at the start of ``data`` (read :data:`READ_SIZE` bytes for LUKS2)."""
    version = detect(data)
    if version == 1:
        return parse_luks1(data)
    if version == 2 or (len(data) > 8 and data[:6] == MAGIC1):
        return parse_luks2(data)
    # Primary LUKS2 header destroyed but a secondary copy may survive.
    for off in LUKS2_SECONDARY_OFFSETS:
        if data[off : off + 6] == MAGIC2_SECONDARY:
            return parse_luks2(data)
    raise NotLuks("no LUKS header (no LUKS magic at the start of the device)")


# --- LUKS1 -----------------------------------------------------------------------------------


def parse_luks1(data: bytes) -> LuksHeader:
    if len(data) < LUKS1_HEADER_SIZE:
        raise HeaderCorrupt(f"LUKS1 header truncated ({len(data)} of 592 bytes)")
    try:
        (magic, version, cipher_name, cipher_mode, hash_spec, payload_offset, key_bytes,
         mk_digest, mk_salt, mk_iter, uuid) = struct.unpack(
            ">6sH32s32s32sII20s32sI40s", data[:208]
        )
        cipher = f"{_cstr(cipher_name)}-{_cstr(cipher_mode)}"
        hash_name = _cstr(hash_spec).lower()
        uuid_s = _cstr(uuid)
    except (struct.error, UnicodeDecodeError) as e:
        raise HeaderCorrupt(f"LUKS1 header is not parseable: {e}") from None
    if magic != MAGIC1 or version != 1:
        raise NotLuks("not a LUKS1 header")
    if key_bytes not in (16, 24, 32, 48, 64) or not hash_name or mk_iter == 0:
        raise HeaderCorrupt(
            f"LUKS1 header fields out of range (key bytes {key_bytes}, hash {hash_name!r})"
        )
    slots = []
    for i in range(8):
        active, iters, salt, km_off, stripes = struct.unpack(
            ">II32sII", data[208 + 48 * i : 208 + 48 * (i + 1)]
        )
        if active == LUKS1_SLOT_INACTIVE:
            continue
        if active != LUKS1_SLOT_ACTIVE:
            raise HeaderCorrupt(f"LUKS1 keyslot {i} has an invalid state word {active:#x}")
        if iters == 0 or stripes == 0 or stripes > 100_000 or km_off == 0:
            raise HeaderCorrupt(f"LUKS1 keyslot {i} fields out of range")
        area = key_bytes * stripes
        slots.append(
            Keyslot(
                slot=i,
                kdf=Kdf("pbkdf2", salt, hash=hash_name, iterations=iters),
                key_bytes=key_bytes,
                area_offset=km_off * 512,
                area_size=(area + 511) // 512 * 512,
                area_cipher=cipher,
                area_key_bytes=key_bytes,
                af_stripes=stripes,
                af_hash=hash_name,
            )
        )
    if payload_offset == 0:
        raise HeaderCorrupt("LUKS1 payload offset is zero")
    digest = Digest("pbkdf2", hash_name, mk_iter, mk_salt, mk_digest,
                    tuple(k.slot for k in slots), segments=(0,))
    segment = Segment(payload_offset * 512, None, cipher, 512)
    return LuksHeader(
        version=1,
        uuid=uuid_s,
        label="",
        keyslots=tuple(slots),
        digests=(digest,),
        segment=segment,
        key_bytes=key_bytes,
        header_size=payload_offset * 512,
        segments=(segment,),
    )


# --- LUKS2 -----------------------------------------------------------------------------------

_BIN2 = struct.Struct(">6sHQQ48s32s64s40s48sQ184s64s")


def _luks2_binary(data: bytes, off: int) -> tuple[dict[str, Any], bytes]:
    """(fields, raw header area) of the LUKS2 binary header at ``off``; checksum verified."""
    if len(data) < off + LUKS2_BIN_SIZE:
        raise HeaderCorrupt(f"LUKS2 header at {off:#x} truncated")
    (magic, version, hdr_size, seqid, label, csum_alg, _salt, uuid, subsystem, hdr_offset,
     _pad, csum) = _BIN2.unpack_from(data, off)
    want_magic = MAGIC1 if off == 0 else MAGIC2_SECONDARY
    if magic != want_magic or version != 2:
        raise HeaderCorrupt(f"no LUKS2 header at {off:#x}")
    if hdr_size not in LUKS2_SECONDARY_OFFSETS or hdr_offset != off:
        raise HeaderCorrupt(f"LUKS2 header at {off:#x} has inconsistent size/offset")
    if len(data) < off + hdr_size:
        raise HeaderCorrupt(f"LUKS2 header area at {off:#x} truncated")
    try:
        alg = _cstr(csum_alg)
    except UnicodeDecodeError:
        raise HeaderCorrupt("LUKS2 checksum algorithm is not text") from None
    if alg != "sha256":
        raise HeaderCorrupt(f"unsupported LUKS2 checksum algorithm {alg!r}")
    area = bytearray(data[off : off + hdr_size])
    area[448:512] = b"\0" * 64
    if hashlib.sha256(area).digest() != csum[:32]:
        raise HeaderCorrupt(f"LUKS2 header checksum mismatch at {off:#x}")
    try:
        fields = {
            "hdr_size": hdr_size,
            "seqid": seqid,
            "label": _cstr(label),
            "uuid": _cstr(uuid),
            "subsystem": _cstr(subsystem),
        }
    except UnicodeDecodeError:
        raise HeaderCorrupt("LUKS2 header text fields are not ASCII") from None
    return fields, bytes(data[off + LUKS2_BIN_SIZE : off + hdr_size])


def parse_luks2(data: bytes) -> LuksHeader:
    """Parse the newest valid copy of a LUKS2 header (primary, else secondary)."""
    candidates = []
    errors = []
    torn_seqids: list[int] = []
    offsets = [0]
    try:
        if data[:6] == MAGIC1:
            primary_size = struct.unpack_from(">Q", data, 8)[0]
            if primary_size in LUKS2_SECONDARY_OFFSETS:
                offsets.append(primary_size)
    except struct.error:
        pass
    offsets += [o for o in LUKS2_SECONDARY_OFFSETS if o not in offsets]
    for off in offsets:
        if data[off : off + 6] not in (MAGIC1, MAGIC2_SECONDARY):
            continue
        try:
            fields, json_area = _luks2_binary(data, off)
            meta = json.loads(json_area.split(b"\0", 1)[0].decode("utf-8"))
            if not isinstance(meta, dict):
                raise HeaderCorrupt("LUKS2 JSON is not an object")
            candidates.append((fields["seqid"], off, fields, meta))
        except (HeaderCorrupt, ValueError, UnicodeDecodeError) as e:
            errors.append(f"{off:#x}: {e}")
            if len(data) >= off + 24:  # a copy caught mid-write still shows the seqid it gets
                torn_seqids.append(struct.unpack_from(">Q", data, off + 16)[0])
    if not candidates:
        raise HeaderCorrupt("no valid LUKS2 header copy: " + "; ".join(errors or ["none found"]))
    _seqid, off, fields, meta = max(candidates, key=lambda c: (c[0], -c[1]))
    others = [c[0] for c in candidates if c[1] != off]
    try:
        h = _luks2_from_json(fields, meta, used_secondary=off != 0)
        if others:
            return replace(h, other_seqid=max(others))
        return replace(h, other_torn_seqid=max(torn_seqids)) if torn_seqids else h
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise HeaderCorrupt(f"LUKS2 JSON metadata is malformed: {type(e).__name__}: {e}") from None


def _b64(s: str) -> bytes:
    import base64

    return base64.b64decode(s, validate=True)


def _uint(v: object, what: str) -> int:
    """A LUKS2 JSON number: a decimal string (u64 fields) or a JSON int; never negative."""
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        raise HeaderCorrupt(f"LUKS2 {what} is not a number: {v!r}")
    if isinstance(v, str) and not v.isdigit():
        raise HeaderCorrupt(f"LUKS2 {what} is not a decimal number: {v!r}")
    n = int(v)
    if n < 0 or n >= 1 << 64:
        raise HeaderCorrupt(f"LUKS2 {what} is out of range: {v!r}")
    return n


def _ids(values: object, what: str) -> tuple[int, ...]:
    if not isinstance(values, list):
        raise HeaderCorrupt(f"LUKS2 {what} is not a list")
    return tuple(_uint(x, what) for x in values)


def _segment(sid: str, s: dict[str, Any]) -> Segment:
    kind = s.get("type")
    if kind not in ("crypt", "linear"):
        raise HeaderCorrupt(f"LUKS2 segment {sid} has unknown type {kind!r}")
    flags = s.get("flags", [])
    if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
        raise HeaderCorrupt(f"LUKS2 segment {sid} has malformed flags")
    size = None if s["size"] == "dynamic" else _uint(s["size"], f"segment {sid} size")
    if kind == "crypt":
        sector = _uint(s.get("sector_size", 512), f"segment {sid} sector size")
        if sector not in (512, 1024, 2048, 4096):
            raise HeaderCorrupt(f"LUKS2 sector size {sector} is invalid")
        cipher = s["encryption"]
        if not isinstance(cipher, str) or not cipher:
            raise HeaderCorrupt(f"LUKS2 segment {sid} names no cipher")
        iv = _uint(s.get("iv_tweak", "0"), f"segment {sid} iv_tweak")
    else:
        sector, cipher, iv = 512, "", 0
    return Segment(offset=_uint(s["offset"], f"segment {sid} offset"), size=size, cipher=cipher,
                   sector_size=sector, iv_tweak=iv, id=_uint(sid, "segment id"), type=kind,
                   flags=tuple(flags))


def _reencrypt_slot(sid: str, k: dict[str, Any]) -> ReencryptSlot:
    area = k["area"]
    mode, direction, resilience = k.get("mode"), k.get("direction"), area.get("type")
    if mode not in ("reencrypt", "encrypt", "decrypt") or direction not in ("forward",
                                                                             "backward"):
        raise HeaderCorrupt(f"LUKS2 reencrypt keyslot {sid} has mode {mode!r}, "
                            f"direction {direction!r}")
    if not isinstance(resilience, str):
        raise HeaderCorrupt(f"LUKS2 reencrypt keyslot {sid} names no resilience type")
    block = area.get("sector_size")
    return ReencryptSlot(
        slot=_uint(sid, "keyslot id"), mode=mode, direction=direction, resilience=resilience,
        area_offset=_uint(area["offset"], "reencrypt area offset"),
        area_size=_uint(area["size"], "reencrypt area size"),
        hash=str(area["hash"]) if "hash" in area else None,
        hash_block=_uint(block, "checksum sector size") if block is not None else None,
        shift_size=_uint(area["shift_size"], "shift size") if "shift_size" in area else None,
    )


def _luks2_from_json(
    fields: dict[str, Any], meta: dict[str, Any], *, used_secondary: bool
) -> LuksHeader:
    segs = meta["segments"]
    if not isinstance(segs, dict) or "0" not in segs:
        raise HeaderCorrupt("LUKS2 has no segment 0")
    segments = tuple(sorted((_segment(k, v) for k, v in segs.items()), key=lambda x: x.id))
    slots = []
    reenc = None
    for sid, k in sorted(meta.get("keyslots", {}).items(), key=lambda kv: int(kv[0])):
        if k.get("type") == "reencrypt":
            if reenc is not None:
                raise HeaderCorrupt("LUKS2 has two reencrypt keyslots")
            reenc = _reencrypt_slot(sid, k)
            continue
        if k.get("type") != "luks2":
            continue
        kd = k["kdf"]
        kdf = Kdf(
            type=str(kd["type"]),
            salt=_b64(kd["salt"]),
            hash=kd.get("hash"),
            iterations=int(kd["iterations"]) if "iterations" in kd else None,
            time=int(kd["time"]) if "time" in kd else None,
            memory_kib=int(kd["memory"]) if "memory" in kd else None,
            cpus=int(kd["cpus"]) if "cpus" in kd else None,
        )
        if kdf.type not in ("pbkdf2", "argon2i", "argon2id"):
            raise HeaderCorrupt(f"keyslot {sid} uses unknown KDF {kdf.type!r}")
        area = k["area"]
        slots.append(
            Keyslot(
                slot=int(sid),
                kdf=kdf,
                key_bytes=int(k["key_size"]),
                area_offset=int(area["offset"]),
                area_size=int(area["size"]),
                area_cipher=str(area["encryption"]),
                area_key_bytes=int(area["key_size"]),
                af_stripes=int(k["af"]["stripes"]),
                af_hash=str(k["af"]["hash"]),
                priority=int(k.get("priority", 1)),
            )
        )
    digests = []
    for did, d in sorted(meta.get("digests", {}).items(), key=lambda kv: int(kv[0])):
        if d.get("type") != "pbkdf2":
            continue
        digests.append(
            Digest(
                type="pbkdf2",
                hash=str(d["hash"]),
                iterations=int(d["iterations"]),
                salt=_b64(d["salt"]),
                digest=_b64(d["digest"]),
                keyslots=_ids(d.get("keyslots", []), f"digest {did} keyslots"),
                segments=_ids(d.get("segments", []), f"digest {did} segments"),
                id=int(did),
            )
        )
    key_bytes = slots[0].key_bytes if slots else 0
    config = meta.get("config", {})
    reqs = config.get("requirements", {}).get("mandatory", [])
    if not isinstance(reqs, list) or not all(isinstance(r, str) for r in reqs):
        raise HeaderCorrupt("LUKS2 requirements are malformed")
    header_size = 2 * fields["hdr_size"] + int(config.get("keyslots_size", 0))
    return LuksHeader(
        version=2,
        uuid=fields["uuid"],
        label=fields["label"],
        keyslots=tuple(slots),
        digests=tuple(digests),
        segment=segments[0],
        key_bytes=key_bytes,
        header_size=header_size,
        seqid=fields["seqid"],
        used_secondary=used_secondary,
        json=meta,
        segments=segments,
        requirements=tuple(reqs),
        reencrypt=reenc,
        hdr_size=fields["hdr_size"],
    )


def read(path: str, *, offset: int = 0) -> LuksHeader:
    """Parse the header of a device or file (reads at most :data:`READ_SIZE` bytes)."""
    with open(path, "rb") as f:
        f.seek(offset)
        return parse(f.read(READ_SIZE))
