"""Probe the guest backends and pick one that really works on this host.

``BYOK_GUEST=auto`` (the default) tries the backends in order of speed — host, qemu-kvm, uml,
uml-newer, qemu-tcg — and takes the first whose probe job really opened a LUKS volume on
dm-crypt and wrote bytes that the host then decrypts independently (dissect.fve). A present
``/dev/kvm`` or an installed UML proves nothing, so only a boot decides. Verdicts are cached per
host: the key is the CPU flags, the host kernel, the package versions and the fetched assets,
so a new CPU or an upgrade probes again. Any other value of ``BYOK_GUEST`` forces that backend.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from byok.common import paths, proc
from byok.common.errors import ByokError, GuestError, UsageError
from byok.common.pattern import pattern, pattern_sha256
from byok.common.sensitive import Sensitive
from byok.guest import diagnose
from byok.guest.backend import Backend
from byok.guest.host import HostBackend
from byok.guest.job import Disk
from byok.guest.qemu import QemuKvmBackend, QemuTcgBackend
from byok.guest.uml import UmlBackend, UmlNewerBackend

ORDER = ("host", "qemu-kvm", "uml", "uml-newer", "qemu-tcg")
BACKENDS: dict[str, type[Backend]] = {
    b.name: b for b in (HostBackend, QemuKvmBackend, UmlBackend, UmlNewerBackend,
                        QemuTcgBackend)
}
PROBE_BYTES = 1 << 20
PROBE_VERSION = "1"  # bump when the probe job changes
_picked: dict[str, Backend] = {}


@dataclass
class Verdict:
    backend: str
    usable: bool
    reason: str
    fix: str | None = None
    seconds: float = 0.0
    boot_seconds: float | None = None
    probed_at: float = 0.0
    versions: dict[str, str] | None = None

    def line(self) -> str:
        state = "usable" if self.usable else "unusable"
        fix = f" — fix: {self.fix}" if self.fix and not self.usable else ""
        return f"{self.backend}: {state}: {self.reason}{fix}"


def backend(name: str) -> Backend:
    try:
        return BACKENDS[name]()
    except KeyError:
        raise UsageError(f"unknown guest backend {name!r}",
                         hint="BYOK_GUEST is one of auto, " + ", ".join(ORDER)) from None


def _dpkg_version(package: str) -> str:
    try:
        r = proc.run(["dpkg-query", "-W", "-f=${Version}", package], check=False, timeout=20)
    except ByokError:
        return ""
    return r.out.strip() if r.returncode == 0 else ""


def host_key(facts: diagnose.HostFacts | None = None) -> str:
    """What a verdict depends on: CPU, host kernel, packages, fetched assets, the probe itself."""
    from byok.guest import kernel

    f = facts or diagnose.host_facts()
    newer = UmlNewerBackend().manifest() or {}
    built = kernel.cached()
    parts = [
        PROBE_VERSION, " ".join(sorted(f.cpu_flags)), f.kernel, ",".join(f.kvm_modules),
        *(_dpkg_version(p) for p in ("user-mode-linux", "qemu-system-x86", "cryptsetup-bin")),
        str(newer.get("binary_sha256", "")), built.release if built else "",
        str(os.path.exists("/dev/mapper/control")), str(os.geteuid() == 0),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _cache_file() -> Path:
    return paths.cache_dir() / "guest" / "verdicts.json"


def _load_cache() -> dict:
    try:
        return json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}


def _store(key: str, v: Verdict) -> None:
    with paths.file_lock(_cache_file().with_suffix(".lock")):
        doc = _load_cache()
        doc.setdefault(key, {})[v.backend] = asdict(v)
        for old in list(doc)[:-8]:  # a few hosts' worth (a shared home, several CPUs)
            doc.pop(old)
        paths.write_atomic(_cache_file(), json.dumps(doc, indent=2))


def cached_verdict(name: str, key: str | None = None) -> Verdict | None:
    entry = _load_cache().get(key or host_key(), {}).get(name)
    return Verdict(**entry) if entry else None


def probe(b: Backend, *, progress: Callable[[str], None] | None = None) -> Verdict:
    """Boot ``b`` on a tiny job: open a fresh LUKS2 volume, write through dm-crypt, read back;
    then decrypt the file on the host with an independent reader. Usable only if all agree."""
    t0 = time.monotonic()
    versions = b.versions()

    def verdict_(usable: bool, reason: str, fix: str | None = None,
                 boot: float | None = None) -> Verdict:
        return Verdict(b.name, usable, reason, fix, time.monotonic() - t0, boot, time.time(),
                       versions)

    reason = b.unavailable()
    if reason:
        return verdict_(False, reason)
    try:
        b.prepare(progress)
        versions = b.versions()
    except ByokError as e:
        return verdict_(False, f"could not prepare it: {e.message}", e.hint)
    from byok.guest.runner import Guest

    passphrase = Sensitive(secrets.token_hex(32).encode())
    with tempfile.TemporaryDirectory(prefix="byok-probe-") as d:
        vol = Path(d) / "probe.img"
        with open(vol, "wb") as f:
            f.truncate(24 << 20)  # LUKS2's default 16 MiB header + room for the data
        proc.run(["cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", "--pbkdf",
                  "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file=-", vol],
                 input=passphrase, timeout=120, what="cryptsetup luksFormat (probe)")
        steps: list[dict[str, Any]] = [
            {"op": "cryptsetup_open", "disk": "probe", "key": "k", "mapping": "byok-probe",
             "name": "open"},
            {"op": "write", "mapper": "byok-probe", "seed": 7, "size": PROBE_BYTES,
             "name": "write"},
            {"op": "sha256", "mapper": "byok-probe", "size": PROBE_BYTES, "name": "read"},
            {"op": "cryptsetup_close", "mapping": "byok-probe", "name": "close"},
        ]
        try:
            run = Guest(backend=b, timeout=b.boot_timeout + 120, mem_mb=512).run(
                steps, disks=[Disk(vol, "probe")], secrets={"k": passphrase})
        except GuestError as e:
            return verdict_(False, e.cause, e.fix)
        failed = next((s for s in run.steps if not s.get("ok")), None)
        if failed is not None:
            return verdict_(False, "booted, but " + _step_failure(failed), None,
                            run.boot_seconds)
        if len(run.steps) != len(steps) or run.step("read")["sha256"] != pattern_sha256(
                7, PROBE_BYTES):
            return verdict_(False, "booted and opened, but the bytes read back differ", None,
                            run.boot_seconds)
        if not _host_reads_pattern(vol, passphrase):
            return verdict_(False, "the guest said it wrote through dm-crypt, but the host "
                            "does not find those bytes in the volume", None, run.boot_seconds)
    boot = f"boot {run.boot_seconds:.1f} s, " if run.boot_seconds is not None else ""
    return verdict_(True, f"opens LUKS on dm-crypt ({boot}whole probe "
                    f"{time.monotonic() - t0:.1f} s)", None, run.boot_seconds)


def _step_failure(step: dict) -> str:
    detail = step.get("detail") or {}
    if isinstance(detail, dict) and "exit_code" in detail:
        first = (detail.get("stderr") or "").strip().splitlines()[:1]
        return (f"{step['name']} failed (exit {detail['exit_code']}): "
                f"{first[0] if first else 'no message'}")
    return f"{step['name']} failed: {str(detail or step.get('message'))[:200]}"


def _host_reads_pattern(vol: Path, passphrase: Sensitive) -> bool:
    """Decrypt the probe volume with dissect.fve (not byok, not the guest)."""
    from dissect.fve.luks import LUKS

    with open(vol, "rb") as f:
        v = LUKS(f)
        v.unlock_with_passphrase(passphrase.reveal())
        s = v.open()
        s.seek(0)
        return bool(s.read(PROBE_BYTES) == pattern(7, PROBE_BYTES))


def verdict(name: str, *, refresh: bool = False, key: str | None = None,
            progress: Callable[[str], None] | None = None) -> Verdict:
    """The cached verdict for ``name`` on this host, probing first if there is none."""
    key = key or host_key()
    if not refresh:
        found = cached_verdict(name, key)
        if found is not None:
            return found
    v = probe(backend(name), progress=progress)
    _store(key, v)
    return v


def verdicts(*, refresh: bool = False, only: list[str] | None = None,
             progress: Callable[[str], None] | None = None) -> list[Verdict]:
    """Every backend's verdict (probing those without one): what ``byok doctor`` prints."""
    key = host_key()
    return [verdict(n, refresh=refresh, key=key, progress=progress) for n in ORDER
            if not only or n in only]


def choice() -> str:
    return os.environ.get("BYOK_GUEST", "auto").strip() or "auto"


def pick(name: str | None = None, *, progress: Callable[[str], None] | None = None) -> Backend:
    """The backend to run guests on: ``name`` (or ``$BYOK_GUEST``) if forced, else the first
    in :data:`ORDER` whose probe passed. A forced backend is not probed: its own errors say why
    it fails."""
    want = name or choice()
    if want in _picked:
        return _picked[want]
    if want != "auto":
        b = backend(want)
        reason = b.unavailable()
        if reason:
            raise GuestError(f"guest backend {want} (forced by BYOK_GUEST) cannot start: "
                             f"{reason}")
        _picked[want] = b
        return b
    key = host_key()
    tried = []
    for n in ORDER:
        v = verdict(n, key=key, progress=progress)
        if v.usable:
            _picked[want] = backend(n)
            return _picked[want]
        tried.append(v.line())
    raise GuestError("no guest backend can open a LUKS volume on dm-crypt on this host",
                     hint="; ".join(tried))
