"""E10 — keyslot rekey vs full re-encryption: time vs size, what each revokes, and whether an
interrupted re-encryption can always be finished (H6)."""

import random
import time

from byok.common import proc
from byok.common.pattern import pattern
from byok.harness.registry import experiment
from byok.keys import resolver as keys
from byok.lifecycle import rotation
from byok.luks import cryptsetup as luks
from byok.luks import recovery


@experiment(
    "E10",
    title="Keyslot rekey vs full re-encryption: time vs volume size; what each revokes",
    hurdle="H6",
    hypothesis="A keyslot rekey takes about the same time at any volume size and leaves the "
    "volume key unchanged (it does not revoke a leaked volume key); full re-encryption takes "
    "time proportional to size and changes the volume key; a re-encryption killed at any "
    "moment can be finished with the data intact.",
    needs={"stack"},
    params={"sizes_mib": [64, 256, 1024], "reencrypt_kills": 40},
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

    _interrupted_reencryptions(ctx, svc)


def _interrupted_reencryptions(ctx, svc) -> None:
    """kill -9 cryptsetup's offline reencryption at random moments; finish each as byok does
    (resume, repair, or rebuild the header around the verified new key) and count how."""
    key, _ = ctx.user_key("alice", "aes512")
    pw = keys.passphrase(svc.key(key))
    raw = ctx.scratch / "e10.raw"
    raw.write_bytes(pattern(10, 8 << 20))
    image = svc.image_from_raw(raw, key.href)
    probe = svc.create_from_image(image.id)
    t0 = time.monotonic()
    luks.reencrypt(svc.pool.path(probe.id), pw, slot=luks.test_key(svc.pool.path(probe.id), pw))
    full = time.monotonic() - t0
    svc.delete(probe.id)
    rng = random.Random(10)
    how: dict[str, int] = {}
    plain: dict[str, int] = {}  # what cryptsetup's own resume does, on a copy, for contrast
    intact = 0
    kills = ctx.param("reencrypt_kills")
    for _ in range(kills):
        vol = svc.create_from_image(image.id)
        path = svc.pool.path(vol.id)
        p = proc.start([luks.CRYPTSETUP, "reencrypt", "--batch-mode", "--force-offline-reencrypt",
                        "--key-slot", str(luks.test_key(path, pw)), "--key-file=-", path],
                       input=pw)
        time.sleep(rng.uniform(0.05, 1.05) * full)
        proc.kill_group(p)
        p.wait()
        if luks.dump(path).reencrypting:
            alone = _cryptsetup_resume_alone(ctx, path, pw, raw)
            plain[alone] = plain.get(alone, 0) + 1
            done = rotation.finish_interrupted_reencryption(svc, vol.id, pw, "machine-key")
        else:
            done = "finished before the kill"
        how[done] = how.get(done, 0) + 1
        out = ctx.scratch / "e10.plain"
        recovery.recover(path, out, passphrase=pw)
        intact += out.read_bytes()[: raw.stat().st_size] == raw.read_bytes()
        out.unlink()
        svc.delete(vol.id)
    for k, n in sorted(how.items()):
        ctx.measure(f"interrupted_reencryption:{k}", n, "of " + str(kills))
    for k, n in sorted(plain.items()):
        ctx.measure(f"cryptsetup_resume_alone:{k}", n, "of " + str(kills),
                    note="contrast: plain cryptsetup reencrypt --resume-only on a copy")
    ctx.check(f"every one of {kills} killed re-encryptions was finished with the data intact",
              intact == kills, f"{intact}/{kills} intact; {how}")


def _cryptsetup_resume_alone(ctx, path, pw, raw) -> str:
    """What ``cryptsetup reencrypt --resume-only`` alone makes of a copy of the killed volume."""
    from byok.common import sparse
    from byok.common.errors import ByokError

    copy = ctx.scratch / "e10-copy.img"
    copy.unlink(missing_ok=True)
    sparse.copy_sparse(path, copy)
    try:
        luks.reencrypt(copy, pw, resume=True)
    except ByokError:
        copy.unlink()
        return "refused"
    if luks.dump(copy).reencrypting:
        copy.unlink()
        return "refused"
    out = ctx.scratch / "e10-copy.plain"
    try:
        recovery.recover(copy, out, passphrase=pw)
        ok = out.read_bytes()[: raw.stat().st_size] == raw.read_bytes()
    except ByokError:
        ok = False
    out.unlink(missing_ok=True)
    copy.unlink()
    return "finished, data intact" if ok else "finished, DATA DESTROYED"
