"""Which kernel modules a guest must load, and in which order.

Guests have no ``modprobe`` that works (UML's root is the host's, which has no kmod; the QEMU
guest's initramfs is ours), so byok loads modules with ``insmod`` in dependency order. Debian's
UML package ships ``modules.dep``; Debian's kernel package does not (depmod runs at install
time), so there the dependencies come from each module's own ``.modinfo`` section.

Crypto algorithms that dm-crypt and encrypted-keys request *at run time* (``cbc(aes)``,
``xts(aes)``...) are not symbol dependencies, so they are listed first in :data:`CRYPTO`.
"""

from __future__ import annotations

import io
import lzma
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from byok.common.errors import GuestError

# Loaded first, in this order, when the kernel has them as modules (soft dependencies).
CRYPTO = ("ecb", "cbc", "hmac", "sha256_generic", "sha512_generic", "sha512", "gf128mul",
          "xts", "aes_generic", "aesni_intel", "crc32c_generic", "crc32c_intel")
# What every guest needs: dm-crypt, the kernel crypto API cryptsetup uses, loop devices (the
# host backend run inside a guest), dm-log-writes (power-loss replays).
DEVICE_MAPPER = ("encrypted_keys", "dm_mod", "dm_crypt", "dm_log_writes", "af_alg",
                 "algif_skcipher", "algif_hash", "loop")
# What a QEMU guest needs on top: virtio disks and the host's root over 9p.
VIRTIO = ("virtio_pci", "virtio_blk", "9pnet_virtio", "9p")
REQUIRED = frozenset({"dm_mod", "dm_crypt"})


def normalize(name: str) -> str:
    """Module name as the kernel spells it: no directory, no .ko suffix, '-' is '_'."""
    base = name.rsplit("/", 1)[-1]
    for suffix in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def parse_modules_dep(text: str) -> dict[str, list[str]]:
    """``modules.dep`` ("kernel/a.ko: kernel/b.ko kernel/c.ko") -> {path: [dep paths]}."""
    deps: dict[str, list[str]] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        path, sep, rest = line.partition(":")
        if not sep or not path.strip() or " " in path.strip():
            raise GuestError(f"modules.dep line {lineno} is malformed: {line[:80]!r}")
        deps[path.strip()] = rest.split()
    return deps


def parse_modinfo(section: bytes) -> dict[str, list[str]]:
    """A ``.modinfo`` section (NUL-separated ``key=value``) -> {key: [values]}."""
    info: dict[str, list[str]] = {}
    for entry in section.split(b"\0"):
        key, sep, value = entry.partition(b"=")
        if sep and key:
            info.setdefault(key.decode("ascii", "replace"), []).append(
                value.decode("utf-8", "replace"))
    return info


def module_bytes(path: Path) -> bytes:
    """The module file's bytes, decompressed if Debian shipped it xz-compressed."""
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith((".zst", ".gz")):
        raise GuestError(f"{path.name}: compressed kernel modules of this kind are not supported")
    return data


def modinfo_of(path: Path) -> dict[str, list[str]]:
    """The ``.modinfo`` of one ``.ko`` file, read with pyelftools."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        elf = ELFFile(io.BytesIO(module_bytes(path)))
        sec = elf.get_section_by_name(".modinfo")
    except ELFError as e:
        raise GuestError(f"{path} is not a kernel module: {e}") from None
    return parse_modinfo(sec.data()) if sec is not None else {}


class ModuleTree:
    """The modules of one kernel: where each lives, what it depends on, what is built in."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.paths: dict[str, str] = {}
        for p in sorted(root.rglob("*.ko*")):
            self.paths.setdefault(normalize(p.name), str(p.relative_to(root)))
        builtin = root / "modules.builtin"
        self.builtin = ({normalize(x) for x in builtin.read_text().split()}
                        if builtin.exists() else set())
        dep = root / "modules.dep"
        self._dep = parse_modules_dep(dep.read_text()) if dep.exists() else None

    def depends(self, name: str) -> list[str]:
        """Direct (or, from modules.dep, transitive) dependencies of ``name``, as names."""
        rel = self.paths[name]
        if self._dep is not None:
            return [normalize(d) for d in self._dep.get(rel, [])]
        values = modinfo_of(self.root / rel).get("depends", [""])
        return [normalize(d) for v in values for d in v.split(",") if d]

    def load_order(self, wanted: Iterable[str], required: Iterable[str] = REQUIRED) -> list[str]:
        """Relative paths of ``wanted`` plus their dependencies, each after what it needs.

        Built-in and absent optional modules are skipped; an absent required one is an error.
        """
        order: list[str] = []
        seen: set[str] = set()

        def visit(name: str, chain: tuple[str, ...]) -> None:
            if name in seen or name in self.builtin:
                return
            if name in chain:
                raise GuestError(f"module dependency cycle: {' -> '.join((*chain, name))}")
            if name not in self.paths:
                raise GuestError(f"kernel module {name} (needed by {chain[-1]}) is missing")
            for dep in self.depends(name):
                visit(dep, (*chain, name))
            seen.add(name)
            order.append(self.paths[name])

        need = set(required)
        for name in (normalize(w) for w in wanted):
            if name in self.paths or name in self.builtin:
                visit(name, ())
            elif name in need:
                raise GuestError(f"this kernel has no {name} module and does not build it in",
                                 hint=f"looked in {self.root}")
        return order


def order_for(tree: ModuleTree, groups: Sequence[Sequence[str]]) -> list[str]:
    """:meth:`ModuleTree.load_order` over several groups, crypto first."""
    return tree.load_order([m for g in groups for m in g])


def dependency_map(tree: ModuleTree) -> Mapping[str, list[str]]:
    """Every module's dependencies (for diagnostics)."""
    return {name: tree.depends(name) for name in tree.paths}
