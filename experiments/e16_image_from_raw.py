"""E16 — a LUKS image from a raw file without root, and back to a volume (Glance's case)."""

import hashlib

from byok.common.pattern import pattern
from byok.harness import experiment


@experiment(
    "E16",
    title="LUKS image built from a raw file without root, then a volume from it",
    hurdle="H4",
    hypothesis="A plaintext raw image becomes a LUKS2 image encrypted with the user's key "
    "without root or device-mapper; a volume created from it attaches through os-brick and "
    "shows exactly the raw bytes; independent readers (dissect.fve, byok recover) agree.",
    needs={"stack", "dm-crypt"},
    params={"size_mib": 64},
)
def run(ctx):
    size = ctx.param("size_mib") << 20
    svc, hook = ctx.volumes(with_service=False), ctx.hook()
    ref, _ = ctx.user_key("alice", "aes512")
    raw = ctx.scratch / "image.raw"
    raw.write_bytes(pattern(16, size))
    want = hashlib.sha256(raw.read_bytes()).hexdigest()
    with ctx.timed():
        img = svc.image_from_raw(raw, ref.href)
    seconds = ctx.last_duration
    ctx.measure("image_build_s", round(seconds, 3), "s")
    ctx.measure("image_build_mib_s", round(size / (1 << 20) / seconds, 1), "MiB/s")
    pw = ctx.passphrase(svc.key(ref))
    ctx.check("dissect.fve reads the raw bytes from the image",
              ctx.dissect_sha256(svc.pool.path(img.id), pw, size) == want)
    vol = svc.create_from_image(img.id)
    conn, enc, new = svc.attach_args(vol.id)
    v = hook.prepare(conn, enc, new_volume=new)
    run = hook.run([v], [ctx.attach_step(v), ctx.read_step(v, size, name="read"),
                         ctx.detach_step(v)])
    ctx.check("the volume from the image shows the raw bytes through dm-crypt",
              run.step("read").get("sha256") == want)
    out = ctx.scratch / "vol.plain"
    ctx.recover(svc.pool.path(vol.id), out, pw)
    ctx.check("byok recover returns exactly the raw file", out.read_bytes() == raw.read_bytes())
