"""The native XTS kernel against the ``cryptography`` package (the reference), property-tested:
random keys (AES-128/256-XTS), sector sizes, sector counts and IVs, both code paths."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from byok.luks import sectors as xts
from tests.reliability.conftest import count as fuzz_count


def reference(key: bytes, data: bytes, first: int, sector: int) -> bytes:
    out = bytearray()
    step = sector // 512 or 1
    for i in range(len(data) // sector):
        iv = ((first + i * step) & ((1 << 64) - 1)).to_bytes(16, "little")
        d = Cipher(algorithms.AES(key), modes.XTS(iv)).decryptor()
        out += d.update(data[i * sector:(i + 1) * sector])
    return bytes(out)


def native():
    try:
        from byok import _xtsfast
    except ImportError:
        pytest.fail("byok._xtsfast is not built: install gcc and the Python headers "
                    "(apt-get install -y gcc python3-dev) and re-run ./dev setup")
    return _xtsfast


@settings(max_examples=300, deadline=None)
@given(
    key=st.sampled_from([32, 64]).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
    sector=st.sampled_from([512, 1024, 2048, 4096]),
    count=st.integers(1, 5),
    first=st.integers(0, (1 << 63)),
    seed=st.integers(0, 2**32),
)
def test_native_equals_reference(key, sector, count, first, seed):
    fuzz_count("fuzz examples: XTS kernel vs reference")
    if key[: len(key) // 2] == key[len(key) // 2:]:
        return  # cryptography refuses XTS keys whose halves are equal
    import random

    data = random.Random(seed).randbytes(sector * count)
    want = reference(key, data, first, sector)
    assert native().decrypt(key, data, first, sector, sector // 512) == want
    out = bytearray(len(data) + 16)
    native().decrypt_into(key, data, out, first, sector, sector // 512)
    assert bytes(out[: len(data)]) == want
    assert xts.SectorCipher("aes-xts-plain64", key, sector).decrypt(data, first) == want


def test_aesni_path_equals_reference_too():
    """The AES-NI fallback kernel (used where the CPU lacks VAES) is checked in a subprocess."""
    code = (
        "import os, byok._xtsfast as x; print(x.kernel);"
        "k=os.urandom(64); d=os.urandom(4096*3);"
        "import sys; sys.stdout.write(x.decrypt(k,d,7,4096,8).hex()+' '+k.hex()+' '+d.hex())"
    )
    native()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=os.environ | {"BYOK_XTS_NO_VAES": "1"}, timeout=60)
    kernel, rest = r.stdout.split("\n", 1)
    assert kernel == "aesni"
    got, k, d = rest.split(" ")
    assert bytes.fromhex(got) == reference(bytes.fromhex(k), bytes.fromhex(d), 7, 4096)


def test_bad_arguments_are_errors_not_crashes():
    x = native()
    with pytest.raises(ValueError):
        x.decrypt(b"k" * 48, b"\0" * 512, 0, 512, 1)
    with pytest.raises(ValueError):
        x.decrypt(b"k" * 64, b"\0" * 500, 0, 512, 1)
    with pytest.raises(ValueError):
        x.decrypt_into(b"k" * 64, b"\0" * 1024, bytearray(512), 0, 512, 1)
