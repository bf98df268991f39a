"""E13 — offline recovery with only the user's key; escrow both ways (H9)."""

import time

from byok.common.errors import ByokError, KeyNotFound, WrongKey
from byok.common.pattern import pattern
from byok.harness import experiment


@experiment(
    "E13",
    title="Offline recovery with only the user's key; escrow both ways",
    hurdle="H9",
    hypothesis="With the deployment's Barbican wiped (server stopped, database gone), the user "
    "recovers the exact plaintext of a volume, its backup and its image with only their raw "
    "key bytes (no Keystone, Barbican, root or dm); with an escrow keyslot the deployment "
    "recovers after the user's key is lost; without escrow a lost user key means the data is "
    "gone, because no other keyslot exists.",
    needs={"stack", "stack-control"},
    params={"data_mib": 16, "throughput_mib": 256},
)
def run(ctx):
    svc = ctx.volumes()
    ref, raw_key = ctx.user_key("alice", "aes512")
    data = ctx.scratch / "data.raw"
    data.write_bytes(pattern(13, ctx.param("data_mib") << 20))
    want = data.read_bytes()
    vol = svc.create_from_image(svc.image_from_raw(data, ref.href).id)
    vol = svc.add_escrow(vol.id)
    ctx.check("the volume has a user keyslot and an escrow keyslot",
              bool(vol.escrow_ref) and len(ctx.luks_dump(svc.pool.path(vol.id)).active_slots) == 2)
    escrow_pw = svc.escrow_passphrase(vol)
    files = {"volume": svc.pool.path(vol.id), "backup": svc.pool.path(svc.backup(vol.id).id),
             "image": svc.pool.path(svc.upload_image(vol.id).id)}
    key_file = ctx.scratch / "alice-key.bin"  # what the user kept: the raw key bytes
    key_file.write_bytes(raw_key)
    key_file.chmod(0o600)
    ctx.progress("wipe the deployment's Barbican: server stopped, database moved away")
    with ctx.barbican_wiped() as wiped:
        ctx.check("the deployment's Barbican is gone (no server, no database)", wiped.gone())
        pws = ctx.recovery_passphrases(key_file=key_file)
        for what, path in files.items():
            out = ctx.scratch / f"user-{what}.plain"
            with ctx.timed(f"user_recovery_s:{what}"):
                summary = ctx.recover(path, out, pws[0])
            ctx.check(f"Barbican wiped: the user recovers the {what}'s exact plaintext with "
                      "the raw key bytes", out.read_bytes()[: len(want)] == want)
            ctx.measure(f"user_recovery_slot:{what}", summary["slot"], "")
            out.unlink()
    # The user loses the key (deleted in Barbican, no copy kept): the deployment's escrow opens.
    ctx.delete_key(ref, force=True)
    out = ctx.scratch / "escrow.plain"
    ctx.recover(files["volume"], out, escrow_pw)
    ctx.check("user key lost: the deployment recovers through the escrow keyslot",
              out.read_bytes()[: len(want)] == want)
    out.unlink()
    # Without escrow, nobody else holds a key: one keyslot, and its key is gone from Barbican.
    ref2, _ = ctx.user_key("alice", "aes512")
    plain = svc.create_from_image(svc.image_from_raw(data, ref2.href).id)
    plain_path = svc.pool.path(plain.id)
    ctx.delete_key(ref2, force=True)
    ctx.check("no escrow: the volume has exactly one keyslot (the user's)",
              len(ctx.luks_dump(plain_path).active_slots) == 1)
    with ctx.expect_error(KeyNotFound, claim="no escrow + lost user key: Barbican no longer "
                                             "has the only key that opens it"):
        svc.key(ref2.href)
    tried, opened = _deployment_keys_open(ctx, plain_path)
    ctx.check("no escrow: none of the deployment's own keys opens it (the data is gone)",
              opened == 0, f"{tried} deployment keys tried")
    _throughput(ctx)


def _deployment_keys_open(ctx, path) -> tuple[int, int]:
    """(keys tried, keys that open ``path``) over every secret of the service project."""
    tried = opened = 0
    for s in ctx.barbican("cinder").list_secrets(limit=200):
        try:
            km = ctx.resolve(s["secret_ref"], user="cinder")
        except ByokError:
            continue
        tried += 1
        try:
            ctx.test_key(path, ctx.passphrase(km))
            opened += 1
        except WrongKey:
            pass
    return tried, opened


def _throughput(ctx) -> None:
    """Recovery speed next to the machine's AES-XTS limit (a page-cache-warm image; the target
    is judged in ``byok bench recover``, which repeats it; here it is context)."""
    size = ctx.param("throughput_mib") << 20
    big = ctx.scratch / "big.raw"
    big.write_bytes(pattern(5, size))
    pw = ctx.sensitive(b"cd" * 64)
    for sector in (4096, 512):
        ctx.progress(f"throughput, {sector}-byte sectors")
        img = ctx.scratch / f"tp-{sector}.img"
        ctx.encrypt_file(big, img, pw, sector_size=sector)  # byok's image builder
        with open(img, "rb") as f:  # warm: measure decryption and writing, not the disk read
            while f.read(64 << 20):
                pass
        t0 = time.perf_counter()
        s = ctx.recover(img, None, pw)  # --check: read + decrypt
        decrypt = size / (time.perf_counter() - t0) / 1e6
        out = ctx.scratch / f"tp-{sector}.plain"
        t0 = time.perf_counter()
        ctx.recover(img, out, pw)
        to_file = size / (time.perf_counter() - t0) / 1e6
        ctx.measure(f"recover_decrypt_mb_s:{sector}", round(decrypt, 1), "MB/s",
                    note=s["backend"])
        ctx.measure(f"recover_to_file_mb_s:{sector}", round(to_file, 1), "MB/s")
        ossl = ctx.openssl_mb_s(sector, seconds=1)
        ctx.measure(f"openssl_mb_s:{sector}", round(ossl, 1), "MB/s", note="one core")
        ctx.measure(f"recover_vs_openssl:{sector}", round(to_file / ossl, 3), "x",
                    note="to a file")
        ctx.measure(f"decrypt_vs_openssl:{sector}", round(decrypt / ossl, 3), "x")
        ctx.check(f"{sector}-byte sectors: throughput data recovered correctly",
                  out.read_bytes() == big.read_bytes())
        out.unlink()
        img.unlink()
    big.unlink()
