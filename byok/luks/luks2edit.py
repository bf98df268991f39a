"""Finish a LUKS2 re-encryption's metadata that cryptsetup 2.6.1 cannot finish itself.

When cryptsetup is stopped after the last hotzone is committed — every data segment already
bound to the new key's digest — but before its final commit, its ``--resume-only`` restarts
at offset 0 and re-encrypts the finished data with the new key as if it were old (with the old
keyslot still present: exit 0, every sector destroyed), and once the old keyslot is gone both
resume and repair refuse (design/upstream/cryptsetup-reencrypt-resume.md). Nothing is left to
do to the data; only cryptsetup's teardown (``reencrypt_teardown_ok``) is missing: drop the
keyslots of the old digest, the backup segments, the reencrypt keyslot and its digest, the
``online-reencrypt`` requirement.

byok does exactly that, on a *copy*: ``cryptsetup luksHeaderBackup`` → the JSON of both header
copies rewritten here (seqid + 1, SHA-256 header checksums as the LUKS2 format defines them) →
``cryptsetup luksDump`` must accept the copy → ``cryptsetup luksHeaderRestore`` writes it. A
crash leaves the old header or the new one (cryptsetup writes the primary copy, then the
secondary); both describe the data correctly, and the next run redoes the step.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

from byok.common.errors import HeaderCorrupt, RotationError
from byok.luks import header as luksheader

_BIN = luksheader._BIN2


def _copies(blob: bytes) -> tuple[int, dict[str, Any]]:
    """(hdr_size, newest JSON) of a LUKS2 header backup, both copies valid or not."""
    h = luksheader.parse(blob)
    if h.version != 2:
        raise HeaderCorrupt("not a LUKS2 header")
    return h.hdr_size, h.json


def _binary(raw: bytes, off: int, seqid: int, json_area: bytes, hdr_size: int) -> bytes:
    (magic, _version, _size, _seq, label, csum_alg, salt, uuid, subsystem, _off, pad,
     _csum) = _BIN.unpack_from(raw, off)
    if magic not in (luksheader.MAGIC1, luksheader.MAGIC2_SECONDARY):
        # A damaged copy: take the other copy's fields, with this copy's magic.
        other = hdr_size if off == 0 else 0
        (_m, _version, _size, _seq, label, csum_alg, salt, uuid, subsystem, _off, pad,
         _csum) = _BIN.unpack_from(raw, other)
        magic = luksheader.MAGIC1 if off == 0 else luksheader.MAGIC2_SECONDARY
    head = _BIN.pack(magic, 2, hdr_size, seqid, label, csum_alg, salt, uuid, subsystem, off, pad,
                     bytes(64))
    head += bytes(luksheader.LUKS2_BIN_SIZE - len(head))  # the binary header is 4 KiB
    area = head + json_area
    csum = hashlib.sha256(area).digest() + bytes(32)
    return head[:448] + csum + head[512:] + json_area


def finalize_json(meta: dict[str, Any], final_digest: str) -> dict[str, Any]:
    """cryptsetup's teardown of a finished re-encryption, applied to its JSON metadata."""
    meta = copy.deepcopy(meta)
    segs = meta["segments"]
    data = {k: v for k, v in segs.items()
            if not any(f.startswith("backup-") for f in v.get("flags", []))}
    digest = meta["digests"][final_digest]
    if list(data) != ["0"] or "0" not in digest.get("segments", []):
        raise RotationError("the header is not a finished re-encryption (segment 0 is not the "
                            "whole device in the new key); byok does not finalise it")
    seg = dict(data["0"])
    seg.pop("flags", None)
    seg["size"] = "dynamic"
    meta["segments"] = {"0": seg}
    keep = [k for k, v in meta["keyslots"].items()
            if v.get("type") == "luks2" and k in digest.get("keyslots", [])]
    if not keep:
        raise RotationError("no keyslot holds the re-encrypted data's key")
    meta["keyslots"] = {k: meta["keyslots"][k] for k in keep}
    meta["digests"] = {final_digest: {**digest, "segments": ["0"], "keyslots": keep}}
    for tok in meta.get("tokens", {}).values():
        if isinstance(tok.get("keyslots"), list):
            tok["keyslots"] = [k for k in tok["keyslots"] if k in keep]
    config = meta.setdefault("config", {})
    reqs = config.get("requirements", {})
    mandatory = [r for r in reqs.get("mandatory", []) if not r.startswith("online-reencrypt")]
    if mandatory:
        reqs["mandatory"] = mandatory
    else:
        reqs.pop("mandatory", None)
    if not reqs:
        config.pop("requirements", None)
    return meta


def rewrite_backup(backup: Path, final_digest: str) -> dict[str, Any]:
    """Rewrite a header backup file in place: finalised JSON, seqid + 1, fresh checksums.
    Returns the new JSON. The keyslot areas in the file are not touched."""
    blob = bytearray(backup.read_bytes())
    hdr_size, meta = _copies(bytes(blob))
    new = finalize_json(meta, final_digest)
    text = json.dumps(new, separators=(",", ":")).encode()
    room = hdr_size - luksheader.LUKS2_BIN_SIZE
    if len(text) >= room:
        raise RotationError("the finalised LUKS2 metadata does not fit its JSON area")
    json_area = text + bytes(room - len(text))
    # Old keyslots and the reencrypt area (checksums or a journal of old ciphertext) go with
    # the metadata that named them.
    for k, v in meta["keyslots"].items():
        if k not in new["keyslots"]:
            off, size = int(v["area"]["offset"]), int(v["area"]["size"])
            blob[off:off + size] = bytes(min(size, max(0, len(blob) - off)))
    seqids = [struct.unpack_from(">Q", blob, off + 16)[0] for off in (0, hdr_size)]
    seqid = max(seqids) + 1
    for off in (0, hdr_size):
        blob[off:off + hdr_size] = _binary(bytes(blob), off, seqid, json_area, hdr_size)
    fd = os.open(backup, os.O_WRONLY)
    try:
        os.pwrite(fd, bytes(blob), 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    check = luksheader.parse(bytes(blob))
    if check.seqid != seqid or check.requirements or len(check.segments) != 1:
        raise RotationError("the rewritten header does not read back as finalised")
    return new


def wipe_unused_keyslot_area(path: Path) -> int:
    """Zero the LUKS2 keyslots area outside the current keyslots' areas (what removed
    keyslots and a finished re-encryption left there); bytes wiped. Header copies untouched."""
    h = luksheader.read(str(path))
    if h.version != 2:
        return 0
    start = 2 * h.hdr_size
    end = start + int(h.json.get("config", {}).get("keyslots_size", 0))
    used = sorted((k.area_offset, k.area_offset + k.area_size) for k in h.keyslots)
    if h.reencrypt is not None:
        used.append((h.reencrypt.area_offset, h.reencrypt.area_offset + h.reencrypt.area_size))
        used.sort()
    wiped = 0
    fd = os.open(path, os.O_WRONLY)
    try:
        pos = start
        for lo, hi in [*used, (end, end)]:
            while pos < min(lo, end):
                n = min(lo, end) - pos
                n = min(n, 1 << 20)
                os.pwrite(fd, bytes(n), pos)
                pos += n
                wiped += n
            pos = max(pos, hi)
        os.fsync(fd)
    finally:
        os.close(fd)
    return wiped
