"""E11 — wrong, missing key and damaged headers give typed errors and never a format (H7)."""

from byok.common.errors import HeaderCorrupt, KeyNotFound, NotLuks, WrongKey
from byok.common.pattern import pattern_sha256
from byok.harness import experiment


@experiment(
    "E11",
    title="Wrong key, missing key, damaged header: typed errors, no format, bytes intact",
    hurdle="H7",
    hypothesis="Through the hook, a wrong key is WrongKey, a deleted key KeyNotFound, a damaged "
    "header HeaderCorrupt/NotLuks and a non-LUKS device that is not new NotLuks — each before "
    "anything is written, the volume's bytes unchanged — whereas bare os-brick, given a volume "
    "whose header was damaged, formats it and the data is gone.",
    needs={"stack", "dm-crypt"},
    params={"data_mib": 4},
)
def run(ctx):
    data = ctx.param("data_mib") << 20
    svc, hook = ctx.volumes(with_service=False), ctx.hook()
    ref, _ = ctx.user_key("alice", "aes512")
    wrong, _ = ctx.user_key("alice", "aes512")
    gone, _ = ctx.user_key("alice", "aes512")
    vols = {n: svc.create(64 << 20, ref.href, provider="luks") for n in ("main", "bare")}
    vols["gone"] = svc.create(64 << 20, gone.href, provider="luks")
    prepared = {}
    for name, rec in vols.items():
        conn, enc, new = svc.attach_args(rec.id)
        prepared[name] = hook.prepare(conn, enc, new_volume=new)
    steps = []
    for i, v in enumerate(prepared.values()):
        steps += [ctx.attach_step(v), ctx.write_step(v, 400 + i, data), ctx.detach_step(v)]
    first = hook.run(list(prepared.values()), steps)
    ctx.check("setup: data written through dm-crypt", all(s["ok"] for s in first.steps))
    main = svc.pool.path(vols["main"].id)

    def attempt(claim, exc, conn_ref, path, *, new=False, rid=None):
        before = ctx.file_sha256(path)
        with ctx.expect_error(*exc, claim=claim):
            conn, enc, _ = svc.attach_args(rid or vols["main"].id, conn_ref)
            conn["data"]["device_path"] = str(path)
            hook.prepare(conn, enc, new_volume=new)
        ctx.measure(f"error_latency_s:{claim.split(':')[0]}", round(ctx.last_duration, 4), "s")
        ctx.check(f"{claim.split(':')[0]}: bytes unchanged", ctx.file_sha256(path) == before)

    attempt("wrong key: WrongKey", (WrongKey,), wrong.href, main)
    ctx.delete_key(gone, force=True)
    attempt("missing key: KeyNotFound", (KeyNotFound,), gone.href,
            svc.pool.path(vols["gone"].id), rid=vols["gone"].id)
    for rec in (vols["main"], vols["bare"]):
        ctx.damage_header(svc.pool.path(rec.id), "luks1-phdr")  # the keyslots remain
    attempt("damaged header: HeaderCorrupt/NotLuks", (HeaderCorrupt, NotLuks), ref.href, main)
    attempt("damaged header marked new: still refused", (HeaderCorrupt, NotLuks), ref.href, main,
            new=True)
    blank = ctx.blank_file("blank.img", 64 << 20)
    attempt("blank but not new: NotLuks", (NotLuks,), ref.href, blank)
    ctx.check("the blank device was not formatted", not ctx.is_luks(blank))
    # Contrast: bare os-brick (no byok guard) on the damaged volume.
    bare = prepared["bare"]
    guarded = prepared["main"]
    run = hook.run([bare, guarded], [
        ctx.attach_step(bare, guard=False, name="bare"),
        ctx.read_step(bare, data, name="bare-read"), ctx.detach_step(bare),
        ctx.attach_step(guarded, name="guarded", continue_on_error=True)])
    b = run.step("bare")
    ctx.check("contrast: bare os-brick ran luksFormat on the damaged volume",
              b.get("formatted") is True, str([c[:2] for c in b.get("commands", [])]))
    ctx.check("contrast: after that format the user's data is gone",
              run.step("bare-read").get("sha256") != pattern_sha256(401, data))
    ctx.check("byok's executor refused luksFormat inside the guest as well",
              run.step("guarded").get("error") == "FormatRefused")
    ctx.measure("osbrick_format_s", round(b.get("seconds", 0), 2), "s",
                note="os-brick's auto-format with cryptsetup defaults (LUKS1)")
