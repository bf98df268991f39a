"""E09 — rotation crash matrix: kill -9 at every step, old or new key always opens (H6)."""

import os
import random
import signal
import sys
import time

from byok.common import proc
from byok.common.errors import ByokError, WrongKey
from byok.harness.registry import experiment
from byok.keys import resolver as keys
from byok.lifecycle import rotation
from byok.luks import cryptsetup as luks

POINTS = ("started", "backed-up", "added", "verified", "removed", "saved")


def _opens(svc, rid, ref) -> bool:
    try:
        luks.test_key(svc.pool.path(rid), keys.passphrase(svc.key(ref)))
        return True
    except (WrongKey, ByokError):
        return False


@experiment(
    "E09",
    title="Rotation crash matrix: kill -9 at every step (and at random moments)",
    hurdle="H6",
    hypothesis="Killing a rotation with SIGKILL after any step, or at a random moment inside "
    "cryptsetup, leaves a volume that opens with the old or the new key (never neither), and "
    "the next run completes the rotation or rolls it back to a consistent record.",
    needs={"stack"},
    params={"random_kills": 6},
)
def run(ctx):
    svc = ctx.volumes(with_service=False)
    who = ["--cloud", f"{ctx.env.cloud}-alice"] if ctx.env.cloud else ["--as", "alice"]
    base = [sys.executable, "-m", "byok.cli", "volume", "--pool", str(svc.pool.root), "rotate"]
    lost = 0
    cases = [(lt, p) for lt in ("luks2", "luks1") for p in POINTS
             if lt == "luks2" or p in ("added", "verified", "removed")]
    cases += [("random", f"t{i}") for i in range(ctx.param("random_kills"))]
    rng = random.Random(9)
    for luks_type, point in cases:
        ctx.progress(f"crash {luks_type} at {point}")
        old, _ = ctx.user_key("alice", "aes512")
        new, _ = ctx.user_key("alice", "aes512")
        rec = svc.create(48 << 20, old.href, provider=luks.TYPE_TO_PROVIDER.get(luks_type, "luks2"))
        cmd = [*base, rec.id, "--key-ref", new.href, *who]
        env = dict(os.environ)
        if luks_type == "random":
            p = proc.start(cmd, env=env)  # its own process group: the kill is a power cut
            time.sleep(rng.uniform(0.3, 2.5))
            proc.kill_group(p)
            p.communicate()
        else:
            env["BYOK_CRASH_AT"] = point
            r = proc.run(cmd, env=env, check=False, timeout=120, what="byok volume rotate")
            ctx.check(f"{luks_type}/{point}: the process was killed at that point",
                      r.returncode == -signal.SIGKILL, r.err[-200:])
        opens_old, opens_new = _opens(svc, rec.id, old), _opens(svc, rec.id, new)
        if not (opens_old or opens_new):
            lost += 1
        ctx.check(f"{luks_type}/{point}: after the crash the volume opens with old or new key",
                  opens_old or opens_new)
        env.pop("BYOK_CRASH_AT", None)
        r = proc.run([*base, rec.id, "--resume", *who], env=env, check=False, timeout=120,
                     what="byok volume rotate --resume")
        final = svc.pool.load(rec.id)
        ok = (r.returncode == 0 and final.state == "available"
              and not rotation.journal_for(svc, rec.id).path.exists()
              and _opens(svc, rec.id, svc.resolver.parse(final.key_ref)))
        ctx.check(f"{luks_type}/{point}: resume leaves a consistent record whose key opens it",
                  ok, r.err[-200:])
        outcome = ("completed" if final.key_ref == new.href else "rolled-back") if ok else "LOST"
        ctx.measure(f"outcome:{luks_type}:{point}", outcome, "")
    ctx.measure("crashes_injected", len(cases), "crashes")
    ctx.measure("volumes_lost", lost, "volumes")
