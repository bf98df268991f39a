"""E15 — a user deletes a key still in use: what each later operation does (H10)."""

from byok.common.errors import KeyNotFound, SecretConflict
from byok.common.pattern import pattern
from byok.harness import experiment


@experiment(
    "E15",
    title="A user deletes a key still in use: refused, then forced; what each operation does",
    hurdle="H10",
    hypothesis="Barbican refuses to delete a key that volumes consume (consumers are visible to "
    "the owner); if the owner forces it, every operation that needs the key fails with "
    "KeyNotFound and creates nothing, delete still works, and the user's own copy of the key "
    "still recovers the data offline.",
    needs={"stack"},
)
def run(ctx):
    svc = ctx.volumes(with_service=False)
    owner = ctx.barbican("alice")
    ref, raw = ctx.user_key("alice", "aes512")
    new, _ = ctx.user_key("alice", "aes512")
    data = ctx.scratch / "data.raw"
    data.write_bytes(pattern(15, 4 << 20))
    image = svc.image_from_raw(data, ref.href)
    vol = svc.create_from_image(image.id)
    bkp = svc.backup(vol.id)
    snap = svc.snapshot(vol.id)
    seen = sorted((c["resource_type"], c["resource_id"]) for c in owner.consumers(ref))
    ctx.check("the owner sees every resource that uses the key (Barbican consumers)",
              seen == sorted([("image", image.id), ("volume", vol.id), ("backup", bkp.id),
                              ("snapshot", snap.id)]),
              str(seen))
    ctx.measure("consumers_visible", len(seen), "resources")
    with ctx.expect_error(SecretConflict, claim="a plain delete is refused while in use"):
        ctx.delete_key(ref)
    ctx.delete_key(ref, force=True)
    count = len(svc.pool.list())
    for name, op in (("attach", lambda: svc.key(ref)),
                     ("clone", lambda: svc.clone(vol.id)),
                     ("backup", lambda: svc.backup(vol.id)),
                     ("snapshot", lambda: svc.snapshot(vol.id)),
                     ("restore", lambda: svc.restore(bkp.id)),
                     ("rotate", lambda: ctx.rotate(svc, vol.id, new.href))):
        with ctx.expect_error(KeyNotFound, claim=f"{name} after a forced delete: KeyNotFound"):
            op()
    ctx.check("nothing half-made in the pool", len(svc.pool.list()) == count)
    out = ctx.scratch / "offline.plain"
    ctx.recover(svc.pool.path(vol.id), out, ctx.passphrase_from_key_bytes(raw))
    ctx.check("the user's own copy of the key still recovers the volume offline, exactly",
              out.read_bytes()[: data.stat().st_size] == data.read_bytes())
    for rid in (snap.id, bkp.id, vol.id, image.id):
        svc.delete(rid)
    ctx.check("delete works without the key", svc.pool.list() == [])
