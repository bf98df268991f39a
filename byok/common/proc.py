"""The only place in byok that runs other programs.

Rules enforced here, so no caller can forget them:

* secrets never go into argv: they travel on stdin (``input=Sensitive``) or through an in-memory
  file handed to the child as an inherited descriptor (:func:`secret_fd`, a memfd, never on disk);
  passing a :class:`~byok.common.sensitive.Sensitive` inside argv is a ``TypeError``;
* every call has a timeout; on expiry the whole process group is killed, nothing is left behind;
* the debug log shows the command line (which holds no secrets) and the exit status; captured
  output quoted in errors is scrubbed of every secret the call was given;
* a missing program raises :class:`~byok.common.errors.ToolMissing` naming the Debian package;
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

import psutil

from byok.common.errors import ByokError, CommandFailed, CommandTimeout, ToolMissing
from byok.common.sensitive import Sensitive

LOG = logging.getLogger(__name__)

#: Which Debian package provides each program byok runs (for the ToolMissing hint).
DEBIAN_PACKAGE = {
    "cryptsetup": "cryptsetup-bin",
    "qemu-img": "qemu-utils",
    "qemu-io": "qemu-utils",
    "qemu-storage-daemon": "qemu-system-x86",
    "qemu-system-x86_64": "qemu-system-x86",
    "dpkg-deb": "dpkg",
    "apt-get": "apt",
    "losetup": "mount",
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
    call = Call(args, data, timeout, dict(env) if env is not None else None, cwd,
                _fds(pass_fds))
    try:
        code, stdout, stderr = _EXECUTOR.get()(call)
    except _TimedOut as t:
        res = Result(args, -9, t.stdout, t.stderr, time.monotonic() - start, secrets)
        raise CommandTimeout(
            f"{label} did not finish within {timeout:g} s and was killed",
            argv=args,
            returncode=None,
            stderr=res.tail(),
        ) from None
    res = Result(args, code, stdout, stderr, time.monotonic() - start, secrets)
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


@dataclass(frozen=True)
class Call:
    """One command as :func:`run` hands it to the executor."""

    argv: list[str]
    stdin: bytes | None = field(repr=False)
    timeout: float
    env: dict[str, str] | None = None
    cwd: str | os.PathLike[str] | None = None
    pass_fds: tuple[int, ...] = ()


Executor = Callable[[Call], tuple[int, bytes, bytes]]


class _TimedOut(Exception):
    def __init__(self, stdout: bytes, stderr: bytes) -> None:
        super().__init__("timed out")
        self.stdout, self.stderr = stdout, stderr


def popen_executor(call: Call) -> tuple[int, bytes, bytes]:
    """The real executor: a child in its own session, killed as a group on timeout."""
    p = subprocess.Popen(
        call.argv,
        stdin=subprocess.PIPE if call.stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=call.env,
        cwd=call.cwd,
        pass_fds=call.pass_fds,
        start_new_session=True,
    )
    try:
        stdout, stderr = p.communicate(input=call.stdin, timeout=call.timeout)
    except subprocess.TimeoutExpired:
        kill_group(p)
        stdout, stderr = p.communicate()
        raise _TimedOut(stdout, stderr) from None
    except BaseException:
        kill_group(p)
        p.wait()
        raise
    return p.returncode, stdout, stderr


_EXECUTOR: contextvars.ContextVar[Executor] = contextvars.ContextVar(
    "byok_executor", default=popen_executor)


@contextlib.contextmanager
def executor(fn: Executor) -> Iterator[None]:
    """Run every :func:`run` inside the block through ``fn`` instead of a real child — the test
    seam os-brick has in its ``execute=`` argument: unit tests assert exact command lines and
    how canned exit codes and stderr are classified, without running the program."""
    token = _EXECUTOR.set(fn)
    try:
        yield
    finally:
        _EXECUTOR.reset(token)


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
    """SIGTERM ``pid``'s process group (``pid`` alone if it leads none), wait ``grace`` s, then
    SIGKILL. True if it was alive."""
    try:
        target = psutil.Process(pid)
        group = os.getpgid(pid) == pid
    except (psutil.NoSuchProcess, ProcessLookupError):
        return False
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig) if group else os.kill(pid, sig)
        try:
            target.wait(timeout=wait)
            break
        except psutil.TimeoutExpired:
            continue
    return True


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (our own zombies are reaped on the way)."""
    try:
        p = psutil.Process(pid)
        if p.status() != psutil.STATUS_ZOMBIE:
            return True
    except psutil.NoSuchProcess:
        return False
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    return False


def pid_start_time(pid: int) -> float | None:
    """When ``pid`` started (seconds since the epoch), to tell it from a later reuse."""
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.NoSuchProcess:
        return None


def pid_cwd(pid: int) -> Path | None:
    """Working directory of ``pid`` (None if gone or not ours to read)."""
    try:
        return Path(psutil.Process(pid).cwd())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


@contextlib.contextmanager
def secret_fd(secret: Sensitive, name: str = "byok-secret") -> Iterator[tuple[int, str]]:
    """An in-memory file (memfd) holding ``secret``; yields ``(fd, "/proc/self/fd/N")``.

    Pass ``fd`` in ``pass_fds`` and the path as a key-file argument: the child reads the secret
    from memory, nothing is written to disk, and the file vanishes when the fd closes.
    """
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        os.write(fd, secret.reveal())
        os.lseek(fd, 0, os.SEEK_SET)
        yield fd, f"/proc/self/fd/{fd}"  # /dev/fd is missing in a guest's bare devtmpfs
    finally:
        os.close(fd)
