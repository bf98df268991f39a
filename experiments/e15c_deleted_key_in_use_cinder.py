"""E15-cinder — E15's hypothesis through the patched Cinder: the user deletes a key in use."""

import hashlib

from byok.common.errors import ByokError, KeyNotFound, SecretConflict
from byok.common.pattern import pattern
from byok.common.sensitive import Sensitive
from byok.harness import cinder as hc
from byok.harness.registry import experiment, prototype
from byok.keys.barbican import BarbicanAPI

E15 = prototype("E15")


@experiment(
    "E15-cinder",
    title="Through real Cinder: a user deletes a key still in use; what each operation does",
    hurdle=E15.hurdle,
    hypothesis=E15.hypothesis,
    needs={"stack", "cinder", "qemu"},
)
def run(ctx):
    cinder = hc.api(ctx.env, "alice")
    owner = BarbicanAPI(ctx.user("alice"), ctx.env.barbican_url)
    ref, raw = ctx.user_key("alice", "aes512")
    hers = Sensitive(raw.hex().encode())
    vol = hc.make(ctx, cinder, "volume", lambda: cinder.create_volume(
        1, volume_type="luks", encryption_key_id=ref.href))
    data = ctx.scratch / "data.raw"
    data.write_bytes(pattern(15, 4 << 20))
    path, _fmt = hc.volume_file(ctx.env, cinder, vol["id"])
    hc.qemu_write(path, hers, data)
    bkp = hc.make(ctx, cinder, "backup", lambda: cinder.create_backup(vol["id"]))
    seen = sorted((c["resource_type"], c["resource_id"]) for c in owner.consumers(ref))
    ctx.check("the owner sees every Cinder resource that uses the key (Barbican consumers)",
              seen == sorted([("volume", vol["id"]), ("backup", bkp["id"])]), str(seen))
    ctx.measure("consumers_visible", len(seen), "resources")
    with ctx.expect_error(SecretConflict, claim="a plain delete is refused while in use"):
        owner.delete(ref)
    owner.delete(ref, force=True)

    def volumes():
        return {v["id"]: v["status"] for v in cinder.request("GET", "/volumes/detail")["volumes"]}

    before = volumes()
    outcomes = {}
    for name, op in (
            ("clone", lambda: cinder.create_volume(1, source_volid=vol["id"])),
            ("backup", lambda: cinder.create_backup(vol["id"])),
            ("restore", lambda: cinder.restore_backup(bkp["id"]))):
        try:
            res = op()
        except ByokError as e:
            outcomes[name] = f"refused: {getattr(e, 'status', '')} {e.message[:120]}"
            continue
        kind = "backup" if name == "backup" else "volume"
        rid = res.get("volume_id") if name == "restore" else res["id"]
        hc.track(ctx, cinder, kind, rid)
        try:
            cinder.wait(kind, rid, "available", timeout=180)
            outcomes[name] = "available (the key was not needed?)"
        except ByokError as e:
            outcomes[name] = f"failed: {e.message[:120]}"
    for name, outcome in outcomes.items():
        ctx.measure(f"outcome:{name}", outcome, "")
        ctx.check(f"{name} after a forced delete does not produce a usable resource",
                  not outcome.startswith("available"), outcome)
    att, _ci, enc = hc.attach_like_nova(cinder, vol["id"])
    with ctx.expect_error(KeyNotFound, claim="attach after a forced delete: the key fetch Nova "
                                             "makes fails with KeyNotFound"):
        hc.passphrase_like_nova(ctx.user("alice"), enc, vol["id"], ctx.env.barbican_url)
    cinder.detach(att["id"], service=ctx.user("nova"))
    after = volumes()
    made = {v: s for v, s in after.items() if v not in before}
    ctx.measure("volumes_left_by_failed_operations", len(made), "volumes",
                note=", ".join(sorted(set(made.values()))))
    ctx.check("nothing half-made is left usable (a failed operation's volume is in an error "
              "state, and deletable)", all(s.startswith("error") for s in made.values()),
              str(made))
    got = hc.qemu_sha256(path, hers, data.stat().st_size, ctx.scratch / "offline.out")
    ctx.check("the user's own copy of the key still opens the volume file offline, exactly",
              got == hashlib.sha256(data.read_bytes()).hexdigest())
    for v in after:
        if v not in before:
            cinder.delete_and_wait("volume", v)
    cinder.delete_and_wait("backup", bkp["id"])
    cinder.delete_and_wait("volume", vol["id"])
    ctx.check("delete works without the key (volume and backup gone)",
              vol["id"] not in volumes())
