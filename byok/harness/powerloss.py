"""Power loss during the operations byok performs on a volume, replayed from a write log.

In a real guest kernel the volume sits under ``dm-log-writes`` while the operation runs (the
same cryptsetup commands byok's lifecycle runs), so every write and every flush/FUA is
recorded in the order it became durable. On the host the log is replayed onto a copy of the
volume as it was before the operation, at every flush point and with random subsets of the
writes after it (:mod:`byok.harness.writelog`); every replayed image must still open with the
old or the new key (offline, with ``byok recover``, and for a sample in the guest) and give the
exact plaintext. An image that does not is kept for inspection, and counted as a loss.
"""

from __future__ import annotations

import hashlib
import random
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from byok.common import proc, sparse
from byok.common.errors import ByokError, ExperimentError
from byok.common.pattern import pattern, pattern_sha256
from byok.common.sensitive import Sensitive
from byok.guest import Disk, Guest
from byok.harness import writelog
from byok.luks import cryptsetup as luks
from byok.luks import recovery

DATA = 2 << 20
OLD = Sensitive(b"0a" * 32)
NEW = Sensitive(b"0b" * 32)
KDF = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]
LW = "/dev/mapper/byok-lw"


def _cs(*args: str, stdin: str = "old") -> dict:
    return {"op": "run", "argv": ["cryptsetup", *args], "stdin": stdin}


@dataclass(frozen=True)
class Scenario:
    """One operation: how its volume starts, what runs under the log, which keys may open."""

    name: str
    steps: list[dict]
    opens: frozenset[str]            # keys of which one must open every state, exactly
    blank: bool = False              # the volume starts blank (format): no plaintext to check
    prepare: Callable[[Path, Path], None] | None = None  # (volume, workdir) before recording


def _restore_prepare(vol: Path, work: Path) -> None:
    """A header backup taken under the old key, then the volume moved to the new key."""
    luks.header_backup(vol, work / "old.hdr")
    luks.change_key(vol, OLD, NEW, policy="machine-key")


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("format", [_cs("luksFormat", "--batch-mode", "--type", "luks2", *KDF,
                            "--key-file=-", LW)], frozenset({"old"}), blank=True),
    Scenario("add-key", [_cs("luksAddKey", "--batch-mode", *KDF, "--key-file=-", LW,
                             "{key:new}")], frozenset({"old"})),
    Scenario("change-key", [
        _cs("luksAddKey", "--batch-mode", *KDF, "--key-file=-", LW, "{key:new}"),
        _cs("luksKillSlot", "--batch-mode", "--key-file=-", LW, "0", stdin="new"),
    ], frozenset({"old", "new"})),
    Scenario("reencrypt", [
        _cs("reencrypt", "--batch-mode", *KDF, "--resilience", "checksum", "--hotzone-size",
            "256K", "--key-file=-", LW),
    ], frozenset({"old"})),
    Scenario("header-restore", [
        {"op": "run", "argv": ["cryptsetup", "luksHeaderRestore", "--batch-mode", LW,
                               "--header-backup-file", "{file:old.hdr}"]},
    ], frozenset({"old", "new"}), prepare=_restore_prepare),
)}


@dataclass
class Outcome:
    scenario: str
    entries: int = 0
    flushes: int = 0
    states: int = 0
    by_key: dict[str, int] = field(default_factory=dict)
    refused: int = 0
    losses: list[dict[str, Any]] = field(default_factory=list)      # byok's: must stay empty
    cryptsetup_losses: list[dict[str, Any]] = field(default_factory=list)  # byok refused them
    finished: dict[str, int] = field(default_factory=dict)         # byok's resume, per result
    guest_checked: int = 0
    guest_agreed: int = 0
    seconds_guest: float = 0.0


def _volume(work: Path, blank: bool) -> Path:
    vol = work / "vol.img"
    if blank:
        sparse.create(vol, DATA + (16 << 20))
        return vol
    raw = work / "plain.raw"
    raw.write_bytes(pattern(5, DATA))
    luks.encrypt_file(raw, vol, OLD)
    raw.unlink()
    return vol


def record(scenario: Scenario, work: Path, guest: Guest) -> tuple[bytes, writelog.WriteLog,
                                                                  bytes, Path]:
    """Run the scenario in the guest under dm-log-writes: (image before, log, log bytes,
    volume file after)."""
    vol = _volume(work, scenario.blank)
    if scenario.prepare:
        scenario.prepare(vol, work)
    before = vol.read_bytes()
    log = work / "writes.log"
    sparse.create(log, 4 * vol.stat().st_size + (4 << 20))
    sectors = vol.stat().st_size // 512
    steps: list[dict] = [
        {"op": "run", "argv": ["dmsetup", "create", "byok-lw", "--table",
                               f"0 {sectors} log-writes {{disk:vol}} {{disk:log}}"]},
        {"op": "run", "argv": ["dmsetup", "mknodes"]},
        {"op": "run", "argv": ["dmsetup", "message", "byok-lw", "0", "mark", "start"]},
        *[_with_files(s, work) for s in scenario.steps],
        {"op": "run", "argv": ["dmsetup", "message", "byok-lw", "0", "mark", "end"]},
        {"op": "run", "argv": ["dmsetup", "remove", "byok-lw"]},
    ]
    for i, s in enumerate(steps):
        s.setdefault("name", f"{scenario.name}-{i}")
    run = guest.run(steps, disks=[Disk(vol, "vol"), Disk(log, "log")],
                    secrets={"old": OLD, "new": NEW})
    bad = [s for s in run.steps if not s.get("ok") or s.get("exit_code")]
    if bad or len(run.steps) != len(steps):
        raise ExperimentError(f"{scenario.name}: recording failed in the guest "
                              f"({run.backend}): {bad[:1] or 'a step did not run'}")
    wlog, data = writelog.read(log)
    return before, wlog, data, vol


def _with_files(step: dict, work: Path) -> dict:
    """``{file:NAME}`` -> the host file ``work/NAME`` (the guest sees the host's / read-only)."""
    return dict(step, argv=[re.sub(r"\{file:([^}]+)\}", lambda m: str(work / m.group(1)), a)
                            for a in step["argv"]])


def classify(image: Path, scenario: Scenario) -> tuple[str, str]:
    """("old"|"new"|"refused"|"loss", detail): which key opens ``image`` with the exact
    plaintext (byok recover, offline); a key that opens it with other bytes is a loss."""
    want = pattern_sha256(5, DATA)
    wrong = []
    for name, pw in (("old", OLD), ("new", NEW)):
        out = image.with_suffix(f".{name}.plain")
        try:
            recovery.recover(image, out, passphrase=pw, overwrite=True)
        except ByokError as e:
            wrong.append(f"{name}: {type(e).__name__}")
            continue
        try:
            if scenario.blank:
                return name, "opens"
            with open(out, "rb") as f:
                got = hashlib.sha256(f.read(DATA)).hexdigest()
        finally:
            out.unlink(missing_ok=True)
        if got == want:
            return name, "exact"
        return "loss", f"{name} opens it with other bytes"
    if scenario.blank:  # there was no data: a typed refusal by both keys loses nothing
        return "refused", "; ".join(wrong)
    return "loss", "no key opens it: " + "; ".join(wrong)


def _plaintext_ok(image: Path, pw: Sensitive) -> bool:
    out = image.with_suffix(".check.plain")
    try:
        recovery.recover(image, out, passphrase=pw, overwrite=True)
        with open(out, "rb") as f:
            return hashlib.sha256(f.read(DATA)).hexdigest() == pattern_sha256(5, DATA)
    except ByokError:
        return False
    finally:
        out.unlink(missing_ok=True)


def cryptsetup_recovers(image: Path) -> bool:
    """What cryptsetup itself makes of a state byok refused: ``repair`` then
    ``reencrypt --resume-only`` on a copy (offline, no dm), then the plaintext compared."""
    copy = image.with_suffix(".cryptsetup.img")
    shutil.copy2(image, copy)
    try:
        for args in (["repair", "--batch-mode"],
                     ["reencrypt", "--resume-only", "--force-offline-reencrypt", "--batch-mode"]):
            proc.run(["cryptsetup", *args, "--key-file=-", copy], input=OLD, check=False,
                     timeout=300, cwd=image.parent)
        return _plaintext_ok(copy, OLD)
    finally:
        copy.unlink(missing_ok=True)


def byok_finishes(image: Path) -> str:
    """byok's resume on a copy of an interrupted re-encryption: "exact" (finished, the
    plaintext intact), "refused" (typed, nothing changed) or "wrong"."""
    from byok.lifecycle import rotation

    copy = image.with_suffix(".finish.img")
    shutil.copy2(image, copy)
    try:
        try:
            rotation.finish_reencryption(copy, OLD)
        except ByokError:
            return "refused"
        return "exact" if _plaintext_ok(copy, OLD) else "wrong"
    finally:
        copy.unlink(missing_ok=True)


def _reencrypting(image: Path) -> bool:
    from byok.luks import header as luksheader

    try:
        return any("reencrypt" in r for r in luksheader.read(str(image)).requirements)
    except ByokError:
        return False


def run_scenario(scenario: Scenario, *, guest: Guest, subsets: int, keep: Path,
                 guest_sample: int = 3, seed: int = 0) -> Outcome:
    """Record, replay every crash state, classify each; a sample is opened in the guest too."""
    out = Outcome(scenario.name)
    with tempfile.TemporaryDirectory(prefix="byok-powerloss-") as d:
        work = Path(d)
        before, log, data, _vol = record(scenario, work, guest)
        out.entries = len(log.entries)
        out.flushes = len(log.flush_points())
        states = list(writelog.crash_states(log, start=log.mark("start"), subsets=subsets,
                                            seed=seed))
        # The guest opens a sample: the last state (the operation complete) and a few others.
        sampled = {len(states) - 1, *random.Random(seed).sample(range(len(states)),
                                                                min(guest_sample, len(states)))}
        guest_images: list[tuple[Path, str]] = []
        for i, state in enumerate(states):
            image = work / f"state-{i}.img"
            image.write_bytes(writelog.replay(before, log, data, state))
            kind, detail = classify(image, scenario)
            out.states += 1
            if kind in ("old", "new"):
                out.by_key[kind] = out.by_key.get(kind, 0) + 1
            elif kind == "refused":
                out.refused += 1
            if kind == "loss" and "RecoveryRefused" in detail and "opens it with" not in detail:
                # byok refused to vouch for these bytes: cryptsetup's own tools are the judge.
                kind = "refused-by-byok"
                out.refused += 1
                if cryptsetup_recovers(image):
                    kind, detail = "loss", detail + "; cryptsetup's repair + resume recover it"
                else:
                    out.cryptsetup_losses.append({"state": state.label, "detail": detail,
                                                  "image": str(_keep(keep, scenario, state, i,
                                                                     image))})
            if kind == "loss" or (kind in ("old", "new") and kind not in scenario.opens):
                out.losses.append({"state": state.label, "detail": detail,
                                   "image": str(_keep(keep, scenario, state, i, image))})
            reencrypting = not scenario.blank and _reencrypting(image)
            if reencrypting:
                how = byok_finishes(image)
                out.finished[how] = out.finished.get(how, 0) + 1
                if how == "wrong":
                    out.losses.append({"state": state.label, "detail": "byok's resume gave "
                                       "other bytes", "image": str(_keep(keep, scenario, state,
                                                                         i, image))})
            # A crashed re-encryption needs a repair before any open; the guest opens the rest.
            if i in sampled and kind in ("old", "new") and not reencrypting:
                guest_images.append((image, kind))
            else:
                image.unlink()
        out.guest_checked, out.guest_agreed, out.seconds_guest = _guest_check(
            guest, guest_images, scenario)
    return out


def _keep(keep: Path, scenario: Scenario, state: writelog.CrashState, i: int,
          image: Path) -> Path:
    keep.mkdir(parents=True, exist_ok=True)
    kept = keep / f"{scenario.name}-{state.label}-{i}.img"
    if not kept.exists():
        shutil.copy2(image, kept)
    return kept


def _guest_check(guest: Guest, images: list[tuple[Path, str]],
                 scenario: Scenario) -> tuple[int, int, float]:
    """Open the sampled replayed images on real dm-crypt in the guest with the key that
    opened them offline; the guest must read the same plaintext."""
    if not images:
        return 0, 0, 0.0
    steps: list[dict] = []
    for i, (_img, key) in enumerate(images):
        steps += [
            {"op": "cryptsetup_open", "disk": f"s{i}", "key": key, "mapping": f"pl{i}",
             "name": f"open{i}"},
            *([] if scenario.blank else [
                {"op": "sha256", "mapper": f"pl{i}", "size": DATA, "name": f"read{i}"}]),
            {"op": "cryptsetup_close", "mapping": f"pl{i}", "name": f"close{i}"},
        ]
    run = guest.run(steps, disks=[Disk(img, f"s{i}", writable=False)
                                  for i, (img, _k) in enumerate(images)],
                    secrets={"old": OLD, "new": NEW})
    agreed = 0
    for i in range(len(images)):
        try:
            ok = run.step(f"open{i}").get("ok") and (
                scenario.blank or run.step(f"read{i}").get("sha256") == pattern_sha256(5, DATA))
        except KeyError:
            ok = False
        agreed += bool(ok)
    return len(images), agreed, run.seconds
