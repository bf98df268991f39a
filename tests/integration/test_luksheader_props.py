"""Property tests of the LUKS header parser: real headers made by cryptsetup, with bytes flipped
anywhere in the binary header, the JSON area or the keyslots, and random garbage: the parser
returns a header or raises HeaderCorrupt/NotLuks — never anything else."""

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


def sample(luks_type: str) -> bytes:
    if luks_type not in SAMPLES:
        SAMPLES[luks_type] = _sample(luks_type)
    return SAMPLES[luks_type]


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
