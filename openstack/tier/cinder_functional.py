"""Patched Cinder 29 on the real key services: user-supplied keys through the REST API.

Cinder's own functional base (API + scheduler + volume + backup services in one process, sqlite,
``fake://`` messaging) with ``auth_strategy = keystone`` (keystonemiddleware validates real
tokens from the embedded Keystone), castellan backend ``$BYOK_OS_BACKEND`` (``byok`` or the
stock ``barbican``) against the embedded real Barbican, and Cinder's own NfsDriver with a local
folder as its share, writing real qcow2+LUKS files. Requests go over HTTP with the users' own
tokens at microversion 3.72; what the tests check is read back independently: secrets and
consumers from Barbican with the owner's token, the volume file with ``qemu-io``.

Run by ``openstack/tier/run.py functional`` inside the patched tree (needs the stack up).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid

from castellan import key_manager as castellan_key_manager
from cinder import context
from cinder.backup.drivers import posix  # noqa: F401  (registers backup_posix_path)
from cinder.db import api as db
from cinder.tests.functional import functional_helpers
from cinder.volume import configuration, volume_types, volume_utils
from cinder.volume.drivers import nfs  # noqa: F401  (registers nfs_* options the flags set)
from oslo_config import cfg

CONF = cfg.CONF
BACKEND = os.environ.get("BYOK_OS_BACKEND", "byok")
MICROVERSION = "3.72"
SHARE = "127.0.0.1:/byok-local-share"


def record(name, **values):
    """Append one finding to $BYOK_OS_RECORDS (run.py prints them into the CI log)."""
    path = os.environ.get("BYOK_OS_RECORDS")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"test": name, "backend": BACKEND, **values}) + "\n")


def _stack():
    from byok.stack.manager import Stack

    st = Stack.at()
    if not st.status()["healthy"]:
        raise RuntimeError("the embedded stack is not up: `byok stack up` (tests/openstack "
                           "starts it)")
    return st


class UserKeyFunctionalTest(functional_helpers._FunctionalTestBase):
    """Alice's key at volume create, through the REST API at 3.72, on the real services."""

    _osapi_version = MICROVERSION

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.stack = _stack()
        cls.alice = cls.stack.identity("alice")
        cls.bob = cls.stack.identity("bob")
        cls.cinder_password = cls.stack.secrets.passwords()["cinder"]
        for who in (cls.alice, cls.bob):
            who.session.timeout = 120  # one process serves API, scheduler and volume

    def _get_flags(self):
        from keystoneauth1 import loading as ks_loading

        self.tmp = tempfile.mkdtemp(prefix="byok-cinder-fn-")
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        shares = os.path.join(self.tmp, "nfs_shares")
        with open(shares, "w") as f:
            f.write(SHARE + "\n")
        os.makedirs(os.path.join(self.tmp, "conversion"), exist_ok=True)
        cfg_ = self.stack.cfg
        # keystonemiddleware's options (and the password plugin's) exist once it is imported.
        from keystonemiddleware import auth_token  # noqa: F401
        ks_loading.register_auth_conf_options(CONF, "keystone_authtoken")
        for opt in ks_loading.get_auth_plugin_conf_options("password"):
            if opt.dest not in CONF.keystone_authtoken:
                CONF.register_opt(opt, group="keystone_authtoken")
        from castellan import options as castellan_options
        castellan_options.set_defaults(CONF, backend=BACKEND,
                                       barbican_endpoint=cfg_.barbican_url,
                                       auth_endpoint=cfg_.keystone_url)

        f = super()._get_flags()
        shared = configuration.SHARED_CONF_GROUP
        f["auth_strategy"] = {"v": "keystone"}
        f["volume_driver"] = {"v": "local_nfs.LocalFolderNfsDriver", "g": shared}
        f["nfs_shares_config"] = {"v": shares, "g": shared}
        f["nfs_mount_point_base"] = {"v": os.path.join(self.tmp, "mnt"), "g": shared}
        f["nfs_qcow2_volumes"] = {"v": True, "g": shared}
        f["nfs_snapshot_support"] = {"v": True, "g": shared}
        f["nfs_sparsed_volumes"] = {"v": True, "g": shared}
        f["nas_secure_file_operations"] = {"v": "false", "g": shared}
        f["nas_secure_file_permissions"] = {"v": "false", "g": shared}
        f["image_conversion_dir"] = {"v": os.path.join(self.tmp, "conversion")}
        f["backup_driver"] = {"v": "cinder.backup.drivers.posix.PosixBackupDriver"}
        f["backup_posix_path"] = {"v": os.path.join(self.tmp, "backups")}
        f["backup_use_same_host"] = {"v": True}  # the one process runs every service
        f["backend"] = {"v": BACKEND, "g": "key_manager"}
        f["barbican_endpoint"] = {"v": cfg_.barbican_url, "g": "barbican"}
        f["auth_endpoint"] = {"v": cfg_.keystone_url, "g": "barbican"}
        ks = "keystone_authtoken"
        f["www_authenticate_uri"] = {"v": cfg_.keystone_url, "g": ks}
        f["auth_url"] = {"v": cfg_.keystone_url, "g": ks}
        f["auth_type"] = {"v": "password", "g": ks}
        f["username"] = {"v": "cinder", "g": ks}
        f["password"] = {"v": self.cinder_password, "g": ks}
        f["project_name"] = {"v": "service", "g": ks}
        f["user_domain_name"] = {"v": "Default", "g": ks}
        f["project_domain_name"] = {"v": "Default", "g": ks}
        return f

    def setUp(self):
        # Cinder's test base forbids privsep daemons; run privileged calls in this process
        # (we are root here), as a deployment's daemon would.
        import cinder.privsep
        import os_brick.privileged

        for pctxt in (cinder.privsep.sys_admin_pctxt, os_brick.privileged.default):
            pctxt.set_client_mode(False)
            self.addCleanup(pctxt.set_client_mode, True)
        super().setUp()
        os.makedirs(os.path.join(self.tmp, "backups"), exist_ok=True)
        # Cinder's test base gives every service a random host; the backup service must be
        # on the volume service's host (backup_use_same_host).
        self.backup = self.start_service("backup", host=self.volume.host)
        ctxt = context.get_admin_context()
        # The backup service reports itself usable once its driver is set up; tell the
        # scheduler now instead of at the next periodic report (60 s).
        deadline = time.monotonic() + 30
        while not self.backup.manager.is_working() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.backup.manager.publish_service_capabilities(ctxt)
        vtype = volume_types.create(ctxt, f"luks-{uuid.uuid4().hex[:8]}")
        db.volume_type_encryption_create(ctxt, vtype["id"], {
            "provider": "luks", "cipher": "aes-xts-plain64", "key_size": 256,
            "control_location": "front-end"})
        self.vtype = vtype["name"]
        from byok.keys.barbican import BarbicanAPI

        self.alice_bb = BarbicanAPI(self.alice, self.stack.cfg.barbican_url)
        self.base = f"http://{self.osapi.host}:{self.osapi.port}/v3"

    # -- helpers -----------------------------------------------------------------------------
    def _req(self, who, method, path, body=None, version=MICROVERSION):
        url = f"{self.base}/{who.project_id()}{path}"
        return who.session.request(url, method, json=body, raise_exc=False,
                                   headers={"OpenStack-API-Version": "volume " + version})

    def _wait(self, who, path, key, want, timeout=120):
        deadline = time.monotonic() + timeout
        while True:
            r = self._req(who, "GET", path)
            if r.status_code == 404 and want == "deleted":
                return None
            self.assertEqual(200, r.status_code, r.text)
            res = r.json()[key]
            if res["status"] == want:
                return res
            if res["status"].startswith("error") or time.monotonic() > deadline:
                self.fail(f"{key} {res['id']} is {res['status']}, wanted {want}")
            time.sleep(0.3)

    def _delete_when_idle(self, who, path, timeout=60):
        """DELETE, as a careful client does: Cinder answers 400 "Invalid volume" while the
        source is still settling after a clone or backup reported done (its status, or the NFS
        driver's temporary snapshot row; seen once under load); any other answer returns at
        once, and a 400 that lasts past ``timeout`` fails the test."""
        deadline = time.monotonic() + timeout
        while True:
            r = self._req(who, "DELETE", path)
            if (r.status_code != 400 or "Invalid volume" not in r.text
                    or time.monotonic() > deadline):
                return r
            time.sleep(0.5)

    def _create_volume(self, who, **extra):
        body = {"volume": {"size": 1, "volume_type": self.vtype, **extra}}
        r = self._req(who, "POST", "/volumes", body)
        return r

    def _user_key(self, bits=512):
        from byok.common.sensitive import Sensitive

        raw = os.urandom(bits // 8)
        ref = self.alice_bb.store(Sensitive(raw), secret_type="symmetric", algorithm="aes",
                                  bit_length=bits, mode="xts", name="fn-user-key")
        self.addCleanup(self._forget, ref)
        return ref, raw

    def _forget(self, ref):
        """The owner deletes her test key at the end (forced: consumers may remain)."""
        try:
            self.alice_bb.delete(ref, force=True)
        except Exception:  # noqa: S110 - already gone
            pass

    def _secret_ids(self):
        """Every secret of alice's project (all pages), as Barbican lists them."""
        ids, offset = set(), 0
        while True:
            r = self.alice.session.get(
                f"{self.stack.cfg.barbican_url}/v1/secrets?limit=100&offset={offset}")
            page = r.json()
            ids |= {s["secret_ref"].rsplit("/", 1)[1] for s in page.get("secrets", [])}
            offset += 100
            if offset >= int(page.get("total", 0)):
                return ids

    def _volume_file(self, volume_id):
        for root, _dirs, files in os.walk(os.path.join(self.tmp, "mnt")):
            if f"volume-{volume_id}" in files:
                return os.path.join(root, f"volume-{volume_id}")
        self.fail(f"no volume file for {volume_id}")

    def _qemu_io_opens(self, path, passphrase: str) -> tuple[bool, str]:
        """Open the qcow2+LUKS file with qemu-io and read from it (an independent reader);
        the passphrase goes through a 0600 file, never argv."""
        d = tempfile.mkdtemp(prefix="byok-qemu-", dir="/dev/shm")
        try:
            keyfile = os.path.join(d, "k")
            fd = os.open(keyfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(passphrase)
            info = subprocess.run(
                ["qemu-img", "info", "--output=json", path], capture_output=True, text=True,
                check=True)
            fmt = json.loads(info.stdout)["format"]
            # NfsDriver writes qcow2 with LUKS inside; an encrypted clone is a raw LUKS file.
            opts = {"qcow2": "driver=qcow2,encrypt.key-secret=s0,file.filename=",
                    "luks": "driver=luks,key-secret=s0,file.filename="}[fmt]
            p = subprocess.run(
                ["qemu-io", "--object", "secret,id=s0,file=" + keyfile, "--image-opts",
                 opts + path, "-c", "read 0 65536"], capture_output=True, text=True,
                check=False)
            ok = p.returncode == 0 and "read 65536/65536 bytes" in p.stdout
            return ok, (p.stdout + p.stderr)[-300:]
        finally:
            shutil.rmtree(d, ignore_errors=True)

    # -- the tests -----------------------------------------------------------------------------
    def test_user_key_volume_clone_backup_delete(self):
        ref, raw = self._user_key()
        key_id = ref.secret_id
        before = self._secret_ids()

        r = self._create_volume(self.alice, encryption_key_id=ref.href)
        self.assertEqual(202, r.status_code, r.text)
        vol = self._wait(self.alice, "/volumes/" + r.json()["volume"]["id"], "volume",
                         "available")
        self.assertEqual(key_id, vol["encryption_key_id"])
        self.assertEqual("user", vol["encryption_key_owner"])
        self.assertEqual(before, self._secret_ids(), "no secret may be created")

        path = self._volume_file(vol["id"])
        ok, out = self._qemu_io_opens(path, raw.hex())
        self.assertTrue(ok, out)
        ok, out = self._qemu_io_opens(path, os.urandom(64).hex())
        self.assertFalse(ok, "another key must not open the volume: " + out)

        r = self._create_volume(self.alice, source_volid=vol["id"])
        self.assertEqual(202, r.status_code, r.text)
        clone = self._wait(self.alice, "/volumes/" + r.json()["volume"]["id"], "volume",
                           "available")
        self.assertEqual(key_id, clone["encryption_key_id"])
        self.assertEqual("user", clone["encryption_key_owner"])
        ok, out = self._qemu_io_opens(self._volume_file(clone["id"]), raw.hex())
        self.assertTrue(ok, "the clone opens with her key: " + out)

        r = self._req(self.alice, "POST", "/backups", {"backup": {"volume_id": vol["id"]}})
        self.assertEqual(202, r.status_code, r.text)
        backup = self._wait(self.alice, "/backups/" + r.json()["backup"]["id"], "backup",
                            "available")
        self.assertEqual(key_id, backup.get("encryption_key_id"))
        self.assertEqual(before, self._secret_ids(), "clone and backup create no secret")

        consumers = {(c["service"], c["resource_type"], c["resource_id"])
                     for c in self.alice_bb.consumers(ref)}
        self.assertEqual({("cinder", "volume", vol["id"]), ("cinder", "volume", clone["id"]),
                          ("cinder", "backup", backup["id"])}, consumers)

        for path_, key in (("/backups/" + backup["id"], "backup"),
                           ("/volumes/" + clone["id"], "volume"),
                           ("/volumes/" + vol["id"], "volume")):
            r = self._delete_when_idle(self.alice, path_)
            self.assertEqual(202, r.status_code, r.text)
            self._wait(self.alice, path_, key, "deleted")
        self.assertEqual(raw, self.alice_bb.payload(ref, "application/octet-stream").reveal(),
                         "her key survives every delete")
        self.assertEqual([], self.alice_bb.consumers(ref))
        record("user_key_lifecycle", key_is_hers=True, secrets_created=0,
               consumers_while_in_use=len(consumers), opens_with_her_key=True,
               opens_with_other_key=False, key_alive_after_deletes=True)

    def test_other_project_key_refused_nothing_stored(self):
        ref, _raw = self._user_key()
        before = self._req(self.bob, "GET", "/volumes").json()["volumes"]
        r = self._create_volume(self.bob, encryption_key_id=ref.href)
        self.assertIn(r.status_code, (400, 403), r.text)
        self.assertIn("not found or cannot be read", r.text)
        self.assertEqual(before, self._req(self.bob, "GET", "/volumes").json()["volumes"])
        self.assertEqual([], self.alice_bb.consumers(ref))
        record("other_project_key", status=r.status_code, volumes_stored=0)

    def test_before_372_the_field_is_refused(self):
        ref, _raw = self._user_key()
        r = self._req(self.alice, "POST", "/volumes",
                      {"volume": {"size": 1, "volume_type": self.vtype,
                                  "encryption_key_id": ref.href}}, version="3.71")
        self.assertEqual(400, r.status_code, r.text)

    def test_service_key_created_and_deleted_with_volume(self):
        before = self._secret_ids()
        r = self._create_volume(self.alice)
        self.assertEqual(202, r.status_code, r.text)
        vol = self._wait(self.alice, "/volumes/" + r.json()["volume"]["id"], "volume",
                         "available")
        self.assertEqual("service", vol["encryption_key_owner"])
        created = self._secret_ids() - before
        self.assertEqual({vol["encryption_key_id"]}, created)
        sref = key_ref(vol["encryption_key_id"])
        if BACKEND == "byok":
            self.assertEqual("service", self.alice_bb.metadata(sref).get("byok-owner"))
        r = self._req(self.alice, "DELETE", "/volumes/" + vol["id"])
        self.assertEqual(202, r.status_code, r.text)
        self._wait(self.alice, "/volumes/" + vol["id"], "volume", "deleted")
        self.assertEqual(before, self._secret_ids(), "the service key goes with its volume")
        record("service_key", owner="service", deleted_with_volume=True,
               marked_by_backend=BACKEND == "byok")

    def test_unconverted_clone_path_contrast(self):
        """What a path the series did not convert does with her key: Cinder 29's own
        clone_encryption_key (get + store, no owner). The stock backend copies the key into a
        new secret; backend byok returns her key's id (its safety net). Recorded, not hidden."""
        ref, _raw = self._user_key()
        key_id = ref.secret_id
        ctxt = context.RequestContext(user_id=self.alice.user_id(),
                                      project_id=self.alice.project_id(),
                                      auth_token=self.alice.token())
        km = castellan_key_manager.API(CONF)
        before = self._secret_ids()
        new_id = volume_utils.clone_encryption_key(ctxt, km, key_id)
        created = self._secret_ids() - before
        record("unconverted_clone_path", result="same id" if new_id == key_id else "a copy",
               secrets_created=len(created))
        if BACKEND == "byok":
            self.assertEqual(key_id, new_id)
            self.assertEqual(set(), created)
        else:
            self.assertNotEqual(key_id, new_id)
            self.assertEqual({new_id}, created)
            self.alice_bb.delete(key_ref(new_id))

    def test_passphrase_user_key_volume(self):
        from byok.common.sensitive import Sensitive

        text = os.urandom(16).hex()
        ref = self.alice_bb.store(Sensitive(text.encode()), secret_type="passphrase",
                                  name="fn-user-passphrase")
        self.addCleanup(self._forget, ref)
        r = self._create_volume(self.alice, encryption_key_id=ref.secret_id)
        self.assertEqual(202, r.status_code, r.text)
        vol = self._wait(self.alice, "/volumes/" + r.json()["volume"]["id"], "volume",
                         "available")
        self.assertEqual("user", vol["encryption_key_owner"])
        ok, out = self._qemu_io_opens(self._volume_file(vol["id"]), text)
        self.assertTrue(ok, "a passphrase secret is the passphrase, verbatim: " + out)
        r = self._req(self.alice, "DELETE", "/volumes/" + vol["id"])
        self.assertEqual(202, r.status_code, r.text)
        self._wait(self.alice, "/volumes/" + vol["id"], "volume", "deleted")
        self.assertEqual(text.encode(), self.alice_bb.payload(ref, "text/plain").reveal())
        record("passphrase_user_key", opens_with_text=True, key_alive_after_delete=True)

    def test_user_key_href_elsewhere_refused(self):
        ref, _raw = self._user_key()
        key_id = ref.secret_id
        r = self._create_volume(self.alice,
                                encryption_key_id="http://127.0.0.2:9311/v1/secrets/" + key_id)
        self.assertEqual(400, r.status_code, r.text)


def key_ref(key_id):
    from byok.keys import ref as keyref

    return keyref.parse(key_id)
