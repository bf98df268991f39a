"""User-Mode Linux backends: the kernel is an ordinary process, the host's ``/`` is its root.

* ``uml``: Debian's ``user-mode-linux`` package (6.1 on Debian 12). Boots in ~1 s, but panics at
  boot on CPUs with AMX (its XSAVE buffer is smaller than the host's; see
  ../shared/notes/guest-backends.md).
* ``uml-newer``: Debian unstable's user-mode-linux (7.2 when this was written), fetched into the
  cache with the glibc it was built against and wired to it with patchelf — nothing installed
  system-wide. Boots on AMX hosts.

Volumes are ``ubd`` devices; the job and result channels are memfds attached as two more. The
root is the host's ``/`` over hostfs, mounted read-only; scratch space is tmpfs.
"""

from __future__ import annotations

import functools
import json
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from byok.common import paths, proc
from byok.common.errors import ByokError, GuestError
from byok.guest import debian, modules
from byok.guest.backend import Backend, Launch, Progress, env_path
from byok.guest.job import Disk

UML = "linux.uml"
DEBIAN_MODULES = Path("/usr/lib/uml/modules")
LETTERS = "abcdefghijklmnop"
# What uml-newer asks for first: the versions measured to work on AMX hosts (2026-12-01).
NEWER_PIN = {"user-mode-linux": "7.2um1"}
NO_BUSYBOX = "busybox is missing (insmod in the guest) — fix: apt-get install -y busybox-static"


def _module_dir(root: Path) -> Path:
    dirs = sorted(d for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
    if not dirs:
        raise GuestError(f"no User-Mode Linux kernel modules under {root}")
    return dirs[-1]


@functools.lru_cache(maxsize=8)
def module_list(moddir: Path) -> Path:
    """A file listing the modules to insmod (absolute host paths, in order), cached per kernel."""
    tree = modules.ModuleTree(moddir)
    order = tree.load_order([*modules.CRYPTO, *modules.DEVICE_MAPPER])
    text = "\n".join(str(moddir / rel) for rel in order) + "\n"
    out = paths.cache_dir() / "guest" / f"uml-modules-{moddir.name}.list"
    if not out.exists() or out.read_text() != text:
        paths.write_atomic(out, text)
    return out


class UmlBackend(Backend):
    name = "uml"
    summary = "User-Mode Linux from Debian's user-mode-linux package"
    max_disks = len(LETTERS) - 2
    boot_timeout = 60.0

    def binary(self) -> Path | None:
        found = shutil.which(UML)
        return Path(found) if found else None

    def moddir_root(self) -> Path:
        return DEBIAN_MODULES

    def unavailable(self) -> str | None:
        if self.binary() is None:
            return "not installed — fix: apt-get install -y user-mode-linux"
        if shutil.which("busybox") is None:
            return NO_BUSYBOX
        if not self.moddir_root().is_dir():
            return f"its kernel modules are missing ({self.moddir_root()})"
        return None

    def versions(self) -> dict[str, str]:
        try:
            return {"kernel": f"UML {_module_dir(self.moddir_root()).name}"}
        except GuestError:
            return {}

    def launch(self, job_fd: int, result_fd: int, disks: Sequence[Disk], *, mem_mb: int,
               python: str, init_script: Path) -> Launch:
        binary = self.binary()
        if binary is None:
            raise GuestError(f"{self.name}: {self.unavailable()}")
        mods = module_list(_module_dir(self.moddir_root()))
        umid_dir = Path(tempfile.mkdtemp(prefix="byok-uml-", dir="/dev/shm"))
        argv = [str(binary), f"mem={mem_mb}M"]
        for i, d in enumerate(disks):
            argv.append(f"ubd{i}{'' if d.writable else 'r'}={d.path}")
        n = len(disks)
        job_dev, result_dev = f"/dev/ubd{LETTERS[n]}", f"/dev/ubd{LETTERS[n + 1]}"
        argv += [
            f"ubd{n}r=/proc/self/fd/{job_fd}", f"ubd{n + 1}=/proc/self/fd/{result_fd}",
            "root=/dev/root", "rootfstype=hostfs", "rootflags=/", "ro", "quiet",
            "con=null", "con0=fd:0,fd:1", f"uml_dir={umid_dir}",
            "init=/bin/sh", "--", str(init_script), python, job_dev, result_dev, str(mods),
        ]
        env = env_path() | {"TMPDIR": "/dev/shm"}  # noqa: S108 - UML's own mmap files
        return Launch(argv, env, (job_fd, result_fd),
                      [f"/dev/ubd{LETTERS[i]}" for i in range(n)], job_dev, result_dev,
                      cleanup=[lambda: shutil.rmtree(umid_dir, ignore_errors=True)],
                      scratch_dirs=[str(umid_dir)])


class UmlNewerBackend(UmlBackend):
    name = "uml-newer"
    summary = "User-Mode Linux from Debian unstable, fetched into byok's cache (checksummed)"

    def home(self) -> Path:
        return paths.cache_dir() / "guest" / "uml-newer"

    def manifest(self) -> dict | None:
        try:
            return json.loads((self.home() / "manifest.json").read_text())
        except (OSError, ValueError):
            return None

    def binary(self) -> Path | None:
        m = self.manifest()
        if m is None:
            return None
        path = self.home() / m["binary"]
        return path if path.exists() and _checksum_ok(path, m["binary_sha256"]) else None

    def moddir_root(self) -> Path:
        m = self.manifest() or {}
        return self.home() / m.get("modules", "missing")

    def unavailable(self) -> str | None:
        if shutil.which("busybox") is None:
            return NO_BUSYBOX
        try:
            _patchelf()
        except ByokError:
            return "patchelf is missing (it wires the newer glibc in) — fix: ./dev setup"
        return None

    def versions(self) -> dict[str, str]:
        m = self.manifest()
        if not m:
            return {"kernel": "not fetched yet"}
        return {"kernel": f"UML {m['kernel']}", "package": m["package_version"],
                "libc6": m["libc_version"]}

    def prepare(self, progress: Progress | None = None) -> None:
        if self.binary() is not None:
            return
        with paths.file_lock(self.home().with_suffix(".lock")):
            if self.binary() is None:
                fetch_newer_uml(self.home(), progress)


@functools.lru_cache(maxsize=16)
def _checksum_ok(path: Path, want: str) -> bool:
    return debian.sha256_file(path) == want


def fetch_newer_uml(home: Path, progress: Progress | None = None) -> None:
    """Download unstable's user-mode-linux and libc6, unpack them, point the binary at that
    libc with patchelf, record checksums. Offline afterwards: nothing is fetched again."""
    say = progress or (lambda _m: None)
    apt = debian.PrivateApt(paths.cache_dir() / "guest" / "apt-unstable",
                            debian.unstable_sources(debian.mirror()))
    say("reading Debian unstable's package index (once)")
    apt.update()
    uml = apt.candidate("user-mode-linux", NEWER_PIN.get("user-mode-linux"))
    libc = apt.candidate("libc6")
    say(f"downloading user-mode-linux {uml.version} and libc6 {libc.version}")
    debs = [apt.download(uml), apt.download(libc)]
    tmp = Path(tempfile.mkdtemp(prefix=".uml-newer-", dir=home.parent))
    try:
        for deb in debs:
            debian.extract(deb, tmp / "root")
        libdir = tmp / "root" / "usr/lib/x86_64-linux-gnu"
        original = tmp / "root" / "usr/bin" / UML
        if not original.exists() or not (libdir / "ld-linux-x86-64.so.2").exists():
            raise GuestError("the unstable packages do not contain linux.uml and ld.so as expected")
        moddir = _module_dir(tmp / "root" / "usr/lib/uml/modules")
        # Paths baked into the binary must be where the files will live, not the temp dir.
        final_lib = home / "root" / "usr/lib/x86_64-linux-gnu"
        patched = tmp / UML
        shutil.copy2(original, patched)
        proc.run([_patchelf(), "--set-interpreter", final_lib / "ld-linux-x86-64.so.2",
                  "--set-rpath", final_lib, patched], timeout=60, what="patchelf")
        manifest = {
            "package_version": uml.version, "libc_version": libc.version,
            "debs": {d.name: debian.sha256_file(d) for d in debs},
            "kernel": moddir.name, "binary": UML,
            "binary_sha256": debian.sha256_file(patched),
            "modules": str(moddir.parent.relative_to(tmp)),
        }
        paths.publish_dir(tmp, home, {"manifest.json": json.dumps(manifest, indent=2)})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say(f"user-mode-linux {uml.version} ready in {home}")


def _patchelf() -> str:
    local = Path(sys.executable).parent / "patchelf"
    return str(local) if local.exists() else proc.which("patchelf")
