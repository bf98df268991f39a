"""Patched Nova 34: ``_attach_encryptor`` with a user's key, real tokens, the real Barbican.

Nova's fake libvirt (``LibvirtFixture``) stands in for libvirtd only; the key comes from the
embedded real Barbican through castellan with a real Keystone token (the user's, or the nova
service user's), and the volumes are real files that ``cryptsetup`` formats and checks. What
is asserted is read back independently: the libvirt secret's value opens the LUKS header
(``cryptsetup open --test-passphrase``), and a refused attach leaves the device's bytes as they
were. Run by ``openstack/tier/run.py nova`` inside the patched Nova tree (needs the stack up).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import uuid

from castellan.common import exception as castellan_exception
from nova import context as nova_context
from nova import exception, test
from nova.tests import fixtures as nova_fixtures
from nova.virt import fake
from nova.virt.libvirt import driver as libvirt_driver
from oslo_config import cfg

CONF = cfg.CONF
BACKEND = os.environ.get("BYOK_OS_BACKEND", "byok")


def record(name, **values):
    path = os.environ.get("BYOK_OS_RECORDS")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"test": name, **values}) + "\n")


def _cryptsetup(*args, key: bytes) -> subprocess.CompletedProcess:
    """cryptsetup with the passphrase on stdin (never argv)."""
    return subprocess.run(["cryptsetup", *args, "--key-file=-"], input=key,
                          capture_output=True, check=False)


class AttachEncryptorUserKeyTest(test.NoDBTestCase):
    """_attach_encryptor for volumes whose key the user owns."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        from byok.stack.manager import Stack

        cls.stack = Stack.at()
        if not cls.stack.status()["healthy"]:
            raise RuntimeError("the embedded stack is not up (tests/openstack starts it)")
        cls.alice = cls.stack.identity("alice")
        cls.nova = cls.stack.identity("nova")

    def setUp(self):
        super().setUp()
        # Nova's test base forbids privsep daemons; os-brick's privileged calls (cryptsetup
        # isLuks) run in this process instead (we are root here), as the daemon would.
        import nova.privsep
        import os_brick.privileged

        for pctxt in (os_brick.privileged.default, nova.privsep.sys_admin_pctxt):
            pctxt.set_client_mode(False)
            self.addCleanup(pctxt.set_client_mode, True)
        self.useFixture(nova_fixtures.LibvirtFixture())
        # Nova's fake libvirt wants a <uuid> in a secret's XML; real libvirt generates one
        # when it is missing, as Host.create_secret expects.
        from unittest import mock

        from lxml import etree
        from nova.tests.fixtures import libvirt as fakelibvirt

        parse = fakelibvirt.Secret._parse_xml

        def parse_with_uuid(secret, xml):
            tree = etree.fromstring(xml)
            if tree.find("./uuid") is None:
                etree.SubElement(tree, "uuid").text = str(uuid.uuid4())
                xml = etree.tostring(tree).decode()
            return parse(secret, xml)

        patcher = mock.patch.object(fakelibvirt.Secret, "_parse_xml", parse_with_uuid)
        patcher.start()
        self.addCleanup(patcher.stop)
        from castellan import options as castellan_options

        castellan_options.set_defaults(CONF, backend=BACKEND,
                                       barbican_endpoint=self.stack.cfg.barbican_url,
                                       auth_endpoint=self.stack.cfg.keystone_url)
        self.flags(backend=BACKEND, group="key_manager")
        self.drvr = libvirt_driver.LibvirtDriver(fake.FakeVirtAPI(), False)
        from byok.keys.barbican import BarbicanAPI

        self.alice_bb = BarbicanAPI(self.alice, self.stack.cfg.barbican_url)
        self.tmp = tempfile.mkdtemp(prefix="byok-nova-fn-")
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        self.volume_id = str(uuid.uuid4())

    # -- helpers -----------------------------------------------------------------------------
    def _ctx(self, who):
        return nova_context.RequestContext(user_id=who.user_id(), project_id=who.project_id(),
                                           auth_token=who.token())

    def _store(self, kind):
        from byok.common.sensitive import Sensitive

        if kind == "passphrase":
            raw = os.urandom(12).hex().encode()
            ref = self.alice_bb.store(Sensitive(raw), secret_type="passphrase", name="nova-fn")
            self.addCleanup(self._forget, ref)
            return ref, raw.decode()  # os-brick: the text verbatim
        raw = os.urandom(64)
        ref = self.alice_bb.store(Sensitive(raw), secret_type="symmetric", algorithm="aes",
                                  bit_length=512, mode="xts", name="nova-fn")
        self.addCleanup(self._forget, ref)
        return ref, raw.hex()  # os-brick: the lower-case hex of the key

    def _forget(self, ref):
        try:
            self.alice_bb.delete(ref, force=True)
        except Exception:  # noqa: S110 - already gone
            pass

    def _bind(self, ref, volume_id):
        """What patched Cinder does at create: the volume becomes the key's consumer."""
        self.alice_bb.add_consumer(ref, "cinder", "volume", volume_id)

    def _luks_file(self, passphrase: str) -> str:
        path = os.path.join(self.tmp, f"vol-{uuid.uuid4().hex[:6]}")
        with open(path, "wb") as f:
            f.truncate(16 << 20)
        p = _cryptsetup("luksFormat", "--batch-mode", "--type", "luks1",
                        "--pbkdf-force-iterations", "1000", path, key=passphrase.encode())
        self.assertEqual(0, p.returncode, p.stderr)
        return path

    def _blank_file(self) -> str:
        path = os.path.join(self.tmp, f"blank-{uuid.uuid4().hex[:6]}")
        with open(path, "wb") as f:
            f.write(os.urandom(1 << 20))  # data that is not LUKS, and must stay as it is
        return path

    def _attach(self, ctx, ref, path, provider="luks"):
        encryption = {"provider": provider, "control_location": "front-end",
                      "cipher": "aes-xts-plain64", "key_size": 256,
                      "encryption_key_id": ref.secret_id,
                      "encryption_key_owner": "user", "format_on_attach": False}
        connection_info = {"data": {"volume_id": self.volume_id, "device_path": path}}
        self.drvr._attach_encryptor(ctx, connection_info, encryption)

    def _secret_value(self):
        secret = self.drvr._host.find_secret("volume", self.volume_id)
        if secret is None:
            return None
        value = secret.value()
        return value.decode() if isinstance(value, bytes) else value

    # -- the tests -----------------------------------------------------------------------------
    def _native_attach_holds_os_brick_passphrase(self, kind):
        ref, passphrase = self._store(kind)
        self._bind(ref, self.volume_id)
        path = self._luks_file(passphrase)
        self._attach(self._ctx(self.alice), ref, path)
        value = self._secret_value()
        self.assertEqual(passphrase, value)
        # Independent reader: the libvirt secret's value opens the LUKS header.
        p = _cryptsetup("open", "--test-passphrase", path, key=value.encode())
        self.assertEqual(0, p.returncode, p.stderr)
        record("native_attach_" + kind, secret_is_os_brick_passphrase=True,
               secret_chars=len(value))

    def test_native_attach_symmetric_user_key(self):
        self._native_attach_holds_os_brick_passphrase("symmetric")

    def test_native_attach_passphrase_user_key(self):
        self._native_attach_holds_os_brick_passphrase("passphrase")

    def test_service_token_without_acl_refused(self):
        ref, passphrase = self._store("symmetric")
        self._bind(ref, self.volume_id)
        path = self._luks_file(passphrase)
        exc = self.assertRaises(castellan_exception.KeyManagerError, self._attach,
                                self._ctx(self.nova), ref, path)
        self.assertIsNone(self._secret_value())
        record("service_without_acl", refused=type(exc).__name__, secret_created=False)

    def test_service_token_with_acl_but_not_bound_refused(self):
        ref, passphrase = self._store("symmetric")
        self._bind(ref, str(uuid.uuid4()))  # bound to another volume only
        self.alice_bb.set_acl(ref, users=[self.nova.user_id()], project_access=True)
        path = self._luks_file(passphrase)
        self.assertRaises(exception.VolumeEncryptionKeyNotBound, self._attach,
                          self._ctx(self.nova), ref, path)
        self.assertIsNone(self._secret_value())
        # ... and with the consumer for this volume, the same service token works.
        self._bind(ref, self.volume_id)
        self._attach(self._ctx(self.nova), ref, path)
        self.assertEqual(passphrase, self._secret_value())
        record("service_with_acl", not_bound="VolumeEncryptionKeyNotBound",
               bound="attached")

    def test_non_luks_device_never_formatted(self):
        ref, _passphrase = self._store("symmetric")
        self._bind(ref, self.volume_id)
        for provider in ("luks", "luks2"):  # native QEMU path, os-brick's encryptor path
            path = self._blank_file()
            with open(path, "rb") as f:
                before = hashlib.sha256(f.read()).hexdigest()
            self.assertRaises(exception.VolumeEncryptionNotLuks, self._attach,
                              self._ctx(self.alice), ref, path, provider=provider)
            with open(path, "rb") as f:
                self.assertEqual(before, hashlib.sha256(f.read()).hexdigest())
            p = subprocess.run(["cryptsetup", "isLuks", path], check=False)
            self.assertNotEqual(0, p.returncode)
            self.assertIsNone(self._secret_value())
        record("non_luks_device", formatted=False, providers=["luks", "luks2"])
