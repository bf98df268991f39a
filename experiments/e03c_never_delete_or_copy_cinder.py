"""E03-cinder — E03's hypothesis through the patched Cinder's REST API (byok cinder up)."""

from byok.harness import cinder as hc
from byok.harness.registry import experiment, prototype
from byok.keys.barbican import BarbicanAPI

E03 = prototype("E03")


@experiment(
    "E03-cinder",
    title="Through real Cinder: the service never deletes or copies a user key",
    hurdle=E03.hurdle,
    hypothesis=E03.hypothesis,
    needs={"stack", "cinder"},
)
def run(ctx):
    cinder = hc.api(ctx.env, "alice")
    owner = BarbicanAPI(ctx.user("alice"), ctx.env.barbican_url)
    ref, raw = ctx.user_key("alice", "aes512")
    before = owner.count_secrets()
    with ctx.timed("create_s"):
        vol = hc.make(ctx, cinder, "volume", lambda: cinder.create_volume(
            1, volume_type="luks", encryption_key_id=ref.href))
    ctx.check("the volume's key is the user's own (encryption_key_id, owner 'user')",
              vol["encryption_key_id"] == ref.secret_id
              and vol.get("encryption_key_owner") == "user", str(vol.get("encryption_key_owner")))
    with ctx.timed("clone_s"):
        clone = hc.make(ctx, cinder, "volume", lambda: cinder.create_volume(
            1, source_volid=vol["id"]))
    with ctx.timed("backup_s"):
        backup = hc.make(ctx, cinder, "backup", lambda: cinder.create_backup(vol["id"]))
    created = owner.count_secrets() - before
    ctx.measure("secrets_created:byok", created, "secrets",
                note="create + clone + backup through Cinder")
    ctx.check("create, clone and backup through Cinder created no new secret", created == 0,
              f"{created} new")
    ctx.check("the clone and the backup carry the user's key id",
              clone["encryption_key_id"] == ref.secret_id
              and backup.get("encryption_key_id") == ref.secret_id)
    consumers = {(c["service"], c["resource_type"], c["resource_id"])
                 for c in owner.consumers(ref)}
    ctx.measure("consumers_while_in_use:byok", len(consumers), "consumers")
    ctx.check("every Cinder resource using the key is its consumer (volume, clone, backup)",
              consumers == {("cinder", "volume", vol["id"]), ("cinder", "volume", clone["id"]),
                            ("cinder", "backup", backup["id"])}, str(sorted(consumers)))
    for kind, rid in (("backup", backup["id"]), ("volume", clone["id"]), ("volume", vol["id"])):
        cinder.delete_and_wait(kind, rid)
    try:
        alive = owner.payload(ref, "application/octet-stream").reveal() == raw
    except Exception:
        alive = False
    ctx.measure("user_key_alive_after_delete:byok", alive, "")
    ctx.check("the user's key survives every delete, bytes unchanged", alive)
    left = owner.consumers(ref) if alive else []
    ctx.check("deleting the resources removed every consumer", left == [], f"{len(left)} left")
    # Contrast: a key Cinder makes itself is a service key and goes with its volume.
    before = owner.count_secrets()
    svc_vol = hc.make(ctx, cinder, "volume", lambda: cinder.create_volume(1, volume_type="luks"))
    made = owner.count_secrets() - before
    cinder.delete_and_wait("volume", svc_vol["id"])
    ctx.check("contrast: a volume without a user key gets one new service key, deleted with "
              "the volume", made == 1 and owner.count_secrets() == before
              and svc_vol.get("encryption_key_owner") == "service", f"{made} made")
    ctx.note("Through the patched Cinder the stock-backend half of the hypothesis (a copy per "
             "operation, the user's key deleted) is not reachable: the series shares a user "
             "key whichever castellan backend runs. Cinder 29's unconverted clone path with "
             "the stock backend is recorded by the openstack tier's functional contrast. "
             "Upload-to-image needs Glance, which byok cinder does not run.")
