"""E03 — through the castellan backend byok, Cinder's key calls never copy or delete (H2)."""

import time
import uuid

from byok.harness import experiment


@experiment(
    "E03",
    title="The service never deletes or copies a user key (castellan backend byok vs stock)",
    hurdle="H2",
    hypothesis="Replaying Cinder's key calls (clone_encryption_key = get + store for clone, backup "
    "and upload; delete_encryption_key on volume delete) through backend 'byok' leaves the "
    "user's Barbican secrets unchanged and the key alive, while the stock 'barbican' backend "
    "creates a copy per operation and deletes the user's own key.",
    needs={"stack"},
    params={"resolve_samples": 12},
)
def run(ctx):
    alice = ctx.user("alice")
    api = ctx.barbican("alice")
    for backend in ("barbican", "byok"):
        km = ctx.key_manager(backend)
        cctx = alice.castellan_context()
        ref, raw = ctx.user_key("alice", "aes512")
        before = api.count_secrets()
        vol = str(uuid.uuid4())
        with ctx.volume_scope(vol):
            km.get(cctx, ref.secret_id)  # the original volume's attach
        made = []
        for op in ("clone", "backup", "upload"):  # each makes a new resource of its own
            copy_vol = f"{op}-{uuid.uuid4()}"
            with ctx.volume_scope(copy_vol):
                made.append((copy_vol, km.store(cctx, km.get(cctx, ref.secret_id))))
        after_copies = api.count_secrets()
        consumers = {c["resource_id"] for c in api.consumers(ref)}
        for copy_vol, new_id in made:  # the copies are deleted
            with ctx.volume_scope(copy_vol):
                km.delete(cctx, new_id)
        with ctx.volume_scope(vol):
            km.delete(cctx, ref.secret_id)  # the original volume is deleted
        left = api.consumers(ref) if backend == "byok" else []
        made = [m for _, m in made]
        try:
            alive = ctx.resolve(ref, user="alice")
            alive_ok = alive.payload.reveal() == raw
        except Exception:
            alive_ok = False
        ctx.measure(f"secrets_created:{backend}", after_copies - before, "secrets")
        ctx.measure(f"copies_returned_same_id:{backend}",
                    sum(m == ref.secret_id for m in made), "of 3")
        ctx.measure(f"user_key_alive_after_delete:{backend}", alive_ok, "")
        if backend == "byok":
            ctx.check("byok: clone/backup/upload created no new secret", after_copies == before)
            ctx.check("byok: store(get(user key)) returned the user's own id every time",
                      all(m == ref.secret_id for m in made))
            ctx.check("byok: the user's key survives the volume delete, bytes unchanged", alive_ok)
            ctx.check("byok: every volume using the key was its consumer (1 + 3 copies)",
                      len(consumers) == 4, f"{len(consumers)} consumers")
            ctx.check("byok: deleting the volumes removed every consumer", left == [],
                      f"{len(left)} left")
            ctx.measure("consumers_while_in_use:byok", len(consumers), "consumers")
        else:
            ctx.check("stock barbican backend (contrast): each copy is a new secret",
                      after_copies - before == 3, f"{after_copies - before} new")
            ctx.check("stock barbican backend (contrast): volume delete deletes the user's key",
                      not alive_ok)
    # Resolve latency: castellan (new session per call) vs byok (session reused).
    ref, _ = ctx.user_key("alice", "aes512")
    km = ctx.key_manager("barbican")
    cctx = alice.castellan_context()
    resolver = ctx.resolver("alice")
    resolver.resolve(ref)
    km.get(cctx, ref.secret_id)
    t_c, t_b = [], []
    for _ in range(ctx.param("resolve_samples")):
        t0 = time.perf_counter()
        km.get(cctx, ref.secret_id).get_encoded()
        t_c.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        resolver.resolve(ref)
        t_b.append(time.perf_counter() - t0)
    t_c.sort()
    t_b.sort()
    ctx.measure("resolve_castellan_s", t_c[len(t_c) // 2], "s", samples=t_c, note="p50")
    ctx.measure("resolve_byok_s", t_b[len(t_b) // 2], "s", samples=t_b, note="p50")
    ctx.check("byok's resolve (session reuse) is faster than castellan's get",
              t_b[len(t_b) // 2] < t_c[len(t_c) // 2])
