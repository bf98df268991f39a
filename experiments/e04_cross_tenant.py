"""E04 — cross-tenant references are refused; ACLs open exactly one secret (H3)."""

from byok.common.errors import KeyAccessDenied
from byok.harness.registry import experiment
from byok.keys import guard
from byok.keys import resolver as keys
from byok.keys.barbican import BarbicanAPI


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
    env = ctx.env
    resolver = {u: keys.Resolver(ctx.user(u), endpoint=env.barbican_url)
                for u in ("alice", "bob", "carol", "cinder")}
    ref, raw = ctx.user_key("alice", "aes512")
    other, _ = ctx.user_key("alice", "aes512")
    owner = BarbicanAPI(ctx.user("alice"), env.barbican_url)
    with ctx.expect_error(KeyAccessDenied, claim="bob cannot resolve alice's key"):
        resolver["bob"].resolve(ref.href)
    ctx.measure("denial_latency_s", round(ctx.last_duration, 4), "s")
    with ctx.expect_error(KeyAccessDenied, claim="bob cannot bind alice's key to his volume"):
        guard.bind(ref, user=ctx.user("bob"), volume_id="bob-volume", endpoint=env.barbican_url)
    ctx.check("bob's attempt registered no consumer on alice's key", owner.consumers(ref) == [])
    with ctx.expect_error(KeyAccessDenied, claim="cinder without an ACL is refused"):
        resolver["cinder"].resolve(ref)
    owner.set_acl(ref, users=[ctx.user("cinder").user_id()], project_access=True)
    ctx.check("with the ACL, cinder reads exactly the key bytes",
              resolver["cinder"].resolve(ref).payload.reveal() == raw)
    with ctx.expect_error(KeyAccessDenied, claim="the ACL does not open alice's other key"):
        resolver["cinder"].resolve(other)
    ctx.check("carol (same project) reads while project access is on",
              bool(resolver["carol"].resolve(ref).payload))
    owner.set_acl(ref, users=[ctx.user("cinder").user_id()], project_access=False)
    with ctx.expect_error(KeyAccessDenied, claim="carol is refused once project access is off"):
        resolver["carol"].resolve(ref)
    ctx.check("alice (creator) and cinder (ACL) still read with project access off",
              bool(resolver["alice"].resolve(ref).payload and resolver["cinder"].resolve(ref)))
    owner.set_acl(ref, users=[ctx.user("cinder").user_id(), ctx.user("bob").user_id()],
                  project_access=False)
    ctx.check("an ACL lets bob read, but he does not own the key (ACL-read ownership probe)",
              bool(resolver["bob"].resolve(ref).payload)
              and not guard.owned_by_callers_project(ref, ctx.user("bob"))
              and guard.owned_by_callers_project(ref, ctx.user("alice")))
