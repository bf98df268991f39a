"""E04 — cross-tenant references are refused; ACLs open exactly one secret (H3)."""

from byok.common.errors import KeyAccessDenied
from byok.harness import experiment


@experiment(
    "E04",
    title="Cross-tenant key refs are refused; an ACL opens exactly one secret; carol's access",
    hurdle="H3",
    hypothesis="Bob cannot resolve or bind Alice's key to his volume by passing her reference; the "
    "cinder service user reads a user key only after the owner grants it an ACL, and then only "
    "that secret; a project member (carol) reads a project secret until the owner turns "
    "project access off.",
    needs={"stack"},
)
def run(ctx):
    resolver = {u: ctx.resolver(u) for u in ("alice", "bob", "carol", "cinder")}
    ref, raw = ctx.user_key("alice", "aes512")
    other, _ = ctx.user_key("alice", "aes512")
    owner = ctx.barbican("alice")
    cinder_id, bob_id = ctx.user("cinder").user_id(), ctx.user("bob").user_id()
    with ctx.expect_error(KeyAccessDenied, claim="bob cannot resolve alice's key"):
        resolver["bob"].resolve(ref.href)
    ctx.measure("denial_latency_s", round(ctx.last_duration, 4), "s")
    with ctx.expect_error(KeyAccessDenied, claim="bob cannot bind alice's key to his volume"):
        ctx.bind_key(ref, "bob-volume", user="bob")
    ctx.check("bob's attempt registered no consumer on alice's key", owner.consumers(ref) == [])
    with ctx.expect_error(KeyAccessDenied, claim="cinder without an ACL is refused"):
        resolver["cinder"].resolve(ref)
    owner.set_acl(ref, users=[cinder_id], project_access=True)
    ctx.check("with the ACL, cinder reads exactly the key bytes",
              resolver["cinder"].resolve(ref).payload.reveal() == raw)
    with ctx.expect_error(KeyAccessDenied, claim="the ACL does not open alice's other key"):
        resolver["cinder"].resolve(other)
    ctx.check("carol (same project) reads while project access is on",
              bool(resolver["carol"].resolve(ref).payload))
    owner.set_acl(ref, users=[cinder_id], project_access=False)
    with ctx.expect_error(KeyAccessDenied, claim="carol is refused once project access is off"):
        resolver["carol"].resolve(ref)
    ctx.check("alice (creator) and cinder (ACL) still read with project access off",
              bool(resolver["alice"].resolve(ref).payload and resolver["cinder"].resolve(ref)))
    owner.set_acl(ref, users=[cinder_id, bob_id], project_access=False)
    ctx.check("an ACL lets bob read, but he does not own the key (ACL-read ownership probe)",
              bool(resolver["bob"].resolve(ref).payload)
              and not ctx.owns_key(ref, "bob") and ctx.owns_key(ref, "alice"))
