"""The subprocess boundary: secrets never in argv, timeouts kill the whole group, typed errors,
and a missing program names its Debian package."""

from __future__ import annotations

import time

import psutil
import pytest

from byok.common import proc
from byok.common.errors import CommandFailed, CommandTimeout, ToolMissing
from byok.common.sensitive import Sensitive


def test_secrets_are_refused_in_argv():
    for bad in (Sensitive(b"k"), b"raw-bytes", bytearray(b"x")):
        with pytest.raises(TypeError, match="argv"):
            proc.run(["true", bad])


def test_secret_goes_in_on_stdin_and_is_scrubbed_from_errors():
    secret = Sensitive(b"0123456789abcdef-supersecret")
    with pytest.raises(CommandFailed) as ei:
        proc.run(["sh", "-c", "cat >&2; exit 3"], input=secret)
    assert "supersecret" not in str(ei.value) and "***" in str(ei.value)
    assert proc.run(["cat"], input=secret).stdout == secret.reveal()


def test_timeout_kills_the_whole_process_group():
    t0 = time.monotonic()
    with pytest.raises(CommandTimeout):
        proc.run(["sh", "-c", "sleep 30.123 & sleep 30.123; wait"], timeout=0.5)
    assert time.monotonic() - t0 < 5
    left = [p.pid for p in psutil.process_iter(["cmdline"])
            if p.info["cmdline"] == ["sleep", "30.123"]]
    assert left == []


def test_missing_tool_names_the_apt_package(monkeypatch):
    monkeypatch.setitem(proc.DEBIAN_PACKAGE, "byok-no-such-tool", "byok-imaginary-pkg")
    with pytest.raises(ToolMissing) as ei:
        proc.run(["byok-no-such-tool"])
    assert "apt-get install -y byok-imaginary-pkg" in str(ei.value)


def test_secret_fd_is_readable_by_the_child_and_never_a_file():
    secret = Sensitive(b"from-a-memfd")
    with proc.secret_fd(secret) as (fd, path):
        assert path.startswith("/proc/self/fd/")
        assert proc.run(["cat", path], pass_fds=(fd,)).stdout == b"from-a-memfd"
