"""Run one job on one backend: channels in, console watched, result out, nothing left behind.

The runner owns what is the same for every backend: the job document, the memfd channels, the
console protocol (``BYOK-STEP`` progress, ``BYOK-WAIT`` pauses answered on stdin), a boot
watchdog (a guest that has not printed ``BYOK-BOOTED`` in time is killed and diagnosed), an
overall timeout, killing the whole process group afterwards, and turning a failure into a
:class:`~byok.common.errors.GuestError` that names the backend and the cause.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from byok.common import proc
from byok.common.errors import GuestError, WrongKey
from byok.common.sensitive import Sensitive
from byok.guest import diagnose
from byok.guest.backend import Backend, Launch
from byok.guest.job import RESULT_SIZE, Disk, GuestRun, channel, fill_channel, read_channel

INIT_SCRIPT = Path(__file__).with_name("init.sh")
SUPERVISOR = Path(__file__).with_name("supervise.py")
BOOTED = "BYOK-BOOTED"
USED: set[str] = set()  # backends that ran a job in this process (the test log says which)
#: With ``$BYOK_GUEST_JOBLOG`` set, every guest job (of any process) appends "backend seconds" to
#: that file: the test session reports how many jobs each backend ran and what they cost, which is
#: what a slower backend multiplies (the test command's time budget).
JOBLOG_ENV = "BYOK_GUEST_JOBLOG"


def _log_job(backend: str, seconds: float) -> None:
    path = os.environ.get(JOBLOG_ENV)
    if not path:
        return
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{backend} {seconds:.3f}\n".encode())
        finally:
            os.close(fd)
NATIVE_WRONG_KEY = "Invalid password, cannot unlock any keyslot"  # QEMU's block/crypto.c


def job_document(steps: Sequence[dict], disks: Sequence[Disk], launch: Launch,
                 secrets: dict[str, Sensitive]) -> dict:
    """What the agent reads: steps, each disk's device (and serial to check), key material."""
    docs = []
    for i, d in enumerate(disks):
        link = d.link
        if link and launch.link_dir:
            link = str(Path(launch.link_dir) / Path(link).name)
        doc = {"name": d.name, "dev": launch.devices[i], "link": link, "writable": d.writable,
               "native_luks": d.native_luks is not None}
        if launch.serials:
            doc["serial"] = launch.serials[i]
        docs.append(doc)
    job = {"steps": list(steps), "disks": docs,
           "secrets": {k: v.reveal().hex() for k, v in secrets.items()}}
    if launch.serials:
        job["channels"] = {launch.job_dev: launch.serials[len(disks)],
                           launch.result_dev: launch.serials[len(disks) + 1]}
    return job


def _stop(p: subprocess.Popen) -> None:
    """Stop a supervised guest and everything it forked: SIGTERM makes the supervisor kill the
    guest's process group and reap it; SIGKILL of the whole session is the fallback."""
    if p.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    proc.kill_group(p)
    p.wait()


class _Console:
    """Reads the guest's console lines, answers waits, notes when it booted."""

    def __init__(self, p: subprocess.Popen, *, boots: bool,
                 on_wait: Callable[[str], None] | None,
                 progress: Callable[[str], None] | None) -> None:
        self.p = p
        self.lines: list[str] = []
        self.t0 = time.monotonic()
        self.booted_at: float | None = None if boots else self.t0
        self.on_wait = on_wait
        self.progress = progress
        self.threads = [threading.Thread(target=self._stdout, daemon=True),
                        threading.Thread(target=self._stderr, daemon=True)]
        for t in self.threads:
            t.start()

    def _stdout(self) -> None:
        assert self.p.stdout is not None
        for raw in self.p.stdout:
            line = raw.decode(errors="replace").rstrip("\r\n")
            self.lines.append(line)
            if self.booted_at is None and line.endswith(BOOTED):
                self.booted_at = time.monotonic()
            if line.startswith("BYOK-STEP") and self.progress:
                self.progress(line[len("BYOK-STEP ") :])
            if line.startswith("BYOK-WAIT "):
                self._answer(line.split(" ", 1)[1].strip())

    def _answer(self, token: str) -> None:
        try:
            if self.on_wait:
                self.on_wait(token)
        finally:
            with contextlib.suppress(BrokenPipeError, ValueError, OSError):
                assert self.p.stdin is not None
                self.p.stdin.write(b"go\n")
                self.p.stdin.flush()

    def _stderr(self) -> None:
        assert self.p.stderr is not None
        for raw in self.p.stderr:
            self.lines.append("stderr: " + raw.decode(errors="replace").rstrip())

    def join(self) -> None:
        for t in self.threads:
            t.join(timeout=10)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


class Guest:
    """Runs :mod:`byok.guest.agent` jobs on real dm-crypt, on the backend chosen for this host
    (``BYOK_GUEST``, default ``auto``: the fastest one whose probe really opened a volume)."""

    def __init__(self, *, mem_mb: int = 768, timeout: float = 300.0,
                 backend: str | Backend | None = None) -> None:
        self.mem_mb = mem_mb
        self.timeout = timeout
        self._choice = backend

    @property
    def backend(self) -> Backend:
        if isinstance(self._choice, Backend):
            return self._choice
        from byok.guest.select import pick

        self._choice = pick(self._choice)
        return self._choice

    def run(self, steps: Sequence[dict], *, disks: Sequence[Disk] = (),
            secrets: dict[str, Sensitive] | None = None,
            on_wait: Callable[[str], None] | None = None,
            progress: Callable[[str], None] | None = None,
            op_modules: Sequence[str] = ()) -> GuestRun:
        """Run ``steps`` in a fresh guest; returns when the guest has powered off.
        ``op_modules``: modules whose ``OPS`` add step ops (a higher layer's, by name)."""
        backend = self.backend
        backend.prepare()
        if len(disks) > backend.max_disks:
            raise GuestError(f"{backend.name}: at most {backend.max_disks} volumes per run "
                             f"(got {len(disks)})")
        job_fd, result_fd = channel(), channel(b"", RESULT_SIZE)
        try:
            launch = backend.launch(job_fd, result_fd, disks, mem_mb=self.mem_mb,
                                    python=sys.executable, init_script=INIT_SCRIPT)
        except BaseException:
            os.close(job_fd)
            os.close(result_fd)
            raise
        try:
            doc = job_document(steps, disks, launch, secrets or {})
            doc["op_modules"] = list(op_modules)
            fill_channel(job_fd, json.dumps(doc).encode())
            run = self._boot(backend, launch, result_fd, on_wait, progress)
            USED.add(backend.name)
            return run
        finally:
            for fn in launch.cleanup:
                with contextlib.suppress(Exception):
                    fn()
            os.close(job_fd)
            os.close(result_fd)

    def _boot(self, backend: Backend, launch: Launch, result_fd: int,
              on_wait: Callable[[str], None] | None,
              progress: Callable[[str], None] | None) -> GuestRun:
        trees = [a for t in launch.scratch_dirs for a in ("--rmtree", t)]
        argv = [sys.executable, "-I", "-S", str(SUPERVISOR), *trees, "--", *launch.argv]
        p = proc.start(argv, env=launch.env, pass_fds=launch.pass_fds, interactive=True)
        console = _Console(p, boots=launch.boots, on_wait=on_wait, progress=progress)
        timed_out: float | None = None
        try:
            while True:
                try:
                    p.wait(timeout=0.2)
                    break
                except subprocess.TimeoutExpired:
                    elapsed = time.monotonic() - console.t0
                    if console.booted_at is None and elapsed > backend.boot_timeout:
                        timed_out = backend.boot_timeout
                        break
                    if elapsed > self.timeout:
                        timed_out = self.timeout
                        break
        finally:
            _stop(p)
            console.join()
        seconds = time.monotonic() - console.t0
        _log_job(backend.name, seconds)
        booted = console.booted_at is not None
        boot_s = console.booted_at - console.t0 if console.booted_at is not None else None
        raw = read_channel(result_fd)

        def fail(what: str) -> GuestError:
            d = diagnose.classify(backend.name, console.text, p.returncode,
                                  facts=diagnose.host_facts(), booted=booted,
                                  timed_out=timed_out)
            return GuestError(f"guest ({backend.name}): {what}: {d.reason}", hint=(
                (f"fix: {d.fix}; " if d.fix else "") + "console tail:\n"
                + "\n".join(console.lines[-12:])), backend=backend.name, cause=d.reason,
                fix=d.fix)

        if timed_out is not None:
            raise fail("killed by the watchdog")
        if not raw and NATIVE_WRONG_KEY in console.text:
            raise WrongKey(f"guest ({backend.name}): QEMU's LUKS driver found no keyslot that "
                           "opens with this passphrase (nothing was written)")
        if not raw:
            raise fail("the guest agent returned no result")
        result = json.loads(raw)
        if "fatal" in result:
            raise GuestError(f"guest ({backend.name}): the agent failed: {result['fatal']}")
        return GuestRun(result, console.text, p.returncode, seconds,
                        list(result.get("steps", [])), session_id=p.pid,
                        backend=backend.name, boot_seconds=boot_s)
