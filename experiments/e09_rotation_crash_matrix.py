"""E09 — rotation crash matrix: kill -9 at every step, old or new key always opens (H6).

The named steps and random moments here are a sample; the exhaustive counterpart kills every
lifecycle operation that writes a volume, header, record or key bookkeeping (create with
escrow, add-escrow, rekey-clone, clone, snapshot, backup, restore, create from image, image from
raw, delete, and the castellan backend's consumer bookkeeping) at every counted call, and
checks the next call leaves the old or the new key opening the exact plaintext with record,
disk and Barbican agreeing: ``byok bench crash-lifecycle``, archived as LIFECYCLE_EVIDENCE and
cited in what this experiment records, with the same file's full run of rotation, re-encryption
and header restore at every write-type call (tests/reliability/test_byok_op_enumeration.py,
BYOK_CRASH_FULL=1).
"""

import random

from byok.common.errors import ByokError, WrongKey
from byok.harness import experiment

LIFECYCLE_EVIDENCE = "bench-crash-lifecycle-20261202.json"
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
    cite_exhaustive(ctx)


def cite_exhaustive(ctx) -> None:
    """The archived exhaustive enumeration, recorded next to this run's sample."""
    ev = ctx.lifecycle_crash_evidence(LIFECYCLE_EVIDENCE)
    note = f"{ev['path']} (byok bench crash-lifecycle, {ev['started']}): every counted call"
    ctx.measure("exhaustive_lifecycle_states_tried", ev["tried"], "states", note=note)
    ctx.measure("exhaustive_lifecycle_states_with_a_problem", ev["problems"], "states",
                note="a loss, a wrong byte, a dangling or missing consumer, record and disk "
                "disagreeing")
    if "rotation_tried" in ev:
        ctx.measure("exhaustive_rotation_states_tried", ev["rotation_tried"], "states",
                    note=f"{ev['path']}: rotate, reencrypt and header-restore killed at every "
                    "write-type call, 0 with a problem")
        for op, n in sorted(ev["rotation_tried_per_operation"].items()):
            ctx.measure(f"exhaustive_rotation_tried:{op}", n, "states")
    for op, n in sorted(ev["tried_per_operation"].items()):
        ctx.measure(f"exhaustive_lifecycle_tried:{op}", n, "states",
                    note=f"{ev['problems_per_operation'][op]} with a problem")
    ctx.note(f"Exhaustive crash enumeration (archived, {ev['path']}): {ev['tried']} crash "
             f"states over every lifecycle operation and the castellan consumer bookkeeping, "
             f"{ev['problems']} with a problem"
             + (f"; and {ev['rotation_tried']} states of rotate, reencrypt and header-restore "
                "at every write-type call, all passed." if "rotation_tried" in ev else "."))
