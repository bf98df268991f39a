"""The QEMU guests' kernel: Debian's own amd64 kernel and an initramfs byok builds for it.

Built once per host on first use and cached: the kernel package of the host's Debian release is
downloaded (never installed), its bzImage is unpacked to the ELF ``vmlinux`` (booting that
saves ~2.5 s of decompression under TCG), and an initramfs is made from busybox-static, the
modules dm-crypt and 9p need (in dependency order) and :file:`initramfs.sh`, which mounts the
host's ``/`` read-only over 9p and switches to it. The cache key includes the init script and
the module list, so a change to either rebuilds.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from byok.common import paths, proc
from byok.common.errors import GuestError
from byok.guest import debian, modules
from byok.guest.backend import Progress

INIT = Path(__file__).with_name("initramfs.sh")
META_PACKAGE = "linux-image-amd64"
ELF_MAGIC = b"\x7fELF"


@dataclass(frozen=True)
class KernelAssets:
    home: Path
    vmlinux: Path
    initramfs: Path
    release: str          # e.g. 6.1.0-57-amd64
    package_version: str  # e.g. 6.1.192-3


def recipe_hash() -> str:
    """What the build depends on besides the kernel package: our init script, module list."""
    h = hashlib.sha256(INIT.read_bytes())
    h.update(repr((modules.CRYPTO, modules.VIRTIO, modules.DEVICE_MAPPER)).encode())
    return h.hexdigest()[:12]


def root() -> Path:
    return paths.cache_dir() / "guest" / "kernels"


def cached() -> KernelAssets | None:
    """The newest complete build for the current recipe, if any (no network)."""
    want = recipe_hash()
    best: KernelAssets | None = None
    for m in sorted(root().glob(f"*-{want}/manifest.json")):
        try:
            doc = json.loads(m.read_text())
        except (OSError, ValueError):
            continue
        a = KernelAssets(m.parent, m.parent / "vmlinux", m.parent / "initramfs.cpio",
                         doc["release"], doc["package_version"])
        if a.vmlinux.exists() and a.initramfs.exists():
            best = a
    return best


def prepare(progress: Progress | None = None) -> KernelAssets:
    """The cached assets, building them first if needed (one builder at a time)."""
    found = cached()
    if found:
        return found
    with paths.file_lock(root() / ".lock"):
        return cached() or _build(progress or (lambda _m: None))


def _build(say: Callable[[str], None]) -> KernelAssets:
    codename = debian.host_codename()
    apt = debian.PrivateApt(paths.cache_dir() / "guest" / f"apt-{codename}",
                            debian.release_sources(codename, debian.mirror()))
    say(f"reading Debian {codename}'s package index (once)")
    apt.update()
    meta = apt.candidate(META_PACKAGE)
    image_pkg = next((d for d in meta.depends if d.startswith("linux-image-")), None)
    if image_pkg is None:
        raise GuestError(f"{META_PACKAGE} {meta.version} names no kernel image package")
    info = apt.candidate(image_pkg)
    say(f"downloading {info.name} {info.version}")
    deb = apt.download(info)
    root().mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=root()))
    try:
        say(f"unpacking {deb.name}")
        debian.extract(deb, work / "pkg")
        moddirs = sorted((work / "pkg/lib/modules").iterdir())
        if not moddirs:
            raise GuestError(f"{deb.name} has no /lib/modules")
        release = moddirs[-1].name
        bz = work / "pkg/boot" / f"vmlinuz-{release}"
        home = root() / f"{release}_{info.version}-{recipe_hash()}"
        out = work / "out"
        out.mkdir()
        (out / "vmlinux").write_bytes(extract_vmlinux(bz.read_bytes()))
        tree = modules.ModuleTree(moddirs[-1])
        order = tree.load_order([*modules.CRYPTO, *modules.VIRTIO, *modules.DEVICE_MAPPER])
        say(f"building the initramfs ({len(order)} modules)")
        build_initramfs(out / "initramfs.cpio", moddirs[-1], order)
        doc = {"release": release, "package": info.name, "package_version": info.version,
               "deb_sha256": debian.sha256_file(deb), "modules": order,
               "recipe": recipe_hash()}
        paths.publish_dir(out, home, {"manifest.json": json.dumps(doc, indent=2)})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say(f"guest kernel {release} ready in {home}")
    found = cached()
    assert found is not None
    return found


def extract_vmlinux(bzimage: bytes) -> bytes:
    """The ELF kernel inside a bzImage (what the kernel's scripts/extract-vmlinux does):
    try each compressed-stream signature until one decompresses to an ELF file."""
    signatures: list[tuple[bytes, Callable[[bytes], bytes]]] = [
        (b"\xfd7zXZ\x00", lambda b: lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(b)),
        (b"\x1f\x8b\x08", lambda b: zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(b)),
        (b"\x5d\x00\x00\x00", lambda b: lzma.LZMADecompressor(lzma.FORMAT_ALONE).decompress(b)),
    ]
    if bzimage.startswith(ELF_MAGIC):
        return bzimage
    for magic, decompress in signatures:
        start = bzimage.find(magic)
        while start != -1:
            try:
                out = decompress(bzimage[start:])
            except (lzma.LZMAError, zlib.error, EOFError):
                out = b""
            if out.startswith(ELF_MAGIC):
                return out
            start = bzimage.find(magic, start + 1)
    raise GuestError("could not find an xz, gzip or lzma compressed ELF kernel in the bzImage",
                     hint="zstd/lz4-compressed kernels are not supported")


def static_busybox() -> Path:
    """busybox-static's binary: the initramfs has no libc."""
    from elftools.elf.elffile import ELFFile

    path = Path(proc.which("busybox")).resolve()
    with open(path, "rb") as f:
        if any(seg.header.p_type == "PT_INTERP" for seg in ELFFile(f).iter_segments()):
            raise GuestError(f"{path} is dynamically linked; the initramfs needs a static one",
                             hint="apt-get install -y busybox-static")
    return path


def build_initramfs(out: Path, moddir: Path, order: list[str]) -> None:
    """A newc cpio archive: /bin/busybox, /init, /modules/*.ko and the load order."""
    stage = out.parent / "initramfs"
    for d in ("bin", "modules", "proc", "sys", "dev", "newroot", "run"):
        (stage / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(static_busybox(), stage / "bin/busybox")
    init = stage / "init"
    shutil.copy2(INIT, init)
    os.chmod(init, 0o755)  # noqa: S103 - the initramfs /init must be executable
    names = []
    for rel in order:
        name = modules.normalize(rel) + ".ko"
        (stage / "modules" / name).write_bytes(modules.module_bytes(moddir / rel))
        names.append(name)
    (stage / "modules/order").write_text("\n".join(names) + "\n")
    listing = sorted(str(p.relative_to(stage)) for p in stage.rglob("*"))
    r = proc.run(["busybox", "cpio", "-o", "-H", "newc"],
                 input="\n".join([".", *listing]).encode() + b"\n", cwd=stage, timeout=120,
                 what="busybox cpio")
    out.write_bytes(r.stdout)
    shutil.rmtree(stage)

