"""E06 — clones share the key (or rekey only the keyslot); parallel clones don't serialise (H4)."""

import threading
import time

from byok.common.errors import WrongKey
from byok.harness import experiment


@experiment(
    "E06",
    title="Clone with the same key / another key; parallel clones of one source",
    hurdle="H4",
    hypothesis="A clone with the same ref shares the user's key (a consumer, no new secret, same "
    "volume key); a rekeyed clone opens only with the new key but keeps the source's volume "
    "key; with per-volume shared locks, N parallel clones of one source do not wait for each "
    "other's locks and a clone of another volume does not wait for them, while under one global "
    "lock both queue (lock waits measured; total copy time is bounded by the disk either way).",
    needs={"stack"},
    params={"size_mib": 256, "data_mib": 96, "parallel": 4},
)
def run(ctx):
    svc = ctx.volumes(with_service=False)
    api = ctx.barbican("alice")
    ref, _ = ctx.user_key("alice", "aes512")
    new, _ = ctx.user_key("alice", "aes512")
    src = svc.create(ctx.param("size_mib") << 20, ref.href)
    path = svc.pool.path(src.id)
    # "written data": random ciphertext after the header
    ctx.fill_random(path, ctx.luks_dump(path).data_offset, ctx.param("data_mib") << 20)
    pw = ctx.passphrase(svc.key(ref))
    vk = ctx.volume_key(path, pw)
    before = api.count_secrets()
    with ctx.timed("clone_s"):
        same = svc.clone(src.id)
    ctx.check("same-key clone: no new Barbican secret", api.count_secrets() == before)
    ctx.check("same-key clone: the clone shares the ref and the volume key",
              same.key_ref == ref.href and ctx.volume_key(svc.pool.path(same.id), pw) == vk)
    ctx.check("same-key clone: registered as a consumer of the key",
              any(c["resource_id"] == same.id for c in api.consumers(ref)))
    with ctx.timed("rekeyed_clone_s"):
        rk = svc.clone(src.id, key_ref=new.href)
    rk_path = svc.pool.path(rk.id)
    new_pw = ctx.passphrase(svc.key(new))
    ctx.check("rekeyed clone opens with the new key", ctx.test_key(rk_path, new_pw) >= 0)
    try:
        ctx.test_key(rk_path, pw)
        old_opens = True
    except WrongKey:
        old_opens = False
    ctx.check("rekeyed clone no longer opens with the source's key", not old_opens)
    ctx.check("rekeyed clone keeps the source's VOLUME key (a keyslot change, not a re-encryption)",
              ctx.volume_key(rk_path, new_pw) == vk)
    n = ctx.param("parallel")
    bystander = svc.create(48 << 20, ref.href)  # another volume, unrelated to the big source
    for mode in ("per-volume", "global"):
        msvc = ctx.volumes(with_service=False, lock_mode=mode)
        bsvc = ctx.volumes(with_service=False, lock_mode=mode)  # the bystander's own service
        errors: list = []
        timing: dict = {}
        by_label = {"src": msvc, "other": bsvc}

        def clone(rid, label, errors=errors, timing=timing, by_label=by_label):
            t0 = time.perf_counter()
            try:
                by_label[label].clone(rid)
            except Exception as e:  # counted below
                errors.append(e)
            timing.setdefault(label, []).append(time.perf_counter() - t0)

        threads = [threading.Thread(target=clone, args=(src.id, "src")) for _ in range(n)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        time.sleep(0.05)
        other = threading.Thread(target=clone, args=(bystander.id, "other"))
        other.start()
        for t in [*threads, other]:
            t.join()
        wall = time.perf_counter() - t0
        ctx.measure(f"parallel_clone_wall_s:{mode}", round(wall, 3), "s", note=f"N={n}",
                    samples=timing.get("src", []))
        ctx.measure(f"bystander_clone_s:{mode}", round(timing["other"][0], 3), "s",
                    note="a clone of an unrelated volume started while the N clones run")
        ctx.check(f"{mode} lock: all {n + 1} parallel clones succeeded", not errors,
                  str(errors[:1]))
        waits = sorted(msvc.lock_waits)
        ctx.measure(f"lock_wait_max_s:{mode}", round(waits[-1], 3), "s", samples=waits,
                    note=f"time each of the {n} copies of the source waited for its read lock")
        ctx.measure(f"bystander_lock_wait_s:{mode}", round(bsvc.lock_waits[0], 3), "s",
                    note="time the unrelated volume's clone waited for its lock")
    m = {k: ctx.result.measurement(k).value for k in (
        "parallel_clone_wall_s:per-volume", "parallel_clone_wall_s:global",
        "bystander_clone_s:per-volume", "bystander_clone_s:global")}
    ctx.measure("bystander_wait_ratio_global_vs_per_volume",
                round(m["bystander_clone_s:global"] / m["bystander_clone_s:per-volume"], 1), "x")
    b_pv = ctx.result.measurement("bystander_lock_wait_s:per-volume").value
    b_gl = ctx.result.measurement("bystander_lock_wait_s:global").value
    ctx.check("an unrelated volume's clone does not wait for N clones of another source under "
              "per-volume locks (it does under one global lock)",
              b_pv * 5 <= b_gl, f"lock wait {b_pv:.3f} s vs {b_gl:.3f} s")
    w_pv = ctx.result.measurement("lock_wait_max_s:per-volume").value
    w_gl = ctx.result.measurement("lock_wait_max_s:global").value
    ctx.check("N parallel clones of one source do not serialise on a lock: under shared "
              "per-volume locks the longest lock wait is a fraction of the global lock's",
              w_pv * 5 <= w_gl, f"{w_pv:.3f} s vs {w_gl:.3f} s")
    ctx.measure("parallel_wall_ratio_per_volume_vs_global",
                round(m["parallel_clone_wall_s:per-volume"] / m["parallel_clone_wall_s:global"],
                      2), "x")
    ctx.note("Total wall time of the N copies is bounded by this machine's one disk either way "
             "(concurrent copies and fsyncs can even take longer in total than serialised "
             "ones); the lock discipline decides who waits: under a global lock every copy and "
             "every unrelated volume queues behind the others.")
