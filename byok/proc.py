"""The only place in byok that runs other programs.

Rules enforced here, so no caller can forget them:

* secrets never go into argv: they travel on stdin (``input=Sensitive``) or through an in-memory
  file handed to the child as an inherited descriptor (:func:`secret_fd`, a memfd, never on disk);
  passing a :class:`~byok.sensitive.Sensitive` inside argv is a ``TypeError``;
* every call has a timeout; on expiry the whole process group is killed, nothing is left behind;
* the debug log shows the command line (which holds no secrets) and the exit status; captured
  output quoted in errors is scrubbed of every secret the call was given;
* a missing program raises :class:`~byok.errors.ToolMissing` naming the Debian package;
* exit statuses map to typed errors through ``errors=`` so callers speak in ``WrongKey``,
  ``NotLuks``... rather than numbers.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from byok.errors import ByokError, CommandFailed, CommandTimeout, ToolMissing
from byok.sensitive import Sensitive

LOG = logging.getLogger(__name__)

#: Which Debian package provides each program byok runs (for the ToolMissing hint).
DEBIAN_PACKAGE = {
    "cryptsetup": "cryptsetup-bin",
    "qemu-img": "qemu-utils",
    "qemu-io": "qemu-utils",
    "qemu-storage-daemon": "qemu-system-x86",
    "linux.uml": "user-mode-linux",
    "busybox": "busybox-static",
    "fusermount3": "fuse3",
    "openssl": "openssl",
    "ruby": "ruby",
    "strace": "strace",
}

DEFAULT_TIMEOUT = 120.0

ErrorMap = Mapping[int, Callable[["Result"], ByokError]]


@dataclass
class Result:
    """What a finished command produced. ``stdout``/``stderr`` are bytes as captured."""

    argv: list[str]
    returncode: int
    stdout: bytes
    stderr: bytes
    duration: float
    redact: Sequence[Sensitive] = field(default=(), repr=False)

    @property
    def out(self) -> str:
        return scrub(self.stdout, self.redact)

    @property
    def err(self) -> str:
        return scrub(self.stderr, self.redact)

    def tail(self, lines: int = 6) -> str:
        text = (self.err.strip() or self.out.strip()).splitlines()
        return "\n".join(text[-lines:])


def scrub(data: bytes, secrets: Sequence[Sensitive]) -> str:
    """``data`` as text with every encoding of every secret (raw, hex, base64) replaced by
    ``***``. Works on the bytes, before decoding, so raw key bytes are found too."""
    for s in secrets:
        for form in s.forms():
            data = data.replace(form, b"***")
    return data.decode(errors="replace")


# Descriptors every child inherits while set (see :func:`inheriting`).
_inherited: contextvars.ContextVar[tuple[int, ...]] = contextvars.ContextVar(
    "byok_inherited_fds", default=()
)


@contextlib.contextmanager
def inheriting(fd: int) -> Iterator[None]:
    """Every command started in this block inherits ``fd``.

    Used for resource locks (flock): a child holding the lock descriptor keeps the lock until
    *it* exits, so when byok is killed with -9 mid-operation, an orphaned cryptsetup still
    writing a header keeps the volume locked and the next run waits for it instead of racing it.
    """
    token = _inherited.set((*_inherited.get(), fd))
    try:
        yield
    finally:
        _inherited.reset(token)


def _fds(pass_fds: Sequence[int]) -> tuple[int, ...]:
    return tuple(dict.fromkeys((*pass_fds, *_inherited.get())))


def which(program: str) -> str:
    """Absolute path of ``program`` or ToolMissing with the apt command that installs it."""
    found = shutil.which(program)
    if found is None:
        for extra in ("/usr/sbin", "/sbin", "/usr/bin"):
            candidate = Path(extra) / program
            if candidate.exists():
                return str(candidate)
        pkg = DEBIAN_PACKAGE.get(program)
        hint = f"install it with: apt-get install -y {pkg}" if pkg else "install it and retry"
        raise ToolMissing(f"{program} is not installed", hint=hint)
    return found


def _check_argv(argv: Sequence[object]) -> list[str]:
    out = []
    for a in argv:
        if isinstance(a, (Sensitive, bytes, bytearray)):
            raise TypeError("secrets must not be passed in argv; use input= or secret_fd()")
        out.append(os.fspath(a) if isinstance(a, os.PathLike) else str(a))
    return out


def run(
    argv: Sequence[object],
    *,
    input: Sensitive | bytes | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    check: bool = True,
    ok_codes: Sequence[int] = (0,),
    errors: ErrorMap | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    pass_fds: Sequence[int] = (),
    redact: Sequence[Sensitive] = (),
    what: str | None = None,
) -> Result:
    """Run a command to completion and return its :class:`Result`.

    ``input`` is written to stdin (a :class:`Sensitive` is revealed only here). ``errors`` maps
    exit codes to exception factories; otherwise an exit code outside ``ok_codes`` raises
    :class:`CommandFailed` when ``check`` is true. ``what`` names the operation for messages.
    """
    args = _check_argv(argv)
    args[0] = which(args[0])
    secrets = list(redact)
    data: bytes | None
    if isinstance(input, Sensitive):
        secrets.append(input)
        data = input.reveal()
    else:
        data = input
    label = what or Path(args[0]).name
    stdin_note = " (stdin: secret)" if isinstance(input, Sensitive) else ""
    LOG.debug("run: %s%s", shlex.join(args), stdin_note)
    start = time.monotonic()
    proc = subprocess.Popen(
        args,
        stdin=subprocess.PIPE if data is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        pass_fds=_fds(pass_fds),
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(input=data, timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        stdout, stderr = proc.communicate()
        res = Result(args, -9, stdout, stderr, time.monotonic() - start, secrets)
        raise CommandTimeout(
            f"{label} did not finish within {timeout:g} s and was killed",
            argv=args,
            returncode=None,
            stderr=res.tail(),
        ) from None
    except BaseException:
        kill_group(proc)
        proc.wait()
        raise
    res = Result(args, proc.returncode, stdout, stderr, time.monotonic() - start, secrets)
    LOG.debug("exit %d after %.3f s: %s", res.returncode, res.duration, Path(args[0]).name)
    if errors and res.returncode in errors:
        raise errors[res.returncode](res)
    if check and res.returncode not in ok_codes:
        raise CommandFailed(
            f"{label} failed with exit status {res.returncode}: {res.tail(3) or 'no output'}",
            argv=args,
            returncode=res.returncode,
            stderr=res.tail(),
        )
    return res


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group led by ``proc`` (started with start_new_session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def spawn(
    argv: Sequence[object],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.Popen:
    """Start a long-running server detached from our session, output appended to ``log_path``.

    The caller records the pid (the stack keeps pidfiles) and stops it with :func:`terminate`.
    """
    args = _check_argv(argv)
    args[0] = which(args[0])
    LOG.debug("spawn: %s > %s", shlex.join(args), log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
        )


def start(
    argv: Sequence[object],
    *,
    input: Sensitive | bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    pass_fds: Sequence[int] = (),
    interactive: bool = False,
) -> subprocess.Popen:
    """Start a command and return at once (used where the caller must watch or kill it mid-way,
    for example crash injection). stdout/stderr are pipes; stdin gets ``input`` then closes,
    unless ``interactive``, where stdin stays an open pipe for the caller."""
    args = _check_argv(argv)
    args[0] = which(args[0])
    LOG.debug("start: %s", shlex.join(args))
    proc = subprocess.Popen(
        args,
        stdin=subprocess.PIPE if input is not None or interactive else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        pass_fds=_fds(pass_fds),
        start_new_session=True,
    )
    if input is not None and proc.stdin is not None:
        data = input.reveal() if isinstance(input, Sensitive) else input
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(data)
        if not interactive:
            proc.stdin.close()
    return proc


def terminate(pid: int, *, grace: float = 10.0) -> bool:
    """SIGTERM ``pid``'s process group, wait ``grace`` s, then SIGKILL. True if it was alive."""
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return False
    sig_target = pgid if pgid == pid else None
    try:
        if sig_target:
            os.killpg(sig_target, signal.SIGTERM)
        else:
            os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        if sig_target:
            os.killpg(sig_target, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    for _ in range(100):
        if not pid_alive(pid):
            break
        time.sleep(0.05)
    return True


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    if state == b"Z":
        # Reap our own zombie children so the pid is really gone.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return False
    return True


def pid_start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), to detect pid reuse."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return int(fields[19])
    except (FileNotFoundError, IndexError, ValueError):
        return None


def pid_cwd(pid: int) -> Path | None:
    """Working directory of ``pid`` (None if gone or not ours to read)."""
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


@contextlib.contextmanager
def secret_fd(secret: Sensitive, name: str = "byok-secret") -> Iterator[tuple[int, str]]:
    """An in-memory file (memfd) holding ``secret``; yields ``(fd, "/dev/fd/N")``.

    Pass ``fd`` in ``pass_fds`` and the path as a key-file argument: the child reads the secret
    from memory, nothing is written to disk, and the file vanishes when the fd closes.
    """
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        os.write(fd, secret.reveal())
        os.lseek(fd, 0, os.SEEK_SET)
        yield fd, f"/dev/fd/{fd}"
    finally:
        os.close(fd)
