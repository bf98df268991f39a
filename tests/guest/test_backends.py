"""The core attach on every guest backend this host can run, and Nova's native LUKS path.

Each backend the probe marks usable runs the same test: a user's key formats a new blank volume
(on the host, byok's guard), os-brick's encryptor opens it on dm-crypt in that backend's kernel,
a pattern is written and read back after a re-attach, a wrong key is refused; then the host
decrypts the volume file with dissect.fve, an independent reader. A backend the probe marks
unusable is reported with its reason (the terminal summary prints the whole table)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from byok.attach.hook import (
    AttachHook,
    attach_step,
    connection_info_for,
    detach_step,
    read_step,
    write_step,
)
from byok.common.errors import WrongKey
from byok.common.pattern import pattern, pattern_sha256
from byok.common.sensitive import Sensitive
from byok.guest import Guest, native, select
from byok.keys import resolver as keys

pytestmark = [pytest.mark.stack, pytest.mark.guest]
SIZE = 2 << 20


def dissect_read(path, passphrase: bytes, n: int) -> bytes:
    from dissect.fve.luks import LUKS

    with open(path, "rb") as f:
        v = LUKS(f)
        v.unlock_with_passphrase(passphrase)
        s = v.open()
        s.seek(0)
        return s.read(n)


@pytest.mark.parametrize("name", select.ORDER)
def test_core_attach_on_backend(name, all_verdicts, identities, make_key, blank_volume, capsys):
    verdict = all_verdicts[name]
    if not verdict.usable:
        # Reported, not skipped: the reason must say what is wrong here.
        assert verdict.reason and len(verdict.reason) > 10
        with capsys.disabled():
            print(f"\n  [{name}] unusable on this host: {verdict.reason}")
        return
    ref, _ = make_key("alice", "aes512")
    other, _ = make_key("alice", "aes512")
    vol = blank_volume(name)
    guest = Guest(backend=select.backend(name))
    hook = AttachHook(identities("alice"), guest=guest)
    enc = {"key_ref": ref.href, "provider": "luks2"}
    v = hook.prepare(connection_info_for(vol), enc, new_volume=True, policy="machine-key")
    w = AttachHook(identities("alice"), guest=guest, precheck=False).prepare(
        connection_info_for(vol), {"key_ref": other.href, "provider": "luks2"})
    run = hook.run([v, w], [
        attach_step(v, name="a1"), write_step(v, 21, SIZE, name="w"), detach_step(v, name="d1"),
        attach_step(v, name="a2"), read_step(v, SIZE, name="r"), detach_step(v, name="d2"),
        attach_step(w, name="wrong"),
    ])
    assert run.backend == name
    assert run.step("a1")["ok"] and run.step("a1")["mapper"].startswith("/dev/mapper/crypt-")
    assert run.step("r")["sha256"] == pattern_sha256(21, SIZE)
    assert not run.step("wrong")["ok"] and run.step("wrong")["detail"]["exit_code"] == 2
    assert dissect_read(vol, keys.passphrase(v.key).reveal(), SIZE) == pattern(21, SIZE)


def test_auto_backend_is_one_the_probe_passed(guest_backend, all_verdicts):
    assert all_verdicts[guest_backend.name].usable


def test_nova_native_luks_path_reads_what_dm_crypt_wrote(all_verdicts, identities, make_key,
                                                        blank_volume):
    """Nova's libvirt driver attaches LUKS1 volumes natively (QEMU's luks driver, passphrase in a
    libvirt secret): the guest sees plaintext without dm-crypt. Written through os-brick on
    dm-crypt, read through QEMU's driver: the same bytes."""
    qemu = next((n for n in ("qemu-kvm", "qemu-tcg") if all_verdicts[n].usable), None)
    assert qemu, "no QEMU backend is usable here: " + "; ".join(
        all_verdicts[n].line() for n in ("qemu-kvm", "qemu-tcg"))
    ref, _ = make_key("alice", "aes256")
    vol = blank_volume("native")
    hook = AttachHook(identities("alice"))
    v = hook.prepare(connection_info_for(vol), {"key_ref": ref.href, "provider": "luks"},
                     new_volume=True, policy="machine-key")
    run = hook.run([v], [attach_step(v), write_step(v, 33, SIZE), detach_step(v)])
    assert run.step(f"write:{v.volume_id}")["sha256"] == pattern_sha256(33, SIZE)
    passphrase = keys.passphrase(v.key)  # hex of the key, exactly as Nova derives it
    sha, used = native.native_sha256(vol, passphrase, SIZE)
    assert used in ("qemu-kvm", "qemu-tcg")
    assert sha == pattern_sha256(33, SIZE)
    # Another key: QEMU's driver refuses to open it, the guest never starts its job.
    with pytest.raises(WrongKey, match="QEMU's LUKS driver"):
        native.native_sha256(vol, Sensitive(b"00" * 32), SIZE)


def test_host_backend_runs_on_a_kernel_with_device_mapper(guest_backend):
    """This host's kernel has no device-mapper, so the ``host`` backend (what a Vagrant VM or a
    devstack node uses) runs here inside a guest kernel that has one: its probe, and os-brick's
    encryptor on loop devices, for real."""
    script = Path(__file__).with_name("host_backend_job.py")
    run = Guest().run([{"op": "shell", "argv": [sys.executable, str(script)], "timeout": 400,
                        "name": "nested"}])
    step = run.step("nested")
    assert step["exit_code"] == 0, step["stderr"]
    doc = json.loads(step["stdout"].strip().splitlines()[-1])
    assert doc["verdict"]["usable"], doc["verdict"]
    assert doc["backend"] == "host"
    assert doc["ok"] == ["a1", "w", "d1", "a2", "r", "d2"]
    assert doc["read"] == doc["want"]
    assert doc["link_outside_dev"]  # the /dev link went to a scratch dir, not the host's /dev
    assert doc["loops_left"] == ""  # every loop device detached


KILLED_PARENT = """
import sys, pathlib, time
from byok.guest import Guest, select
mark = pathlib.Path(sys.argv[2])
def hold(token):
    mark.write_text("waiting")
    time.sleep(3600)
Guest(backend=select.backend(sys.argv[1])).run(
    [{"op": "wait", "token": "hold", "name": "w"}], on_wait=hold)
"""


@pytest.mark.parametrize("name", ["uml", "uml-newer", "qemu-tcg"])
def test_a_killed_byok_leaves_no_guest_process(name, all_verdicts, tmp_path):
    """SIGKILL the process that runs a guest while the guest waits: the kernel tells the
    supervisor, which kills the guest and everything the guest forked (UML's helpers too)."""
    import subprocess
    import time

    import psutil

    if not all_verdicts[name].usable:
        return  # reported by test_core_attach_on_backend
    mark = tmp_path / "mark"
    p = subprocess.Popen([sys.executable, "-c", KILLED_PARENT, name, str(mark)])
    deadline = time.monotonic() + 240
    while not mark.exists() and time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.2)
    assert mark.exists(), "the guest never reached its wait step"
    sessions = {c.pid for c in psutil.Process(p.pid).children()}
    members = [q for q in psutil.process_iter(["pid"]) if _sid(q.pid) in sessions]
    assert len(members) >= 2  # the supervisor and the guest at least
    p.kill()
    p.wait()
    for _ in range(100):
        left = [q.pid for q in psutil.process_iter(["pid"]) if _sid(q.pid) in sessions]
        if not left:
            break
        time.sleep(0.1)
    assert left == [], f"{name}: processes of the killed run's guest survived: {left}"


def _sid(pid: int) -> int | None:
    import os

    try:
        return os.getsid(pid)
    except OSError:
        return None
