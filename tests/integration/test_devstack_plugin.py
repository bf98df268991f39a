"""The devstack plugin (devstack/plugin.sh + devstack/settings), phase by phase, without devstack.

CI has no devstack, and a broken plugin otherwise shows up half an hour into stack.sh. So each
phase runs here the way stack.sh runs it: ``source``d into one ``bash`` with errexit and xtrace
(plus nounset, stricter than stack.sh, so a misspelt variable fails here), after devstack's
function library and the plugin's settings. The library is a fake,
``tests/devstack/fake-devstack-functions.sh``: it records every call and really writes the ini
files (``iniset``), so nothing is installed and no Keystone is needed. The files post-config
writes are then loaded with oslo.config and castellan's real stevedore loader, which is what
Cinder and Nova do at start-up, so a wrong section, option or backend name fails here too.
No network: building castellan's key manager contacts neither Keystone nor Barbican.
"""

from __future__ import annotations

import configparser
import hashlib
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from castellan import key_manager
from keystoneauth1 import loading as ks_loading
from oslo_config import cfg

from byok.key_manager.byok_key_manager import ByokKeyManager

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "devstack" / "plugin.sh"
SETTINGS = REPO / "devstack" / "settings"
GRANT = REPO / "devstack" / "tools" / "byok-grant"
FAKE = REPO / "tests" / "devstack" / "fake-devstack-functions.sh"

KEYSTONE_URI = "http://192.0.2.10/identity"  # the fake library's KEYSTONE_SERVICE_URI
SERVICE_PASSWORD = "fake-service-password"
SECRET_HREF = "http://192.0.2.10/key-manager/v1/secrets/0b6f3c8e-8f7e-4c1a-9d55-2f7a1c3e9b10"


def fake_id(name: str) -> str:
    """The id the fake library's get_or_create_user prints for ``name``."""
    return hashlib.md5(f"user:{name}".encode()).hexdigest()  # noqa: S324 - a fake id


@dataclass
class FakeDevstack:
    """A scratch devstack: DEST, DATA_DIR and /etc under ``root``, calls logged to a file."""

    root: Path

    @property
    def nova_conf(self) -> Path:
        return self.root / "etc" / "nova" / "nova.conf"

    @property
    def nova_cpu_conf(self) -> Path:
        return self.root / "etc" / "nova" / "nova-cpu.conf"

    @property
    def cinder_conf(self) -> Path:
        return self.root / "etc" / "cinder" / "cinder.conf"

    @property
    def state_dir(self) -> Path:
        return self.root / "opt" / "stack" / "data" / "byok"

    @property
    def log(self) -> Path:
        return self.root / "calls.log"

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        # A clean environment: no OS_* or BYOK_* of whoever runs the tests leaks in.
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.root / "home"),
            "LC_ALL": "C.UTF-8",
            "FAKE_DEVSTACK_ROOT": str(self.root),
            "BYOK_PYTHON": sys.executable,
        }
        env.update(extra or {})
        return env

    def run(
        self,
        *phases: str,
        env: Mapping[str, str] | None = None,
        before: str = "",
        after: str = "",
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Source fake library, settings, then plugin.sh once per phase ("stack install", ...).

        ``before`` runs after settings (local.conf's place), ``after`` after the last phase.
        """
        lines = [
            "set -o errexit -o nounset",
            f"source {shlex.quote(str(FAKE))}",  # devstack's own set-up: not ours to trace
            "set -o xtrace",
            f"source {shlex.quote(str(SETTINGS))}",
            before,
            *(f"source {shlex.quote(str(PLUGIN))} {phase}" for phase in phases),
            after,
        ]
        proc = subprocess.run(
            ["bash", "-e", "-c", "\n".join(lines)],
            env=self.env(env), cwd=self.root, capture_output=True, text=True, timeout=60,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"phases {phases} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def calls(self, name: str | None = None) -> list[list[str]]:
        """Recorded calls as argv lists (function name first), optionally only ``name``'s.

        Without ``name``: everything but settings' ``define_plugin``, which each run logs."""
        if not self.log.exists():
            return []
        calls = [shlex.split(line) for line in self.log.read_text().splitlines()]
        if name is None:
            return [c for c in calls if c[0] != "define_plugin"]
        return [c for c in calls if c[0] == name]

    def inisets(self, path: Path) -> dict[tuple[str, str], str]:
        return {(c[2], c[3]): c[4] for c in self.calls("iniset") if c[1] == str(path)}


def new_devstack(root: Path) -> FakeDevstack:
    (root / "home").mkdir(parents=True)
    return FakeDevstack(root)


@pytest.fixture
def devstack(tmp_path: Path) -> FakeDevstack:
    return new_devstack(tmp_path)


@pytest.fixture(scope="module")
def configured(tmp_path_factory: pytest.TempPathFactory) -> FakeDevstack:
    """One devstack after install + post-config with the defaults; tests only read it."""
    ds = new_devstack(tmp_path_factory.mktemp("devstack"))
    ds.run("stack install", "stack post-config")
    return ds


def load_service_conf(path: Path) -> tuple[cfg.ConfigOpts, object]:
    """Build the key manager from ``path`` the way Cinder/Nova do: castellan.key_manager.API."""
    conf = cfg.ConfigOpts()
    conf(["--config-file", str(path)], project="byok-test", default_config_files=[])
    return conf, key_manager.API(conf)


# --- syntax ------------------------------------------------------------------------------------


@pytest.mark.parametrize("script", [PLUGIN, SETTINGS, GRANT, FAKE], ids=lambda p: p.name)
def test_scripts_parse_with_bash_n(script: Path) -> None:
    """stack.sh sources these into its own shell: a syntax error aborts the whole stack."""
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


# --- stack install -----------------------------------------------------------------------------


def test_install_pip_installs_the_checkout_without_deps_and_touches_no_config(
    devstack: FakeDevstack,
) -> None:
    """install must not resolve byok's pinned keystone/barbican (they would replace devstack's
    git checkouts), and config belongs to post-config: the files must stay byte-identical."""
    for path in (devstack.nova_conf, devstack.cinder_conf):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("[DEFAULT]\ndebug = True\n")
    before = {p: p.read_bytes() for p in (devstack.nova_conf, devstack.cinder_conf)}

    devstack.run("stack install")

    assert devstack.calls("pip_install") == [
        ["pip_install", "--no-deps", "-e", str(REPO)],
        ["pip_install", "rich", "rich-argparse"],
    ]
    assert {c[0] for c in devstack.calls()} == {"pip_install"}
    assert {p: p.read_bytes() for p in before} == before
    assert not devstack.nova_cpu_conf.exists()
    assert not devstack.state_dir.exists()


def test_install_without_cli_packages_installs_only_the_key_manager(
    devstack: FakeDevstack,
) -> None:
    """BYOK_CLI_PACKAGES="" is the documented way to keep devstack's Python minimal."""
    devstack.run("stack install", env={"BYOK_CLI_PACKAGES": ""})
    assert devstack.calls("pip_install") == [["pip_install", "--no-deps", "-e", str(REPO)]]


def test_install_stops_on_python_older_than_311(devstack: FakeDevstack) -> None:
    """byok requires Python >= 3.11; failing with that message beats a pip resolver error."""
    old = devstack.root / "python3.10"
    old.write_text("#!/bin/sh\nexit 1\n")
    old.chmod(0o755)
    proc = devstack.run("stack install", env={"BYOK_PYTHON": str(old)}, check=False)
    assert proc.returncode != 0
    assert "needs Python >= 3.11" in proc.stderr
    assert devstack.calls("pip_install") == []


# --- stack post-config -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("which", "consumer"),
    [("cinder_conf", "cinder"), ("nova_conf", "nova"), ("nova_cpu_conf", "nova")],
)
def test_post_config_files_load_backend_byok_through_castellan(
    configured: FakeDevstack, which: str, consumer: str
) -> None:
    """The point of the plugin: castellan's stevedore loader, given the file the service reads,
    returns byok's key manager recording the right service in Barbican consumers."""
    conf, km = load_service_conf(getattr(configured, which))
    assert isinstance(km, ByokKeyManager)
    assert conf.key_manager.backend == "byok"
    assert conf.byok.consumer_service == consumer
    assert conf.barbican.auth_endpoint == f"{KEYSTONE_URI}/v3"
    assert conf.barbican.barbican_endpoint is None  # from the catalog unless configured
    assert conf.barbican.barbican_endpoint_type == "public"
    assert conf.barbican.send_service_user_token is False
    assert conf.byok.session_ttl == 300
    assert conf.byok.session_cache_size == 128


def test_post_config_writes_exactly_the_documented_options(configured: FakeDevstack) -> None:
    """The README's option list is what lands in the files: nothing more (an unexpected option
    is config an operator did not ask for), nothing less."""
    for path, consumer in (
        (configured.cinder_conf, "cinder"),
        (configured.nova_conf, "nova"),
        (configured.nova_cpu_conf, "nova"),
    ):
        assert configured.inisets(path) == {
            ("key_manager", "backend"): "byok",
            ("barbican", "auth_endpoint"): f"{KEYSTONE_URI}/v3",
            ("barbican", "barbican_endpoint_type"): "public",
            ("barbican", "send_service_user_token"): "False",
            ("byok", "consumer_service"): consumer,
            ("byok", "session_ttl"): "300",
            ("byok", "session_cache_size"): "128",
        }, path


def test_post_config_makes_sure_service_users_exist_and_records_their_ids(
    configured: FakeDevstack,
) -> None:
    """Barbican ACLs name user ids and are set per secret by the owner, so the plugin can only
    prepare: users with a role on the service project (a project-scoped token is what an ACL
    read needs), and their ids recorded for byok-grant."""
    assert configured.calls("get_or_create_role") == [["get_or_create_role", "service"]]
    assert configured.calls("get_or_create_user") == [
        ["get_or_create_user", name, SERVICE_PASSWORD, "Default"] for name in ("cinder", "nova")
    ]
    assert configured.calls("get_or_add_user_project_role") == [
        ["get_or_add_user_project_role", "service", fake_id(name), "service", "Default", "Default"]
        for name in ("cinder", "nova")
    ]
    assert (configured.state_dir / "service-users").read_text() == (
        f"cinder {fake_id('cinder')}\nnova {fake_id('nova')}\n"
    )
    assert (configured.state_dir / "configured").read_text() == (
        f"cinder {configured.cinder_conf}\nnova {configured.nova_conf}\n"
        f"nova {configured.nova_cpu_conf}\n"
    )
    assert configured.calls("openstack") == []  # no ACL is (or can be) pre-granted


def test_post_config_prints_how_the_key_owner_grants_access(devstack: FakeDevstack) -> None:
    """The operator reads stack.sh's output: it must say that ACLs are the owner's to set, and
    with which command."""
    out = devstack.run("stack post-config").stdout
    assert "none is pre-granted" in out
    assert f"service user cinder = {fake_id('cinder')}" in out
    assert f"{REPO}/devstack/tools/byok-grant SECRET_HREF --to cinder --to nova" in out


def test_post_config_keeps_other_settings_and_is_idempotent(devstack: FakeDevstack) -> None:
    """stack.sh can be re-run over an existing /etc: values are replaced in place, never
    duplicated (oslo.config would reject a duplicate), and unrelated settings survive."""
    devstack.cinder_conf.parent.mkdir(parents=True)
    devstack.cinder_conf.write_text(
        "[DEFAULT]\ndebug = True\n\n[key_manager]\nbackend = barbican\n\n"
        "[barbican]\nauth_endpoint = http://old/identity/v3\n"
    )
    devstack.run("stack post-config")
    first = devstack.cinder_conf.read_bytes()
    devstack.run("stack post-config")
    assert devstack.cinder_conf.read_bytes() == first

    parsed = configparser.ConfigParser(strict=True, interpolation=None)  # duplicates raise
    parsed.read_string(first.decode())
    assert parsed["DEFAULT"]["debug"] == "True"
    assert parsed["key_manager"]["backend"] == "byok"
    assert parsed["barbican"]["auth_endpoint"] == f"{KEYSTONE_URI}/v3"


@pytest.mark.parametrize(
    ("services", "expected"),
    [
        ("key,c-api,c-vol", {"cinder_conf"}),
        ("key,n-api,n-cond", {"nova_conf"}),  # no n-cpu here: no nova-cpu.conf
        ("key,n-api,n-cpu", {"nova_conf", "nova_cpu_conf"}),
    ],
)
def test_post_config_configures_only_enabled_services(
    devstack: FakeDevstack, services: str, expected: set[str]
) -> None:
    """A node runs a subset of services; a file for a service that is not there would be
    noise, and a service user created for it would be an account nobody asked for."""
    devstack.run("stack post-config", env={"ENABLED_SERVICES": services})
    files = {"cinder_conf", "nova_conf", "nova_cpu_conf"}
    assert {f for f in files if getattr(devstack, f).exists()} == expected
    users = {c[1] for c in devstack.calls("get_or_create_user")}
    assert users == {"cinder" if "cinder" in f else "nova" for f in expected}


def test_node_without_cinder_or_nova_gets_a_warning_and_nothing_else(
    devstack: FakeDevstack,
) -> None:
    """byok enabled on, say, a network node: say so, create no accounts, and let the opt-in
    smoke check pass with nothing to check rather than fail the stack."""
    env = {"ENABLED_SERVICES": "key,g-api", "BYOK_RUN_SMOKE": "True"}
    proc = devstack.run("stack post-config", "stack extra", env=env)
    assert devstack.calls() == [
        ["warn", "byok: neither cinder nor nova is enabled on this node; nothing to configure"],
    ]
    assert "nothing to check" in proc.stdout
    assert not devstack.cinder_conf.exists() and not devstack.nova_conf.exists()


def test_post_config_without_keystone_on_the_node_configures_but_creates_no_users(
    devstack: FakeDevstack,
) -> None:
    """On a compute-only subnode Keystone lives on the controller, which set the users up."""
    proc = devstack.run("stack post-config", env={"ENABLED_SERVICES": "n-cpu,c-vol"})
    assert "Keystone is not enabled on this node" in proc.stdout
    assert [c for c in devstack.calls() if c[0].startswith("get_or_")] == []
    assert isinstance(load_service_conf(devstack.nova_cpu_conf)[1], ByokKeyManager)


def test_post_config_applies_the_settings(devstack: FakeDevstack) -> None:
    """Each documented setting reaches its option, and the service-token variant yields a
    [barbican_service_user] keystoneauth can build a password plugin from."""
    devstack.run(
        "stack post-config",
        env={
            "BYOK_BARBICAN_ENDPOINT": "http://192.0.2.20:9311",
            "BYOK_BARBICAN_ENDPOINT_TYPE": "internal",
            "BYOK_AUTH_ENDPOINT": "http://192.0.2.30:5000/v3",
            "BYOK_SESSION_TTL": "0",
            "BYOK_SESSION_CACHE_SIZE": "16",
            "BYOK_SEND_SERVICE_USER_TOKEN": "True",
        },
    )
    conf, km = load_service_conf(devstack.cinder_conf)
    assert isinstance(km, ByokKeyManager)
    assert conf.barbican.barbican_endpoint == "http://192.0.2.20:9311"
    assert conf.barbican.barbican_endpoint_type == "internal"
    assert conf.barbican.auth_endpoint == "http://192.0.2.30:5000/v3"
    assert (conf.byok.session_ttl, conf.byok.session_cache_size) == (0, 16)
    assert conf.barbican.send_service_user_token is True
    auth = ks_loading.load_auth_from_conf_options(conf, "barbican_service_user")
    assert conf.barbican_service_user.username == "cinder"
    assert conf.barbican_service_user.password == SERVICE_PASSWORD
    assert auth.auth_url == "http://192.0.2.30:5000/v3"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BYOK_SESSION_TTL", "5m"),
        ("BYOK_SESSION_CACHE_SIZE", "0"),
        ("BYOK_BARBICAN_ENDPOINT_TYPE", "private"),
    ],
)
def test_post_config_rejects_bad_settings_before_writing(
    devstack: FakeDevstack, name: str, value: str
) -> None:
    """A value oslo.config would refuse stops stack.sh here, naming the variable, rather than
    as a cinder-volume start-up failure minutes later; and nothing is half-written."""
    proc = devstack.run("stack post-config", env={name: value}, check=False)
    assert proc.returncode != 0
    assert name in proc.stderr
    assert devstack.calls("iniset") == []


def test_devstacks_later_fixed_key_still_leaves_byok_in_charge(devstack: FakeDevstack) -> None:
    """stack.sh writes [key_manager] fixed_key after every plugin's post-config; castellan then
    wraps the backend in MigrationKeyManager, which must still be byok's class (a subclass)."""
    devstack.run(
        "stack post-config",
        after='iniset "$CINDER_CONF" key_manager fixed_key "$(printf "ab%.0s" {1..32})"',
    )
    _conf, km = load_service_conf(devstack.cinder_conf)
    assert isinstance(km, ByokKeyManager)
    assert type(km).__name__ == "MigrationKeyManager"


# --- stack extra -------------------------------------------------------------------------------


def test_extra_without_smoke_makes_no_calls(devstack: FakeDevstack) -> None:
    """The smoke check is opt-in: by default extra only reads the files back."""
    devstack.run("stack post-config")
    before = len(devstack.calls())
    proc = devstack.run("stack extra")
    assert devstack.calls()[before:] == []
    assert "smoke" not in proc.stdout


def test_extra_warns_when_barbicans_plugin_overwrote_the_backend(devstack: FakeDevstack) -> None:
    """Barbican's plugin writes backend = barbican into the same files; if it ran after byok,
    the stack silently does not use byok. extra must say so and how to fix it."""
    devstack.run("stack post-config")
    devstack.run("stack extra", before='iniset "$CINDER_CONF" key_manager backend barbican')
    warnings = [c[1] for c in devstack.calls("warn")]
    assert len(warnings) == 1
    assert str(devstack.cinder_conf) in warnings[0]
    assert "'enable_plugin byok' after 'enable_plugin barbican'" in warnings[0]


@pytest.fixture(scope="module")
def smoked(
    tmp_path_factory: pytest.TempPathFactory, stack
) -> tuple[FakeDevstack, subprocess.CompletedProcess[str]]:
    """post-config, then extra with BYOK_RUN_SMOKE=True and the caller's OS_CLOUD set (in
    separate shells, to have extra's own xtrace); tests only read the result.

    Keystone and Barbican are real here: BYOK_AUTH_ENDPOINT points the configured files at the
    embedded stack and the smoke experiment's user cloud is its alice, so the key-path
    experiment runs for real through the cinder.conf that post-config wrote."""
    ds = new_devstack(tmp_path_factory.mktemp("smoke"))
    env = {"BYOK_RUN_SMOKE": "True", "OS_CLOUD": "devstack-admin",
           "BYOK_AUTH_ENDPOINT": stack.cfg.keystone_url,
           "BYOK_SMOKE_CLOUD": stack.cloud_name("alice"),
           "OS_CLIENT_CONFIG_FILE": str(stack.cfg.clouds_yaml)}
    ds.run("stack post-config", env=env)
    return ds, ds.run("stack extra", env=env)


Smoked = tuple[FakeDevstack, subprocess.CompletedProcess[str]]


def test_smoke_loads_every_file_through_castellan(smoked: Smoked) -> None:
    """The real check tool (devstack/tools/byok-check-conf.py) loads each configured file the
    way the service does; the operator sees one line per file naming byok and the consumer."""
    ds, proc = smoked
    out = proc.stdout
    for path, consumer in (
        (ds.cinder_conf, "cinder"),
        (ds.nova_conf, "nova"),
        (ds.nova_cpu_conf, "nova"),
    ):
        line = f"byok smoke: {path}: backend=byok (ByokKeyManager) consumer_service={consumer}"
        assert line in out


def test_smoke_checks_service_tokens_with_the_password_in_the_environment_only(
    smoked: Smoked,
) -> None:
    """Each service user asks for a token scoped to the service project (what an ACL read
    needs); the password travels in the environment, never on a command line or in stack.sh's
    xtrace log, and the caller's OS_CLOUD does not redirect the request."""
    ds, proc = smoked
    token_calls = ds.calls("openstack")
    assert [c[c.index("--os-username") + 1] for c in token_calls] == ["cinder", "nova"]
    for call in token_calls:
        assert call[-6:] == ["token", "issue", "-f", "value", "-c", "project_id"]
        assert call[call.index("--os-project-name") + 1] == "service"
        assert call[call.index("--os-auth-url") + 1].endswith("/v3")  # BYOK_AUTH_ENDPOINT
        assert SERVICE_PASSWORD not in call
    assert ds.calls("openstack-env") == [["openstack-env", "OS_PASSWORD=set", "OS_CLOUD="]] * 2
    assert "byok smoke: service user nova gets a project-scoped token" in proc.stdout
    assert "+ byok_check_service_token nova" in proc.stderr  # xtrace was on ...
    assert SERVICE_PASSWORD not in proc.stderr  # ... and did not print the password


def test_smoke_runs_the_key_path_experiment_through_cinder_conf(smoked: Smoked) -> None:
    """The smoke experiment, against real Keystone + Barbican, through the configured file:
    every check of devstack/tools/byok-smoke-keypath.py passed and said so."""
    _ds, proc = smoked
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("byok smoke: key path:")]
    assert len(lines) == 8, proc.stdout
    assert all(": ok: " in ln for ln in lines), lines
    assert "byok smoke: key path: ok: volume delete keeps the user's key" in lines


def test_smoke_key_path_failure_stops_the_stack(devstack: FakeDevstack) -> None:
    devstack.run("stack post-config")
    proc = devstack.run("stack extra", env={"BYOK_RUN_SMOKE": "True",
                                            "BYOK_SMOKE_CLOUD": "no-such-cloud"},
                        before="is_service_enabled() { [[ $1 != key ]]; }", check=False)
    assert proc.returncode != 0
    assert "byok smoke: key path FAILED" in proc.stderr
    assert "the key path experiment failed through" in proc.stderr


def test_smoke_fails_the_stack_when_a_file_does_not_load_byok(devstack: FakeDevstack) -> None:
    """With the smoke check on, a stack whose Cinder would use stock barbican must not pass."""
    devstack.run("stack post-config")
    proc = devstack.run(
        "stack extra",
        env={"BYOK_RUN_SMOKE": "True"},
        before='iniset "$CINDER_CONF" key_manager backend barbican',
        check=False,
    )
    assert proc.returncode != 0
    assert "BarbicanKeyManager, not byok.key_manager.byok_key_manager.ByokKeyManager" in proc.stderr
    assert f"{devstack.cinder_conf} does not load backend byok for cinder" in proc.stderr


# --- unstack, clean, whole life cycle ----------------------------------------------------------


def test_life_cycle_in_one_shell_unstack_keeps_state_clean_removes_it(
    devstack: FakeDevstack,
) -> None:
    """stack.sh sources plugin.sh once per phase into the same shell; unstack.sh and clean.sh
    follow. unstack has nothing to stop; clean removes byok's state (twice is fine)."""
    devstack.run(
        "stack install", "stack post-config", "stack extra", "stack test-config", "unstack",
        after=f"test -s {shlex.quote(str(devstack.state_dir / 'service-users'))}",
    )
    calls_before_clean = len(devstack.calls())
    devstack.run("unstack", "clean", "clean")
    assert not devstack.state_dir.exists()
    assert devstack.calls()[calls_before_clean:] == []
    assert isinstance(load_service_conf(devstack.cinder_conf)[1], ByokKeyManager)


def test_plugin_does_nothing_when_the_byok_service_is_disabled(devstack: FakeDevstack) -> None:
    """``disable_service byok`` in local.conf must turn every phase into a no-op."""
    devstack.run(
        "stack install", "stack post-config", "stack extra", "unstack", "clean",
        env={"BYOK_RUN_SMOKE": "True"}, before="disable_service byok",
    )
    assert devstack.calls("define_plugin") == [["define_plugin", "byok"]]
    assert devstack.calls() == []
    assert not devstack.cinder_conf.exists() and not devstack.state_dir.exists()


# --- byok-grant --------------------------------------------------------------------------------


GrantRun = Callable[..., tuple[int, str, list[str]]]  # (exit code, stderr, openstack calls)


@pytest.fixture
def grant(devstack: FakeDevstack) -> GrantRun:
    """Run devstack/tools/byok-grant with a recorded service-users file and an ``openstack``
    on PATH that only logs its arguments."""
    devstack.state_dir.mkdir(parents=True)
    (devstack.state_dir / "service-users").write_text(
        f"cinder {fake_id('cinder')}\nnova {fake_id('nova')}\n"
    )
    bin_dir = devstack.root / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "openstack"
    shim.write_text('#!/bin/bash\nprintf "%s\\n" "$*" >> "$OPENSTACK_LOG"\n')
    shim.chmod(0o755)
    oslog = devstack.root / "openstack.log"

    def run(*args: str, state_dir: Path | None = None) -> tuple[int, str, list[str]]:
        env = devstack.env({
            "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "BYOK_STATE_DIR": str(state_dir or devstack.state_dir),
            "OPENSTACK_LOG": str(oslog),
        })
        proc = subprocess.run(["bash", str(GRANT), *args], env=env, capture_output=True,
                              text=True, timeout=30, check=False)
        calls = oslog.read_text().splitlines() if oslog.exists() else []
        oslog.unlink(missing_ok=True)
        return proc.returncode, proc.stderr, calls

    return run


def test_grant_maps_service_names_to_recorded_ids(grant: GrantRun) -> None:
    """``--to cinder`` is what the owner knows; Barbican needs the Keystone id."""
    rc, err, calls = grant(SECRET_HREF, "--to", "cinder", "--os-cloud", "devstack")
    assert rc == 0, err
    assert calls == [
        f"--os-cloud devstack acl user add --user {fake_id('cinder')} --operation-type read "
        f"{SECRET_HREF}"
    ]


def test_grant_defaults_to_all_service_users_and_private_drops_project_access(
    grant: GrantRun,
) -> None:
    """Cinder and Nova both read keys token-less; --private makes the key creator + ACL only
    (Barbican's default lets every member of the owner's project read it)."""
    rc, err, calls = grant(SECRET_HREF, "--private")
    assert rc == 0, err
    assert calls == [
        f"--os-cloud devstack acl user add --user {fake_id('cinder')} --user {fake_id('nova')} "
        f"--no-project-access --operation-type read {SECRET_HREF}"
    ]


def test_revoke_removes_from_the_acl(grant: GrantRun) -> None:
    """The owner takes access back with the same tool, one service at a time."""
    rc, err, calls = grant(SECRET_HREF, "--revoke", "--to", "nova")
    assert rc == 0, err
    assert calls == [
        f"--os-cloud devstack acl user remove --user {fake_id('nova')} --operation-type read "
        f"{SECRET_HREF}"
    ]


def test_grant_accepts_a_keystone_id_without_the_record(grant: GrantRun, tmp_path: Path) -> None:
    """On a node without the plugin's record the owner can still pass the id itself."""
    user_id = "0123456789abcdef0123456789abcdef"
    rc, err, calls = grant(SECRET_HREF, "--to", user_id, state_dir=tmp_path / "nowhere")
    assert rc == 0, err
    assert calls == [
        f"--os-cloud devstack acl user add --user {user_id} --operation-type read {SECRET_HREF}"
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((SECRET_HREF, "--to", "bob"), "no service user 'bob'"),
        (("not a ref",), "does not look like a secret href"),
        ((SECRET_HREF, "--revoke", "--private"), "--private goes with a grant"),
        ((SECRET_HREF, "--frobnicate"), "unknown option --frobnicate"),
    ],
)
def test_grant_refuses_before_calling_openstack(
    grant: GrantRun, args: tuple[str, ...], message: str
) -> None:
    """A mistake must not reach Barbican half-applied: usage errors exit 2 with no call made."""
    rc, err, calls = grant(*args)
    assert (rc, calls) == (2, [])
    assert message in err


def test_grant_without_record_says_where_to_get_the_id(grant: GrantRun, tmp_path: Path) -> None:
    """Away from the controller the name cannot be mapped: say how to find the id."""
    rc, err, calls = grant(SECRET_HREF, "--to", "cinder", state_dir=tmp_path / "nowhere")
    assert (rc, calls) == (2, [])
    assert "openstack user show cinder -f value -c id" in err
