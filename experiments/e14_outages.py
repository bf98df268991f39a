"""E14 — Barbican/Keystone outage and slowness during attach (H3/H10)."""

from byok.common.errors import KeyServiceUnavailable
from byok.harness import experiment


@experiment(
    "E14",
    title="Key service outages during attach: retries, deadline, typed error, nothing written",
    hurdle="H3/H10",
    hypothesis="When Barbican answers 500, truncated bodies or garbage, hangs, is paused, or "
    "Keystone is down, attach retries within a bounded deadline and then fails with "
    "KeyServiceUnavailable naming the endpoint — before touching the volume; transient "
    "faults are absorbed by the retries.",
    needs={"stack", "stack-control"},
    params={"deadline_s": 3.0},
)
def run(ctx):
    ports = ctx.env.stack.cfg
    deadline = ctx.param("deadline_s")
    svc = ctx.volumes(with_service=False)
    ref, _ = ctx.user_key("alice", "aes512")
    vol = svc.create(48 << 20, ref.href)
    path = svc.pool.path(vol.id)
    before = ctx.file_sha256(path)
    conn, enc, _ = svc.attach_args(vol.id)
    enc["key_ref"] = ref.secret_id  # a bare UUID: resolved against whichever endpoint we use

    def hook_via(endpoint, identity=None):
        """A hook resolving as alice (or ``identity``) at ``endpoint`` with a short deadline."""
        r = ctx.resolver("alice", identity=identity, endpoint=endpoint, deadline=deadline)
        return ctx.hook(resolver=r), r

    for mode in ("error500", "truncate", "garbage", "hang"):
        with ctx.barbican_faults(mode) as proxy:
            hook, r = hook_via(proxy.url)
            with ctx.expect_error(KeyServiceUnavailable,
                                  claim=f"{mode}: typed error after the deadline"):
                hook.prepare(conn, enc)
            ctx.measure(f"time_to_error_s:{mode}", round(ctx.last_duration, 2), "s")
            ctx.measure(f"attempts:{mode}", r.api.attempts, "requests")
            ctx.check(f"{mode}: bounded (<= deadline + one attempt timeout + 1 s)",
                      ctx.last_duration <= deadline + 4.0, f"{ctx.last_duration:.1f} s")
        with ctx.barbican_faults(mode if mode != "hang" else "error500", fail_first=2) as proxy:
            hook, r = hook_via(proxy.url)
            with ctx.timed(f"transient_attach_prepare_s:{mode}"):
                v = hook.prepare(conn, enc)
            ctx.check(f"{mode}: two transient faults are absorbed by the retries",
                      v.state == "luks")
    with ctx.barbican_paused():
        hook, _ = hook_via(ctx.env.barbican_url)
        with ctx.expect_error(KeyServiceUnavailable, claim="paused Barbican: typed error"):
            hook.prepare(conn, enc)
        ctx.measure("time_to_error_s:paused", round(ctx.last_duration, 2), "s")
        ctx.check("paused Barbican: the error names Barbican's endpoint",
                  str(ports.barbican_port) in str(ctx.last_error))
    with ctx.keystone_down():
        hook, _ = hook_via(ctx.env.barbican_url, ctx.fresh_user("alice"))
        with ctx.expect_error(KeyServiceUnavailable, claim="Keystone down: typed error"):
            hook.prepare(conn, enc)
        ctx.check("Keystone down: the error names Keystone's endpoint",
                  str(ports.keystone_port) in str(ctx.last_error))
    ctx.check("the volume's bytes are unchanged by all of it", ctx.file_sha256(path) == before)
