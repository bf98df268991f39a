"""Where byok keeps its state.

Everything byok writes (the embedded stack, the volume pool, experiment results) lives under one
base directory so that a checkout stays self-contained and ``rm -rf .byok`` is a full reset.
The base is ``$BYOK_HOME`` if set, else ``.byok`` in the project checkout (the directory that holds
``pyproject.toml`` above this package), else ``.byok`` in the current directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


def project_root() -> Path | None:
    """The checkout this package was installed from (editable install), if any."""
    here = Path(__file__).resolve().parents[2]  # byok/common/paths.py -> the checkout
    if (here / "pyproject.toml").exists() and (here / "byok").is_dir():
        return here
    return None


def base_dir() -> Path:
    env = os.environ.get("BYOK_HOME")
    if env:
        return Path(env).expanduser().resolve()
    root = project_root()
    return (root if root else Path.cwd()) / ".byok"


def stack_dir() -> Path:
    """State of the embedded Keystone + Barbican (``$BYOK_STACK_DIR`` overrides)."""
    env = os.environ.get("BYOK_STACK_DIR")
    return Path(env).expanduser().resolve() if env else base_dir() / "stack"


def pool_dir() -> Path:
    """The prototype volume pool (``$BYOK_POOL_DIR`` overrides)."""
    env = os.environ.get("BYOK_POOL_DIR")
    return Path(env).expanduser().resolve() if env else base_dir() / "pool"


def results_dir() -> Path:
    """Where experiment runs go by default."""
    root = project_root()
    return (root if root else Path.cwd()) / "results"


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) with mode 0700 and return it."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def write_private(path: Path, data: str | bytes) -> None:
    """Write a file that only the owner can read (0600), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(tmp, flags, 0o600)
    try:
        os.write(fd, data.encode() if isinstance(data, str) else data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)  # the rename itself is durable
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def cache_dir() -> Path:
    """Downloaded and built assets shared by every checkout on this host (guest kernels, the
    newer UML, probe verdicts): ``$BYOK_CACHE_DIR``, else ``$XDG_CACHE_HOME/byok``, else
    ``~/.cache/byok``. Nothing secret is ever stored here."""
    env = os.environ.get("BYOK_CACHE_DIR")
    if env:
        return Path(env).expanduser().resolve()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "byok"


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write a (non-secret) file atomically: readers see the old or the new content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (flock) on ``path``: one builder of a cached asset at a time,
    across processes and checkouts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def publish_dir(built: Path, home: Path, files: dict[str, str]) -> None:
    """Make a freshly built asset directory the cached one: its manifest (``files``) is written
    last, then it replaces ``home`` — readers see a complete old or a complete new build."""
    for name, text in files.items():
        write_atomic(built / name, text)
    if home.exists():
        shutil.rmtree(home)
    os.replace(built, home)
