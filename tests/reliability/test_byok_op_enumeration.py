"""byok's own re-encryption, rotation and header restore, crashed at their write-type calls
one after another (write, fsync, fdatasync, rename — across byok and the cryptsetup it runs),
with a ground truth.

Three ways to die, through the fault injector (byok/harness/fault_inject.c):

* ``tree``: the process making the Nth call is stopped there and its whole process group with
  it (a host dying: nothing after call N happens);
* ``cryptsetup``: only cryptsetup dies at its Nth call; byok sees it fail and reports;
* ``torn``: cryptsetup's Nth write, a large data write, reaches the disk only in part.

After each crash: ``byok recover`` on the crashed image with the old and with the new key is
exact or refuses (never a wrong byte, and one of them recovers); resuming finishes; then the
data is exact under the recorded key, and after a completed re-encryption or rotation the old
key opens nothing — not the volume, not any header backup left in the pool. CI runs a sample;
``BYOK_CRASH_FULL=1`` (``byok bench crash``) every call. Counts go to "byok reliability counts".
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from byok.common.errors import ByokError, WrongKey
from byok.common.pattern import pattern
from byok.harness import crashenum as ce
from byok.keys import resolver as keys
from byok.lifecycle import rotation
from byok.lifecycle.volumes import Pool, VolumeService
from byok.luks import cryptsetup as luks
from byok.luks import recovery
from tests.reliability.conftest import count

pytestmark = pytest.mark.stack
FULL = os.environ.get("BYOK_CRASH_FULL") == "1"
DATA = 1 << 20


@pytest.fixture(scope="module")
def lab(tmp_path_factory, identities, stack, make_key):
    tmp = tmp_path_factory.mktemp("oplab")
    svc = VolumeService(Pool(tmp / "pool"), identities("alice"), endpoint=stack.cfg.barbican_url)
    ks = [make_key("alice")[0] for _ in range(3)]
    raw = tmp / "data.raw"
    raw.write_bytes(pattern(77, DATA))
    template = svc.create_from_image(svc.image_from_raw(raw, ks[0].href).id)
    pw = {k.href: keys.passphrase(svc.key(k)) for k in ks}
    yield svc, ks, pw, template, raw.read_bytes(), tmp
    for rec in svc.pool.list():
        with contextlib.suppress(ByokError):
            rotation.rotate(svc, rec.id, "", resume_only=True)
            svc.delete(rec.id)


def _cli(svc, args: list[str], env_extra: dict) -> subprocess.CompletedProcess:
    env = os.environ | {"BYOK_POOL_DIR": str(svc.pool.root)} | env_extra
    return subprocess.run([sys.executable, "-m", "byok.cli", *args, "--as", "alice"], env=env,
                          capture_output=True, text=True, timeout=600,
                          start_new_session=True)  # its own group: a "tree" kill stops it alone


def _recovers(path: Path, pw, plain: bytes) -> str:
    try:
        got = recovery.read_plaintext(path, pw, len(plain))
    except ByokError:  # WrongKey, RecoveryRefused, a header still missing: typed refusals
        return "refused"
    return "exact" if got == plain else "wrong"


def _old_key_locked_out(svc, rid: str, old_pw) -> None:
    path = svc.pool.path(rid)
    with pytest.raises(WrongKey):
        luks.test_key(path, old_pw)
    with pytest.raises(WrongKey):
        recovery.plan(path, passphrase=old_pw)
    for f in (svc.pool.root / "headers").glob(f"{rid}-*"):
        assert f.suffix == ".hdr", f"{f.name}: a leftover of the rotation"
        with pytest.raises(ByokError):
            luks.test_key(f, old_pw)


OPS = {
    # op: (the CLI that is crashed, the resume — in-process, what `--resume` runs)
    "reencrypt": (lambda v, new: ["volume", "reencrypt", v, "--key-ref", new],
                  lambda svc, v: rotation.reencrypt(svc, v, resume_only=True)),
    "rotate": (lambda v, new: ["volume", "rotate", v, "--key-ref", new],
               lambda svc, v: rotation.rotate(svc, v, "", resume_only=True)),
    "header-restore": (lambda v, new: ["volume", "header-restore", v],
                       lambda svc, v: svc.header_restore(v)),
}


def _fresh(svc, template, op: str):
    vol = svc.clone(template.id)
    if op == "header-restore":
        svc.header_backup(vol.id)
        with open(svc.pool.path(vol.id), "r+b") as f:
            f.write(bytes(64 << 10))  # the header is gone
    return vol


def _states(calls, variant: str, sample: int) -> list[tuple[int, int | None]]:
    """(call number, torn bytes) to inject, in the numbering of ``variant``."""
    if variant == "torn":
        big = [(n, size) for n, kind, size, exe in calls if kind == "write" and size >= 65536]
        picks = big if FULL else big[:: max(1, len(big) // max(1, sample // 2))]
        return [(n, cut) for n, size in picks for cut in ce.tear_points(size, (0.3, 0.7))]
    ns = [c[0] for c in calls]
    if FULL or len(ns) <= sample:
        return [(n, None) for n in ns]
    step = len(ns) / sample
    return [(ns[int(i * step)], None) for i in range(sample)]


CASES = [("reencrypt", "tree", 8), ("reencrypt", "cryptsetup", 4), ("reencrypt", "torn", 4),
         ("rotate", "tree", 5), ("header-restore", "tree", 3)]


@pytest.mark.parametrize(("op", "variant", "sample"), CASES,
                         ids=[f"{o}-{v}" for o, v, _ in CASES])
def test_crashed_at_every_call_resumes_exactly_and_locks_the_old_key_out(lab, op, variant,
                                                                         sample):
    svc, ks, pw, template, plain, tmp = lab
    old, new = ks[0].href, ks[1 if op != "rotate" else 2].href
    work = tmp / f"{op}-{variant}"
    work.mkdir(exist_ok=True)
    crash, resume = OPS[op]
    exe = None if variant == "tree" else "cryptsetup"
    # One uninterrupted run, counted: which calls there are (and which are large writes).
    probe = _fresh(svc, template, op)
    r = _cli(svc, crash(probe.id, new), ce.fault_env(work, 0, exe=exe, log=True))
    assert r.returncode == 0, r.stderr
    calls = ce.calls(work)
    svc.delete(probe.id)
    seen: dict[str, int] = {}
    for n, torn in _states(calls, variant, sample):
        vol = _fresh(svc, template, op)
        path = svc.pool.path(vol.id)
        r = _cli(svc, crash(vol.id, new),
                 ce.fault_env(work, n, exe=exe, torn=torn, group=variant == "tree"))
        started = any(rotation.journal_for(svc, vol.id).path.parent.glob(f"{vol.id}.*.json"))
        # The crashed image, offline, with each key: exact or refused, never wrong.
        by_key = {k: _recovers(path, pw[k], plain) for k in (old, new)}
        assert "wrong" not in by_key.values(), f"{op}/{variant}@{n}: {by_key}"
        if op != "header-restore":  # (there the header may still be missing: refused)
            assert "exact" in by_key.values(), f"{op}/{variant}@{n}: no key recovers: {by_key}"
        resume(svc, vol.id)  # a typed error here fails the test: resume must finish
        rec = svc.pool.load(vol.id)
        assert rec.state == "available"
        assert recovery.read_plaintext(path, pw[rec.key_ref], len(plain)) == plain
        if op == "reencrypt":  # once its journal exists, a re-encryption only goes forward
            assert rec.key_ref == new or not started, f"{op}/{variant}@{n}: rolled back"
        if rec.key_ref == new and op != "header-restore":
            _old_key_locked_out(svc, vol.id, pw[old])
        outcome = ("completed" if rec.key_ref == new else
                   "rolled back" if started else "not started") \
            if op != "header-restore" else "restored"
        key = f"{'crashed' if r.returncode else 'finished'}, {outcome}"
        seen[key] = seen.get(key, 0) + 1
        svc.delete(vol.id)
    total = sum(seen.values())
    count(f"crash states (byok {op}, {variant}): tried", total)
    for k, v in sorted(seen.items()):
        count(f"crash states (byok {op}, {variant}): {k}", v)
    count(f"crash states (byok {op}, {variant}): write-type calls in one run", len(calls))
    assert total >= min(sample, 2)
