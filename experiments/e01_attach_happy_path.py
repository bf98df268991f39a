"""E01 — a user's key unlocks LUKS1 and LUKS2 volumes through os-brick (H1)."""

from byok.common.pattern import pattern_sha256
from byok.harness import experiment


@experiment(
    "E01",
    title="A user key unlocks LUKS1 and LUKS2 volumes through os-brick on real dm-crypt",
    hurdle="H1",
    hypothesis="With the user's key reference resolved by byok, os-brick's LUKS encryptors open a "
    "blank volume (formatted once by the hook, never by os-brick), and data written through "
    "dm-crypt reads back identically after detach and re-attach.",
    needs={"stack", "dm-crypt"},
    params={"size_mib": 64, "data_mib": 8},
)
def run(ctx):
    size, data = ctx.param("size_mib") << 20, ctx.param("data_mib") << 20
    svc, hook = ctx.volumes(), ctx.hook()
    ref, _ = ctx.user_key("alice", "aes512")
    prepared = []
    for provider in ("luks", "luks2"):
        rec = svc.create(size, ref.href, provider=provider, format=False)
        conn, enc, new = svc.attach_args(rec.id)
        with ctx.timed(f"prepare_s:{provider}"):
            v = hook.prepare(conn, enc, new_volume=new)
        ctx.check(f"{provider}: the hook formatted the new blank volume itself",
                  v.state == "formatted", v.state)
        svc.mark_formatted(rec.id)
        prepared.append((provider, v))
    steps = []
    for i, (provider, v) in enumerate(prepared):
        steps += [ctx.attach_step(v, name=f"a1:{provider}"),
                  ctx.write_step(v, 100 + i, data, name=f"w:{provider}"),
                  ctx.detach_step(v, name=f"d1:{provider}"),
                  ctx.attach_step(v, name=f"a2:{provider}"),
                  ctx.read_step(v, data, name=f"r:{provider}"),
                  ctx.detach_step(v, name=f"d2:{provider}")]
    ctx.progress("attach, write, detach, re-attach, read in the guest")
    run = hook.run([v for _, v in prepared], steps)
    ctx.measure("guest_run_s", round(run.seconds, 3), "s")
    for i, (provider, _v) in enumerate(prepared):
        want = pattern_sha256(100 + i, data)
        a1, a2 = run.step(f"a1:{provider}"), run.step(f"a2:{provider}")
        ctx.check(f"{provider}: attach through os-brick succeeded twice", a1["ok"] and a2["ok"])
        ctx.check(f"{provider}: bytes read back through dm-crypt after re-attach are identical",
                  run.step(f"r:{provider}").get("sha256") == want)
        ctx.check(f"{provider}: os-brick never ran luksFormat",
                  not any("luksFormat" in c for s in (a1, a2) for c in s.get("commands", [])))
        ctx.check(f"{provider}: the volume's symlink points at the dm-crypt mapping",
                  str(a1.get("symlink_target", "")).startswith("/dev/mapper/crypt-"))
        ctx.measure(f"attach_s:{provider}", round(a2["seconds"], 3), "s",
                    note="second attach (first includes os-brick import in the guest)")
        ctx.measure(f"write_mib_s:{provider}",
                    round(data / (1 << 20) / max(run.step(f"w:{provider}")["seconds"], 1e-6), 1),
                    "MiB/s")
