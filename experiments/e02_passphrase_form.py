"""E02 — the passphrase form: hex for symmetric keys, verbatim for passphrase secrets (H1)."""

import binascii

from byok.common.errors import WrongKey
from byok.common.pattern import pattern_sha256
from byok.harness import experiment


@experiment(
    "E02",
    title="Passphrase form: dm-crypt (os-brick) and native QEMU agree for both secret types",
    hurdle="H1",
    hypothesis="byok derives exactly os-brick's passphrase (hex of a symmetric key, a passphrase "
    "secret verbatim); a volume written through dm-crypt with it opens in QEMU's LUKS driver "
    "(Nova's native path) with the same passphrase — and hex-encoding a passphrase secret, as "
    "some Nova/Cinder code paths do for every secret, would not open it.",
    needs={"stack", "dm-crypt", "qemu"},
    params={"data_mib": 4},
)
def run(ctx):
    data = ctx.param("data_mib") << 20
    svc, hook = ctx.volumes(), ctx.hook()
    refs = {"symmetric": ctx.user_key("alice", "aes512")[0],
            "passphrase": ctx.user_key("alice", "passphrase")[0]}
    prepared = {}
    for kind, ref in refs.items():
        km = svc.key(ref)
        ours = ctx.passphrase(km).reveal().decode()
        ctx.check(f"{kind}: byok's passphrase equals os-brick's get_passphrase_from_secret",
                  ours == ctx.osbrick_passphrase(km))
        if kind == "symmetric":
            ctx.check("symmetric: the passphrase is the lower-case hex of the key bytes",
                      ours == binascii.hexlify(km.payload.reveal()).decode())
            ctx.measure("hex_passphrase_chars", len(ours), "chars")
        else:
            ctx.check("passphrase: the secret text is used verbatim",
                      ours == km.payload.reveal().decode())
        rec = svc.create(64 << 20, ref.href, provider="luks", format=False)
        conn, enc, new = svc.attach_args(rec.id)
        prepared[kind] = (hook.prepare(conn, enc, new_volume=new), km)
    steps = []
    for i, (v, _) in enumerate(prepared.values()):
        steps += [ctx.attach_step(v), ctx.write_step(v, 200 + i, data), ctx.detach_step(v)]
    ctx.progress("write through dm-crypt in the guest")
    run = hook.run([v for v, _ in prepared.values()], steps)
    ctx.check("guest attach/write/detach succeeded", all(s["ok"] for s in run.steps))
    qemu = ctx.qemu_backend()
    if qemu:
        ctx.note(f"Nova's native path ran for real: a {qemu} guest with the volume attached "
                 "through QEMU's luks block driver and a secret object, read inside the guest.")
    else:
        ctx.note("No QEMU backend is usable here (byok doctor): the native path is shown with "
                 "qemu-img's LUKS driver only.")
    ctx.measure("native_path_backend", qemu or "qemu-img", "")
    qemu_read = ctx.qemu_guest_sha256 if qemu else ctx.qemu_img_sha256

    for i, (kind, (v, km)) in enumerate(prepared.items()):
        want = pattern_sha256(200 + i, data)
        with ctx.timed(f"qemu_read_s:{kind}"):
            got = qemu_read(v.path, ctx.passphrase(km), data)
        ctx.check(f"{kind}: QEMU's LUKS driver reads what dm-crypt wrote, same passphrase",
                  got == want)
        if qemu:
            ctx.check(f"{kind}: qemu-img's driver agrees with the QEMU guest",
                      ctx.qemu_img_sha256(v.path, ctx.passphrase(km), data) == want)
    # Hex-encoding every secret (a passphrase secret too) does not open a passphrase volume.
    v, km = prepared["passphrase"]
    wrong = ctx.sensitive(binascii.hexlify(km.payload.reveal()))
    with ctx.expect_error(WrongKey, claim="passphrase secret, hex-encoded: QEMU refuses it"):
        qemu_read(v.path, wrong, 4096)
