"""Offline recovery: a LUKS volume, backup or image file → its plaintext, with only a key.

No Keystone, no Barbican, no root, no device-mapper, no cryptsetup: the header is parsed by
:mod:`byok.luks.header`, keyslots are opened here (PBKDF2 via hashlib, argon2i/argon2id via
argon2-cffi, the keyslot area decrypted per 512-byte sector, LUKS's anti-forensic merge, the
volume key checked against the header digest), and the data is decrypted sector by sector by
:mod:`byok.luks.sectors`. The key material is whatever the user holds:

* ``--key-file``: the raw key bytes exactly as stored in Barbican (a symmetric secret); the LUKS
  passphrase is derived as os-brick does (lower-case hex);
* ``--passphrase-file``: a passphrase secret's text (a single trailing newline is tolerated).

**What is vouched for.** A keyslot is used only for the data segments its digest is bound to
(a keyslot whose digest decrypts no segment — e.g. one a crashed re-encryption left behind —
is never tried). A volume caught in the middle of a LUKS2 re-encryption is read as cryptsetup
itself would repair it (:mod:`byok.luks.reencstate`): each segment with its own key; the hotzone
from its resilience data — ``checksum``: every block's candidate plaintext is re-encrypted with
the old key and must hash to cryptsetup's stored checksum (old, new, or a torn mix of both
at 512-byte granularity); ``journal``: the journaled copy; ``datashift``: the moved source,
unless it was itself overwritten. The reencrypt digest must authenticate that metadata with the
volume keys. Where the bytes cannot be vouched for — resilience ``none`` interrupted, a hotzone
block no candidate explains, a segment whose key this passphrase does not open — recovery
refuses with :class:`~byok.common.errors.RecoveryRefused` (exit 15) naming the byte ranges and why,
and writes nothing. The key is verified and everything is planned before the output exists;
the output is sparse (never-written ciphertext and all-zero 64 KiB plaintext stay holes).
"""

from __future__ import annotations

import binascii
import functools
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from byok.common import sparse
from byok.common.errors import RecoveryError, RecoveryRefused, UsageError, WrongKey
from byok.common.sensitive import Sensitive
from byok.luks import header as luksheader
from byok.luks import reencstate
from byok.luks import sectors as xts
from byok.luks.header import Keyslot, LuksHeader, ReencryptSlot, Segment

CHUNK = 8 << 20
Progress = Callable[[int, int], None]
#: Granularity at which a torn hotzone block may mix old and new ciphertext (a disk sector).
TEAR_UNIT = 512


@dataclass(frozen=True)
class Unlocked:
    header: LuksHeader
    slot: int
    volume_key: Sensitive
    digest: int = 0


def passphrase_from_key_bytes(raw: bytes) -> Sensitive:
    """os-brick's rule for a symmetric secret: the hex of the key is the passphrase."""
    return Sensitive(binascii.hexlify(raw))


def _kdf(slot: Keyslot, passphrase: bytes) -> bytes:
    k = slot.kdf
    if k.type == "pbkdf2":
        return hashlib.pbkdf2_hmac(k.hash or "sha256", passphrase, k.salt, k.iterations or 1,
                                   dklen=slot.area_key_bytes)
    from argon2.low_level import Type, hash_secret_raw

    return hash_secret_raw(
        passphrase, k.salt, time_cost=k.time or 1, memory_cost=k.memory_kib or 1024,
        parallelism=k.cpus or 1, hash_len=slot.area_key_bytes,
        type=Type.ID if k.type == "argon2id" else Type.I, version=19,
    )


@functools.lru_cache(maxsize=16)
def _block_hashers(hash_name: str, length: int) -> tuple[Any, ...]:
    """One hash object per diffuse block, already fed its 4-byte block index (copied per use:
    building them anew for each of 4000 stripes dominated an unlock)."""
    ds = hashlib.new(hash_name).digest_size
    return tuple(hashlib.new(hash_name, i.to_bytes(4, "big")) for i in range(-(-length // ds)))


def _diffuse(buf: bytes, hash_name: str) -> bytes:
    out = bytearray()
    pos = 0
    for h0 in _block_hashers(hash_name, len(buf)):
        h = h0.copy()
        end = min(pos + h.digest_size, len(buf))
        h.update(buf[pos:end])
        out += h.digest()[: end - pos]
        pos = end
    return bytes(out)


def af_merge(material: bytes, key_bytes: int, stripes: int, hash_name: str) -> bytes:
    """LUKS anti-forensic merge of ``stripes`` stripes into one ``key_bytes`` key."""
    d = 0
    for i in range(stripes - 1):
        s = int.from_bytes(material[i * key_bytes : (i + 1) * key_bytes], "big")
        d = int.from_bytes(_diffuse((d ^ s).to_bytes(key_bytes, "big"), hash_name), "big")
    last = int.from_bytes(material[(stripes - 1) * key_bytes : stripes * key_bytes], "big")
    return (d ^ last).to_bytes(key_bytes, "big")


def _digest_matches(d: luksheader.Digest, candidate: bytes) -> bool:
    got = hashlib.pbkdf2_hmac(d.hash, candidate, d.salt, d.iterations, dklen=len(d.digest))
    return got == d.digest


def unlock_digests(header: LuksHeader, header_file: Path, passphrase: Sensitive,
                   wanted: set[int]) -> dict[int, Unlocked]:
    """The volume key of every ``wanted`` digest this passphrase opens, each from a keyslot
    bound to that digest and checked against it. Keyslots of other digests are not tried."""
    found: dict[int, Unlocked] = {}
    by_digest = {d.id: d for d in header.digests}
    # Priority order as cryptsetup (high, normal), then "ignore" (0) last: cryptsetup opens
    # those only when named, but recovery must work with whatever slot the key has.
    order = sorted(header.keyslots, key=lambda k: (k.priority == 0, -k.priority, k.slot))
    with open(header_file, "rb") as f:
        for slot in order:
            d = reencstate.digest_of_keyslot(header, slot.slot)
            if d is None or d.id not in wanted or d.id in found:
                continue
            f.seek(slot.area_offset)
            area = f.read(slot.key_bytes * slot.af_stripes)
            area += bytes(-len(area) % 512)
            kdf_key = _kdf(slot, passphrase.reveal())
            material = xts.SectorCipher(slot.area_cipher, kdf_key, 512).decrypt(area, 0)
            candidate = af_merge(material, slot.key_bytes, slot.af_stripes, slot.af_hash)
            if _digest_matches(by_digest[d.id], candidate):
                found[d.id] = Unlocked(header, slot.slot, Sensitive(candidate), d.id)
                if wanted <= set(found):
                    break
    return found


def unlock(header: LuksHeader, header_file: Path, passphrase: Sensitive) -> Unlocked:
    """The key of the data: a keyslot whose digest is bound to a data segment opens with
    ``passphrase`` (the first such, by priority); WrongKey if none does."""
    if not header.keyslots:
        raise RecoveryError("the header has no active keyslot")
    data = {s.id for s in header.segments if not s.backup} or {0}
    wanted = {d.id for d in header.digests if data & set(d.segments)}
    got = unlock_digests(header, header_file, passphrase, wanted)
    if not got:
        raise WrongKey("no keyslot bound to the data of this header opens with the given key")
    return next(iter(got.values()))


# --- the plan: which bytes come from where ------------------------------------------------------


@dataclass
class Piece:
    """Plaintext bytes ``[start, start + length)`` and how to produce them."""

    start: int
    length: int
    how: str  # crypt | plain | bytes
    source: str = "data"  # data | header (the keyslots area: a journal)
    offset: int = 0  # where the piece's bytes start in ``source``
    cipher: xts.SectorCipher | None = None
    iv: int = 0  # IV (512-byte units) of the piece's first sector
    data: bytes = b""
    note: str = ""

    @property
    def sector_cipher(self) -> xts.SectorCipher:
        """The cipher of a ``crypt`` piece (the plan never makes one without)."""
        if self.cipher is None:
            raise RecoveryError(f"internal: encrypted piece at {self.start} has no cipher")
        return self.cipher


@dataclass
class Plan:
    header: LuksHeader
    state: reencstate.State
    size: int
    pieces: list[Piece] = field(default_factory=list)
    refused: list[tuple[int, int, str]] = field(default_factory=list)
    keys: dict[int, Unlocked] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def slot(self) -> ReencryptSlot:
        """The reencrypt keyslot of a header caught re-encrypting (a hotzone is planned)."""
        if self.state.slot is None:
            raise RecoveryRefused("the header marks a hotzone but has no reencrypt keyslot "
                                  "(inconsistent metadata); nothing was written")
        return self.state.slot

    def refuse(self, start: int, end: int, why: str) -> None:
        if self.refused and self.refused[-1][1] == start and self.refused[-1][2] == why:
            self.refused[-1] = (self.refused[-1][0], end, why)
        else:
            self.refused.append((start, end, why))

    def add(self, piece: Piece) -> None:
        last = self.pieces[-1] if self.pieces else None
        if (last is not None and piece.how != "bytes" and last.how == piece.how
                and last.source == piece.source and last.cipher is piece.cipher
                and last.start + last.length == piece.start
                and last.offset + last.length == piece.offset
                and last.iv + last.length // 512 == piece.iv and last.note == piece.note):
            last.length += piece.length
        else:
            self.pieces.append(piece)


def _cipher_for(seg: Segment, key: Unlocked | None) -> xts.SectorCipher | None:
    if seg.type != "crypt" or key is None:
        return None
    return xts.SectorCipher(seg.cipher, key.volume_key.reveal(), seg.sector_size)


def _pread(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(length)
    return data + bytes(length - len(data))


class _Side:
    """One side of a re-encryption (old or new): a cipher and IV base, or plaintext."""

    def __init__(self, seg: Segment, cipher: xts.SectorCipher | None, iv: int) -> None:
        self.plain = seg.type == "linear"
        self.cipher = cipher
        self.iv = iv  # IV of the hotzone's first byte
        self.sector = seg.sector_size if not self.plain else 512

    @property
    def usable(self) -> bool:
        return self.plain or self.cipher is not None

    def _sector_cipher(self) -> xts.SectorCipher:
        if self.cipher is None:
            raise RecoveryError("internal: an encrypted side without its volume key")
        return self.cipher

    def decrypt(self, data: bytes, rel: int) -> bytes:
        return data if self.plain else self._sector_cipher().decrypt(data, self.iv + rel // 512)

    def encrypt(self, data: bytes, rel: int) -> bytes:
        return data if self.plain else self._sector_cipher().encrypt(data, self.iv + rel // 512)

    def piece(self, start: int, length: int, offset: int, rel: int, note: str,
              source: str = "data") -> Piece:
        if self.plain:
            return Piece(start, length, "plain", source, offset, note=note)
        return Piece(start, length, "crypt", source, offset, self.cipher, self.iv + rel // 512,
                     note=note)


def _torn_candidates(cur: bytes, old_ct_of_new: bytes, units: int
                     ) -> Iterator[tuple[int, bytes]]:
    """Ways a torn write can leave a block: each TEAR_UNIT either new (rewritten) or old.
    All 2^units mixes for small blocks, else the write-order-consistent prefix splits."""
    u = len(cur) // units
    if units <= 12:
        for mask in range(1, (1 << units) - 1):
            yield mask, b"".join(old_ct_of_new[i * u:(i + 1) * u] if mask >> i & 1
                                 else cur[i * u:(i + 1) * u] for i in range(units))
    else:
        for k in range(1, units):
            yield (1 << k) - 1, old_ct_of_new[: k * u] + cur[k * u:]


def _hot_checksum(plan: Plan, ext: reencstate.Extent, image: Path, hdr_file: Path,
                  old: _Side, new: _Side) -> None:
    slot = plan.slot
    if slot.hash is None:
        plan.refuse(ext.start, ext.start + ext.length,
                    "checksum resilience without a hash name (inconsistent metadata)")
        return
    hname: str = slot.hash
    block = slot.hash_block or 4096
    hot = ext.segment
    count = ext.length // block
    hsize = hashlib.new(hname).digest_size
    if ext.length % block or count * hsize > slot.area_size:
        plan.refuse(ext.start, ext.start + ext.length,
                    "the hotzone does not fit its checksum area (inconsistent metadata)")
        return
    sums = _pread(hdr_file, slot.area_offset, count * hsize)
    stats = {"old": 0, "new": 0, "torn": 0, "unexplained": 0}
    step = 256 * block
    for base in range(0, ext.length, step):
        n = min(step, ext.length - base)
        cur_all = _pread(image, hot.offset + base, n)
        old_plain = old.decrypt(cur_all, base)
        new_plain = new.decrypt(cur_all, base)
        for b in range(0, n, block):
            rel = base + b
            want = sums[(rel // block) * hsize:(rel // block + 1) * hsize]
            cur = cur_all[b:b + block]
            start = ext.start + rel
            if hashlib.new(hname, cur).digest() == want:
                stats["old"] += 1
                plan.add(old.piece(start, block, hot.offset + rel, rel, "hotzone: old"))
                continue
            p_new = new_plain[b:b + block]
            old_ct = old.encrypt(p_new, rel)
            if hashlib.new(hname, old_ct).digest() == want:
                stats["new"] += 1
                plan.add(new.piece(start, block, hot.offset + rel, rel, "hotzone: new"))
                continue
            units = block // TEAR_UNIT
            for mask, mix in _torn_candidates(cur, old_ct, units):
                if hashlib.new(hname, mix).digest() == want:
                    u = block // units
                    p_old = old_plain[b:b + block]
                    data = b"".join(p_new[i * u:(i + 1) * u] if mask >> i & 1
                                    else p_old[i * u:(i + 1) * u] for i in range(units))
                    stats["torn"] += 1
                    plan.add(Piece(start, block, "bytes", offset=hot.offset + rel,
                                   cipher=new.cipher, iv=new.iv + rel // 512, data=data,
                                   note="hotzone: torn write, old and new parts"))
                    break
            else:
                stats["unexplained"] += 1
                plan.refuse(start, start + block,
                            "hotzone block matches neither the old nor the new ciphertext "
                            "(nor a torn mix at 512-byte granularity) of cryptsetup's checksum")
    plan.notes["hotzone"] = {"resilience": "checksum", "block": block, **stats}


def _hot_journal(plan: Plan, ext: reencstate.Extent, image: Path, old: _Side,
                 new: _Side) -> None:
    slot = plan.slot
    hot = ext.segment
    if ext.length > slot.area_size:
        plan.refuse(ext.start, ext.start + ext.length,
                    "the hotzone is larger than its journal (inconsistent metadata)")
        return
    # The journal holds the hotzone's old ciphertext (cryptsetup's reencrypt_hotzone_protect
    # _final); its plaintext is what repair rewrites. Cross-check it against the device.
    stats = {"as_old": 0, "as_new": 0, "torn": 0}
    block = max(old.sector, new.sector, 4096)
    journal = _pread(plan.notes["header_file"], slot.area_offset, ext.length)
    cur_all = _pread(image, hot.offset, ext.length)
    plain = old.decrypt(journal, 0)
    new_ct = new.encrypt(plain, 0)
    for b in range(0, ext.length, block):
        cur = cur_all[b:b + block]
        if cur == journal[b:b + block]:
            stats["as_old"] += 1
        elif cur == new_ct[b:b + block]:
            stats["as_new"] += 1
        else:
            stats["torn"] += 1
    plan.add(old.piece(ext.start, ext.length, slot.area_offset, 0, "hotzone: journal",
                       source="header"))
    plan.notes["hotzone"] = {"resilience": "journal", "block": block, **stats}


def _hot_datashift(plan: Plan, ext: reencstate.Extent, image: Path, old: _Side,
                   new: _Side, rseg: int, rh_offset: int) -> None:
    st = plan.state
    slot = plan.slot
    hot = ext.segment
    shift = slot.shift_size or 0
    if rseg == 0 and st.moved is not None:
        src = st.moved.offset
        linear_before = st.previous is not None and st.previous.type == "linear"
        old = _Side(st.previous if st.previous is not None and linear_before else st.moved,
                    old.cipher, 0)
    elif slot.direction == "forward":
        src = st.data_offset + rh_offset + shift
    else:
        src = st.data_offset + rh_offset - shift
    block = max(old.sector, new.sector, 4096)
    tgt_lo, tgt_hi = hot.offset, hot.offset + ext.length
    src_raw = _pread(image, src, ext.length)
    tgt_raw = _pread(image, hot.offset, ext.length)
    plain = old.decrypt(src_raw, 0)
    new_ct = new.encrypt(plain, 0)
    stats = {"written": 0, "source_intact": 0, "source_overwritten": 0}
    status: dict[int, bool] = {}  # hotzone block -> its source bytes are still the original

    def touched(a: bytes, b: bytes) -> bool:
        return any(a[i:i + TEAR_UNIT] == b[i:i + TEAR_UNIT] for i in range(0, len(a), TEAR_UNIT))

    def intact(b: int) -> bool:
        """Outside the target range a source is intact by construction. Inside it, it was
        overwritten iff it holds (even partly) the new ciphertext of the block whose target
        it is — which can be computed only if that block's own source is intact."""
        if b not in status:
            lo = src + b
            k = lo - tgt_lo
            if lo + block <= tgt_lo or lo >= tgt_hi:
                status[b] = True
            elif k % block or k == b or not 0 <= k < ext.length:
                status[b] = False  # an overlap this layout never makes: cannot tell
            else:
                status[b] = intact(k) and not touched(src_raw[b:b + block], new_ct[k:k + block])
        return status[b]

    for b in range(0, ext.length, block):
        n = min(block, ext.length - b)
        start = ext.start + b
        if not intact(b):
            stats["source_overwritten"] += 1
            plan.refuse(start, start + n, "datashift hotzone: the moved source of these bytes "
                        "was itself overwritten by the interrupted write (cryptsetup's repair "
                        "re-reads it too)")
        elif tgt_raw[b:b + n] == new_ct[b:b + n]:
            stats["written"] += 1
            plan.add(new.piece(start, n, hot.offset + b, b, "hotzone: datashift, written"))
        else:
            stats["source_intact"] += 1
            plan.add(old.piece(start, n, src + b, b, "hotzone: datashift, from the source"))
    plan.notes["hotzone"] = {"resilience": "datashift", "block": block, **stats}


def plan(image: Path, *, passphrase: Sensitive, header: Path | None = None) -> Plan:
    """Everything recovery will read, from where, with which verified key — or WrongKey.
    Refused ranges are collected in ``plan.refused`` (the caller refuses before writing)."""
    hdr_file = header or image
    try:
        h = luksheader.read(str(hdr_file))
        device_size = image.stat().st_size
    except OSError as e:
        raise RecoveryError(f"cannot read {hdr_file}: {e}") from e
    st = reencstate.read(h)
    exts = reencstate.extents(st, device_size)
    p = Plan(h, st, sum(ext.length for ext in exts), notes={"header_file": hdr_file})

    need: set[int] = set()  # digests some data cannot be read without
    for ext in exts:
        if ext.segment.type == "crypt" and not ext.segment.hot:
            need |= {d.id for d in reencstate.digest_of_segment(h, ext.segment.id)}
    reenc = {d for d in (st.digest_old, st.digest_new) if d is not None}
    if any(ext.segment.hot for ext in exts):
        need |= reenc
    if need and not h.keyslots:
        raise RecoveryError("the header has no active keyslot")
    if need or reenc:
        p.keys = unlock_digests(h, hdr_file, passphrase, need | reenc)
    if need and not need & set(p.keys):
        raise WrongKey("no keyslot bound to the data of this header opens with the given key")
    verified = None
    if st.slot is not None:
        old_vk, new_vk = (p.keys[d].volume_key.reveal() if d in p.keys else None
                          for d in (st.digest_old, st.digest_new))
        missing = [d for d in (st.digest_old, st.digest_new) if d is not None and d not in p.keys]
        verified = None if missing else reencstate.verify_metadata(h, st, old_vk, new_vk)
    p.notes["metadata_verified"] = verified

    for ext in exts:
        seg, end = ext.segment, ext.start + ext.length
        if seg.hot:
            _plan_hot(p, ext, image, hdr_file, verified)
            continue
        if (st.status == reencstate.CLEAN and st.slot is not None
                and st.slot.resilience == "none"
                and not h.commit_in_flight and _is_old(st, h, seg)):
            # With 'none' cryptsetup rewrites data without recording progress; only a header
            # caught mid-write (nothing written after it) still describes the data exactly.
            p.refuse(ext.start, end, "re-encryption with resilience 'none' was interrupted: "
                     "cryptsetup records no progress then, so these bytes may already be in "
                     "the new key or still in the old one")
            continue
        if seg.type == "linear":
            p.add(Piece(ext.start, ext.length, "plain", "data", seg.offset,
                        note="plaintext segment"))
            continue
        ds = reencstate.digest_of_segment(h, seg.id)
        key = p.keys.get(ds[0].id) if len(ds) == 1 else None
        if key is None:
            p.refuse(ext.start, end, f"encrypted with the volume key of digest "
                     f"{ds[0].id if ds else '?'}, and no keyslot bound to it opens with this "
                     "key")
            continue
        p.add(Piece(ext.start, ext.length, "crypt", "data", seg.offset, _cipher_for(seg, key),
                    seg.iv_tweak, note=f"segment {seg.id}, digest {ds[0].id}"))
    return p


def _key_of(p: Plan, digest: int | None) -> Unlocked | None:
    return p.keys.get(digest) if digest is not None else None


def _is_old(st: reencstate.State, h: LuksHeader, seg: Segment) -> bool:
    """Does ``seg`` still describe not-yet-rewritten data (the old side)?"""
    if seg.type == "linear":
        return st.mode == "encrypt"
    ds = reencstate.digest_of_segment(h, seg.id)
    return bool(ds) and ds[0].id == st.digest_old and st.digest_old != st.digest_new


def _plan_hot(p: Plan, e: reencstate.Extent, image: Path, hdr_file: Path,
              verified: bool | None) -> None:
    st, end = p.state, e.start + e.length
    if verified is not True:
        why = ("the re-encryption metadata does not verify against the volume keys"
               if verified is False else
               "this key does not open both the old and the new volume key of the hotzone")
        p.refuse(e.start, end, f"hotzone of an interrupted re-encryption: {why}")
        return
    if st.previous is None or st.final is None:
        p.refuse(e.start, end, "hotzone of an interrupted re-encryption without its old and "
                 "new layout (backup segments) in the header")
        return
    rh_offset = e.segment.offset - st.data_offset
    rseg = st.data.index(e.segment)
    old_iv = st.previous.iv_tweak + rh_offset // 512
    new_iv = st.final.iv_tweak + rh_offset // 512
    old = _Side(st.previous, _cipher_for(st.previous, _key_of(p, st.digest_old)), old_iv)
    new = _Side(st.final, _cipher_for(st.final, _key_of(p, st.digest_new)), new_iv)
    res = p.slot.resilience
    moved_first = st.moved is not None and rh_offset == 0 and res.startswith("datashift-")
    if res == "checksum" or (moved_first and res == "datashift-checksum"):
        _hot_checksum(p, e, image, hdr_file, old, new)
    elif res == "journal" or (moved_first and res == "datashift-journal"):
        _hot_journal(p, e, image, old, new)
    elif res.startswith("datashift"):
        _hot_datashift(p, e, image, old, new, rseg, rh_offset)
    else:
        p.refuse(e.start, end, f"hotzone of an interrupted re-encryption with resilience "
                 f"{res!r}: nothing records which of its bytes were rewritten")


def read_plaintext(image: Path, passphrase: Sensitive, length: int, *, offset: int = 0,
                   header: Path | None = None) -> bytes:
    """``length`` plaintext bytes from ``offset`` (tests and checks; whole sectors read).
    RecoveryRefused if any of them cannot be vouched for."""
    p = plan(image, passphrase=passphrase, header=header)
    end = min(offset + length, p.size)
    bad = [(a, b, w) for a, b, w in p.refused if a < end and b > offset]
    if bad:
        raise RecoveryRefused.from_ranges(bad, state=p.state.describe())
    out = bytearray(max(0, end - offset))
    for pc in p.pieces:
        lo, hi = max(pc.start, offset), min(pc.start + pc.length, end)
        if lo >= hi:
            continue
        if pc.how == "bytes":
            chunk = pc.data[lo - pc.start:hi - pc.start]
        else:
            grain = pc.cipher.sector if pc.cipher else 512
            rel = (lo - pc.start) // grain * grain
            stop = min(pc.length, -(-(hi - pc.start) // grain) * grain)
            src = header if pc.source == "header" and header else image
            raw = _pread(src, pc.offset + rel, stop - rel)
            plain = (pc.sector_cipher.decrypt(raw, pc.iv + rel // 512) if pc.how == "crypt"
                     else raw)
            chunk = plain[lo - pc.start - rel:hi - pc.start - rel]
        out[lo - offset:hi - offset] = chunk
    return bytes(out)


# --- writing ---------------------------------------------------------------------------------


def recover(
    image: Path,
    out: Path | None,
    *,
    passphrase: Sensitive,
    header: Path | None = None,
    progress: Progress | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the plaintext of ``image`` to ``out``; returns a summary (keys, segments, bytes).

    ``out=None`` decrypts everything and writes nothing (``byok recover --check``): it proves
    the key opens the volume and measures the decryption path without a disk in the way.
    Raises WrongKey or RecoveryRefused before ``out`` is created.
    """
    p = plan(image, passphrase=passphrase, header=header)
    if p.refused:
        raise RecoveryRefused.from_ranges(p.refused, state=p.state.describe())
    if out is not None and out.exists() and not overwrite:
        raise RecoveryError(f"{out} exists; refusing to overwrite it (remove it or pass --force)")
    t0 = time.monotonic()
    hdr_file = header or image
    fi = os.open(image, os.O_RDONLY)
    fh = os.open(hdr_file, os.O_RDONLY) if header else fi
    tmp = out.with_name(out.name + ".partial") if out is not None else None
    written = 0
    try:
        fo = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600) if tmp else -1
        try:
            if fo >= 0:
                os.ftruncate(fo, p.size)
            jobs = _jobs(p, fi)
            written = _run_jobs({"data": fi, "header": fh}, fo, jobs, p.size, progress)
            if fo >= 0:
                os.fsync(fo)
        finally:
            if fo >= 0:
                os.close(fo)
        if tmp is not None and out is not None:
            os.replace(tmp, out)
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fi)
        if fh != fi:
            os.close(fh)
    return _summary(p, written, time.monotonic() - t0)


def _summary(p: Plan, written: int, seconds: float) -> dict[str, Any]:
    h = p.header
    seg0 = next((s for s in p.state.data if s.type == "crypt"), p.state.final or h.segment)
    first = next(iter(p.keys.values()), None)
    return {
        "luks_version": h.version,
        "slot": first.slot if first else None,
        "keys": {str(d): {"keyslot": u.slot} for d, u in sorted(p.keys.items())},
        "cipher": seg0.cipher,
        "sector_size": seg0.sector_size,
        "reencryption": p.state.describe(),
        "metadata_verified": p.notes.get("metadata_verified"),
        "hotzone": p.notes.get("hotzone"),
        "pieces": [{"start": x.start, "length": x.length, "from": x.how, "note": x.note}
                   for x in p.pieces[:64]],
        "plaintext_bytes": p.size,
        "written_bytes": written,
        "seconds": round(seconds, 3),
        "backend": xts.backend_name(),
    }


def _jobs(p: Plan, fi: int) -> list[tuple[Piece, int, int]]:
    """(piece, offset in piece, length) chunks; ciphertext holes of the image are skipped."""
    jobs = []
    size = os.fstat(fi).st_size
    extents = list(sparse.data_extents(fi, size))
    for pc in p.pieces:
        if pc.how == "bytes" or pc.source != "data":
            ranges = [(0, pc.length)]
        else:
            ranges = []
            for off, length in extents:
                lo = max(off, pc.offset) - pc.offset
                hi = min(off + length, pc.offset + pc.length) - pc.offset
                if lo < hi:
                    grain = pc.cipher.sector if pc.cipher else 512
                    lo -= lo % grain
                    ranges.append((lo, min(pc.length, hi + (-hi % grain))))
        for lo, hi in ranges:
            while lo < hi:
                n = min(CHUNK, hi - lo)
                jobs.append((pc, lo, n))
                lo += n
    return jobs


def _run_jobs(fds: dict[str, int], fo: int, jobs: list[tuple[Piece, int, int]],
              plain_size: int, progress: Progress | None) -> int:
    """Produce the chunks with one worker per CPU; each worker owns its buffers.

    The native loop releases the GIL, so the workers really run in parallel; reads and writes
    are positional (pread/pwrite), so chunks need no ordering. Returns bytes written.
    """
    import threading

    lock = threading.Lock()
    todo = iter(jobs)
    total = [0, 0]  # written, done
    errors: list[BaseException] = []

    def worker() -> None:
        inbuf = bytearray(CHUNK)
        outbuf = bytearray(CHUNK)
        while True:
            with lock:
                job = next(todo, None)
            if job is None or errors:
                return
            pc, rel, n = job
            try:
                pos = pc.start + rel
                if pc.how == "bytes":
                    out = memoryview(pc.data)[rel:rel + n]
                else:
                    view = memoryview(inbuf)[:n]
                    got = os.preadv(fds[pc.source], [view], pc.offset + rel)
                    if got < n:
                        view[got:] = bytes(n - got)
                    if pc.how == "crypt":
                        out = memoryview(outbuf)[:n]
                        pc.sector_cipher.decrypt_into(view, out, pc.iv + rel // 512)
                    else:
                        out = view
                keep = min(n, plain_size - pos)
                w = _write_nonzero(fo, out[:keep], pos) if fo >= 0 else 0
            except BaseException as e:  # re-raised in the caller
                errors.append(e)
                return
            with lock:
                total[0] += w
                total[1] += keep
                if progress:
                    progress(min(total[1], plain_size), plain_size)

    threads = [threading.Thread(target=worker) for _ in range(min(len(jobs), os.cpu_count() or 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return total[0]


HOLE_GRAIN = 64 << 10
_ZERO = bytes(HOLE_GRAIN)


def _write_nonzero(fd: int, data: memoryview, pos: int) -> int:
    """Write ``data`` at ``pos`` except all-zero 64 KiB blocks (left as holes); bytes written."""
    written = 0
    run_start = None
    for i in range(0, len(data), HOLE_GRAIN):
        block = data[i : i + HOLE_GRAIN]
        if block == _ZERO[: len(block)]:
            if run_start is not None:
                written += os.pwrite(fd, data[run_start:i], pos + run_start)
                run_start = None
        elif run_start is None:
            run_start = i
    if run_start is not None:
        written += os.pwrite(fd, data[run_start:], pos + run_start)
    return written


def read_passphrase(*, key_file: Path | None = None, passphrase_file: Path | None = None
                    ) -> list[Sensitive]:
    """Candidate passphrases from the user's files (a passphrase file may end in one newline)."""
    if key_file is not None:
        return [passphrase_from_key_bytes(key_file.read_bytes())]
    if passphrase_file is not None:
        raw = passphrase_file.read_bytes()
        out = [Sensitive(raw)]
        if raw.endswith(b"\n"):
            out.append(Sensitive(raw[:-1]))
        return out
    raise UsageError("give --key-file or --passphrase-file")


def recover_with_key(image: Path, out: Path | None, *, key_file: Path | None = None,
                     passphrase_file: Path | None = None, header: Path | None = None,
                     overwrite: bool = False,
                     progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """:func:`recover` with the key as the user holds it (a key file or a passphrase file),
    trying each passphrase that form can stand for.

    :raises WrongKey: none opens the volume.
    :raises RecoveryRefused: the bytes cannot be vouched for (nothing written).
    """
    last: WrongKey | None = None
    for pw in read_passphrase(key_file=key_file, passphrase_file=passphrase_file):
        try:
            return recover(image, out, passphrase=pw, header=header, progress=progress,
                           overwrite=overwrite)
        except WrongKey as e:
            last = e
    raise last or WrongKey(f"{image.name}: no keyslot opens with this key")
