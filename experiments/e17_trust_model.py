"""E17 — the trust model on the real Barbican: who may post a consumer, who may rewrite an
ownership mark, and what the service's own record refuses (H2, H3; issue 17)."""

from byok.common.errors import KeyAccessDenied
from byok.harness import experiment


def _outcome(fn):
    try:
        fn()
        return "allowed"
    except KeyAccessDenied:
        return "refused"


@experiment(
    "E17",
    title="Trust model: a service forges a consumer, a member rewrites the owner mark; "
    "the service's record refuses both",
    hurdle="H2/H3",
    hypothesis="On Barbican's default policy the cinder service user, once the owner granted it "
    "read, can register a consumer for a volume the owner never bound, and a member of the "
    "owner's project can rewrite the ownership mark of a non-private secret; so neither is "
    "proof: the consumer-only check serves the forged volume and the mark-only backend takes "
    "the user's key for a service key, while the service's own record (Cinder's row) refuses "
    "the forged volume and keeps the key. Other projects, their admin and an identity without "
    "the ACL cannot post a consumer, and the cinder user cannot write metadata.",
    needs={"stack"},
)
def run(ctx):
    cinder = ctx.user("cinder")
    others = ("nova", "bob", "admin")
    svc = ctx.volumes("alice")
    ref, raw = ctx.user_key("alice")
    vol = svc.create(64 << 20, ref.href, name="e17-bound")  # bound with alice's token, recorded
    owner = ctx.barbican("alice")
    owner.set_acl(ref, users=[cinder.user_id()], project_access=True)  # Barbican's default
    secret = f"/v1/secrets/{ref.secret_id}"
    forged = "e17-never-bound"

    # 1. Who may register a consumer on alice's key.
    def post(identity, resource_id, target=secret):
        body = {"service": "cinder", "resource_type": "volume", "resource_id": resource_id}
        return ctx.barbican_status(identity, "POST", f"{target}/consumers", body)

    status = post("cinder", forged)
    ctx.measure("consumer_post:cinder+ACL", status, "HTTP")
    ctx.check("the cinder user with the owner's ACL registers a consumer for a volume nobody "
              "bound (2xx)", 200 <= status < 300, str(status))
    no_acl, _ = ctx.user_key("alice")
    status = post("cinder", "e17-other", f"/v1/secrets/{no_acl.secret_id}")
    ctx.measure("consumer_post:cinder-no-ACL", status, "HTTP")
    ctx.check("without the ACL the cinder user cannot post a consumer (403)", status == 403,
              str(status))
    for name in others:
        status = post(name, f"e17-{name}")
        ctx.measure(f"consumer_post:{name}", status, "HTTP")
        ctx.check(f"{name} (no ACL, not in alice's project) cannot post a consumer (403)",
                  status == 403, str(status))
    status = post("carol", "e17-carol")
    ctx.measure("consumer_post:carol-member", status, "HTTP")
    ctx.check("carol (alice's project, non-private secret) can post a consumer (2xx)",
              200 <= status < 300, str(status))
    listed = [c for c in owner.consumers(ref) if c.get("resource_id") == forged]
    fields = sorted(listed[0]) if listed else []
    ctx.measure("consumer_fields", " ".join(fields), "")
    ctx.check("alice sees the forged consumer, and nothing in it says who registered it",
              bool(listed) and not {"project_id", "creator_id", "user_id"} & set(fields),
              str(fields))
    ctx.bind_key(ref, "e17-extra", user="alice")

    def remove(identity, resource_id):
        body = {"service": "cinder", "resource_type": "volume", "resource_id": resource_id}
        return ctx.barbican_status(identity, "DELETE", f"{secret}/consumers", body)

    status = remove("cinder", "e17-extra")
    ctx.measure("consumer_delete:cinder-of-alices", status, "HTTP")
    ctx.check("the cinder user cannot remove a consumer registered from alice's project (403: "
              "only the creator's project may)", status == 403, str(status))
    status = remove("carol", "e17-extra")
    ctx.measure("consumer_delete:carol-of-alices", status, "HTTP")
    ctx.check("carol (the registrant's project) removes it (2xx): a missing consumer is not a "
              "revocation either", 200 <= status < 300, str(status))
    status = remove("cinder", forged)
    ctx.measure("consumer_delete:cinder-own", status, "HTTP")
    ctx.check("the cinder user removes the consumer it registered itself (2xx)",
              200 <= status < 300, str(status))
    post("cinder", forged)  # forged again for the guard's turn
    status = ctx.barbican_status("admin", "GET", f"{secret}/payload")
    ctx.measure("payload_get:admin", status, "HTTP")
    ctx.check("an admin of another project cannot read the payload (403): an admin-started "
              "operation needs the service path", status == 403, str(status))

    # 2. What the guard makes of the forged consumer.
    def consumer_only(volume_id):
        return lambda: ctx.resolve_for_volume(ref, volume_id, as_user="cinder")

    def recorded(volume_id):
        binding = ctx.volume_binding(svc, volume_id)
        return lambda: ctx.resolve_recorded(ref, volume_id, binding, as_user="cinder")

    got = _outcome(consumer_only(forged))
    ctx.measure("guard:consumer-only:forged", got, "")
    ctx.check("the consumer-only check serves the forged volume (the finding)",
              got == "allowed", got)
    got = _outcome(recorded(forged))
    ctx.measure("guard:record:forged", got, "")
    ctx.check("with the service's record the forged volume is refused", got == "refused", got)
    record = ctx.volume_binding(svc, vol.id)
    km = ctx.resolve_recorded(ref, vol.id, record, as_user="cinder")
    ctx.measure("guard:record:bound", "allowed" if km.payload.reveal() == raw else "wrong", "")
    ctx.check("with the service's record the volume alice bound gets exactly her key",
              km.payload.reveal() == raw)

    # 3. The ownership mark.
    ctx.check("before: byok's backend reads alice's key as user-owned (no mark)",
              ctx.backend_says_user_owned(ref, "alice"))
    mark = ctx.owner_mark("service")
    status = ctx.barbican_status("carol", "PUT", f"{secret}/metadata", mark)
    ctx.measure("metadata_put:carol-member", status, "HTTP")
    ctx.check("carol rewrites the owner mark of alice's non-private key (2xx)",
              200 <= status < 300, str(status))
    fooled = not ctx.backend_says_user_owned(ref, "alice")
    ctx.measure("backend_mark_says:after-carol", "service" if fooled else "user", "")
    ctx.check("the mark-only backend now takes alice's key for a service key", fooled)
    keep = not ctx.may_delete(ref, record)
    ctx.measure("record_says:after-carol", "keep" if keep else "delete", "")
    ctx.check("the record-based decision still keeps the key (owner: user)", keep)
    status = ctx.barbican_status("cinder", "PUT", f"{secret}/metadata", mark)
    ctx.measure("metadata_put:cinder+ACL", status, "HTTP")
    ctx.check("the cinder user cannot write metadata (403)", status == 403, str(status))
    private, _ = ctx.user_key("alice")
    owner.set_acl(private, users=[], project_access=False)
    priv = f"/v1/secrets/{private.secret_id}"
    status = ctx.barbican_status("carol", "PUT", f"{priv}/metadata", mark)
    ctx.measure("metadata_put:carol-private", status, "HTTP")
    ctx.check("on a private secret carol cannot rewrite the mark (403)", status == 403,
              str(status))
    # Forging the mark gives carol nothing she lacks: she may delete a non-private key anyway.
    spare, _ = ctx.user_key("alice")
    status = ctx.barbican_status("carol", "DELETE", f"/v1/secrets/{spare.secret_id}")
    ctx.measure("secret_delete:carol-member", status, "HTTP")
    ctx.check("carol may delete alice's non-private key outright (2xx)", 200 <= status < 300,
              str(status))
    status = ctx.barbican_status("carol", "DELETE", priv)
    ctx.measure("secret_delete:carol-private", status, "HTTP")
    ctx.check("carol cannot delete a private key (403)", status == 403, str(status))
    ctx.note("Barbican 23.0.0 default policy (barbican/common/policies/consumers.py, "
             "secretmeta.py, secrets.py): secret_consumers:post/delete admit secret_acl_read "
             "and project members of non-private secrets, and the consumer controller lets "
             "only the registrant's project or the secret's delete one; secret_meta:put and "
             "secret:delete admit project members of non-private secrets; secret:decrypt has "
             "no bare role:admin. A consumer lists service, resource_type, resource_id only.")
