"""Property tests of the LUKS header parser on real headers made by cryptsetup, with bytes
flipped and random garbage:

* anything: a header or HeaderCorrupt/NotLuks — never another exception;
* a flip inside a keyslot area leaves the parsed header exactly as it was;
* a flip in the primary LUKS2 header is recovered from the secondary (same keyslots, digests,
  segments) or refused;
* whatever is flipped, unlocking never yields a volume key other than the original: it
  refuses (typed) or gives the right one (the digest check holds)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from byok.common.errors import HeaderCorrupt, NotLuks
from byok.common.sensitive import Sensitive
from byok.luks import cryptsetup as luks
from byok.luks import header as luksheader
from tests.reliability.conftest import count as fuzz_count

SETTINGS = settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))


def _sample(luks_type: str) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "v.img"
        with open(p, "wb") as f:
            f.truncate(20 << 20)
        luks.format(p, Sensitive(os.urandom(32).hex()), luks_type=luks_type)
        return p.read_bytes()[: luksheader.READ_SIZE]


SAMPLES = {}
KEYED: dict[str, tuple[bytes, Sensitive, bytes]] = {}


def sample(luks_type: str) -> bytes:
    if luks_type not in SAMPLES:
        SAMPLES[luks_type] = _sample(luks_type)
    return SAMPLES[luks_type]


def keyed(luks_type: str) -> tuple[bytes, Sensitive, bytes]:
    """(first bytes up to the end of keyslot 0's area, passphrase, volume key) of a volume."""
    if luks_type not in KEYED:
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "v.img"
            with open(p, "wb") as f:
                f.truncate(20 << 20)
            pw = Sensitive(os.urandom(32).hex())
            luks.format(p, pw, luks_type=luks_type)
            vk = luks.volume_key(p, pw).reveal()  # cryptsetup's answer, not ours
            h = luksheader.read(str(p))
            end = max(k.area_offset + k.area_size for k in h.keyslots)
            KEYED[luks_type] = (p.read_bytes()[:end], pw, vk)
    return KEYED[luks_type]


def _same_content(a, b) -> bool:
    return (a.version, a.uuid, a.keyslots, a.digests, a.segments, a.requirements,
            a.key_bytes) == (b.version, b.uuid, b.keyslots, b.digests, b.segments,
                             b.requirements, b.key_bytes)


def _parse_or_typed(data: bytes):
    try:
        return luksheader.parse(data)
    except (HeaderCorrupt, NotLuks):
        return None


@pytest.mark.parametrize("luks_type", ["luks1", "luks2"])
def test_clean_samples_parse(luks_type):
    h = luksheader.parse(sample(luks_type))
    assert h.version == int(luks_type[-1]) and h.active_slots == [0]


@SETTINGS
@given(
    luks_type=st.sampled_from(["luks1", "luks2"]),
    flips=st.lists(
        st.tuples(st.integers(min_value=0, max_value=(48 << 10) - 1), st.integers(1, 255)),
        min_size=1, max_size=8,
    ),
)
def test_flipped_bytes_give_a_header_or_a_typed_error(luks_type, flips):
    fuzz_count("fuzz examples: LUKS header parser")
    data = bytearray(sample(luks_type))
    for off, x in flips:
        data[off] ^= x
    _parse_or_typed(bytes(data))


@SETTINGS
@given(st.binary(min_size=0, max_size=8192), st.sampled_from([b"", b"LUKS\xba\xbe\x00\x01",
                                                            b"LUKS\xba\xbe\x00\x02"]))
def test_garbage_gives_a_typed_error(tail, magic):
    fuzz_count("fuzz examples: LUKS header parser")
    _parse_or_typed(magic + tail)  # no exception other than the typed ones


def test_luks2_survives_a_destroyed_primary_via_the_secondary():
    data = bytearray(sample("luks2"))
    data[:4096] = bytes(4096)
    h = luksheader.parse(bytes(data))
    assert h.used_secondary and h.version == 2


def test_luks2_json_corruption_in_both_copies_is_headercorrupt():
    data = bytearray(sample("luks2"))
    for base in (0, 16 << 10):
        data[base + 4200] ^= 0xFF
    with pytest.raises(HeaderCorrupt):
        luksheader.parse(bytes(data))


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(luks_type=st.sampled_from(["luks1", "luks2"]), data=st.data())
def test_a_flip_inside_a_keyslot_area_leaves_the_parsed_header_unchanged(luks_type, data):
    fuzz_count("fuzz examples: LUKS header properties")
    raw = bytearray(sample(luks_type))
    h = luksheader.parse(bytes(raw))
    slot = data.draw(st.sampled_from(h.keyslots))
    off = data.draw(st.integers(slot.area_offset, slot.area_offset + slot.area_size - 1))
    raw[off] ^= data.draw(st.integers(1, 255))
    assert luksheader.parse(bytes(raw)) == h


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(flips=st.lists(st.tuples(st.integers(0, (16 << 10) - 1), st.integers(1, 255)),
                      min_size=1, max_size=6))
def test_a_flip_in_the_primary_luks2_header_is_recovered_from_the_secondary_or_refused(flips):
    fuzz_count("fuzz examples: LUKS header properties")
    raw = bytearray(sample("luks2"))
    original = luksheader.parse(bytes(raw))
    for off, x in flips:
        raw[off] ^= x
    got = _parse_or_typed(bytes(raw))
    if got is not None:  # (a flip in the checksum field's unused tail leaves the primary valid)
        assert _same_content(got, original)


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(luks_type=st.sampled_from(["luks1", "luks2"]),
       flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)),
                      min_size=1, max_size=4))
def test_unlocking_never_yields_a_changed_volume_key(tmp_path_factory, luks_type, flips):
    from byok.common.errors import ByokError
    from byok.luks import recovery

    fuzz_count("fuzz examples: LUKS header properties")
    raw, pw, vk = keyed(luks_type)
    data = bytearray(raw)
    for where, x in flips:
        data[int(where * len(data))] ^= x
    path = tmp_path_factory.mktemp("flip") / "v.img"
    path.write_bytes(bytes(data))
    try:
        h = luksheader.read(str(path))
        got = recovery.unlock(h, path, pw)
    except ByokError:
        return  # refused, typed: fine
    assert got.volume_key.reveal() == vk
