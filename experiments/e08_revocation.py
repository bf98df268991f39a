"""E08 — revocation while attached: the mapping keeps working, the next attach fails (H5)."""

import time

from byok.common.errors import KeyAccessDenied, KeyNotFound
from byok.common.pattern import pattern_sha256
from byok.harness import experiment


@experiment(
    "E08",
    title="Revocation while attached: key deleted / ACL removed",
    hurdle="H5",
    hypothesis="Deleting the user's key (or removing the service's ACL) while a volume is attached "
    "does not affect the open dm-crypt mapping (the volume key is in the kernel); revocation "
    "takes effect at the next resolve — the next attach or token-less operation fails at once.",
    needs={"stack", "dm-crypt"},
    params={"data_mib": 4},
)
def run(ctx):
    data = ctx.param("data_mib") << 20
    svc, hook = ctx.volumes(with_service=False), ctx.hook()
    owner = ctx.barbican("alice")
    deleted_ref, _ = ctx.user_key("alice", "aes512")
    acl_ref, _ = ctx.user_key("alice", "aes512")
    vols = {}
    for name, ref in (("deleted", deleted_ref), ("acl", acl_ref)):
        rec = svc.create(64 << 20, ref.href)
        conn, enc, new = svc.attach_args(rec.id)
        vols[name] = (rec, hook.prepare(conn, enc, new_volume=new))
    owner.set_acl(acl_ref, users=[ctx.user("cinder").user_id()], project_access=True)
    acl_vol = vols["acl"][0].id
    ctx.check("before revocation the service resolves the ACL'd key for its volume",
              bool(ctx.resolve_for_volume(acl_ref, acl_vol, as_user="cinder").payload))
    revoked: dict = {}

    def revoke(token: str) -> None:
        owner.delete(deleted_ref, force=True)  # the owner deletes the key (forcing consumers)
        owner.set_acl(acl_ref, users=[], project_access=True)  # and revokes cinder's ACL
        done = time.perf_counter()
        # While the mappings are still open in the guest: does the very next resolve fail?
        try:
            ctx.resolve(deleted_ref, user="alice")
            revoked["next_resolve"] = "succeeded"
        except KeyNotFound:
            revoked["next_resolve"] = "KeyNotFound"
        revoked["effect_s"] = time.perf_counter() - done

    steps = []
    for i, (_, v) in enumerate(vols.values()):
        steps += [ctx.attach_step(v), ctx.write_step(v, 300 + i, data)]
    steps.append(ctx.wait_step("revoke"))
    for i, (_, v) in enumerate(vols.values()):
        steps += [ctx.read_step(v, data, name=f"after:{i}"),
                  ctx.write_step(v, 310 + i, data, name=f"w2:{i}"),
                  ctx.read_step(v, data, name=f"after2:{i}"), ctx.detach_step(v)]
    ctx.progress("attach, write, revoke on the host, read again in the guest")
    run = hook.run([v for _, v in vols.values()], steps, on_wait=revoke)
    for i, name in enumerate(vols):
        ctx.check(f"{name}: the open mapping still reads the data after revocation",
                  run.step(f"after:{i}").get("sha256") == pattern_sha256(300 + i, data))
        ctx.check(f"{name}: and still writes/reads new data after revocation",
                  run.step(f"after2:{i}").get("sha256") == pattern_sha256(310 + i, data))
    ctx.check("the first resolve after the delete, with the mapping still open, fails",
              revoked.get("next_resolve") == "KeyNotFound", str(revoked.get("next_resolve")))
    ctx.measure("time_to_effect_s", round(revoked.get("effect_s", -1), 4), "s",
                note="revocation done -> the next resolve has failed (no cache anywhere)")
    with ctx.expect_error(KeyNotFound, claim="the next attach of the deleted-key volume fails"):
        conn, enc, new = svc.attach_args(vols["deleted"][0].id)
        hook.prepare(conn, enc, new_volume=new)
    ctx.measure("failing_attach_latency_s", round(ctx.last_duration, 4), "s")
    with ctx.expect_error(KeyAccessDenied,
                          claim="the next token-less resolve of the ACL-revoked key fails"):
        ctx.resolve_for_volume(acl_ref, acl_vol, as_user="cinder")
    ctx.check("the user can still open the ACL-revoked volume with their own token",
              bool(ctx.resolve(acl_ref, user="alice").payload))
    ctx.measure("mapping_used_after_revocation_s", round(run.step("after2:1")["seconds"]
                                            + run.step("after:1")["seconds"], 3), "s")
