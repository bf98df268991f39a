"""Shared fixtures: one real embedded stack per test session, identities, free ports.

The stack fixture brings up the real Keystone + Barbican once (or reuses a running one from the
same state dir) and stops it at the end only if this session started it.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# --- secret hygiene over the whole session ------------------------------------------------------


class Hygiene:
    """Watches the whole test session for key material outside its channels.

    Every key the tests create through byok is registered; a sampler thread reads the command
    lines and environments of every process in our tree (cryptsetup, UML, qemu, the stack's
    servers...) every 50 ms, a root logging handler keeps every log record at DEBUG, and the
    byok tmpfs scratch directories are checked for their modes. At the end all of it, plus the
    stack's log files, is scanned for each key in raw, hex and base64 form: zero hits, and no
    byok scratch directory left behind.
    """

    def __init__(self) -> None:
        import logging
        import threading

        self.secrets: list[bytes] = []
        self.texts: set[bytes] = set()
        self.records: list[str] = []
        self.snapshots = 0
        self.bad_modes: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self.roots: list[int] = []

        class Keep(logging.Handler):
            def emit(inner, record):
                try:
                    self.records.append(record.getMessage())
                except Exception:  # noqa: S110 - a bad format string is not our concern here
                    pass
                if record.exc_info:  # the traceback and exception text, as a log file has them
                    self.records.append(logging.Formatter().formatException(record.exc_info))

        self.handler = Keep(level=logging.DEBUG)

    def register(self, raw: bytes) -> None:
        self.secrets.append(raw)

    def add_text(self, text: str | bytes) -> None:
        """Another text to scan at the end (exception reports, CLI output...)."""
        self.texts.add(text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text)

    def _pids(self):
        import os

        import psutil

        pids = set()
        for root in [os.getpid(), *self.roots]:
            try:
                p = psutil.Process(root)
                pids.update(c.pid for c in p.children(recursive=True))
                pids.add(root)
            except psutil.Error:
                continue
        pids.discard(os.getpid())  # our own environ holds no keys; our memory is not the point
        return pids

    def _sample(self) -> None:
        import glob
        import os
        import stat

        while not self._stop.is_set():
            for pid in self._pids():
                for what in ("cmdline", "environ"):
                    try:
                        with open(f"/proc/{pid}/{what}", "rb") as f:
                            self.texts.add(f.read())
                    except OSError:
                        pass
            for d in glob.glob("/dev/shm/byok-*"):
                if os.path.basename(d).startswith("byok-uml-"):
                    continue  # UML's own umid files (pids, sockets) in a 0700 directory
                try:
                    st = os.stat(d)
                    if stat.S_IMODE(st.st_mode) & 0o077:
                        self.bad_modes.add(f"{d} {oct(st.st_mode)}")
                    for name in os.listdir(d):
                        m = stat.S_IMODE(os.stat(os.path.join(d, name)).st_mode)
                        if m & 0o077:
                            self.bad_modes.add(f"{d}/{name} {oct(m)}")
                except OSError:
                    pass
            self.snapshots += 1
            self._stop.wait(0.05)

    def start(self) -> None:
        import logging

        root = logging.getLogger()
        root.addHandler(self.handler)
        self._old_level = root.level
        root.setLevel(logging.DEBUG)
        self._thread.start()

    def finish(self, log_files, small_files=()) -> list[str]:
        import base64
        import binascii
        import glob
        import logging

        self._stop.set()
        self._thread.join(timeout=5)
        logging.getLogger().removeHandler(self.handler)
        logging.getLogger().setLevel(self._old_level)
        forms: list[bytes] = []
        for raw in self.secrets:
            forms += [f for f in (raw, binascii.hexlify(raw), binascii.hexlify(raw).upper(),
                                  base64.b64encode(raw)) if len(f) >= 16]
        blobs = [*list(self.texts), "\n".join(self.records).encode(errors="replace")]
        for path in log_files:
            try:
                blobs.append(path.read_bytes())
            except OSError:
                pass
        self.files_scanned = 0
        for data in small_files:  # what the tests and byok left on disk (records, journals...)
            blobs.append(data)
            self.files_scanned += 1
        big = b"\0".join(blobs)  # one pass per key form, not one per form and file
        hits = sorted({f"a {len(f)}-byte form of a key in a scanned text"
                       for f in forms if f in big})
        hits += [f"left behind: {d}" for d in glob.glob("/dev/shm/byok-*")]
        hits += [f"bad mode: {m}" for m in self.bad_modes]
        self.log_files = len(log_files)
        return hits


HYGIENE = Hygiene()


#: Library and source code the tests unpack or install (a provisioned venv, Cinder's and Nova's
#: sdists): nothing byok or a test writes has these names, and scanning them cost most of the
#: session's teardown (60,000 files).
_CODE_SUFFIXES = frozenset({".py", ".pyc", ".pyi", ".c", ".h", ".so", ".po", ".mo", ".pot",
                            ".js", ".css", ".html", ".svg", ".png", ".ttf", ".otf", ".woff"})
_CODE_DIRS = frozenset({"site-packages", "__pycache__", ".git"})


def _small_files(basetemp, limit: int = 2 << 20):
    """Every file under this session's temp dirs and byok's state (pool records, journals,
    stack files, CLI outputs, suite logs) small enough to hold text — volume images are
    ciphertext, library code is skipped — each distinct content once."""
    import hashlib
    from pathlib import Path

    from byok.common import paths

    seen: set[bytes] = set()
    roots = [Path(basetemp), Path(paths.base_dir())]
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in _CODE_DIRS]
            for name in filenames:
                p = Path(dirpath, name)
                if p.suffix in _CODE_SUFFIXES:
                    continue
                try:
                    if p.is_symlink() or p.stat().st_size > limit:
                        continue
                    data = p.read_bytes()
                except OSError:
                    continue
                digest = hashlib.blake2b(data, digest_size=16).digest()
                if digest not in seen:
                    seen.add(digest)
                    yield data


def pytest_runtest_logreport(report):
    """Exception texts of every failure (pytest's own rendering) are scanned too."""
    if report.failed and report.longreprtext:
        HYGIENE.add_text(report.longreprtext)


@pytest.fixture(scope="session", autouse=True)
def secret_hygiene(tmp_path_factory):
    HYGIENE.start()
    yield HYGIENE
    from pathlib import Path

    from byok.common import paths

    logs = [p for p in Path(paths.stack_dir()).rglob("*.log*") if p.is_file()]
    hits = HYGIENE.finish(logs, _small_files(tmp_path_factory.getbasetemp()))
    from tests.reliability.conftest import COUNTS

    COUNTS["hygiene: keys watched"] = len(HYGIENE.secrets)
    COUNTS["hygiene: process snapshots"] = HYGIENE.snapshots
    COUNTS["hygiene: distinct cmdlines/environs scanned"] = len(HYGIENE.texts)
    COUNTS["hygiene: log records scanned"] = len(HYGIENE.records)
    COUNTS["hygiene: server log files scanned"] = HYGIENE.log_files
    COUNTS["hygiene: small files scanned (records, journals, outputs)"] = HYGIENE.files_scanned
    COUNTS["hygiene: leaks"] = len(hits)
    if hits:
        pytest.fail("secret hygiene: " + "; ".join(hits[:10]), pytrace=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def stack() -> Iterator:
    from byok.stack.manager import Stack

    st = Stack.at()
    already = not st.stopped()
    status = st.up()
    assert status["healthy"], status
    HYGIENE.roots = [s["pid"] for s in status["services"].values() if s["pid"]]
    SESSION_STACK.append(st)
    yield st
    SESSION_STACK.clear()
    if not already:
        st.down()


#: The session's stack once a test has asked for it (the watch below needs it).
SESSION_STACK: list = []


@pytest.fixture(autouse=True)
def session_stack_survives():
    """After every test: the session stack's servers still run. A test that leaves one stopped
    errors here, by name, and the stack is brought back for the tests after it — otherwise one
    stray ``down`` shows up as hundreds of unrelated connection failures (a CI run once did)."""
    yield
    if not SESSION_STACK:
        return
    st = SESSION_STACK[0]
    dead = [srv.spec.name for srv in st.stopped()]
    if dead:
        st.up()
    HYGIENE.roots = [pid for srv in st.servers() if (pid := srv.running_pid())]  # restarts too
    if dead:
        pytest.fail(f"this test left the session stack's {' and '.join(dead)} stopped "
                    "(restarted for the tests that follow)", pytrace=False)


@pytest.fixture(scope="session")
def identities(stack):
    """Sessions for the seeded users, created once (keystoneauth re-auths on expiry)."""
    from byok.keys.identity import Identity

    cache: dict = {}

    def get(user: str) -> Identity:
        if user not in cache:
            cache[user] = Identity.from_cloud(
                stack.cloud_name(user), clouds_yaml=stack.cfg.clouds_yaml
            )
        return cache[user]

    return get


def processes_in(path) -> list[int]:
    """Pids whose working directory or command line lies under ``path`` (stray-process checks;
    gunicorn rewrites its title, so cwd is the reliable trace)."""
    import os
    from pathlib import Path

    root = str(Path(path).resolve())
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
            with open(f"/proc/{entry}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().decode(errors="replace")
        except OSError:
            continue
        if cwd.startswith(root) or root in cmd:
            found.append(int(entry))
    return found


@pytest.fixture(scope="session")
def barbican(stack, identities):
    """``barbican(user)`` -> BarbicanAPI for that seeded user against the embedded Barbican."""
    from byok.keys.barbican import BarbicanAPI

    return lambda user: BarbicanAPI(identities(user), stack.cfg.barbican_url)


@pytest.fixture(scope="session")
def make_key(barbican):
    """``make_key(user, kind="aes512"|"aes256"|"passphrase", **overrides)`` stores a secret as
    ``user`` and returns ``(KeyRef, raw bytes)``."""
    import os

    from byok.common.sensitive import Sensitive

    def make(user: str = "alice", kind: str = "aes512", **kw):
        api = barbican(user)
        if kind == "passphrase":
            raw = kw.pop("payload", os.urandom(12).hex().encode())
            ref = api.store(Sensitive(raw), secret_type="passphrase", name=f"t-{kind}", **kw)
            HYGIENE.register(raw)
            return ref, raw
        else:
            bits = int(kind[3:]) if kind.startswith("aes") else 512
            raw = kw.pop("payload", os.urandom(bits // 8))
            args = {"algorithm": "aes", "bit_length": bits, "mode": "xts"} | kw
            ref = api.store(Sensitive(raw), secret_type=args.pop("secret_type", "symmetric"),
                            name=f"t-{kind}", **args)
        HYGIENE.register(raw)
        return ref, raw

    return make


def pytest_configure(config):
    """Every guest job of the session (this process and the CLIs it starts) is logged, so the
    summary can say how many each backend ran and what they cost."""
    from byok.guest import runner

    if runner.JOBLOG_ENV not in os.environ:
        fd, path = tempfile.mkstemp(prefix="byok-guest-jobs-", suffix=".log")
        os.close(fd)
        os.environ[runner.JOBLOG_ENV] = path


def guest_job_totals() -> dict[str, tuple[int, float]]:
    """backend -> (jobs, seconds) from the session's job log."""
    from byok.guest import runner

    totals: dict[str, tuple[int, float]] = {}
    try:
        lines = open(os.environ.get(runner.JOBLOG_ENV, "/nonexistent")).read().split("\n")
    except OSError:
        return totals
    for line in lines:
        name, _, secs = line.partition(" ")
        if name and secs:
            n, t = totals.get(name, (0, 0.0))
            totals[name] = (n + 1, t + float(secs))
    return totals


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Print the guest backends' probe table (which kernels really ran dm-crypt here, and why the
    others did not) and the reliability suite's counts (crashes injected, fuzz examples, header
    flips, hygiene scans), so every CI log states them."""
    _guest_table(terminalreporter)
    try:
        from tests.reliability.conftest import COUNTS
    except ImportError:
        return
    if not COUNTS:
        return
    terminalreporter.section("byok reliability counts")
    for name in sorted(COUNTS):
        terminalreporter.write_line(f"{name:>40}: {COUNTS[name]}")
    if out := os.environ.get("BYOK_COUNTS_OUT"):  # a full run's counts, to archive as JSON
        Path(out).write_text(json.dumps({"exitstatus": int(exitstatus),
                                         "counts": dict(sorted(COUNTS.items()))}, indent=2))


def _guest_table(terminalreporter) -> None:
    from byok.guest import runner, select

    if not runner.USED and not guest_job_totals():
        return  # no guest ran in this session
    key = select.host_key()
    found = [v for v in (select.cached_verdict(n, key) for n in select.ORDER) if v]
    if not found:
        return
    picked = ", ".join(sorted(runner.USED))
    terminalreporter.section(f"byok guest backends (this run used: {picked})")
    for v in found:
        terminalreporter.write_line("  " + v.line())
    for name, (n, secs) in sorted(guest_job_totals().items()):
        terminalreporter.write_line(f"  jobs run on {name}: {n}, {secs:.0f} s in all, "
                                    f"{secs / n:.1f} s each")
