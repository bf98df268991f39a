"""E04-cinder — E04's hypothesis through the patched Cinder's REST API (byok cinder up)."""

from byok.harness import cinder as hc
from byok.harness.registry import experiment, prototype
from byok.keys.barbican import BarbicanAPI

E04 = prototype("E04")


@experiment(
    "E04-cinder",
    title="Through real Cinder: cross-tenant key refs refused; project access decides carol's",
    hurdle=E04.hurdle,
    hypothesis=E04.hypothesis,
    needs={"stack", "cinder"},
)
def run(ctx):
    apis = {u: hc.api(ctx.env, u) for u in ("alice", "bob", "carol")}
    owner = BarbicanAPI(ctx.user("alice"), ctx.env.barbican_url)
    ref, _raw = ctx.user_key("alice", "aes512")
    body = {"volume": {"size": 1, "volume_type": "luks", "encryption_key_id": ref.href}}

    bob = apis["bob"]
    before = bob.request("GET", "/volumes")["volumes"]
    with ctx.timed("denial_latency_s"):
        r = bob.raw("POST", "/volumes", body)
    ctx.measure("bob_status", r.status_code, "HTTP")
    ctx.check("bob passing alice's key ref is refused by the API (400/403)",
              r.status_code in (400, 403), r.text[:200])
    ctx.check("bob's refused create stored no volume",
              bob.request("GET", "/volumes")["volumes"] == before)
    ctx.check("bob's attempt registered no consumer on alice's key", owner.consumers(ref) == [])

    carol = apis["carol"]
    vol = hc.make(ctx, carol, "volume", lambda: carol.create_volume(
        1, volume_type="luks", encryption_key_id=ref.href))
    ctx.check("carol (same project) uses alice's key while project access is on",
              vol["encryption_key_id"] == ref.secret_id, vol["status"])
    carol.delete_and_wait("volume", vol["id"])
    owner.set_acl(ref, users=[], project_access=False)
    r = carol.raw("POST", "/volumes", body)
    ctx.measure("carol_private_status", r.status_code, "HTTP")
    ctx.check("carol is refused once alice turns project access off", r.status_code in (400, 403),
              r.text[:200])
    mine = hc.make(ctx, apis["alice"], "volume", lambda: apis["alice"].create_volume(
        1, volume_type="luks", encryption_key_id=ref.href))
    ctx.check("alice (creator) still creates a volume with her private key",
              mine["encryption_key_id"] == ref.secret_id)
    apis["alice"].delete_and_wait("volume", mine["id"])
    ctx.note("The service-ACL half of the hypothesis (cinder reads a user key on its own only "
             "with the owner's ACL) concerns token-less operations, which the REST API does "
             "not expose; the prototype E04 and the Nova tier (service token without the ACL "
             "refused) show it.")
