"""The devstack plugin under devstack's real function library (issue 16, item 5).

tests/integration/test_devstack_plugin.py runs every phase against a recording fake; this
file runs the plugin the way stack.sh does, with devstack's own ``functions``, ``stackrc``,
``lib/*``, ``fetch_plugins`` (a real git clone of the ``enable_plugin`` line in
devstack/README.md) and ``run_phase``, from a pinned devstack commit cloned into
~/.cache/byok at first use (never part of this repository). Only the outermost boundaries are
stubbed, by tests/devstack/real-devstack-phases.sh: ``sudo`` and the ``openstack`` CLI.
The phases run are post-config and extra; install is left out (it pip-installs into the
node's Python, which a test must not do; the fake-library tests cover it).
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest
from castellan import key_manager
from oslo_config import cfg

from byok.key_manager.byok_key_manager import ByokKeyManager

REPO = Path(__file__).resolve().parents[2]
DRIVER = REPO / "tests" / "devstack" / "real-devstack-phases.sh"
README = REPO / "devstack" / "README.md"
DEVSTACK_URL = "https://opendev.org/openstack/devstack"
DEVSTACK_PIN = "493835a61a996731a7031861f80c7629acd5d6f2"  # master, 2026-07-17
PUBLISHED_BRANCH = "main"
CACHE = Path.home() / ".cache" / "byok" / f"devstack-{DEVSTACK_PIN[:12]}"
ENDPOINTS = ("BYOK_AUTH_ENDPOINT=http://127.0.0.1:5000/v3\n"
             "BYOK_BARBICAN_ENDPOINT=http://127.0.0.1:9311\n")


def _git(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True,
                          timeout=300).stdout.strip()


def devstack_checkout() -> Path:
    """devstack at the pinned commit: $BYOK_DEVSTACK_DIR, else the cache, else cloned now."""
    if os.environ.get("BYOK_DEVSTACK_DIR"):
        return Path(os.environ["BYOK_DEVSTACK_DIR"])
    if not (CACHE / "stack.sh").exists():
        tmp = CACHE.with_name(CACHE.name + ".tmp")
        subprocess.run(["rm", "-rf", str(tmp)], check=True)
        r = subprocess.run(["git", "clone", "-q", DEVSTACK_URL, str(tmp)], capture_output=True,
                           text=True, timeout=600, check=False)
        if r.returncode != 0:
            pytest.fail(f"devstack is needed at {CACHE} and cloning {DEVSTACK_URL} failed: "
                        f"{r.stderr.strip()[-300:]}\ninstall step: git clone {DEVSTACK_URL} "
                        f"{CACHE} && git -C {CACHE} checkout {DEVSTACK_PIN} "
                        "(or set BYOK_DEVSTACK_DIR to a devstack checkout)")
        _git("checkout", "-q", DEVSTACK_PIN, cwd=tmp)
        tmp.rename(CACHE)
    assert _git("rev-parse", "HEAD", cwd=CACHE) == DEVSTACK_PIN, f"{CACHE} is not at the pin"
    return CACHE


@pytest.fixture(scope="module")
def devstack_dir() -> Path:
    return devstack_checkout()


def readme_line() -> list[str]:
    lines = [ln.strip() for ln in README.read_text().splitlines()
             if ln.strip().startswith("enable_plugin byok ")]
    assert len(lines) == 1, lines
    return shlex.split(lines[0])


def publish(where: Path) -> tuple[Path, str]:
    """A bare repository standing for the README's URL: this checkout (committed HEAD plus
    the working tree's changes to tracked files) as branch ``main``, the only branch the
    published repository has (so a README line without it fetches devstack's 'master' and
    fails here as it would for a user)."""
    bare = where / "byok.git"
    _git("init", "-q", "--bare", str(bare))
    commit = _git("stash", "create", cwd=REPO) or _git("rev-parse", "HEAD", cwd=REPO)
    _git("push", "-q", str(bare), f"{commit}:refs/heads/{PUBLISHED_BRANCH}", cwd=REPO)
    return bare, commit


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    return publish(tmp_path_factory.mktemp("upstream"))


def readme_localrc(bare: Path, endpoints: str = ENDPOINTS) -> str:
    """local.conf's localrc: the README's enable_plugin line with ``bare`` as its URL."""
    words = readme_line()
    return shlex.join([*words[:2], bare.as_uri(), *words[3:]]) + "\n" + endpoints


def plugin_cinder_conf(root: Path, *, auth_endpoint: str, barbican_endpoint: str) -> Path:
    """The cinder.conf the plugin's post-config writes on a node at ``root`` (devstack's real
    library, the README's line), pointing at the given Keystone and Barbican."""
    bare, _commit = publish(root)
    r = run_phases(devstack_checkout(), root / "node", readme_localrc(
        bare, f"BYOK_AUTH_ENDPOINT={auth_endpoint}\nBYOK_BARBICAN_ENDPOINT={barbican_endpoint}\n"),
        "post-config")
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return root / "node" / "etc" / "cinder" / "cinder.conf"


def run_phases(devstack_dir: Path, root: Path, localrc: str, *phases: str
               ) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(root / "home"),
           "LC_ALL": "C.UTF-8"}
    (root / "home").mkdir(parents=True, exist_ok=True)
    return subprocess.run(["bash", str(DRIVER), str(devstack_dir), str(root), localrc, *phases],
                          env=env, capture_output=True, text=True, timeout=300, check=False)


def load_backend(path: Path) -> object:
    conf = cfg.ConfigOpts()
    conf(["--config-file", str(path)], project="byok-test", default_config_files=[])
    return key_manager.API(conf)


@pytest.fixture(scope="module")
def stacked(devstack_dir, upstream, tmp_path_factory):
    bare, commit = upstream
    root = tmp_path_factory.mktemp("node")
    localrc = readme_localrc(bare)
    r = run_phases(devstack_dir, root, localrc, "post-config", "extra")
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return root, commit, r, localrc


def test_readme_line_fetches_and_configures_under_real_devstack(stacked):
    root, commit, r, _localrc = stacked
    clone = root / "opt" / "stack" / "byok"
    assert _git("rev-parse", "HEAD", cwd=clone) == commit, "fetch_plugins cloned another commit"
    assert "Configuring byok as the key manager of Cinder and Nova" in r.stdout
    assert "== done" in r.stdout


def test_written_files_load_backend_byok_through_castellan(stacked):
    root, _commit, _r, _localrc = stacked
    for f in ("cinder/cinder.conf", "nova/nova.conf", "nova/nova-cpu.conf"):
        assert isinstance(load_backend(root / "etc" / f), ByokKeyManager), f
    conf = (root / "etc" / "cinder" / "cinder.conf").read_text()
    assert "auth_endpoint = http://127.0.0.1:5000/v3" in conf
    assert "barbican_endpoint = http://127.0.0.1:9311" in conf


def test_service_users_come_from_the_stubbed_openstack_cli(stacked):
    root, _commit, _r, _localrc = stacked
    calls = (root / "openstack.calls").read_text().splitlines()
    assert any(" user create cinder " in f" {c} " for c in calls), calls
    assert any(" user create nova " in f" {c} " for c in calls), calls


def test_rerun_changes_nothing(stacked, devstack_dir):
    root, _commit, _r, localrc = stacked
    files = {f: f.read_text() for f in (root / "etc").rglob("*.conf")}
    r = run_phases(devstack_dir, root, localrc, "post-config")
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert {f: f.read_text() for f in files} == files


def test_without_the_branch_clone_fails_then_a_rerun_silently_skips_the_plugin(
        devstack_dir, upstream, tmp_path):
    """The bug the README's branch avoids, in devstack itself: its default branch 'master'
    is not in the repository, fetch_plugins dies, the directory stays, and the next run
    skips the clone and runs without the plugin."""
    bare, _commit = upstream
    line = f"enable_plugin byok {bare.as_uri()}\n" + ENDPOINTS
    first = run_phases(devstack_dir, tmp_path, line, "post-config")
    assert first.returncode != 0 and "master" in first.stderr + first.stdout
    assert (tmp_path / "opt" / "stack" / "byok").is_dir()
    second = run_phases(devstack_dir, tmp_path, line, "post-config")
    assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]
    assert "Configuring byok" not in second.stdout
    assert (tmp_path / "etc" / "cinder" / "cinder.conf").read_text() == ""
