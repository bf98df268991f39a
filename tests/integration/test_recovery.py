"""Offline recovery (issue 6): plaintext back from LUKS1/LUKS2 files made by cryptsetup, by
qemu-img and by byok itself, with only the user's key — no Barbican, no root, no dm."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest

from byok.common import proc
from byok.common.errors import WrongKey
from byok.common.pattern import pattern
from byok.common.sensitive import Sensitive
from byok.luks import cryptsetup as luks
from byok.luks import interop, recovery

DATA = 6 << 20


@pytest.fixture
def raw(tmp_path):
    p = tmp_path / "raw.img"
    p.write_bytes(pattern(42, DATA) + bytes(2 << 20))  # data, then zeros (holes in the output)
    return p


def luks2_image(raw, out, pw: Sensitive, *extra: str) -> None:
    from byok.common import sparse

    sparse.copy_sparse(raw, out)
    os.truncate(out, raw.stat().st_size + (32 << 20))
    args = ["cryptsetup", "reencrypt", "--encrypt", "--type", "luks2", "--batch-mode",
            "--force-offline-reencrypt", "--reduce-device-size", "32M", *extra,
            "--key-file=-", str(out)]
    proc.run(args, input=pw, timeout=300)
    os.truncate(out, luks.dump(out).data_offset + raw.stat().st_size)  # drop the unused tail


@pytest.mark.parametrize(
    "extra",
    [
        ["--sector-size", "4096", "--key-size", "512", "--pbkdf", "pbkdf2",
         "--pbkdf-force-iterations", "1000"],
        ["--sector-size", "512", "--key-size", "256", "--pbkdf", "pbkdf2",
         "--pbkdf-force-iterations", "1000"],
        ["--sector-size", "4096", "--pbkdf", "argon2id", "--pbkdf-memory", "32768",
         "--pbkdf-force-iterations", "4"],
        ["--sector-size", "512", "--pbkdf", "argon2i", "--pbkdf-memory", "16384",
         "--pbkdf-force-iterations", "4"],
    ],
    ids=["xts512-4k-pbkdf2", "xts256-512-pbkdf2", "argon2id-4k", "argon2i-512"],
)
def test_cryptsetup_luks2_variants(tmp_path, raw, extra):
    pw = Sensitive(os.urandom(32).hex())
    img = tmp_path / "img.luks"
    luks2_image(raw, img, pw, *extra)
    out = tmp_path / "out.plain"
    summary = recovery.recover(img, out, passphrase=pw)
    assert out.read_bytes() == raw.read_bytes()
    assert summary["written_bytes"] <= DATA + (1 << 20)  # zeros stay holes
    assert os.stat(out).st_blocks * 512 < out.stat().st_size


def test_any_keyslot_and_a_detached_header(tmp_path, raw):
    pw, other = Sensitive(os.urandom(32).hex()), Sensitive(os.urandom(32).hex())
    img = tmp_path / "img.luks"
    luks2_image(raw, img, pw, "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000")
    luks.add_key(img, pw, other, slot=6)
    luks.remove_key(img, pw)
    out = tmp_path / "slot6.plain"
    assert recovery.recover(img, out, passphrase=other)["slot"] == 6
    assert out.read_bytes()[:DATA] == raw.read_bytes()[:DATA]
    # Detached header: cryptsetup encrypts the data file in place, header elsewhere.
    data = tmp_path / "data.img"
    data.write_bytes(raw.read_bytes())
    hdr = tmp_path / "hdr.img"
    proc.run(["cryptsetup", "reencrypt", "--encrypt", "--type", "luks2", "--batch-mode",
              "--force-offline-reencrypt", "--header", str(hdr), "--pbkdf", "pbkdf2",
              "--pbkdf-force-iterations", "1000", "--key-file=-", str(data)], input=pw)
    assert data.read_bytes()[:DATA] != raw.read_bytes()[:DATA]
    out2 = tmp_path / "detached.plain"
    recovery.recover(data, out2, passphrase=pw, header=hdr)
    assert out2.read_bytes() == raw.read_bytes()


def test_qemu_made_luks1(tmp_path, raw):
    pw = Sensitive(os.urandom(32).hex())
    img = tmp_path / "q.luks"
    interop.qemu_encrypt_luks1(raw, img, pw)
    assert luks.dump(img).version == 1
    out = tmp_path / "q.plain"
    recovery.recover(img, out, passphrase=pw)
    assert out.read_bytes()[: raw.stat().st_size] == raw.read_bytes()
    assert interop.qemu_sha256(img, pw, DATA) == hashlib.sha256(raw.read_bytes()[:DATA]).hexdigest()


def test_cli_key_file_passphrase_file_and_wrong_key(tmp_path, raw):
    key = os.urandom(64)
    pw = recovery.passphrase_from_key_bytes(key)  # os-brick's hex rule
    img = tmp_path / "img.luks"
    luks2_image(raw, img, pw, "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000")
    keyfile = tmp_path / "key.bin"
    keyfile.write_bytes(key)
    byok = [sys.executable, "-m", "byok.cli", "recover", str(img)]
    out = tmp_path / "a.plain"
    r = subprocess.run([*byok, "--key-file", str(keyfile), "--out", str(out), "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:DATA] == raw.read_bytes()[:DATA]
    text = tmp_path / "pass.txt"
    text.write_bytes(pw.reveal() + b"\n")  # `echo "$PASS" > file` leaves a newline: tolerated
    r = subprocess.run([*byok, "--passphrase-file", str(text), "--out", str(tmp_path / "b")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    wrong = tmp_path / "wrong.bin"
    wrong.write_bytes(os.urandom(64))
    r = subprocess.run([*byok, "--key-file", str(wrong), "--out", str(tmp_path / "c")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == WrongKey.exit_code and "no keyslot" in r.stderr
    assert not (tmp_path / "c").exists() and not (tmp_path / "c.partial").exists()
    r = subprocess.run([*byok, "--key-file", str(keyfile), "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "exists" in r.stderr  # never overwrites without --force
    with pytest.raises(WrongKey):
        recovery.recover(img, tmp_path / "d", passphrase=Sensitive("nope"))


def test_a_key_in_an_ignore_priority_slot_still_recovers(tmp_path, raw):
    pw, other = Sensitive(os.urandom(32).hex()), Sensitive(os.urandom(32).hex())
    img = tmp_path / "img.luks"
    luks2_image(raw, img, pw, "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000")
    luks.add_key(img, pw, other, slot=3)
    proc.run(["cryptsetup", "config", "--key-slot", "3", "--priority", "ignore", str(img)])
    out = tmp_path / "p.plain"
    assert recovery.recover(img, out, passphrase=other)["slot"] == 3
    assert out.read_bytes() == raw.read_bytes()


@pytest.mark.parametrize(("cipher_mode", "ivgen"), [("xts", "plain64"), ("cbc", "essiv"),
                                                    ("cbc", "plain64")])
def test_qemu_made_luks1_other_ciphers(tmp_path, raw, cipher_mode, ivgen):
    """LUKS1 from an independent implementation (qemu's crypto layer) with the other cipher
    modes recovery supports; a non-zero keyslot (qemu writes slot 0, cryptsetup moves it)."""
    pw, other = Sensitive(os.urandom(32).hex()), Sensitive(os.urandom(32).hex())
    img = tmp_path / "q.luks"
    interop.qemu_encrypt_luks1(raw, img, pw, cipher_mode=cipher_mode, ivgen=ivgen)
    assert luks.dump(img).version == 1
    luks.add_key(img, pw, other, slot=5)
    luks.remove_key(img, pw)
    out = tmp_path / "q.plain"
    assert recovery.recover(img, out, passphrase=other)["slot"] == 5
    assert out.read_bytes()[: raw.stat().st_size] == raw.read_bytes()
    # ... and with a detached copy of that header
    hdr = tmp_path / "q.hdr"
    luks.header_backup(img, hdr)
    out2 = tmp_path / "q2.plain"
    recovery.recover(img, out2, passphrase=other, header=hdr)
    assert out2.read_bytes() == out.read_bytes()


def test_an_unbound_keyslot_never_decrypts_the_data(tmp_path, raw):
    """A keyslot whose digest is bound to no segment (what a crashed re-encryption leaves, or
    ``luksAddKey --unbound``) opens a key that decrypts nothing: recovery with its passphrase
    is WrongKey (exit 5) — not exit 0 with garbage."""
    pw, stray = Sensitive(os.urandom(32).hex()), Sensitive(os.urandom(32).hex())
    img = tmp_path / "img.luks"
    luks2_image(raw, img, pw, "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000")
    with proc.secret_fd(stray) as (fd, path):
        proc.run(["cryptsetup", "luksAddKey", "--batch-mode", "--unbound", "--key-size", "512",
                  "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", str(img), path],
                 pass_fds=(fd,))
    dumped = proc.run(["cryptsetup", "luksDump", str(img)]).out
    assert "1: luks2 (unbound)" in dumped  # cryptsetup's own view: slot 1 binds no segment
    with pytest.raises(WrongKey):
        recovery.recover(img, tmp_path / "x", passphrase=stray)
    assert not (tmp_path / "x").exists()
    out = tmp_path / "ok.plain"
    assert recovery.recover(img, out, passphrase=pw)["slot"] == 0
    assert out.read_bytes() == raw.read_bytes()


def _crashed(tmp_path, shape, n):
    from byok.harness import crashenum

    base = crashenum.build(shape, tmp_path / "lab")
    crashenum.count_writes(base)
    return base, crashenum.kill_at(base, n)


def test_cli_refuses_what_it_cannot_vouch_for_exit_15_nothing_written(tmp_path):
    """Resilience 'none' killed after its data writes began: the header still says "old" for
    bytes that may be new. The CLI exits 15, names the byte ranges (and --json lists them),
    and writes nothing."""
    import json

    from byok.harness import crashenum

    base, c = _crashed(tmp_path, crashenum.Shape(resilience="none"), 17)
    pwf = tmp_path / "pass.txt"
    pwf.write_bytes(base.passphrase.reveal())
    byok = [sys.executable, "-m", "byok.cli", "recover", str(c.image), "--passphrase-file",
            str(pwf)]
    out = tmp_path / "out.plain"
    r = subprocess.run([*byok, "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 15, r.stderr
    assert "refused: bytes" in r.stderr and "resilience 'none'" in r.stderr
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()
    r = subprocess.run([*byok, "--check", "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 15
    doc = json.loads(r.stdout)
    assert doc["refused"] and all(x["end"] > x["start"] for x in doc["refused"])
    assert doc["reencryption"]["resilience"] == "none"


def test_cli_reports_the_keys_and_state_of_an_interrupted_reencryption(tmp_path):
    """A checksum re-encryption killed in its hotzone: recovered exactly, and --check --json
    says which digests/keyslots and which state were used."""
    import json

    from byok.harness import crashenum

    base, c = _crashed(tmp_path, crashenum.Shape(), 20)
    pwf = tmp_path / "pass.txt"
    pwf.write_bytes(base.passphrase.reveal())
    r = subprocess.run([sys.executable, "-m", "byok.cli", "recover", str(c.image),
                        "--passphrase-file", str(pwf), "--check", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["reencryption"]["status"] == "crash" and doc["metadata_verified"] is True
    assert len(doc["keys"]) == 2 and doc["hotzone"]["resilience"] == "checksum"
    assert recovery.read_plaintext(c.image, base.passphrase, len(base.plain)) == base.plain
