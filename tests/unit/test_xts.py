"""The native XTS kernel against the ``cryptography`` package (the reference), property-tested:
random keys (AES-128/256-XTS), sector sizes, sector counts and IVs, both code paths."""

from __future__ import annotations

from pathlib import Path

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


@settings(max_examples=200, deadline=None)
@given(
    key=st.sampled_from([32, 64]).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
    sector=st.sampled_from([512, 4096]),
    count=st.integers(1, 4),
    first=st.integers(0, (1 << 63)),
    seed=st.integers(0, 2**32),
)
def test_encryption_round_trips_and_matches_the_reference(key, sector, count, first, seed):
    """Encryption (used only to check hotzone candidates) agrees with ``cryptography``'s, and
    the fallback path (no native module) gives the same bytes as the native one."""
    fuzz_count("fuzz examples: XTS kernel vs reference")
    if key[: len(key) // 2] == key[len(key) // 2:]:
        return
    import random

    plain = random.Random(seed).randbytes(sector * count)
    step = sector // 512
    want = b"".join(
        Cipher(algorithms.AES(key), modes.XTS(((first + i * step) % (1 << 64)).to_bytes(
            16, "little"))).encryptor().update(plain[i * sector:(i + 1) * sector])
        for i in range(count))
    native_cipher = xts.SectorCipher("aes-xts-plain64", key, sector)
    assert native_cipher._native is not None
    assert native_cipher.encrypt(plain, first) == want
    assert native_cipher.decrypt(want, first) == plain
    fallback = xts.SectorCipher("aes-xts-plain64", key, sector)
    fallback._native = None
    assert fallback.encrypt(plain, first) == want
    assert fallback.decrypt(want, first) == plain


def test_the_native_loop_is_openssl():
    """The fast path is OpenSSL's libcrypto (EVP), not a hand-written AES."""
    x = native()
    assert x.kernel == "openssl-evp" and x.openssl.startswith("OpenSSL")
    assert xts.backend_name() == "native-openssl-evp"
    src = (Path(__file__).parents[2] / "native").glob("*.c")
    text = "".join(f.read_text() for f in src)
    assert "_mm_aesdec" not in text and "aeskeygenassist" not in text


def test_bad_arguments_are_errors_not_crashes():
    x = native()
    with pytest.raises(ValueError):
        x.decrypt(b"k" * 48, b"\0" * 512, 0, 512, 1)
    with pytest.raises(ValueError):  # equal key halves: XTS forbids them, OpenSSL refuses
        x.decrypt(b"k" * 64, b"\0" * 512, 0, 512, 1)
    with pytest.raises(ValueError):
        x.decrypt(bytes(range(64)), b"\0" * 500, 0, 512, 1)
    with pytest.raises(ValueError):
        x.decrypt_into(bytes(range(64)), b"\0" * 1024, bytearray(512), 0, 512, 1)
