"""Fetch Debian packages into byok's cache without installing them or touching the host's apt.

The guest backends need files from packages the host must not install: a Debian kernel (for the
QEMU guests; installing one would run initramfs and bootloader hooks on the user's machine) and a
newer user-mode-linux from unstable (which needs a newer glibc). apt-get runs with a private
sources list, lists and cache under the cache directory, so no root is needed and the host's
package state is never changed; apt still verifies every file against the signed archive index.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from byok.common import proc
from byok.common.errors import ByokError, GuestError, ToolMissing

KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"


def host_codename(os_release: str | None = None) -> str:
    """The host's Debian codename (``bookworm``), from /etc/os-release."""
    text = os_release if os_release is not None else _read("/etc/os-release")
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "VERSION_CODENAME" and value.strip().strip('"'):
            return value.strip().strip('"')
    return "bookworm"


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class PackageInfo:
    name: str
    version: str
    depends: tuple[str, ...]
    sha256: str


def parse_show(text: str) -> list[PackageInfo]:
    """``apt-cache show`` output (deb822 stanzas) -> one PackageInfo per stanza."""
    from debian.deb822 import Packages

    out = []
    for stanza in Packages.iter_paragraphs(text.splitlines(keepends=True), use_apt_pkg=False):
        if "Package" not in stanza or "Version" not in stanza:
            continue
        deps = tuple(alt[0]["name"] for alt in stanza.relations.get("depends", []) if alt)
        out.append(PackageInfo(stanza["Package"], stanza["Version"], deps,
                               stanza.get("SHA256", "")))
    return out


class PrivateApt:
    """apt-get/apt-cache with a private root (sources, lists, cache) under ``root``."""

    def __init__(self, root: Path, sources: list[str]) -> None:
        self.root = root
        self.sources = sources
        self.debs = root / "debs"

    def _opts(self) -> list[str]:
        r = self.root
        return [
            "-o", f"Dir::Etc::SourceList={r / 'sources.list'}",
            "-o", "Dir::Etc::SourceParts=/dev/null",
            "-o", f"Dir::State::Lists={r / 'lists'}",
            "-o", f"Dir::Cache={r / 'cache'}",
            "-o", "Dir::State::status=/dev/null",
            "-o", "Dir::Etc::Preferences=/dev/null",
            "-o", "Dir::Etc::PreferencesParts=/dev/null",
            "-o", "APT::Architecture=amd64",
            "-o", "APT::Sandbox::User=root" if os.geteuid() == 0 else "APT::Sandbox::User=",
            "-o", "Acquire::Retries=2",
        ]

    def update(self) -> None:
        if not KEYRING.exists():
            raise ToolMissing("Debian's archive keyring is missing",
                              hint="apt-get install -y debian-archive-keyring")
        for d in ("lists/partial", "cache/archives/partial"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        (self.root / "sources.list").write_text("\n".join(self.sources) + "\n")
        try:
            proc.run(["apt-get", *self._opts(), "-q", "update"], timeout=300,
                     what="apt-get update (private)")
        except ByokError as e:
            raise GuestError(f"could not read the Debian archive index: {e}",
                             hint="needs network access to " + " ".join(self.sources)) from None

    def show(self, package: str) -> list[PackageInfo]:
        r = proc.run(["apt-cache", *self._opts(), "show", package], check=False, timeout=60)
        if r.returncode:
            raise GuestError(f"{package} is not in {', '.join(self.sources)}: {r.tail(2)}")
        return parse_show(r.out)

    def candidate(self, package: str, prefer: str | None = None) -> PackageInfo:
        """``prefer``'s version if the archive still has it, else the newest one."""
        from debian.debian_support import Version

        infos = self.show(package)
        if not infos:
            raise GuestError(f"no version of {package} in the private apt index")
        for info in infos:
            if prefer and info.version == prefer:
                return info
        return max(infos, key=lambda i: Version(i.version))

    def download(self, info: PackageInfo) -> Path:
        """The .deb of ``info`` (already downloaded ones are checked, not fetched again)."""
        self.debs.mkdir(parents=True, exist_ok=True)
        name = f"{info.name}_{info.version.split(':')[-1]}_amd64.deb"
        path = self.debs / name
        if not (path.exists() and info.sha256 and sha256_file(path) == info.sha256):
            try:
                proc.run(["apt-get", *self._opts(), "-q", "download",
                          f"{info.name}={info.version}"], cwd=self.debs, timeout=600,
                         what=f"apt-get download {info.name}")
            except ByokError as e:
                raise GuestError(f"could not download {info.name} {info.version}: {e}") from None
        if not path.exists():
            found = sorted(self.debs.glob(f"{info.name}_*.deb"))
            if not found:
                raise GuestError(f"apt-get download {info.name} left no .deb in {self.debs}")
            path = found[-1]
        if info.sha256 and sha256_file(path) != info.sha256:
            path.unlink(missing_ok=True)
            raise GuestError(f"{path.name}: checksum does not match the archive index")
        return path


def extract(deb: Path, into: Path) -> None:
    """``dpkg-deb -x`` (no maintainer scripts run, nothing installed)."""
    into.mkdir(parents=True, exist_ok=True)
    proc.run(["dpkg-deb", "-x", deb, into], timeout=600, what=f"dpkg-deb -x {deb.name}")


def release_sources(codename: str, mirror: str = MIRROR,
                    security: str = SECURITY_MIRROR) -> list[str]:
    """The host release's suites (with updates and security): the kernel for QEMU guests."""
    signed = f"[signed-by={KEYRING}]"
    return [f"deb {signed} {mirror} {codename} main",
            f"deb {signed} {mirror} {codename}-updates main",
            f"deb {signed} {security} {codename}-security main"]


def unstable_sources(mirror: str = MIRROR) -> list[str]:
    """Debian unstable: the newer user-mode-linux and the glibc it was built against."""
    return [f"deb [signed-by={KEYRING}] {mirror} unstable main"]


def mirror() -> str:
    """``$BYOK_DEBIAN_MIRROR`` or deb.debian.org."""
    return os.environ.get("BYOK_DEBIAN_MIRROR", MIRROR).rstrip("/")
