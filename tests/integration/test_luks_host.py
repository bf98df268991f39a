"""LUKS operations on plain files on the host (no device-mapper): real cryptsetup (issue 5,
item 2), the PBKDF policies as they land in the header, and our header parser against
cryptsetup's own view."""

from __future__ import annotations

import os

import pytest

from byok.common.errors import HeaderCorrupt, NotLuks, VolumeError, WrongKey
from byok.common.sensitive import Sensitive
from byok.luks import cryptsetup as luks
from byok.luks import header as luksheader


def key() -> Sensitive:
    return Sensitive(os.urandom(64).hex())


@pytest.fixture
def vol(tmp_path):
    def make(name="v", size=32 << 20):
        p = tmp_path / f"{name}.img"
        with open(p, "wb") as f:
            f.truncate(size)
        return p

    return make


@pytest.mark.parametrize("luks_type", ["luks1", "luks2"])
def test_keyslot_lifecycle_on_a_file(vol, luks_type):
    p = vol()
    k1, k2, k3 = key(), key(), key()
    info = luks.format(p, k1, luks_type=luks_type)
    vk0 = luks.volume_key(p, k1)
    assert len(vk0) == 64
    assert info.version == int(luks_type[-1]) and info.active_slots == [0]
    assert info.cipher == "aes-xts-plain64" and info.key_bits == 512
    assert luks.test_key(p, k1) == 0
    with pytest.raises(WrongKey):
        luks.test_key(p, k2)
    assert luks.add_key(p, k1, k2) == 1
    assert luks.add_key(p, k2, k3, slot=5) == 5
    assert luks.dump(p).active_slots == [0, 1, 5]
    luks.remove_key(p, k1)
    assert luks.dump(p).active_slots == [1, 5]
    with pytest.raises(WrongKey):
        luks.test_key(p, k1)
    luks.kill_slot(p, 5, authorising=k2)
    assert luks.dump(p).active_slots == [1]
    k4 = key()
    luks.change_key(p, k2, k4)
    assert luks.test_key(p, k4) >= 0
    with pytest.raises(WrongKey):
        luks.test_key(p, k2)
    assert luks.volume_key(p, k4) == vk0  # the volume key never changed through all of this


@pytest.mark.parametrize("luks_type", ["luks1", "luks2"])
def test_format_refuses_an_existing_luks_volume_and_keeps_its_key(vol, luks_type):
    p = vol()
    k = key()
    luks.format(p, k, luks_type=luks_type)
    vk = luks.volume_key(p, k)
    with pytest.raises(VolumeError, match="already carries a LUKS header"):
        luks.format(p, key(), luks_type=luks_type)
    assert luks.volume_key(p, k) == vk


@pytest.mark.parametrize("luks_type", ["luks1", "luks2"])
def test_header_backup_restores_a_zeroed_header(vol, tmp_path, luks_type):
    p = vol()
    k = key()
    luks.format(p, k, luks_type=luks_type)
    backup = luks.header_backup(p, tmp_path / "hdr.bak")
    with pytest.raises(VolumeError, match="already exists"):
        luks.header_backup(p, backup)
    with open(p, "r+b") as f:
        f.write(b"\0" * (64 << 10))  # primary and secondary LUKS2 headers, LUKS1 header
    with pytest.raises((NotLuks, HeaderCorrupt)):
        luks.test_key(p, k)
    luks.header_restore(p, backup)
    assert luks.test_key(p, k) == 0


def test_not_luks_and_damaged_luks_are_told_apart(vol):
    blank = vol("blank")
    with pytest.raises(NotLuks):
        luks.test_key(blank, key())
    p = vol("damaged")
    k = key()
    luks.format(p, k, luks_type="luks2")
    with open(p, "r+b") as f:
        f.seek(4096 + 100)
        f.write(b"garbage!")  # JSON area of the primary header: checksum fails
        f.seek((16 << 10) + 4096 + 100)
        f.write(b"garbage!")  # and of the secondary
    with pytest.raises(HeaderCorrupt):
        luks.test_key(p, k)


def test_pbkdf_policies_land_in_the_header(vol):
    p = vol("m")
    luks.format(p, key(), policy="machine-key")
    slot = luks.dump(p).keyslots[0]
    assert slot["kdf"] == "pbkdf2" and slot["iterations"] == 1000
    q = vol("h")
    luks.format(q, Sensitive("correct horse battery staple"), policy="passphrase")
    slot = luks.dump(q).keyslots[0]
    assert slot["kdf"] == "argon2id" and slot["memory_kib"] == 131072 and slot["time"] == 4
    assert luks.policy_for("symmetric").name == "machine-key"
    assert luks.policy_for("passphrase").name == "passphrase"


def _luks1_dump_text(p) -> dict:
    """``cryptsetup luksDump`` of a LUKS1 header, parsed from its text (cryptsetup's reader)."""
    import re
    import subprocess

    text = subprocess.run(["cryptsetup", "luksDump", str(p)], capture_output=True, text=True,
                          check=True).stdout
    field = {m.group(1).strip(): m.group(2).strip()
             for m in re.finditer(r"^([A-Za-z ]+):\s*(.*)$", text, re.M)}

    def hexblock(label: str) -> bytes:
        m = re.search(rf"^{label}:\s*((?:[0-9a-f]{{2}}\s+)+)", text, re.M)
        return bytes.fromhex(re.sub(r"\s+", "", m.group(1)))

    slots = {}
    for m in re.finditer(r"Key Slot (\d): ENABLED\n(.*?)(?=Key Slot|\Z)", text, re.S):
        body = m.group(2)
        salt = re.search(r"Salt:\s*((?:[0-9a-f]{2}\s+)+)", body).group(1)
        slots[int(m.group(1))] = {
            "iterations": int(re.search(r"Iterations:\s*(\d+)", body).group(1)),
            "salt": bytes.fromhex(re.sub(r"\s+", "", salt)),
            "offset": int(re.search(r"Key material offset:\s*(\d+)", body).group(1)),
            "stripes": int(re.search(r"AF stripes:\s*(\d+)", body).group(1)),
        }
    return {"version": int(field["Version"]), "cipher": f"{field['Cipher name']}-"
            f"{field['Cipher mode']}", "hash": field["Hash spec"],
            "payload": int(field["Payload offset"]), "bits": int(field["MK bits"]),
            "mk_iter": int(field["MK iterations"]), "uuid": field["UUID"],
            "mk_digest": hexblock("MK digest"), "mk_salt": hexblock("MK salt"), "slots": slots}


@pytest.mark.parametrize(
    ("luks_type", "sector", "bits"),
    [("luks1", None, 256), ("luks1", None, 512), ("luks2", 512, 512), ("luks2", 4096, 256)],
)
def test_our_parser_agrees_with_cryptsetup_and_dissect(vol, luks_type, sector, bits):
    """Our parser against two independent readers: cryptsetup's own dump (text for LUKS1,
    JSON for LUKS2) and dissect.fve's LUKS parser — every field recovery relies on."""
    import base64

    from dissect.fve.luks import LUKS

    p = vol()
    k = key()
    luks.format(p, k, luks_type=luks_type, sector_size=sector, key_bits=bits)
    luks.add_key(p, k, key(), slot=3)
    ours = luksheader.read(str(p))
    with open(p, "rb") as f:
        theirs = LUKS(f)
        if luks_type == "luks1":
            cs = _luks1_dump_text(p)
            assert (ours.version, ours.cipher, ours.uuid) == (1, cs["cipher"], cs["uuid"])
            assert ours.key_bytes * 8 == cs["bits"] == bits
            assert ours.segment.offset == cs["payload"] * 512
            d = ours.digests[0]
            assert (d.hash, d.iterations, d.salt, d.digest) == (
                cs["hash"], cs["mk_iter"], cs["mk_salt"], cs["mk_digest"])
            assert {s.slot for s in ours.keyslots} == set(cs["slots"]) == {0, 3}
            for s in ours.keyslots:
                want = cs["slots"][s.slot]
                assert (s.kdf.iterations, s.kdf.salt, s.area_offset, s.af_stripes) == (
                    want["iterations"], want["salt"], want["offset"] * 512, want["stripes"])
                blk = theirs.header.keyblock[s.slot]
                assert (blk.passwordSalt, blk.keyMaterialOffset * 512, blk.stripes) == (
                    s.kdf.salt, s.area_offset, s.af_stripes)
            h = theirs.header
            assert (h.payloadOffset * 512, h.keyBytes, h.mkDigest, h.mkDigestSalt) == (
                ours.segment.offset, ours.key_bytes, d.digest, d.salt)
        else:
            meta = luks.metadata(p)  # cryptsetup's JSON, parsed by cryptsetup
            seg = meta["segments"]["0"]
            assert ours.segment.offset == int(seg["offset"])
            assert ours.segment.sector_size == int(seg["sector_size"]) == sector
            assert ours.cipher == seg["encryption"] and ours.key_bytes * 8 == bits
            assert {s.slot for s in ours.keyslots} == {int(x) for x in meta["keyslots"]} == {0, 3}
            for s in ours.keyslots:
                ks = meta["keyslots"][str(s.slot)]
                assert s.kdf.salt == base64.b64decode(ks["kdf"]["salt"])
                assert (s.area_offset, s.area_size) == (int(ks["area"]["offset"]),
                                                        int(ks["area"]["size"]))
                dk = theirs.keyslots[s.slot]
                assert (dk.kdf.salt, dk.area.offset, dk.af.stripes) == (
                    s.kdf.salt, s.area_offset, s.af_stripes)
            for d in ours.digests:
                cd = meta["digests"][str(d.id)]
                assert d.digest == base64.b64decode(cd["digest"])
                assert [str(x) for x in d.keyslots] == cd["keyslots"]
                assert [str(x) for x in d.segments] == cd["segments"]
            import subprocess

            cs_uuid = subprocess.run(["cryptsetup", "luksUUID", str(p)], capture_output=True,
                                     text=True, check=True).stdout.strip()
            assert ours.uuid == cs_uuid == str(theirs.uuid)


def test_detached_header(vol, tmp_path):
    data = vol("data")
    hdr = tmp_path / "hdr.img"
    with open(hdr, "wb") as f:
        f.truncate(16 << 20)
    k = key()
    info = luks.format(data, k, header=hdr)
    assert info.data_offset == 0  # all of the data device is ciphertext
    assert luks.test_key(data, k, header=hdr) == 0
    assert not luks.is_luks(data)
