"""Key validation and the passphrase rule (no services needed)."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from os_brick import utils as osbrick_utils

from byok.common.errors import KeyTypeMismatch
from byok.common.sensitive import Sensitive
from byok.keys.ref import KeyRef
from byok.keys.resolver import (
    KeyMaterial,
    SecretInfo,
    passphrase,
    validate_metadata,
    validate_payload,
)
from tests.reliability.conftest import count as fuzz_count

REF = KeyRef("0f6b2b8e-5c1a-4c8e-9d3e-2a1b3c4d5e6f", "http://127.0.0.1:19311")


def info(**kw) -> SecretInfo:
    base = dict(
        ref=REF, secret_type="symmetric", algorithm="aes", bit_length=512, mode="xts",
        name="k", status="ACTIVE", expiration=None, creator_id="u",
        content_type="application/octet-stream",
    )
    base.update(kw)
    return SecretInfo(**base)


@pytest.mark.parametrize("bits", [256, 512])
def test_symmetric_passphrase_matches_os_brick(bits):
    key = KeyMaterial(info(bit_length=bits), Sensitive(os.urandom(bits // 8)))
    ours = passphrase(key).reveal().decode()
    assert ours == osbrick_utils.get_passphrase_from_secret(key.castellan_object())
    assert len(ours) == bits // 4 and ours == ours.lower()


def test_passphrase_secret_is_used_verbatim_like_os_brick():
    text = "correct horse battery staple ✓"
    key = KeyMaterial(
        info(secret_type="passphrase", algorithm=None, bit_length=None, content_type="text/plain"),
        Sensitive(text.encode()),
    )
    assert passphrase(key).reveal().decode() == text
    assert passphrase(key).reveal().decode() == osbrick_utils.get_passphrase_from_secret(
        key.castellan_object()
    )


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=32, max_size=32) | st.binary(min_size=64, max_size=64))
def test_passphrase_rule_property(raw):
    fuzz_count("fuzz examples: passphrase rule")
    key = KeyMaterial(info(bit_length=len(raw) * 8), Sensitive(raw))
    assert passphrase(key).reveal().decode() == osbrick_utils.get_passphrase_from_secret(
        key.castellan_object()
    )


@pytest.mark.parametrize(
    ("kw", "why"),
    [
        ({"secret_type": "opaque"}, "cannot be a volume key"),
        ({"secret_type": "private"}, "cannot be a volume key"),
        ({"bit_length": 128}, "128-bit"),
        ({"bit_length": 192}, "192-bit"),
        ({"algorithm": "des"}, "AES"),
        ({"algorithm": None}, "untyped"),
        ({"status": "PENDING"}, "not ACTIVE"),
        ({"expiration": "2001-01-01T00:00:00"}, "expired"),
        ({"expiration": "next tuesday"}, "unreadable expiration"),
        ({"content_type": "text/plain"}, "text/plain"),
    ],
)
def test_metadata_rejections(kw, why):
    with pytest.raises(KeyTypeMismatch, match=why):
        validate_metadata(info(**kw))


def test_future_expiry_is_fine():
    validate_metadata(info(expiration="2999-01-01T00:00:00Z"))


@pytest.mark.parametrize(
    ("kw", "payload", "why"),
    [
        ({}, b"", "empty"),
        ({}, os.urandom(31), "declares 512 bits but holds 248"),
        ({"bit_length": 256}, os.urandom(64), "declares 256 bits but holds 512"),
        ({"secret_type": "passphrase"}, b"\xff\xfe not utf8", "not UTF-8"),
    ],
)
def test_payload_rejections(kw, payload, why):
    with pytest.raises(KeyTypeMismatch, match=why):
        validate_payload(info(**kw), Sensitive(payload))


def test_sensitive_never_shows_bytes():
    raw = b"\x01\x02supersecret-bytes\x03"
    s = Sensitive(raw)
    for text in (repr(s), str(s), f"{s}", f"{s!r}", f"{s}"):
        for form in s.forms():
            assert form.decode(errors="ignore") not in text
    assert s.reveal() == raw
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(s)


# --- the service's record decides (issue 17): check_binding, may_delete ----------------------

KEY = "11111111-2222-4333-8444-555555555555"
OTHER = "99999999-2222-4333-8444-555555555555"


def test_check_binding_accepts_only_the_recorded_key_of_the_recorded_volume():
    from byok.common.errors import KeyAccessDenied
    from byok.keys import guard

    rec = guard.Binding("vol-1", KEY)
    guard.check_binding(KeyRef(KEY), rec, volume_id="vol-1")
    guard.check_binding(KEY, rec, volume_id="vol-1")  # a bare UUID string too
    for ref, binding, volume, why in (
        (KEY, None, "vol-1", "no record"),
        (KEY, rec, "vol-2", "no record"),
        (OTHER, rec, "vol-1", "recorded with key"),
        (KEY, guard.Binding("vol-1", KEY, resource_type="backup"), "vol-1", "no record"),
    ):
        with pytest.raises(KeyAccessDenied, match=why):
            guard.check_binding(ref, binding, volume_id=volume)


def test_may_delete_follows_the_record_never_a_mark():
    from byok.keys import guard

    assert guard.may_delete(KEY, guard.Binding("v", KEY, owner="service"))
    assert not guard.may_delete(KEY, guard.Binding("v", KEY, owner="user"))
    assert not guard.may_delete(KEY, guard.Binding("v", OTHER, owner="service"))
    assert not guard.may_delete(KEY, None)
