"""E06 — clones share the key (or rekey only the keyslot); parallel clones don't serialise (H4)."""

import os
import threading
import time

from byok import keys, luks
from byok.barbican_api import BarbicanAPI
from byok.errors import WrongKey
from byok.harness.registry import experiment


@experiment(
    "E06",
    title="Clone with the same key / another key; parallel clones of one source",
    hurdle="H4",
    hypothesis="A clone with the same ref shares the user's key (a consumer, no new secret, same "
    "volume key); a rekeyed clone opens only with the new key but keeps the source's volume "
    "key; with per-volume shared locks, N parallel clones of one source do not serialise and do "
    "not hold up other volumes' operations, which one global lock does.",
    needs={"stack"},
    params={"size_mib": 256, "data_mib": 96, "parallel": 4},
)
def run(ctx):
    svc = ctx.volumes(with_service=False)
    api = BarbicanAPI(ctx.user("alice"), ctx.env.barbican_url)
    ref, _ = ctx.user_key("alice", "aes512")
    new, _ = ctx.user_key("alice", "aes512")
    src = svc.create(ctx.param("size_mib") << 20, ref.href)
    path = svc.pool.path(src.id)
    offset = luks.dump(path).data_offset
    with open(path, "r+b") as f:  # "written data": random ciphertext after the header
        f.seek(offset)
        for _ in range(ctx.param("data_mib")):
            f.write(os.urandom(1 << 20))
    pw = keys.passphrase(svc.key(ref))
    vk = luks.volume_key(path, pw)
    before = api.count_secrets()
    with ctx.timed("clone_s"):
        same = svc.clone(src.id)
    ctx.check("same-key clone: no new Barbican secret", api.count_secrets() == before)
    ctx.check("same-key clone: the clone shares the ref and the volume key",
              same.key_ref == ref.href and luks.volume_key(svc.pool.path(same.id), pw) == vk)
    ctx.check("same-key clone: registered as a consumer of the key",
              any(c["resource_id"] == same.id for c in api.consumers(ref)))
    with ctx.timed("rekeyed_clone_s"):
        rk = svc.clone(src.id, key_ref=new.href)
    rk_path = svc.pool.path(rk.id)
    new_pw = keys.passphrase(svc.key(new))
    ctx.check("rekeyed clone opens with the new key", luks.test_key(rk_path, new_pw) >= 0)
    try:
        luks.test_key(rk_path, pw)
        old_opens = True
    except WrongKey:
        old_opens = False
    ctx.check("rekeyed clone no longer opens with the source's key", not old_opens)
    ctx.check("rekeyed clone keeps the source's VOLUME key (a keyslot change, not a re-encryption)",
              luks.volume_key(rk_path, new_pw) == vk)
    n = ctx.param("parallel")
    bystander = svc.create(48 << 20, ref.href)  # another volume, unrelated to the big source
    for mode in ("per-volume", "global"):
        msvc = ctx.volumes(with_service=False, lock_mode=mode)
        errors: list = []
        timing: dict = {}

        def clone(rid, label, s=msvc, errors=errors, timing=timing):
            t0 = time.perf_counter()
            try:
                s.clone(rid)
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
    m = {k: ctx.result.measurement(k).value for k in (
        "parallel_clone_wall_s:per-volume", "parallel_clone_wall_s:global",
        "bystander_clone_s:per-volume", "bystander_clone_s:global")}
    ctx.measure("bystander_wait_ratio_global_vs_per_volume",
                round(m["bystander_clone_s:global"] / m["bystander_clone_s:per-volume"], 1), "x")
    ctx.check("an unrelated volume's clone is not held up by N clones of another source under "
              "per-volume locks (it is under one global lock)",
              m["bystander_clone_s:per-volume"] < m["bystander_clone_s:global"],
              f"{m['bystander_clone_s:per-volume']:.2f} s vs {m['bystander_clone_s:global']:.2f} s")
    ctx.check("N parallel clones of one source are not slower under the shared lock",
              m["parallel_clone_wall_s:per-volume"] <= 1.15 * m["parallel_clone_wall_s:global"],
              f"{m['parallel_clone_wall_s:per-volume']:.2f} s vs "
              f"{m['parallel_clone_wall_s:global']:.2f} s")
    ctx.note("Copying saturates this machine's disk either way, so N clones of one source take "
             "about as long in total under either lock; what a global lock costs is everybody "
             "else's waiting.")
