"""E10 — keyslot rekey vs full re-encryption: time vs size, what each revokes, and whether an
interrupted re-encryption can always be finished (H6).

Beside its own exhaustive kill of cryptsetup's re-encryption, it records the archived
exhaustive enumeration of every other writing lifecycle operation (``byok bench
crash-lifecycle``, LIFECYCLE_EVIDENCE): the rekey-clone, escrow and delete paths a rotation
policy builds on, each killed at every counted call.
"""

from byok.harness import crashenum, experiment

LIFECYCLE_EVIDENCE = "bench-crash-lifecycle-20261202.json"


@experiment(
    "E10",
    title="Keyslot rekey vs full re-encryption: time vs volume size; what each revokes",
    hurdle="H6",
    hypothesis="A keyslot rekey takes about the same time at any volume size and leaves the "
    "volume key unchanged (it does not revoke a leaked volume key); full re-encryption takes "
    "time proportional to size and changes the volume key; a re-encryption killed at any "
    "of its writes can be finished with the data intact, and read offline exactly or refused "
    "— where cryptsetup's own resume destroys some of those states.",
    needs={"stack"},
    params={"sizes_mib": [64, 256, 1024], "enumerated_mib": 8, "tear_fractions": [0.3, 0.7]},
)
def run(ctx):
    svc = ctx.volumes(with_service=False)
    rekey_t, reenc_t = {}, {}
    for size in ctx.param("sizes_mib"):
        ctx.progress(f"{size} MiB")
        for mode in ("rekey", "reencrypt"):
            old, _ = ctx.user_key("alice", "aes512")
            new, _ = ctx.user_key("alice", "aes512")
            vol = svc.create(size << 20, old.href)
            path = svc.pool.path(vol.id)
            vk_before = ctx.volume_key(path, ctx.passphrase(svc.key(old)))
            if mode == "rekey":
                with ctx.timed():
                    ctx.rotate(svc, vol.id, new.href)
                rekey_t[size] = ctx.last_duration
            else:
                _, seconds = ctx.reencrypt(svc, vol.id, new.href)
                reenc_t[size] = seconds
            vk_after = ctx.volume_key(path, ctx.passphrase(svc.key(new)))
            same = vk_after == vk_before
            ctx.check(f"{size} MiB {mode}: volume key "
                      f"{'unchanged' if mode == 'rekey' else 'changed'}",
                      same if mode == "rekey" else not same)
            svc.delete(vol.id)
        ctx.measure(f"rekey_s:{size}", round(rekey_t[size], 3), "s")
        ctx.measure(f"reencrypt_s:{size}", round(reenc_t[size], 3), "s")
    sizes = ctx.param("sizes_mib")
    small, big = sizes[0], sizes[-1]
    ctx.measure("rekey_ratio_big_small", round(rekey_t[big] / rekey_t[small], 2), "x")
    ctx.measure("reencrypt_mib_s", round(big / reenc_t[big], 1), "MiB/s")
    ctx.check("rekey time barely depends on size (ratio < 2 across the sizes)",
              rekey_t[big] / rekey_t[small] < 2)
    ctx.check("re-encryption time grows with size", reenc_t[big] > 2 * reenc_t[small])

    _interrupted_reencryptions(ctx, svc)
    _cite_exhaustive_lifecycle(ctx)


def _cite_exhaustive_lifecycle(ctx) -> None:
    ev = ctx.lifecycle_crash_evidence(LIFECYCLE_EVIDENCE)
    per = ev["tried_per_operation"]
    ctx.measure("exhaustive_lifecycle_states_tried", ev["tried"], "states",
                note=f"{ev['path']} (byok bench crash-lifecycle, {ev['started']})")
    ctx.measure("exhaustive_lifecycle_states_with_a_problem", ev["problems"], "states")
    if "rotation_tried" in ev:
        for op, n in sorted(ev["rotation_tried_per_operation"].items()):
            ctx.measure(f"exhaustive_rotation_tried:{op}", n, "states",
                        note=f"{ev['path']}: byok's own {op} at every write-type call, 0 with "
                        "a problem")
    for op in ("rekey-clone", "add-escrow", "delete", "castellan-delete"):
        if op in per:
            ctx.measure(f"exhaustive_lifecycle_tried:{op}", per[op], "states",
                        note=f"{ev['problems_per_operation'][op]} with a problem")


def _interrupted_reencryptions(ctx, svc) -> None:
    """Kill ``cryptsetup reencrypt`` of an 8 MiB volume at every one of its writes (strace
    inject=write:signal=KILL:when=N, N = 1..all) and tear each large write; judge every state
    four ways: byok recover offline, byok's finish, cryptsetup --resume-only alone, and
    cryptsetup repair + --resume-only (each on its own copy, against the plaintext)."""
    shape = crashenum.Shape(data_kib=ctx.param("enumerated_mib") << 10, hotzone=None)
    base = crashenum.build(shape, ctx.scratch / "e10-lab")
    total = crashenum.count_writes(base)
    ctx.measure("reencrypt_write_calls", total, "writes",
                note=f"a full re-encryption of {shape.data_kib >> 10} MiB")
    judges = {
        "byok_recover": crashenum.judge_byok,
        "byok_finish": crashenum.judge_byok_finish,
        "cryptsetup_resume_alone": lambda b, c: crashenum.judge_cryptsetup(b, c, repair=False),
        "cryptsetup_repair_resume": crashenum.judge_cryptsetup,
    }
    tally = {k: {} for k in judges}
    destroyed: dict[str, list[str]] = {k: [] for k in judges}
    states = 0
    big = {n for n, size in enumerate(base.sizes, 1) if size >= 65536}
    fractions = tuple(ctx.param("tear_fractions"))
    for n in range(1, total + 2):
        crashed = [crashenum.kill_at(base, n)]
        if n in big:
            crashed += [crashenum.torn_at(base, n, cut)
                        for cut in crashenum.tear_points(base.sizes[n - 1], fractions)]
        for c in crashed:
            states += 1
            for name, judge in judges.items():
                v = judge(base, c)
                v = "refused" if v.startswith("refused") else v
                tally[name][v] = tally[name].get(v, 0) + 1
                if v == "wrong":
                    destroyed[name].append(f"{c.variant}@{n}")
            crashenum.cleanup(c)
    ctx.measure("crashed_states", states, "states", note="kill at every write + torn writes")
    for name, counts in tally.items():
        for verdict, k in sorted(counts.items()):
            ctx.measure(f"{name}:{verdict}", k, f"of {states}")
    windows = ", ".join(destroyed["cryptsetup_resume_alone"]) or "none"
    ctx.measure("cryptsetup_resume_alone_destroys_at", len(destroyed["cryptsetup_resume_alone"]),
                "states", note=windows)
    ctx.check(f"byok recover never answers with a wrong byte ({states} crashed states)",
              not destroyed["byok_recover"], ", ".join(destroyed["byok_recover"]))
    ctx.check(f"byok's finish leaves every one of {states} crashed states intact",
              not destroyed["byok_finish"] and not tally["byok_finish"].get("refused"),
              f"{tally['byok_finish']}")
    ctx.check("byok recover refuses only where cryptsetup's repair cannot recover either",
              tally["byok_recover"].get("refused", 0)
              <= tally["cryptsetup_repair_resume"].get("refused", 0)
              + tally["cryptsetup_repair_resume"].get("wrong", 0), f"{tally}")
