"""The patched Cinder as services (``byok cinder up``), driven by the clients users have.

Started through the CLI as a user would, once for the module: cinder-api (gunicorn), -scheduler,
-volume, -backup over RabbitMQ. Then the user-key functional test once against these processes
with openstacksdk at 3.72 and the ``openstack`` CLI; the attach path as Nova takes it (an
attachment with a connector, ``GET /volumes/{id}/encryption``) opened by byok's hook on real
dm-crypt and by QEMU's native LUKS driver; a bad start; and ``down`` leaving no process. What
is checked is read back independently: Barbican's own secret list and consumers, the volume
files through QEMU with the key.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import HYGIENE, processes_in
from tests.openstack.test_openstack_tier import LINES, SAY

ROOT = Path(__file__).resolve().parents[2]
BYOK = [sys.executable, "-m", "byok.cli"]
OS_VENV = Path(os.environ.get("BYOK_OPENSTACK_VENV", ROOT / ".venv-openstack"))

pytestmark = [pytest.mark.stack, pytest.mark.timeout(1800)]


def byok(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([*BYOK, *args], cwd=ROOT, capture_output=True, text=True, timeout=900,
                       check=False)
    HYGIENE.add_text(p.stdout + p.stderr)
    if check:
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    return p


def say(line: str) -> None:
    LINES.append(line)
    SAY[0](line)


@pytest.fixture(scope="module")
def cinder(stack):
    if not (OS_VENV / "bin" / "python").exists():
        pytest.fail(f"{OS_VENV} is missing: run ./dev openstack (installs Cinder 29)")
    from byok.stack.cinder import CinderServices

    svc = CinderServices(stack)
    was_up = svc.running()  # ours or not by pidfile: a slow deployment is still someone's
    up = json.loads(byok("cinder", "up", "--json").stdout)
    say(f"[openstack] byok cinder up: {up.get('up_seconds')} s; start-up seconds "
        + ", ".join(f"{k} {v}" for k, v in up["startup_seconds"].items())
        + (" (already running)" if was_up else ""))
    yield svc
    if not was_up and svc.running():  # test_down_... normally stopped it already
        svc.down()


@pytest.fixture(scope="module")
def alice_cinder(cinder, stack):
    from byok.stack.cinder_api import CinderAPI

    return CinderAPI(stack.identity("alice"), cinder.api_url)


def _sdk(stack, user: str):
    from openstack.config import loader

    import openstack

    region = loader.OpenStackConfig(config_files=[str(stack.cfg.clouds_yaml)]).get_one(
        stack.cloud_name(user))
    return openstack.connection.Connection(config=region)


def _user_key_volume_class():
    from openstack.block_storage.v3.volume import Volume

    class UserKeyVolume(Volume):
        """openstacksdk's Volume at the series' microversion (encryption_key_id at create)."""

        _max_microversion = "3.72"

    return UserKeyVolume


def _volume_path(stack, cinder_api, volume_id: str) -> Path:
    """Where Cinder says the volume is: the device_path of an attachment's connection_info."""
    from byok.harness.cinder import attach_like_nova

    att, ci, _enc = attach_like_nova(cinder_api, volume_id)
    cinder_api.detach(att["id"], service=stack.identity("nova"))
    return Path(ci["data"]["device_path"])


def test_status_json_every_service_healthy(cinder):
    s = json.loads(byok("cinder", "status", "--json").stdout)
    assert s["healthy"], json.dumps(s, indent=1)[:3000]
    assert set(s["services"]) == {"cinder-api", "cinder-scheduler", "cinder-volume",
                                  "cinder-backup", "rabbitmq"}
    for name in ("cinder-scheduler", "cinder-volume", "cinder-backup"):
        rows = s["services"][name]["os_services"]
        assert rows and all(r["state"] == "up" for r in rows), (name, rows)
    assert s["services"]["rabbitmq"]["amqp_login_seconds"] is not None
    assert all(isinstance(v, float) for v in s["startup_seconds"].values()), s["startup_seconds"]


def test_user_key_lifecycle_through_openstacksdk(cinder, stack, alice_cinder, barbican,
                                                 make_key, tmp_path):
    """Alice's own key at create (sdk, 3.72): the volume's key is hers and no secret is made;
    the file opens with her key and not another; clone and backup share it (consumers);
    deleting everything leaves her key, bytes unchanged."""
    from byok.common.sensitive import Sensitive
    from byok.harness.cinder import qemu_sha256

    conn = _sdk(stack, "alice")
    owner = barbican("alice")
    ref, raw = make_key("alice", "aes512")
    before = owner.count_secrets()
    vol = _user_key_volume_class()(size=1, volume_type="luks", encryption_key_id=ref.href)
    vol = vol.create(conn.block_storage)
    vol = conn.block_storage.wait_for_status(vol, "available", failures=["error"], wait=300)
    assert vol.encryption_key_id == ref.secret_id
    assert owner.count_secrets() == before, "no secret may be created"

    path = _volume_path(stack, alice_cinder, vol.id)
    hers, other = Sensitive(raw.hex().encode()), Sensitive(os.urandom(64).hex().encode())
    opened = qemu_sha256(path, hers, 1 << 20, tmp_path / "a")
    assert opened is not None, "her key opens the volume (os-brick's passphrase: hex)"
    opened = qemu_sha256(path, other, 1 << 20, tmp_path / "b")
    assert opened is None, "another key must not open the volume"

    clone = conn.block_storage.create_volume(size=1, source_volume_id=vol.id)
    clone = conn.block_storage.wait_for_status(clone, "available", failures=["error"], wait=300)
    backup = conn.block_storage.create_backup(volume_id=vol.id)
    backup = conn.block_storage.wait_for_status(backup, "available", failures=["error"],
                                                wait=300)
    assert alice_cinder.get("volume", clone.id)["encryption_key_id"] == ref.secret_id
    assert owner.count_secrets() == before, "clone and backup create no secret"
    consumers = {(c["resource_type"], c["resource_id"]) for c in owner.consumers(ref)}
    assert consumers == {("volume", vol.id), ("volume", clone.id), ("backup", backup.id)}

    conn.block_storage.delete_backup(backup)
    conn.block_storage.wait_for_delete(backup, wait=300)
    for v in (clone, vol):
        conn.block_storage.delete_volume(v)
        conn.block_storage.wait_for_delete(v, wait=300)
    assert owner.payload(ref, "application/octet-stream").reveal() == raw
    assert owner.consumers(ref) == []
    say("[openstack] cinder services record: sdk 3.72 user key -> volume, clone, backup share "
        "it (3 consumers), 0 secrets created, key alive after deletes")


def test_other_project_key_refused_nothing_stored(cinder, stack, make_key, barbican):
    from byok.stack.cinder_api import CinderAPI

    ref, _raw = make_key("alice", "aes512")
    bob = CinderAPI(stack.identity("bob"), cinder.api_url)
    before = bob.request("GET", "/volumes")["volumes"]
    r = bob.raw("POST", "/volumes", {"volume": {"size": 1, "encryption_key_id": ref.href}})
    assert r.status_code in (400, 403), r.text
    assert bob.request("GET", "/volumes")["volumes"] == before
    assert barbican("alice").consumers(ref) == []


def test_openstack_cli_volume_create(cinder, stack):
    """``openstack volume create`` from the catalog (``eval "$(byok stack env)"``): the default
    type is the LUKS type, so the volume gets a key Cinder orders itself."""
    env_line = byok("stack", "env").stdout.strip()
    assert env_line.startswith("export OS_CLIENT_CONFIG_FILE=")
    env = dict(os.environ, OS_CLIENT_CONFIG_FILE=env_line.split("=", 1)[1],
               OS_CLOUD=stack.cloud_name("alice"))
    cli = [str(OS_VENV / "bin" / "openstack")]
    p = subprocess.run([*cli, "volume", "create", "--size", "1", "byok-cli-test", "-f", "json"],
                       env=env, capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode == 0, p.stderr[-2000:]
    vol = json.loads(p.stdout)
    from byok.stack.cinder_api import CinderAPI

    api = CinderAPI(stack.identity("alice"), cinder.api_url)
    got = api.wait("volume", vol["id"], "available")
    assert got["volume_type"] == "luks" and got["encryption_key_id"]
    assert got.get("encryption_key_owner") == "service"
    p = subprocess.run([*cli, "volume", "delete", vol["id"]], env=env, capture_output=True,
                       text=True, timeout=120, check=False)
    assert p.returncode == 0, p.stderr[-2000:]
    api.wait("volume", vol["id"], "deleted")


@pytest.mark.guest
def test_attach_from_cinders_answer_hook_and_native_read_the_same_bytes(
        cinder, stack, alice_cinder, make_key, tmp_path):
    """Data written into alice's volume as QEMU writes an NFS qcow2+LUKS volume; a clone
    through Cinder (raw LUKS); attached as Nova would (attachment + connector, connection_info,
    GET .../encryption); opened by byok's hook (os-brick, dm-crypt in a guest) and by QEMU's
    native LUKS driver in a guest: both read exactly the written bytes."""
    from byok.common.pattern import pattern
    from byok.harness.cinder import (
        attach_like_nova,
        passphrase_like_nova,
        qemu_write,
        read_like_nova,
    )

    ref, _raw = make_key("alice", "aes512")
    alice = stack.identity("alice")
    src = alice_cinder.create_volume(1, volume_type="luks", encryption_key_id=ref.href)
    src = alice_cinder.wait("volume", src["id"], "available")
    data = tmp_path / "data.raw"
    data.write_bytes(pattern(16, 4 << 20))
    att, ci, enc = attach_like_nova(alice_cinder, src["id"])
    assert ci["data"]["format"] == "qcow2" and enc["encryption_key_owner"] == "user"
    pw = passphrase_like_nova(alice, enc, src["id"], stack.cfg.barbican_url)
    assert qemu_write(Path(ci["data"]["device_path"]), pw, data)
    alice_cinder.detach(att["id"], service=stack.identity("nova"))

    clone = alice_cinder.create_volume(1, source_volid=src["id"])
    clone = alice_cinder.wait("volume", clone["id"], "available")
    att, ci, enc = attach_like_nova(alice_cinder, clone["id"])
    assert enc["encryption_key_id"] == ref.secret_id and enc["format_on_attach"] is False
    assert enc["provider"] == "luks"
    alice_cinder.complete_attachment(att["id"])
    assert alice_cinder.get("volume", clone["id"])["status"] == "in-use"
    got = read_like_nova(alice, ci, enc, data.stat().st_size, endpoint=stack.cfg.barbican_url)
    want = hashlib.sha256(data.read_bytes()).hexdigest()
    assert got["hook_sha256"] == want, got
    assert got["native_sha256"] == want, got
    assert got["state"] == "luks"  # opened, never formatted
    alice_cinder.detach(att["id"], service=stack.identity("nova"))
    for v in (clone, src):
        alice_cinder.delete_and_wait("volume", v["id"])
    say(f"[openstack] cinder services record: attach from Cinder's answer: byok hook "
        f"({got['hook_backend']}) and QEMU native ({got['native_backend']}) read the same "
        f"4 MiB as written")


def _taken_port() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s


def test_devstack_plugins_cinder_conf_drives_real_cinder(cinder, stack, make_key, tmp_path):
    """The cinder.conf the devstack plugin writes (its post-config under devstack's real
    function library, tests/integration/test_devstack_real.py) read by a deployment after
    byok's own, as ``byok cinder up --conf FILE`` does: the services start with it, and
    alice's key at create goes through the castellan backend it configures."""
    from byok.stack.cinder import CinderServices, CinderSettings
    from byok.stack.cinder_api import CinderAPI
    from tests.integration.test_devstack_real import load_backend, plugin_cinder_conf

    conf = plugin_cinder_conf(tmp_path, auth_endpoint=stack.cfg.keystone_url,
                              barbican_endpoint=stack.cfg.barbican_url)
    assert type(load_backend(conf)).__name__ == "ByokKeyManager"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    svc = CinderServices(stack, CinderSettings(
        instance="devstack", api_port=port, rabbitmq_port=cinder.settings.rabbitmq_port,
        extra_conf=[str(conf)]))
    try:
        status = svc.up(broker=False)
        assert status["healthy"] and str(conf) in status["config_files"], status
        ref, _raw = make_key("alice", "aes512")
        api = CinderAPI(stack.identity("alice"), svc.api_url)
        vol = api.create_volume(1, volume_type="luks", encryption_key_id=ref.href)
        vol = api.wait("volume", vol["id"], "available")
        assert vol["encryption_key_id"] == ref.secret_id
        assert vol.get("encryption_key_owner") == "user"
        api.delete_and_wait("volume", vol["id"])
    finally:
        svc.down(broker=False)
    assert processes_in(svc.base) == []


def test_bad_start_one_message_no_stray_process(cinder, stack, tmp_path):
    """A port taken, and cinder-api crashing during start (an unreadable paste file): one
    clear error each, and nothing of the failed deployment keeps running."""
    from byok.common.errors import PortInUse, StackError
    from byok.stack.cinder import CinderServices, CinderSettings

    taken = _taken_port()
    try:
        bad = CinderServices(stack, CinderSettings(
            instance="badport", api_port=taken.getsockname()[1],
            rabbitmq_port=cinder.settings.rabbitmq_port))
        with pytest.raises(PortInUse, match=r"badport-api cannot listen on 127\.0\.0\.1"):
            bad.up(broker=False)
        assert processes_in(bad.base) == []
    finally:
        taken.close()
    broken = tmp_path / "broken.conf"
    broken.write_text("[DEFAULT]\napi_paste_config = /nonexistent/api-paste.ini\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    crash = CinderServices(stack, CinderSettings(
        instance="crash", api_port=port, rabbitmq_port=cinder.settings.rabbitmq_port,
        extra_conf=[str(broken)]))
    with pytest.raises(StackError, match="exited during start-up") as e:
        crash.up(broker=False)
    assert "api-paste" in e.value.message or "paste" in e.value.message.lower(), e.value.message
    assert processes_in(crash.base) == []
    assert cinder.status()["healthy"], "the running deployment is untouched"


def test_up_without_the_stack_names_the_step_and_starts_nothing(tmp_path):
    from byok.common.errors import StackError
    from byok.stack.cinder import CinderServices, CinderSettings
    from byok.stack.manager import Stack

    none = Stack.at(tmp_path / "no-stack")
    svc = CinderServices(none, CinderSettings(instance="nostack"))
    with pytest.raises(StackError, match="Keystone \\+ Barbican are not running") as e:
        svc.up(broker=False)
    assert e.value.hint == "run: byok stack up"
    assert processes_in(svc.base) == []


def test_rabbitmq_missing_is_named_with_the_install_step(tmp_path, monkeypatch):
    from byok.common.errors import ToolMissing
    from byok.stack import rabbitmq

    monkeypatch.setattr(rabbitmq, "SERVER", tmp_path / "no-rabbitmq-server")
    b = rabbitmq.Broker(tmp_path / "rmq", tmp_path / "run", rabbitmq.BrokerPorts.from_amqp(1))
    with pytest.raises(ToolMissing, match="RabbitMQ is not installed") as e:
        b.spawn()
    assert "apt-get install -y rabbitmq-server" in (e.value.hint or "")


def test_down_leaves_no_process(cinder):
    byok("cinder", "down")
    assert processes_in(cinder.root) == []
    with socket.socket() as s:  # the broker's own epmd went with it
        assert s.connect_ex(("127.0.0.1", cinder.broker.ports.epmd)) != 0
    assert not cinder.status()["healthy"]
