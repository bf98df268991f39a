"""E12 — PBKDF cost: key-derivation time and memory per policy; N parallel attaches (H8)."""

import time

from byok.harness import experiment

SLICE = 4 << 20
POLICIES = ("machine-key", "passphrase", "osbrick-default")


@experiment(
    "E12",
    title="PBKDF cost: unlock time and memory per policy; N parallel attaches",
    hurdle="H8",
    hypothesis="For a full-entropy machine key, the machine-key policy (PBKDF2, 1000 iterations) "
    "unlocks at least 50x faster than os-brick's default LUKS2 argon2id and needs no KDF "
    "memory, so 32 parallel attaches fit in 256 MiB; memory-hard policies cost their memory "
    "once per parallel unlock.",
    needs={"stack", "dm-crypt"},
    params={"n": {"machine-key": [1, 2, 4, 8, 16, 32], "passphrase": [1, 2, 4, 8],
                  "osbrick-default": [1, 2, 4]}, "guest_parallel": 32},
)
def run(ctx):
    pw = ctx.sensitive(b"ab" * 64)  # a 128-hex-character passphrase, like a 512-bit key's
    unlock = {}
    for policy in POLICIES:
        ctx.progress(f"{policy}: format and unlock on the host")
        vol = ctx.blank_file(f"{policy}.img", 64 << 20)
        with ctx.timed(f"format_s:{policy}"):
            info = ctx.luks_format(vol, pw, policy=policy)
        kdf = info.keyslots[min(info.keyslots)]
        ctx.measure(f"kdf_memory_kib:{policy}", kdf.get("memory_kib") or 0, "KiB",
                    note=str(kdf.get("kdf")))
        samples = []
        for _ in range(3 if policy != "osbrick-default" else 1):
            t0 = time.perf_counter()
            ctx.test_key(vol, pw)
            samples.append(time.perf_counter() - t0)
        unlock[policy] = min(samples)
        ctx.measure(f"open_s:{policy}", round(unlock[policy], 4), "s", samples=samples,
                    note="the KDF part of an open (cryptsetup --test-passphrase, host)")
        for n in ctx.param("n")[policy]:
            r = ctx.parallel_unlocks(vol, pw, n)
            ctx.measure(f"parallel_wall_s:{policy}:{n}", round(r["wall"], 3), "s")
            ctx.measure(f"parallel_peak_mib:{policy}:{n}", round(r["peak_mib"], 1), "MiB")
            ctx.check(f"{policy}: {n} parallel unlocks all succeed", r["failures"] == 0,
                      f"{r['failures']} failed")
    ratio = unlock["osbrick-default"] / unlock["machine-key"]
    ctx.measure("open_speedup_machine_vs_osbrick_default", round(ratio, 1), "x")
    ctx.check("machine-key unlocks >= 50x faster than os-brick's default", ratio >= 50,
              f"{ratio:.0f}x")
    peak32 = ctx.result.measurement("parallel_peak_mib:machine-key:32").value
    ctx.check("32 parallel machine-key unlocks stay within 256 MiB in total", peak32 <= 256,
              f"{peak32:.0f} MiB (resident memory of the 32 cryptsetup processes)")
    # Real dm-crypt: N machine-key volumes opened in parallel in the guest.
    n = ctx.param("guest_parallel")
    tmpl = ctx.blank_file("tmpl.img", SLICE)
    offset = ctx.luks_format(tmpl, pw, policy="machine-key", compact=True).data_offset
    head = tmpl.read_bytes()[:offset]
    multi = ctx.blank_file("multi.img", n * SLICE)
    with open(multi, "r+b") as f:
        for i in range(n):
            f.seek(i * SLICE)
            f.write(head)
    ctx.progress(f"{n} parallel luksOpen on real dm-crypt")
    p = ctx.guest_parallel_open(multi, n, SLICE, pw)
    ctx.check(f"{n} parallel machine-key luksOpen on real dm-crypt all succeed",
              p.get("ok") and not p.get("failures"), str(p.get("failures", p))[:200])
    ctx.measure(f"guest_parallel_wall_s:{n}", round(p.get("wall_seconds", -1), 3), "s")
    ctx.measure(f"guest_parallel_peak_mib:{n}", round(p.get("peak_used_kib", 0) / 1024, 1),
                "MiB", note="MemAvailable drop in the guest during the opens")
    ctx.note("Memory-hard KDFs are much slower under User-Mode Linux than on the host (each "
             "page of argon2's memory is a ptrace round trip), so KDF cost is measured on the "
             "host with cryptsetup --test-passphrase, which runs the full key derivation of an "
             "open; the guest shows the dm-crypt part for N parallel machine-key volumes.")
