"""Exhaustive crash enumeration of cryptsetup's LUKS2 re-encryption, with a ground truth.

For one *shape* (mode, resilience, sector size, key size, hotzone, header placement, secret
kind) a base volume is built from a known plaintext; the full ``cryptsetup reencrypt`` is traced
once to count its ``write(2)`` calls; then for every N it is run again under
``strace -f -e inject=write:signal=KILL:when=N`` — killed on entering its Nth write, so writes
1..N-1 reached the file and the Nth did not. A *torn* variant lets only a prefix of the Nth
write reach the file (what a power cut leaves), cut at 512-byte but not 4 KiB alignment: an
LD_PRELOAD fault injector (``fault_inject.c``, built at run time) writes the prefix and kills
the process inside that call.

Each crashed state is judged twice, on separate copies:

* ``byok``: :func:`byok.luks.recovery.recover` on the image → ``exact`` (every plaintext byte
  right), ``refused`` (a typed error, nothing written) or ``wrong`` (exit 0 with a wrong byte);
* ``cryptsetup``: ``cryptsetup repair`` then ``reencrypt --resume-only`` → ``exact``,
  ``refused`` (still marked, or not LUKS) or ``wrong`` (it finished and the data differs).

Used by tests/reliability (a sample in CI), ``byok bench crash`` (everything), E10 and the
upstream report's evidence. Fault injection only: a real cryptsetup is killed at a real
syscall; the torn-write injector is the only stand-in, and its name says so.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from byok.common import proc
from byok.common.errors import ByokError, ExperimentError
from byok.common.pattern import pattern
from byok.common.sensitive import Sensitive
from byok.luks import header as luksheader
from byok.luks import recovery

KDF = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]


@dataclass(frozen=True)
class Shape:
    """One volume layout and one ``cryptsetup reencrypt`` invocation."""

    mode: str = "reencrypt"  # reencrypt | encrypt | decrypt
    resilience: str | None = None  # None: cryptsetup's default (checksum; datashift for shift)
    sector: int = 512
    key_bits: int = 512
    hotzone: str | None = "256K"
    header: str = "attached"  # attached | detached | export (decrypt, header moved to a file)
    secret: str = "symmetric"  # symmetric (os-brick hex of key bytes) | passphrase
    data_kib: int = 1024

    @property
    def name(self) -> str:
        parts = [self.mode, self.resilience or "default", f"{self.sector}", f"xts{self.key_bits}",
                 self.header]
        if self.hotzone:
            parts.append(f"hz{self.hotzone}")
        if self.secret != "symmetric":
            parts.append(self.secret)
        return "-".join(parts)


@dataclass
class Base:
    shape: Shape
    workdir: Path
    image: Path
    header: Path | None  # a detached header (the base copy), if the shape has one
    plain: bytes
    passphrase: Sensitive
    argv: list[str]  # cryptsetup arguments; IMG / HDR are placeholders
    writes: int = 0
    sizes: list[int] = field(default_factory=list)  # bytes of each write(2), in order


def _cs(args: list[str], pw: Sensitive, *, strace: list[str] | None = None,
        timeout: float = 120.0, cwd: Path | None = None) -> proc.Result:
    """cryptsetup in the lab's directory: an in-place encryption killed early leaves its
    temporary header (LUKS2-temp-<uuid>.new) in the current directory."""
    argv = [*(strace or []), "cryptsetup", *args, "--key-file=-"]
    return proc.run(argv, input=pw, check=False, timeout=timeout, what="cryptsetup (crash lab)",
                    cwd=cwd)


def _passphrase(shape: Shape, seed: int) -> Sensitive:
    rng = hashlib.sha256(f"{shape.name}/{seed}".encode()).digest()
    if shape.secret == "passphrase":
        return Sensitive(b"correct horse " + rng[:6].hex().encode())
    return recovery.passphrase_from_key_bytes(rng + hashlib.sha256(rng).digest())


def build(shape: Shape, workdir: Path, seed: int = 13) -> Base:
    """The base volume (before the re-encryption under test) and the command that changes it."""
    workdir.mkdir(parents=True, exist_ok=True)
    pw = _passphrase(shape, seed)
    plain = pattern(seed, shape.data_kib << 10)
    img = workdir / "base.img"
    hdr = workdir / "base.hdr"
    hdr.unlink(missing_ok=True)
    img.write_bytes(plain)
    fmt = ["--type", "luks2", "--sector-size", str(shape.sector), "--key-size",
           str(shape.key_bits), *KDF]
    hz = ["--hotzone-size", shape.hotzone] if shape.hotzone else []
    res = ["--resilience", shape.resilience] if shape.resilience else []
    common = ["reencrypt", "--batch-mode", "--force-offline-reencrypt"]
    if shape.mode == "encrypt":
        if shape.header == "detached":
            argv = [*common, "--encrypt", *fmt, *hz, *res, "--header", "HDR", "IMG"]
            return Base(shape, workdir, img, None, plain, pw, argv)
        os.truncate(img, len(plain) + (32 << 20))
        argv = [*common, "--encrypt", *fmt, *hz, *res, "--reduce-device-size", "32M", "IMG"]
        return Base(shape, workdir, img, None, plain, pw, argv)
    # reencrypt / decrypt start from an encrypted volume
    if shape.header == "detached":
        r = _cs([*common, "--encrypt", *fmt, "--header", str(hdr), str(img)], pw, cwd=workdir)
        if r.returncode:
            raise ExperimentError(f"building {shape.name}: {r.tail(3)}")
        header = hdr
    else:
        os.truncate(img, len(plain) + (32 << 20))
        r = _cs([*common, "--encrypt", *fmt, "--reduce-device-size", "32M", str(img)], pw,
                cwd=workdir)
        if r.returncode:
            raise ExperimentError(f"building {shape.name}: {r.tail(3)}")
        h = luksheader.read(str(img))
        os.truncate(img, h.segment.offset + len(plain))
        header = None
    if shape.mode == "decrypt":
        argv = [*common, "--decrypt", *hz, *res, "--header", "HDR", "IMG"]
    else:
        argv = [*common, *KDF, *hz, *res, *(["--header", "HDR"] if header else []), "IMG"]
    return Base(shape, workdir, img, header, plain, pw, argv)


@dataclass
class Crashed:
    """A crashed state: copies of the data image and (if any) the detached header file."""

    n: int
    variant: str  # kill | torn@<bytes>
    image: Path
    header: Path | None
    killed: bool


def _prepare(base: Base, tag: str) -> tuple[Path, Path | None, list[str]]:
    img = base.workdir / f"{tag}.img"
    shutil.copyfile(base.image, img)
    hdr = None
    if base.header is not None or "HDR" in base.argv:
        hdr = base.workdir / f"{tag}.hdr"
        hdr.unlink(missing_ok=True)
        if base.header is not None:
            shutil.copyfile(base.header, hdr)
    argv = [str(img) if a == "IMG" else str(hdr) if a == "HDR" else a for a in base.argv]
    return img, hdr, argv


def count_writes(base: Base) -> int:
    """write(2) calls of the whole, uninterrupted re-encryption (and check it succeeds)."""
    img, hdr, argv = _prepare(base, "full")
    trace = base.workdir / "full.trace"
    r = _cs(argv, base.passphrase, strace=["strace", "-f", "-qq", "-o", str(trace), "-e",
                                            "trace=write"], cwd=base.workdir)
    if r.returncode:
        raise ExperimentError(f"{base.shape.name}: the uninterrupted re-encryption failed: "
                        f"{r.tail(3)}")
    import re

    sizes = [int(m.group(1)) for line in trace.read_text().splitlines()
             if (m := re.search(r"\bwrite\(.*\)\s*=\s*(-?\d+)", line))]
    n = len(sizes)
    base.writes, base.sizes = n, sizes
    verdict = judge_byok(base, Crashed(0, "full", img, hdr, False))
    if verdict != "exact":
        raise ExperimentError(f"{base.shape.name}: the finished re-encryption does not read back "
                        f"({verdict})")
    trace.unlink()
    return n


def kill_at(base: Base, n: int, tag: str = "k") -> Crashed:
    img, hdr, argv = _prepare(base, tag)
    r = _cs(argv, base.passphrase, strace=["strace", "-f", "-qq", "-o", "/dev/null", "-e",
                                            f"inject=write:signal=KILL:when={n}"],
            cwd=base.workdir)
    return Crashed(n, "kill", img, hdr, r.returncode != 0)


def injector(workdir: Path) -> Path:
    """Build the LD_PRELOAD fault injector (fault_inject.c) once per work dir."""
    so = workdir / "fault_inject.so"
    if not so.exists():
        src = Path(__file__).with_name("fault_inject.c")
        proc.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(so), str(src), "-ldl"], timeout=120,
                 what="build the crash lab's fault injector")
    return so


def fault_env(workdir: Path, at: int, *, exe: str | None = None, torn: int | None = None,
              group: bool = False, writes_only: bool = False, log: bool = False,
              tree: bool = False, wide: bool = False) -> dict[str, str]:
    """Environment that loads the injector: fail call number ``at`` (0: only count).
    ``group``: kill the faulting process's group; ``tree``: the whole tree the harness started
    (in its own session), across the sessions byok gives its children; ``wide``: count every
    state-changing call and each send, not only write/fsync/rename (``BYOK_FAULT_ALL``)."""
    counter = workdir / "fault.counter"
    counter.unlink(missing_ok=True)
    env = {"LD_PRELOAD": str(injector(workdir)), "BYOK_FAULT_COUNTER": str(counter),
           "BYOK_FAULT_AT": str(at)}
    if tree:
        root = workdir / "fault.root"
        root.unlink(missing_ok=True)
        env |= {"BYOK_FAULT_KILL": "tree", "BYOK_FAULT_ROOT": str(root)}
    if wide:
        env["BYOK_FAULT_ALL"] = "1"
    if log:
        (workdir / "fault.log").unlink(missing_ok=True)
        env["BYOK_FAULT_LOG"] = str(workdir / "fault.log")
    if exe:
        env["BYOK_FAULT_EXE"] = exe
    if torn is not None:
        env["BYOK_FAULT_TORN_BYTES"] = str(torn)
    if group:
        env["BYOK_FAULT_KILL"] = "group"
    if writes_only:
        env["BYOK_FAULT_WRITES_ONLY"] = "1"
    return env


def calls(workdir: Path) -> list[tuple[int, str, int, str]]:
    """The counted calls of the last ``log=True`` run: (n, kind, bytes, executable)."""
    out = []
    for line in (workdir / "fault.log").read_text().splitlines():
        n, kind, size, exe = line.split(" ", 3)
        out.append((int(n), kind, int(size), exe))
    return sorted(out)


def counted(workdir: Path) -> int:
    try:
        return int((workdir / "fault.counter").read_text() or 0)
    except FileNotFoundError:
        return 0


def torn_at(base: Base, n: int, keep: int) -> Crashed:
    """Write ``n`` reaches the disk only for its first ``keep`` bytes, then SIGKILL."""
    img, hdr, argv = _prepare(base, f"t{n}-{keep}")
    env = {**os.environ, **fault_env(base.workdir, n, torn=keep, writes_only=True)}
    r = proc.run(["cryptsetup", *argv, "--key-file=-"], input=base.passphrase, check=False,
                 timeout=120, env=env, what="cryptsetup (torn write)", cwd=base.workdir)
    return Crashed(n, f"torn@{keep}", img, hdr, r.returncode != 0)


def tear_points(size: int, fractions: tuple[float, ...]) -> list[int]:
    """Cut points inside a write of ``size`` bytes: 512-byte aligned, never 4 KiB aligned."""
    out = []
    for f in fractions:
        cut = int(size * f) // 512 * 512
        if cut % 4096 == 0:
            cut += 512
        if 0 < cut < size and cut not in out:
            out.append(cut)
    return out


def _recover(base: Base, image: Path, header: Path | None, out: Path) -> str:
    """byok's verdict on one state: exact | refused:<exit> | wrong."""
    out.unlink(missing_ok=True)
    hdr = header if header is not None and header.exists() and header.stat().st_size else None
    try:
        recovery.recover(image, out, passphrase=base.passphrase, header=hdr, overwrite=True)
    except ByokError as e:
        if hdr is not None and type(e).__name__ in ("HeaderCorrupt", "NotLuks"):
            return _recover(base, image, None, out)
        return f"refused:{e.exit_code}"
    with open(out, "rb") as f:
        got = f.read(len(base.plain))
    out.unlink()
    return "exact" if got == base.plain else "wrong"


def judge_byok(base: Base, c: Crashed) -> str:
    return _recover(base, c.image, c.header, base.workdir / "byok.out")


def judge_byok_finish(base: Base, c: Crashed) -> str:
    """byok's own finish (:func:`byok.lifecycle.rotation.finish_reencryption`) on a copy: exact |
    refused (a typed error, nothing changed) | wrong. Reencrypt-mode shapes only."""
    from byok.lifecycle import rotation

    img = base.workdir / "finish.img"
    shutil.copyfile(c.image, img)
    try:
        rotation.finish_reencryption(img, base.passphrase)
    except ByokError:
        return "refused"
    verdict = _recover(base, img, None, base.workdir / "finish.out")
    img.unlink()
    return "refused" if verdict.startswith("refused") else verdict


def judge_cryptsetup(base: Base, c: Crashed, *, repair: bool = True) -> str:
    """cryptsetup repair + reencrypt --resume-only on a copy, then the plaintext compared
    (``repair=False``: --resume-only alone)."""
    img = base.workdir / "cs.img"
    shutil.copyfile(c.image, img)
    hdr = None
    hargs: list[str] = []
    if c.header is not None and c.header.exists() and c.header.stat().st_size:
        hdr = base.workdir / "cs.hdr"
        shutil.copyfile(c.header, hdr)
        hargs = ["--header", str(hdr)]
    if repair:
        _cs(["repair", "--batch-mode", *hargs, str(img)], base.passphrase, cwd=base.workdir)
    _cs(["reencrypt", "--batch-mode", "--force-offline-reencrypt", "--resume-only", *hargs,
         str(img)], base.passphrase, cwd=base.workdir)
    try:
        h = luksheader.read(str(hdr or img))
    except ByokError:
        return "refused"
    if any("reencrypt" in r for r in h.requirements):
        return "refused"
    verdict = _recover(base, img, hdr, base.workdir / "cs.out")
    return "refused" if verdict.startswith("refused") else verdict


def cleanup(c: Crashed) -> None:
    for p in (c.image, c.header):
        if p is not None:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


@dataclass
class Tally:
    """Counts per outcome; ``wrong`` must stay zero for byok."""

    tried: int = 0
    byok: dict = field(default_factory=dict)
    cryptsetup: dict = field(default_factory=dict)
    pairs: dict = field(default_factory=dict)
    wrong_states: list = field(default_factory=list)
    refused_where_cryptsetup_exact: list = field(default_factory=list)
    cryptsetup_wrong_states: list = field(default_factory=list)

    def add(self, c: Crashed, b: str, cs: str | None) -> None:
        self.tried += 1
        kind = "refused" if b.startswith("refused") else b
        self.byok[kind] = self.byok.get(kind, 0) + 1
        if cs is not None:
            self.cryptsetup[cs] = self.cryptsetup.get(cs, 0) + 1
            key = f"byok {kind} / cryptsetup {cs}"
            self.pairs[key] = self.pairs.get(key, 0) + 1
            if kind == "refused" and cs == "exact":
                self.refused_where_cryptsetup_exact.append(f"{c.variant}:{c.n}")
            if cs == "wrong":
                self.cryptsetup_wrong_states.append(f"{c.variant}:{c.n}")
        if kind == "wrong":
            self.wrong_states.append(f"{c.variant}:{c.n}")

    def as_dict(self) -> dict:
        return {"tried": self.tried, "byok": self.byok, "cryptsetup": self.cryptsetup,
                "pairs": self.pairs, "wrong_states": self.wrong_states,
                "refused_where_cryptsetup_exact": self.refused_where_cryptsetup_exact,
                "cryptsetup_wrong_states": self.cryptsetup_wrong_states}


def enumerate_shape(shape: Shape, workdir: Path, *, every: int = 1, torn_every: int = 1,
                    torn_fractions: tuple[float, ...] = (0.3, 0.7), torn_min_bytes: int = 8192,
                    compare_every: int = 1, on_state=None) -> tuple[Base, Tally]:
    """Kill the shape's re-encryption at every ``every``-th write (all of them with 1) and once
    after the last; tear every ``torn_every``-th write of at least ``torn_min_bytes``; judge
    each state. cryptsetup's own repair + resume is compared on every ``compare_every``-th
    state and on every state byok refuses (0: never). ``on_state(base, crashed, byok,
    cryptsetup)`` is called per state, before the state's files are removed."""
    base = build(shape, workdir)
    total = count_writes(base)
    kills = {n for n in range(1, total + 2) if (n - 1) % every == 0} | {total + 1}
    big = [n for n, size in enumerate(base.sizes, 1) if size >= torn_min_bytes]
    tears = set(big[::torn_every]) if torn_fractions else set()
    tally = Tally()
    for n in sorted(kills | tears):
        if n in tears:
            for cut in tear_points(base.sizes[n - 1], torn_fractions):
                t = torn_at(base, n, cut)
                _judge(base, t, tally, compare_every, on_state)
                cleanup(t)
        if n in kills:
            c = kill_at(base, n)
            _judge(base, c, tally, compare_every, on_state)
            cleanup(c)
    return base, tally


def _judge(base: Base, c: Crashed, tally: Tally, compare_every: int, on_state) -> None:
    b = judge_byok(base, c)
    due = compare_every and (tally.tried % compare_every == 0 or b != "exact")
    cs = judge_cryptsetup(base, c) if due else None
    tally.add(c, b, cs)
    if on_state is not None:
        on_state(base, c, b, cs)


__all__ = ["Base", "Crashed", "Shape", "Tally", "build", "count_writes", "enumerate_shape",
           "judge_byok", "judge_byok_finish", "judge_cryptsetup", "kill_at", "tear_points",
           "torn_at"]
