"""E09 — rotation crash matrix: kill -9 at every step, old or new key always opens (H6)."""

import random

from byok.common.errors import ByokError, WrongKey
from byok.harness import experiment

POINTS = ("started", "backed-up", "added", "verified", "removed", "saved")


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

    def opens(rid, ref) -> bool:
        try:
            ctx.test_key(svc.pool.path(rid), ctx.passphrase(svc.key(ref)))
            return True
        except (WrongKey, ByokError):
            return False

    lost = 0
    cases = [(lt, p) for lt in ("luks2", "luks1") for p in POINTS
             if lt == "luks2" or p in ("added", "verified", "removed")]
    cases += [("random", f"t{i}") for i in range(ctx.param("random_kills"))]
    rng = random.Random(9)
    for luks_type, point in cases:
        ctx.progress(f"crash {luks_type} at {point}")
        old, _ = ctx.user_key("alice", "aes512")
        new, _ = ctx.user_key("alice", "aes512")
        provider = ctx.provider_for("luks2" if luks_type == "random" else luks_type)
        rec = svc.create(48 << 20, old.href, provider=provider)
        rotate = ["volume", "--pool", str(svc.pool.root), "rotate", rec.id]
        if luks_type == "random":  # a power cut for the whole process group, cryptsetup too
            ctx.kill_during([*rotate, "--key-ref", new.href], after=rng.uniform(0.3, 2.5))
        else:
            r = ctx.kill_during([*rotate, "--key-ref", new.href], at=point)
            ctx.check(f"{luks_type}/{point}: the process was killed at that point",
                      r.killed, r.err[-200:])
        opens_old, opens_new = opens(rec.id, old), opens(rec.id, new)
        if not (opens_old or opens_new):
            lost += 1
        ctx.check(f"{luks_type}/{point}: after the crash the volume opens with old or new key",
                  opens_old or opens_new)
        r = ctx.byok_cli([*rotate, "--resume"])
        final = svc.pool.load(rec.id)
        ok = (r.returncode == 0 and final.state == "available"
              and not ctx.rotation_pending(svc, rec.id)
              and opens(rec.id, svc.resolver.parse(final.key_ref)))
        ctx.check(f"{luks_type}/{point}: resume leaves a consistent record whose key opens it",
                  ok, r.err[-200:])
        outcome = ("completed" if final.key_ref == new.href else "rolled-back") if ok else "LOST"
        ctx.measure(f"outcome:{luks_type}:{point}", outcome, "")
    ctx.measure("crashes_injected", len(cases), "crashes")
    ctx.measure("volumes_lost", lost, "volumes")
