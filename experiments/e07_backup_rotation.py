"""E07 — a backup taken before a rotation restores with the key of backup time (H4)."""

from byok.common.errors import WrongKey
from byok.common.pattern import pattern
from byok.harness import experiment


@experiment(
    "E07",
    title="Backup and restore across a rotation: which key a backup needs",
    hurdle="H4",
    hypothesis="A backup keeps the ciphertext and the LUKS keyslots of backup time: after the "
    "volume is rotated to a new key, the backup restores with the OLD key (not the new one), "
    "and the restored data is identical.",
    needs={"stack"},
    params={"data_mib": 8},
)
def run(ctx):
    svc = ctx.volumes(with_service=False)
    old, _ = ctx.user_key("alice", "aes512")
    new, _ = ctx.user_key("alice", "aes512")
    raw = ctx.scratch / "data.raw"
    raw.write_bytes(pattern(7, ctx.param("data_mib") << 20))
    vol = svc.create_from_image(svc.image_from_raw(raw, old.href).id)
    bkp = svc.backup(vol.id)
    with ctx.timed("rotate_s"):
        svc.rekey(vol.id, new.href)
    ctx.check("the volume now uses the new key", svc.pool.load(vol.id).key_ref == new.href)
    with ctx.expect_error(WrongKey, claim="the pre-rotation backup does not open with the new key"):
        svc.restore(bkp.id, key_ref=new.href)
    with ctx.timed("restore_s"):
        restored = svc.restore(bkp.id)
    ctx.check("it restores with the key recorded at backup time (the old key)",
              restored.key_ref == old.href)
    out = ctx.scratch / "restored.plain"
    ctx.recover(svc.pool.path(restored.id), out, ctx.passphrase(svc.key(old)))
    ctx.check("restored plaintext is identical to the data at backup time",
              out.read_bytes() == raw.read_bytes())
    ctx.note("Deleting the old key after a rotation makes every earlier backup unrestorable; "
             "Barbican refuses that delete while the backups are registered consumers.")
    consumers = [c["resource_type"] for c in ctx.barbican("alice").consumers(old)]
    ctx.check("the old key still has the backup as a consumer after the rotation",
              "backup" in consumers, str(consumers))
