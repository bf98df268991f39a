"""E13 — offline recovery with only the user's key; escrow both ways (H9)."""

import re
import time

from byok import keys, proc, recovery
from byok.barbican_api import BarbicanAPI
from byok.errors import WrongKey
from byok.harness.registry import experiment
from byok.pattern import pattern
from byok.sensitive import Sensitive


def _openssl_mb_s(sector: int) -> float | None:
    res = proc.run(["openssl", "speed", "-evp", "aes-256-xts", "-bytes", str(sector),
                    "-seconds", "1"], check=False, timeout=120)
    for line in res.out.splitlines():
        if line.startswith("AES-256-XTS"):
            m = re.search(r"([\d.]+)k\s*$", line.strip())
            if m:
                return float(m.group(1)) * 1000 / 1e6
    return None


@experiment(
    "E13",
    title="Offline recovery with only the user's key; escrow both ways",
    hurdle="H9",
    hypothesis="With Barbican down, the user recovers the exact plaintext from the volume file "
    "with only their raw key bytes (no Keystone, Barbican, root or dm); with an escrow keyslot "
    "the deployment recovers after the user's key is lost; without escrow a lost user key means "
    "the data is gone.",
    needs={"stack", "stack-control"},
    params={"data_mib": 16, "throughput_mib": 256},
)
def run(ctx):
    stack = ctx.env.stack
    svc = ctx.volumes()
    ref, raw_key = ctx.user_key("alice", "aes512")
    data = ctx.scratch / "data.raw"
    data.write_bytes(pattern(13, ctx.param("data_mib") << 20))
    vol = svc.create_from_image(svc.image_from_raw(data, ref.href).id)
    vol = svc.add_escrow(vol.id)
    ctx.check("the volume has a user keyslot and an escrow keyslot", bool(vol.escrow_ref))
    escrow_pw = svc.escrow_passphrase(vol)
    path = svc.pool.path(vol.id)
    key_file = ctx.scratch / "alice-key.bin"  # what the user kept: the raw key bytes
    key_file.write_bytes(raw_key)
    ctx.progress("stop Barbican: the deployment's key service is gone")
    stack.barbican().stop()
    try:
        out = ctx.scratch / "user.plain"
        with ctx.timed("user_recovery_s"):
            pws = recovery.read_passphrase(key_file=key_file)
            summary = recovery.recover(path, out, passphrase=pws[0])
        ctx.check("Barbican down: the user recovers the exact plaintext with the raw key bytes",
                  out.read_bytes()[: data.stat().st_size] == data.read_bytes())
        ctx.measure("user_recovery_slot", summary["slot"], "")
    finally:
        stack.up()
    # The user loses the key (deleted in Barbican, no copy kept): the deployment's escrow opens.
    BarbicanAPI(ctx.user("alice"), ctx.env.barbican_url).delete(ref, force=True)
    out = ctx.scratch / "escrow.plain"
    recovery.recover(path, out, passphrase=escrow_pw)
    ctx.check("user key lost: the deployment recovers through the escrow keyslot",
              out.read_bytes()[: data.stat().st_size] == data.read_bytes())
    # Without escrow, nobody else holds a key: recovery is impossible.
    ref2, _ = ctx.user_key("alice", "aes512")
    plain = svc.create_from_image(svc.image_from_raw(data, ref2.href).id)
    BarbicanAPI(ctx.user("alice"), ctx.env.barbican_url).delete(ref2, force=True)
    with ctx.expect_error(WrongKey, claim="no escrow + lost user key: no other key opens it "
                                          "(the data is gone)"):
        recovery.recover(svc.pool.path(plain.id), ctx.scratch / "nope",
                         passphrase=escrow_pw)
    # Throughput against the machine's AES-XTS limit.
    size = ctx.param("throughput_mib") << 20
    for sector in (4096, 512):
        ctx.progress(f"throughput, {sector}-byte sectors")
        img = ctx.scratch / f"tp-{sector}.img"
        big = ctx.scratch / "big.raw"
        if not big.exists():
            big.write_bytes(pattern(5, size))
        pw = Sensitive(b"cd" * 64)
        from byok import luks, sparse

        sparse.copy_sparse(big, img)
        import os

        os.truncate(img, size + (32 << 20))
        proc.run(["cryptsetup", "reencrypt", "--encrypt", "--type", "luks2", "--batch-mode",
                  "--force-offline-reencrypt", "--reduce-device-size", "32M", "--sector-size",
                  str(sector), "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
                  "--key-file=-", str(img)], input=pw, timeout=600)
        os.truncate(img, luks.dump(img).data_offset + size)
        out = ctx.scratch / f"tp-{sector}.plain"
        t0 = time.perf_counter()
        s = recovery.recover(img, out, passphrase=pw)
        seconds = time.perf_counter() - t0
        ctx.measure(f"recover_mb_s:{sector}", round(size / seconds / 1e6, 1), "MB/s",
                    note=s["backend"])
        ossl = _openssl_mb_s(sector)
        if ossl:
            ctx.measure(f"openssl_mb_s:{sector}", round(ossl, 1), "MB/s")
            ctx.measure(f"recover_vs_openssl:{sector}", round(size / seconds / 1e6 / ossl, 3),
                        "x")
        ctx.check(f"{sector}-byte sectors: throughput data recovered correctly",
                  out.read_bytes() == big.read_bytes())
        out.unlink()
        img.unlink()
    keys.Resolver(ctx.user("alice"), endpoint=ctx.env.barbican_url)  # the stack is back
