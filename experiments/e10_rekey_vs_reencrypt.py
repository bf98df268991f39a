"""E10 — keyslot rekey vs full re-encryption: time vs size, and what each revokes (H6)."""

from byok import keys, luks, rotation
from byok.harness.registry import experiment


@experiment(
    "E10",
    title="Keyslot rekey vs full re-encryption: time vs volume size; what each revokes",
    hurdle="H6",
    hypothesis="A keyslot rekey takes about the same time at any volume size and leaves the "
    "volume key unchanged (it does not revoke a leaked volume key); full re-encryption takes "
    "time proportional to size and changes the volume key.",
    needs={"stack"},
    params={"sizes_mib": [64, 256, 1024]},
)
def run(ctx):
    svc = ctx.volumes(with_service=False)
    rekey_t, reenc_t = {}, {}
    for size in ctx.param("sizes_mib"):
        ctx.progress(f"{size} MiB")
        for mode in ("rekey", "reencrypt"):
            old, _ = ctx.user_key("alice", "aes512")
            new, _ = ctx.user_key("alice", "aes512")
            vol = svc.create(size << 20, old.href)
            path = svc.pool.path(vol.id)
            vk_before = luks.volume_key(path, keys.passphrase(svc.key(old)))
            if mode == "rekey":
                with ctx.timed():
                    rotation.rotate(svc, vol.id, new.href)
                rekey_t[size] = ctx.last_duration
            else:
                _, seconds = rotation.reencrypt(svc, vol.id, new.href)
                reenc_t[size] = seconds
            vk_after = luks.volume_key(path, keys.passphrase(svc.key(new)))
            same = vk_after == vk_before
            ctx.check(f"{size} MiB {mode}: volume key "
                      f"{'unchanged' if mode == 'rekey' else 'changed'}",
                      same if mode == "rekey" else not same)
            svc.delete(vol.id)
        ctx.measure(f"rekey_s:{size}", round(rekey_t[size], 3), "s")
        ctx.measure(f"reencrypt_s:{size}", round(reenc_t[size], 3), "s")
    sizes = ctx.param("sizes_mib")
    small, big = sizes[0], sizes[-1]
    ctx.measure("rekey_ratio_big_small", round(rekey_t[big] / rekey_t[small], 2), "x")
    ctx.measure("reencrypt_mib_s", round(big / reenc_t[big], 1), "MiB/s")
    ctx.check("rekey time barely depends on size (ratio < 2 across the sizes)",
              rekey_t[big] / rekey_t[small] < 2)
    ctx.check("re-encryption time grows with size", reenc_t[big] > 2 * reenc_t[small])
