"""Bad input never gives a traceback or a format: flipped bytes in every region of LUKS1 and
LUKS2 headers (binary header, JSON area, both LUKS2 copies, keyslot area) through the hook's
decision path, and malformed Barbican secrets through the resolver."""

from __future__ import annotations

import os

import pytest

from byok.attach.hook import AttachHook, connection_info_for
from byok.common.errors import ByokError, KeyServiceError, KeyTypeMismatch
from byok.common.sensitive import Sensitive
from byok.keys import resolver as keys
from byok.luks import cryptsetup as luks
from byok.luks import header as luksheader
from tests.reliability.conftest import count, file_sha

pytestmark = pytest.mark.stack


def _regions(version: int, data_offset: int) -> list[tuple[str, range]]:
    if version == 1:
        return [("luks1 binary header", range(0, 592, 5)),
                ("luks1 keyslot area", range(4096, 4096 + 64 * 4000, 8197))]
    return [("luks2 primary binary header", range(0, 4096, 67)),
            ("luks2 primary JSON area", range(4096, 16384, 131)),
            ("luks2 secondary binary header", range(16384, 20480, 67)),
            ("luks2 secondary JSON area", range(20480, 32768, 131)),
            ("luks2 keyslot area", range(32768, min(data_offset, 32768 + 258048), 4001))]


@pytest.mark.parametrize("provider", ["luks", "luks2"])
def test_flipped_header_bytes_give_typed_errors_and_never_format(
    tmp_path, identities, make_key, provider
):
    ref, _raw = make_key("alice")
    km = keys.Resolver(identities("alice")).resolve(ref)
    pw = keys.passphrase(km)
    hook = AttachHook(resolve=lambda _ref, _vid: km)  # the key path is exercised elsewhere
    vol = tmp_path / "vol.img"
    with open(vol, "wb") as f:
        f.truncate(32 << 20)
    info = luks.format(vol, pw, luks_type="luks1" if provider == "luks" else "luks2")
    vk = luks.volume_key(vol, pw)
    pristine = vol.read_bytes()[: 1 << 20]
    original = luksheader.parse(vol.read_bytes()[: luksheader.READ_SIZE])
    outcomes: dict[str, int] = {}
    for region, offsets in _regions(info.version, info.data_offset):
        for off in offsets:
            with open(vol, "r+b") as f:
                f.seek(off)
                f.write(bytes([pristine[off] ^ 0xFF]))
            before = file_sha(vol)
            try:
                v = hook.prepare(connection_info_for(vol), {"key_ref": ref.href,
                                                            "provider": provider})
                outcome = f"opens ({v.state})"
            except ByokError as e:  # typed: WrongKey / HeaderCorrupt / NotLuks ...
                outcome = type(e).__name__
            if file_sha(vol) != before:
                # The only write allowed is cryptsetup's own LUKS2 auto-repair of a damaged
                # header copy from the intact one (it re-salts and re-checksums the copy): the
                # metadata must be the original's and the volume key unchanged.
                now = luksheader.parse(vol.read_bytes()[: luksheader.READ_SIZE])
                assert (now.uuid, now.keyslots, now.digests, now.segment) == (
                    original.uuid, original.keyslots, original.digests, original.segment
                ), f"{region} @ {off}: metadata changed"
                assert luks.volume_key(vol, pw) == vk
                outcome += " (cryptsetup repaired the header copy)"
                count("header flips repaired by cryptsetup from the other LUKS2 copy")
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            if outcome.startswith("opens"):
                assert luks.volume_key(vol, pw) == vk  # never a new volume key (no format)
            with open(vol, "r+b") as f:  # restore the byte for the next flip
                f.seek(off)
                f.write(bytes([pristine[off]]))
            count("header byte flips")
    kinds = {o.split(" (cryptsetup")[0] for o in outcomes}
    assert kinds <= {"opens (luks)", "WrongKey", "HeaderCorrupt", "NotLuks"}, outcomes
    assert luks.volume_key(vol, pw) == vk


def test_random_garbage_headers_parse_or_typed_error():
    import random

    rng = random.Random(7)
    for _ in range(2000):
        head = rng.choice([b"LUKS\xba\xbe\x00\x01", b"LUKS\xba\xbe\x00\x02", b""])
        data = head + rng.randbytes(rng.randint(0, 6000))
        try:
            luksheader.parse(data)
        except ByokError:
            pass
        count("garbage headers parsed")


@pytest.mark.parametrize(
    ("kind", "overrides", "error"),
    [
        ("aes512", {"secret_type": "opaque"}, KeyTypeMismatch),
        ("aes128", {}, KeyTypeMismatch),
        ("aes512", {"payload": os.urandom(16)}, KeyTypeMismatch),
        ("aes512", {"algorithm": "rsa"}, KeyTypeMismatch),
        ("passphrase", {"payload": b"\xff\xfe\xfa binary"}, KeyTypeMismatch),
    ],
)
def test_malformed_secrets_are_typed_errors(identities, barbican, kind, overrides, error):
    api = barbican("alice")
    if kind == "passphrase":
        import base64

        # Stored as octet-stream so Barbican accepts non-UTF-8 bytes for a passphrase secret.
        ref = api.post_secret({"name": "bad", "secret_type": "passphrase",
                               "payload": base64.b64encode(overrides["payload"]).decode(),
                               "payload_content_type": "application/octet-stream",
                               "payload_content_encoding": "base64"})
    else:
        bits = int(kind[3:])
        payload = overrides.pop("payload", os.urandom(bits // 8))
        args = {"algorithm": "aes", "bit_length": bits, "secret_type": "symmetric"} | overrides
        ref = api.store(Sensitive(payload), name="bad", **args)
    with pytest.raises(error):
        keys.Resolver(identities("alice")).resolve(ref)
    count("malformed secrets refused")


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({"secret_type": "symmetric", "algorithm": "aes", "bit_length": 512}, "no payload"),
        ({"secret_type": "passphrase"}, "no payload"),
        ({"secret_type": "symmetric", "algorithm": "aes", "bit_length": 512, "payload": "a" * 64,
          "payload_content_type": "text/plain"}, "expected application/octet-stream"),
    ],
)
def test_secrets_barbican_accepts_but_no_volume_can_use(identities, barbican, body, why):
    """Stored for real in Barbican, then refused by the resolver with a typed reason."""
    api = barbican("alice")
    ref = api.post_secret({"name": "bad", **body})
    with pytest.raises(KeyTypeMismatch, match=why):
        keys.Resolver(identities("alice")).resolve(ref)
    count("malformed secrets refused")


@pytest.mark.parametrize(
    "body",
    [
        {"payload": "", "payload_content_type": "text/plain", "secret_type": "passphrase"},
        {"payload": "%%% not base64 %%%", "payload_content_type": "application/octet-stream",
         "payload_content_encoding": "base64", "secret_type": "symmetric", "algorithm": "aes",
         "bit_length": 512},
    ],
    ids=["empty", "base64-garbage"],
)
def test_secrets_barbican_refuses_are_a_typed_error_and_store_nothing(barbican, body):
    api = barbican("alice")
    before = api.count_secrets()
    with pytest.raises(KeyServiceError, match="HTTP 400"):
        api.post_secret({"name": "bad", **body})
    assert api.count_secrets() == before
    count("malformed secrets refused")
