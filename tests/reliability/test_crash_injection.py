"""Crash injection: kill -9 at every step of format, rotate, rekey, full re-encryption, clone,
restore and header restore — at byok's named crash points and at random moments inside
cryptsetup and the copies — >= 200 crashes in total. After each: the volume opens with the old
or the new key and its plaintext is unchanged; the next run completes or rolls back; copies
leave the source intact and either no record or a valid one."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time

import psutil
import pytest

from byok.common.errors import ByokError, WrongKey
from byok.common.pattern import pattern
from byok.keys import resolver as keys
from byok.lifecycle import rotation
from byok.lifecycle.volumes import Pool, VolumeService
from byok.luks import cryptsetup as luks
from tests.reliability.conftest import count, file_sha, plaintext_sha

pytestmark = pytest.mark.stack
RNG = random.Random(2026)


def _close_pools(svc) -> None:
    """In a forked child: drop inherited keep-alive sockets (the parent keeps its own)."""
    for ident in (svc.user, svc.service):
        if ident is not None:
            with contextlib.suppress(Exception):
                ident.session.session.close()


def crash(svc, op, *, point: str | None = None, delay: float | None = None,
          whole_tree: bool = True) -> tuple[str, float]:
    """Run ``op`` in a forked child and SIGKILL it (at ``point``, or after ``delay`` s).

    ``whole_tree`` also kills the child's cryptsetup (a power cut); otherwise an orphaned
    cryptsetup may finish on its own (the service process alone died)."""
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: no pytest, no cleanup, just the operation
        code = 0
        try:
            _close_pools(svc)
            if point:
                os.environ["BYOK_CRASH_AT"] = point
            op()
        except BaseException:
            code = 1
        os._exit(code)
    outcome = "finished"
    if delay is not None:
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return "finished", time.monotonic() - t0
            time.sleep(0.002)
        kids = descendants_of(pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if whole_tree:
            for k in kids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(k, signal.SIGKILL)
        else:  # the service died alone: let its orphaned cryptsetup finish before we look
            _wait_gone(kids)
        outcome = "killed"
    _, status = os.waitpid(pid, 0)
    elapsed = time.monotonic() - t0
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
        outcome = "killed"
    return outcome, elapsed


def killed(outcome: str) -> bool:
    count("crashes injected" if outcome == "killed" else "operations finished before kill")
    return outcome == "killed"


def _wait_gone(pids: list[int], timeout: float = 30.0) -> None:
    """Until every pid has exited (a zombie counts as exited: nobody may reap orphans here)."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.Error:
                break
            time.sleep(0.005)


def descendants_of(pid: int) -> list[int]:
    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


@pytest.fixture(scope="module")
def world(tmp_path_factory, identities, stack, make_key):
    tmp = tmp_path_factory.mktemp("crash")
    svc = VolumeService(Pool(tmp / "pool"), identities("alice"), endpoint=stack.cfg.barbican_url)
    keys_ = [make_key("alice")[0] for _ in range(6)]
    raw = tmp / "data.raw"
    raw.write_bytes(pattern(99, 2 << 20))
    template = svc.create_from_image(svc.image_from_raw(raw, keys_[0].href).id)
    pw = {k.href: keys.passphrase(svc.key(k)) for k in keys_}
    want = plaintext_sha(svc.pool.path(template.id), pw[keys_[0].href])
    yield svc, keys_, pw, template, want
    for rec in svc.pool.list():
        with contextlib.suppress(ByokError):
            if rec.state == "rotating":
                rotation.rotate(svc, rec.id, "", resume_only=True)
            svc.delete(rec.id)


def opens(path, pw) -> bool:
    try:
        luks.test_key(path, pw)
        return True
    except (WrongKey, ByokError):
        return False


def check_volume(svc, rid, pw, old_ref, new_ref, want) -> str:
    """After a crash: opens with old or new, plaintext unchanged; resume; consistent."""
    path = svc.pool.path(rid)
    o, n = opens(path, pw[old_ref]), opens(path, pw[new_ref])
    assert o or n, f"{rid}: opens with neither key after the crash"
    assert plaintext_sha(path, pw[old_ref] if o else pw[new_ref]) == want
    rec = rotation.rotate(svc, rid, "", resume_only=True)
    assert rec.state == "available" and not rotation.journal_for(svc, rid).path.exists()
    assert opens(path, pw[rec.key_ref])
    assert plaintext_sha(path, pw[rec.key_ref]) == want
    return "completed" if rec.key_ref == new_ref else "rolled-back"


def test_rotation_crashes_at_every_step_and_at_random(world):
    svc, keys_, pw, template, want = world
    old = keys_[0]  # the template's key
    outcomes: dict = {}
    duration = 0.3
    points = [p for p in (*rotation.PHASES[:-1], "saved") for _ in range(5)]
    injected, trials = 0, 0
    while injected < len(points) + 50:
        assert trials < 4 * (len(points) + 50), "crash points not reached: the loop would spin"
        point = points[injected] if injected < len(points) else None
        new = keys_[1 + trials % 3]
        trials += 1
        vol = svc.clone(template.id)
        delay = None if point else RNG.uniform(0.02, 0.9 * duration)
        outcome, elapsed = crash(svc, lambda v=vol.id, n=new.href: rotation.rotate(svc, v, n),
                                 point=point, delay=delay, whole_tree=trials % 2 == 0)
        if killed(outcome):
            injected += 1
        else:
            duration = elapsed  # calibrate the random kills to the operation's real length
        result = check_volume(svc, vol.id, pw, old.href, new.href, want)
        outcomes[result] = outcomes.get(result, 0) + 1
        svc.delete(vol.id)
    count("rotation crashes injected", injected)
    assert outcomes.get("completed") and outcomes.get("rolled-back")


def test_copy_operations_crash_leaving_source_intact(world):
    svc, keys_, pw, template, want = world
    bkp = svc.backup(template.id)
    before = {r.id for r in svc.pool.list()}
    src_sha = file_sha(svc.pool.path(template.id))
    bkp_sha = file_sha(svc.pool.path(bkp.id))
    ops = [("clone", lambda: svc.clone(template.id)),
           ("rekey-clone", lambda: svc.clone(template.id, key_ref=keys_[4].href)),
           ("restore", lambda: svc.restore(bkp.id)),
           ("create", lambda: svc.create(32 << 20, keys_[1].href))]
    for name, op in ops:
        injected, duration, trials = 0, 0.3, 0
        while injected < 25:
            trials += 1
            assert trials < 200, f"{name}: the kills never land (operation too fast?)"
            outcome, elapsed = crash(svc, op, delay=RNG.uniform(0.02, 0.9 * duration),
                                     whole_tree=RNG.random() < .5)
            if killed(outcome):
                injected += 1
            else:
                duration = elapsed
            assert file_sha(svc.pool.path(template.id)) == src_sha  # source untouched
            assert file_sha(svc.pool.path(bkp.id)) == bkp_sha
            for rec in svc.pool.list():
                if rec.id in before:
                    continue
                if rec.state == "rotating":  # a rekey clone killed mid-rotation
                    rec = rotation.rotate(svc, rec.id, "", resume_only=True)
                path = svc.pool.path(rec.id)
                assert opens(path, pw[rec.key_ref]), f"{name}: record {rec.id} does not open"
                if name != "create":
                    assert plaintext_sha(path, pw[rec.key_ref]) == want
                svc.delete(rec.id)
        count(f"{name} crashes injected", injected)


def test_header_restore_crashes(world):
    svc, _keys, pw, template, want = world
    vol = svc.clone(template.id)
    path = svc.pool.path(vol.id)
    svc.header_backup(vol.id)
    injected, duration, trials = 0, 0.05, 0
    while injected < 20:
        trials += 1
        assert trials < 200, "header restore: the kills never land"
        with open(path, "r+b") as f:
            f.write(bytes(64 << 10))  # the header is gone
        outcome, elapsed = crash(svc, lambda: svc.header_restore(vol.id),
                                 delay=RNG.uniform(0.005, 0.9 * duration))
        if killed(outcome):
            injected += 1
        else:
            duration = elapsed
        if not opens(path, pw[vol.key_ref]):
            svc.header_restore(vol.id)  # the next run finishes the job
        assert opens(path, pw[vol.key_ref])
        assert plaintext_sha(path, pw[vol.key_ref]) == want
    count("header-restore crashes injected", injected)
    svc.delete(vol.id)


def test_reencryption_crashes_resume_to_the_new_key(world):
    """kill -9 at re-encryption's named steps and at random moments (inside cryptsetup's own
    resilient reencryption too): the next run finishes it; the data is unchanged."""
    svc, keys_, pw, template, want = world
    old, new = keys_[0], keys_[5]
    points = ["reencrypt:started", "reencrypt:added", "reencrypt:reencrypted", "reencrypt:saved"]
    injected, trials, duration = 0, 0, 1.0
    outcomes: dict = {}
    while injected < 16:
        trials += 1
        assert trials < 80, "re-encryption: the kills never land"
        vol = svc.clone(template.id)
        point = points[injected] if injected < len(points) else None
        delay = None if point else RNG.uniform(0.05, 0.9 * duration)
        outcome, elapsed = crash(svc, lambda v=vol.id: rotation.reencrypt(svc, v, new.href),
                                 point=point, delay=delay, whole_tree=trials % 2 == 0)
        if killed(outcome):
            injected += 1
        else:
            duration = elapsed
        rec = rotation.rotate(svc, vol.id, "", resume_only=True)
        assert rec.state == "available"
        assert not rotation.reencrypt_journal_for(svc, vol.id).path.exists()
        path = svc.pool.path(vol.id)
        assert opens(path, pw[rec.key_ref]), f"{vol.id}: the recorded key does not open it"
        assert plaintext_sha(path, pw[rec.key_ref]) == want
        result = "completed" if rec.key_ref == new.href else "not started"
        outcomes[result] = outcomes.get(result, 0) + 1
        svc.delete(vol.id)
    count("re-encryption crashes injected", injected)
    assert outcomes.get("completed")
    assert old.href != new.href


def test_cryptsetups_own_reencryption_killed_at_random_is_always_finished_intact(world):
    """kill -9 ``cryptsetup reencrypt`` itself at random moments, 40 times, and let byok finish
    each from the header (rotation.finish_reencryption): the plaintext is unchanged every time.

    The random complement of tests/reliability/test_reencrypt_enumeration.py (which kills at
    every write). It covers the window where cryptsetup 2.6.1 must not be resumed: the last
    hotzone committed, the teardown not — resume would re-encrypt the finished data
    (design/upstream/cryptsetup-reencrypt-resume.md); byok finalises the metadata instead."""
    from byok.common import proc
    from byok.luks import header as luksheader
    from byok.luks import reencstate

    svc, keys_, pw, template, want = world
    p_old = pw[keys_[0].href]
    probe = svc.clone(template.id)
    t0 = time.monotonic()
    luks.reencrypt(svc.pool.path(probe.id), p_old, slot=luks.test_key(svc.pool.path(probe.id),
                                                                       p_old))
    full = time.monotonic() - t0
    svc.delete(probe.id)
    seen: dict[str, int] = {}
    for _ in range(40):
        vol = svc.clone(template.id)
        path = svc.pool.path(vol.id)
        slot = luks.test_key(path, p_old)
        p = proc.start([luks.CRYPTSETUP, "reencrypt", "--batch-mode", "--force-offline-reencrypt",
                        "--key-slot", str(slot), "--key-file=-", path], input=p_old)
        time.sleep(RNG.uniform(0.05, 1.05) * full)
        proc.kill_group(p)
        p.wait()
        count("crashes injected")
        count("re-encryption crashes injected")
        h = luksheader.read(str(path))
        st = reencstate.read(h)
        if st.status != reencstate.NONE:
            done = st.status == reencstate.CLEAN and all(
                d.id == st.digest_new for s in st.data
                for d in reencstate.digest_of_segment(h, s.id))
            state = "all data in the new key" if done else f"data in progress ({st.status})"
            how = rotation.finish_reencryption(path, p_old)
            assert reencstate.read(luksheader.read(str(path))).status == reencstate.NONE
        else:
            state, how = "not reencrypting", "-"
        assert plaintext_sha(path, p_old) == want, f"{state}: data changed after {how}"
        key = f"{state} -> {how}"
        seen[key] = seen.get(key, 0) + 1
        svc.delete(vol.id)
    for key, n in seen.items():
        count(f"cryptsetup reencrypt killed: {key}", n)
