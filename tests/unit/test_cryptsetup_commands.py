"""The exact cryptsetup command lines byok runs and how cryptsetup's answers are classified,
through proc's executor seam (os-brick's ``execute=`` pattern): no cryptsetup runs here. The
integration tier runs the real program on real files; these pin the contract."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from byok.common import proc
from byok.common.errors import (
    CommandFailed,
    CommandTimeout,
    DeviceMapperUnavailable,
    HeaderCorrupt,
    NotLuks,
    VolumeBusy,
    WrongKey,
)
from byok.common.sensitive import Sensitive
from byok.luks import cryptsetup as luks

PW = Sensitive(b"ab" * 32)


@dataclass
class CannedExecutor:
    """Answers each command with a canned (exit, stdout, stderr) and records what was asked."""

    answers: list[tuple[int, bytes, bytes]]
    calls: list[proc.Call] = field(default_factory=list)

    def __call__(self, call: proc.Call) -> tuple[int, bytes, bytes]:
        self.calls.append(call)
        return self.answers.pop(0) if self.answers else (0, b"", b"")


def _argv(call: proc.Call) -> list[str]:
    return [call.argv[0].rsplit("/", 1)[-1], *call.argv[1:]]


@pytest.mark.parametrize(("policy", "pbkdf_args"), [
    ("machine-key", ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]),
    ("passphrase", ["--pbkdf", "argon2id", "--pbkdf-force-iterations", "4",
                    "--pbkdf-memory", "131072", "--pbkdf-parallel", "1"]),
    ("osbrick-default", []),
])
def test_format_command_line_per_policy(tmp_path, policy, pbkdf_args, monkeypatch):
    vol = tmp_path / "v.img"
    vol.touch()  # empty: nothing to protect
    canned = CannedExecutor([(0, b"", b"")])
    monkeypatch.setattr(luks, "dump", lambda *a, **k: "dumped")
    with proc.executor(canned):
        luks.format(vol, PW, policy=policy)
    (call,) = canned.calls
    assert _argv(call) == ["cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2",
                           "--cipher", "aes-xts-plain64", "--key-size", "512", *pbkdf_args,
                           "--key-file=-", str(vol)]
    assert call.stdin == PW.reveal()  # the key travels on stdin, never in argv
    assert not any(PW.reveal().decode() in a for a in call.argv)


def test_luks1_falls_back_to_pbkdf2(tmp_path, monkeypatch):
    vol = tmp_path / "v.img"
    vol.touch()
    canned = CannedExecutor([(0, b"", b"")])
    monkeypatch.setattr(luks, "dump", lambda *a, **k: "dumped")
    with proc.executor(canned):
        luks.format(vol, PW, luks_type="luks1", policy="passphrase")
    assert "--iter-time" in canned.calls[0].argv and "--pbkdf" not in canned.calls[0].argv


@pytest.mark.parametrize(("sector_size", "sector_args"), [
    (None, []), (512, ["--sector-size", "512"]), (4096, ["--sector-size", "4096"])])
def test_encrypt_file_command_line(tmp_path, monkeypatch, sector_size, sector_args):
    raw, out = tmp_path / "raw.img", tmp_path / "out.img"
    raw.write_bytes(bytes(8192))
    canned = CannedExecutor([(0, b"", b"")])
    monkeypatch.setattr(luks, "dump", lambda *a, **k: SimpleNamespace(data_offset=16 << 20))
    with proc.executor(canned):
        luks.encrypt_file(raw, out, PW, sector_size=sector_size)
    (call,) = canned.calls
    assert _argv(call) == ["cryptsetup", "reencrypt", "--encrypt", "--type", "luks2",
                           "--batch-mode", "--force-offline-reencrypt", "--reduce-device-size",
                           "32M", "--cipher", "aes-xts-plain64", "--key-size", "512",
                           *sector_args, "--pbkdf", "pbkdf2", "--pbkdf-force-iterations",
                           "1000", "--key-file=-", str(out)]
    assert call.stdin == PW.reveal()
    assert out.stat().st_size == (16 << 20) + 8192  # cut to data offset + the raw file


def test_test_key_reads_the_slot_from_verbose_output(tmp_path):
    vol = tmp_path / "v.img"
    vol.write_bytes(b"\0" * 4096)
    canned = CannedExecutor([(0, b"", b"Key slot 3 unlocked.\nCommand successful.\n")])
    with proc.executor(canned):
        assert luks.test_key(vol, PW) == 3
    assert _argv(canned.calls[0]) == ["cryptsetup", "open", "--test-passphrase", "--verbose",
                                      "--key-file=-", str(vol)]


@pytest.mark.parametrize(("code", "stderr", "error"), [
    (2, b"No key available with this passphrase.\n", WrongKey),
    (1, b"Cannot initialize device-mapper. Is dm_mod kernel module loaded?\n",
     DeviceMapperUnavailable),
    (1, b"No usable keyslot is available.\n", HeaderCorrupt),
    (5, b"Device v is in use.\n", VolumeBusy),
    (1, b"Device /x is not a valid LUKS device.\n", NotLuks),
    (4, b"something nobody expected\n", CommandFailed),
])
def test_cryptsetup_answers_become_typed_errors(tmp_path, code, stderr, error):
    vol = tmp_path / "v.img"
    vol.write_bytes(b"\0" * 8192)  # no LUKS magic anywhere: "not a valid LUKS" is NotLuks
    with proc.executor(CannedExecutor([(code, b"", stderr)])), pytest.raises(error) as e:
        luks.test_key(vol, PW)
    assert type(e.value) is error
    assert PW.reveal().decode() not in str(e.value)


def test_a_timeout_is_its_own_kind():
    def slow(call: proc.Call) -> tuple[int, bytes, bytes]:
        raise proc._TimedOut(b"", b"partial")

    with proc.executor(slow), pytest.raises(CommandTimeout):
        proc.run(["true"], timeout=1)
