"""E05 — token-less operations (restart, evacuate): what the service can do on its own (H3)."""

from byok.common.errors import KeyAccessDenied
from byok.harness import experiment


@experiment(
    "E05",
    title="Token-less operations: the service needs the owner's ACL and a consumer for the volume",
    hurdle="H3",
    hypothesis="Acting without a user token (restart, evacuate, migrate), the cinder service user "
    "can resolve a user key for volume V only if the owner granted it an ACL AND the key carries "
    "the consumer for V from a user-token binding; ACL-only, consumer-only and nothing are all "
    "refused — while castellan's stock path, which has no volume binding, lets an ACL alone "
    "serve any volume.",
    needs={"stack"},
)
def run(ctx):
    cinder = ctx.user("cinder")
    owner = ctx.barbican("alice")
    cases = {"nothing": (False, False), "consumer only": (False, True),
             "ACL only": (True, False), "ACL + consumer": (True, True)}
    for name, (acl, consumer) in cases.items():
        ref, raw = ctx.user_key("alice", "aes512")
        volume = f"vol-{name.replace(' ', '-').replace('+', 'and')}"
        if consumer:
            ctx.bind_key(ref, volume, user="alice")
        if acl:
            owner.set_acl(ref, users=[cinder.user_id()], project_access=True)
        try:
            km = ctx.resolve_for_volume(ref, volume, as_user="cinder")
            outcome = "allowed" if km.payload.reveal() == raw else "wrong bytes"
        except KeyAccessDenied:
            outcome = "refused"
        ctx.measure(f"outcome:{name}", outcome, "")
        expected = "allowed" if acl and consumer else "refused"
        ctx.check(f"{name}: {expected}", outcome == expected, outcome)
        if acl and consumer:
            try:
                ctx.resolve_for_volume(ref, "another-volume", as_user="cinder")
                other = "allowed"
            except KeyAccessDenied:
                other = "refused"
            ctx.check("ACL + consumer for V does not serve another volume", other == "refused")
        if acl and not consumer:
            stock = ctx.key_manager("barbican")
            got = stock.get(cinder.castellan_context(), ref.secret_id).get_encoded()
            ctx.check("contrast: castellan's stock get as cinder with an ACL alone returns the key "
                      "(no notion of which volume it is for)", got == raw)
    ref, _ = ctx.user_key("alice", "aes512")
    ctx.bind_key(ref, "vol-n", user="alice")
    owner.set_acl(ref, users=[cinder.user_id()], project_access=True)
    with ctx.expect_error(KeyAccessDenied, claim="nova cannot use an ACL granted to cinder"):
        ctx.resolve_for_volume(ref, "vol-n", as_user="nova", service="cinder")
