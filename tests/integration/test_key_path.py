"""The key path on the real stack: resolve, validate, the confused-deputy guard, and the castellan
backend ``byok`` (issue 4)."""

from __future__ import annotations

import os
import uuid

import pytest
from castellan import key_manager
from os_brick import utils as osbrick_utils

from byok.common.errors import KeyAccessDenied, KeyNotFound, KeyRefInvalid, KeyTypeMismatch
from byok.common.sensitive import Sensitive
from byok.key_manager.byok_key_manager import ByokKeyManager, configure, volume_scope
from byok.keys import guard
from byok.keys import resolver as keys
from byok.keys.ref import KeyRef

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def resolver(identities):
    return lambda user: keys.Resolver(identities(user))


# --- resolve --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["aes256", "aes512", "passphrase"])
def test_alice_resolves_her_key_and_gets_os_brick_passphrase(resolver, make_key, kind):
    ref, raw = make_key("alice", kind)
    km = resolver("alice").resolve(ref.href)
    assert km.payload.reveal() == raw
    expected = osbrick_utils.get_passphrase_from_secret(km.castellan_object())
    assert keys.passphrase(km).reveal().decode() == expected


def test_bare_uuid_resolves_against_the_catalog_endpoint(resolver, make_key, stack):
    ref, raw = make_key("alice")
    km = resolver("alice").resolve(ref.secret_id)
    assert km.payload.reveal() == raw and km.ref.endpoint == stack.cfg.barbican_url


def test_href_to_another_host_is_refused_before_any_request(resolver):
    r = resolver("alice")
    before = r.api.attempts
    with pytest.raises(KeyRefInvalid, match="not this cloud's key manager"):
        r.resolve(f"http://attacker.example.com:19311/v1/secrets/{uuid.uuid4()}")
    assert r.api.attempts == before


def test_unknown_secret_is_keynotfound(resolver, stack):
    with pytest.raises(KeyNotFound):
        resolver("alice").resolve(str(uuid.uuid4()))


def test_bob_and_unauthorised_cinder_are_denied(resolver, make_key):
    ref, _ = make_key("alice")
    for user in ("bob", "cinder", "nova"):
        with pytest.raises(KeyAccessDenied):
            resolver(user).resolve(ref.href)


@pytest.mark.parametrize(
    ("kind", "overrides", "why"),
    [
        ("aes512", {"secret_type": "opaque"}, "cannot be a volume key"),
        ("aes128", {}, "128-bit"),
        ("aes512", {"payload": os.urandom(32)}, "declares 512 bits but holds 256"),
        ("aes512", {"algorithm": "des"}, "AES"),
    ],
)
def test_malformed_secrets_are_typed_mismatches(resolver, make_key, kind, overrides, why):
    ref, _ = make_key("alice", kind, **overrides)
    with pytest.raises(KeyTypeMismatch, match=why):
        resolver("alice").resolve(ref)


def test_expired_secret_is_refused(resolver, barbican):
    import datetime as dt
    import time

    soon = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)).strftime("%Y-%m-%dT%H:%M:%S")
    ref = barbican("alice").store(Sensitive(os.urandom(64)), secret_type="symmetric", name="exp",
                                  algorithm="aes", bit_length=512, expiration=soon)
    time.sleep(3)
    # Barbican itself hides an expired secret (404); byok's own expiry check (defence in depth,
    # for key managers that do not) is proven in tests/unit/test_keys.py.
    with pytest.raises(KeyNotFound):
        resolver("alice").resolve(ref)


# --- the confused-deputy guard ----------------------------------------------------------------


def test_bob_cannot_bind_alices_key_to_his_volume(identities, make_key, barbican):
    ref, _ = make_key("alice")
    with pytest.raises(KeyAccessDenied):
        guard.bind(ref, user=identities("bob"), volume_id="vol-bob")
    assert barbican("alice").consumers(ref) == []


def test_service_uses_key_only_for_bound_volume_and_only_with_acl(identities, make_key, barbican):
    ref, raw = make_key("alice")
    cinder = identities("cinder")
    info = guard.bind(ref, user=identities("alice"), volume_id="vol-a")
    assert info.ref == ref
    assert {"service": "cinder", "resource_type": "volume", "resource_id": "vol-a"} in [
        {k: c[k] for k in ("service", "resource_type", "resource_id")}
        for c in barbican("alice").consumers(ref)
    ]
    with pytest.raises(KeyAccessDenied, match="has not granted"):  # consumer, but no ACL yet
        guard.resolve_for_volume(ref, service_identity=cinder, volume_id="vol-a")
    barbican("alice").set_acl(ref, users=[cinder.user_id()], project_access=True)
    km = guard.resolve_for_volume(ref, service_identity=cinder, volume_id="vol-a")
    assert km.payload.reveal() == raw
    with pytest.raises(KeyAccessDenied, match="never bound to volume vol-b"):
        guard.resolve_for_volume(ref, service_identity=cinder, volume_id="vol-b")
    # The ACL opens exactly this secret: another of alice's keys stays closed to cinder.
    other, _ = make_key("alice")
    guard.bind(other, user=identities("alice"), volume_id="vol-a")
    with pytest.raises(KeyAccessDenied):
        guard.resolve_for_volume(other, service_identity=cinder, volume_id="vol-a")
    assert guard.release(ref, identity=identities("alice"), volume_id="vol-a")
    with pytest.raises(KeyAccessDenied, match="never bound"):
        guard.resolve_for_volume(ref, service_identity=cinder, volume_id="vol-a")


def test_a_consumer_the_service_posts_itself_is_refused_once_its_own_record_decides(
    identities, make_key, barbican
):
    """Issue 17 (E17): Barbican lets an ACL reader register a consumer, so the cinder user can
    forge the consumer-only proof for a volume alice never bound; the record check refuses it
    before any payload is read, and still serves the volume alice did bind."""
    ref, raw = make_key("alice")
    cinder = identities("cinder")
    guard.bind(ref, user=identities("alice"), volume_id="vol-real")
    barbican("alice").set_acl(ref, users=[cinder.user_id()], project_access=True)
    barbican("cinder").add_consumer(ref, "cinder", "volume", "vol-forged")  # no error: allowed
    assert "vol-forged" in [c["resource_id"] for c in barbican("alice").consumers(ref)]
    forged = guard.resolve_for_volume(ref, service_identity=cinder, volume_id="vol-forged")
    assert forged.payload.reveal() == raw  # the consumer-only rule is fooled
    records = {"vol-real": guard.Binding("vol-real", ref.secret_id)}
    with pytest.raises(KeyAccessDenied, match="no record binding volume vol-forged"):
        guard.resolve_recorded(ref, service_identity=cinder, volume_id="vol-forged",
                               binding=records.get("vol-forged"))
    got = guard.resolve_recorded(ref, service_identity=cinder, volume_id="vol-real",
                                 binding=records["vol-real"])
    assert got.payload.reveal() == raw
    other, _ = make_key("alice")
    with pytest.raises(KeyAccessDenied, match="recorded with key"):
        guard.resolve_recorded(other, service_identity=cinder, volume_id="vol-real",
                               binding=records["vol-real"])


def test_a_project_member_rewrites_the_owner_mark_but_the_record_decides_deletion(
    km, identities, make_key, barbican
):
    """Issue 17 (E17): carol (alice's project) sets byok's service-owner mark on alice's
    non-private key; the castellan backend, which has only the mark, now takes it for a service
    key, while the record-based decision still keeps it."""
    ref, _ = make_key("alice")
    assert km.is_user_owned(identities("alice").castellan_context(), ref.secret_id)
    barbican("carol").set_metadata(ref, {"byok-owner": "service"})
    assert not km.is_user_owned(identities("alice").castellan_context(), ref.secret_id)
    assert not guard.may_delete(ref, guard.Binding("vol-1", ref.secret_id, owner="user"))
    assert guard.may_delete(ref, guard.Binding("vol-1", ref.secret_id, owner="service"))
    private, _ = make_key("alice")
    barbican("alice").set_acl(private, users=[], project_access=False)
    with pytest.raises(KeyAccessDenied):
        barbican("carol").set_metadata(private, {"byok-owner": "service"})


def test_acl_read_is_an_ownership_probe(identities, make_key, barbican):
    ref, _ = make_key("alice")
    barbican("alice").set_acl(ref, users=[identities("bob").user_id()], project_access=True)
    assert keys.Resolver(identities("bob")).resolve(ref)  # bob may read via the ACL...
    assert guard.owned_by_callers_project(ref, identities("alice"))
    assert not guard.owned_by_callers_project(ref, identities("bob"))  # ...but does not own it


# --- castellan backend `byok` -----------------------------------------------------------------


@pytest.fixture(scope="module")
def km(stack):
    mgr = key_manager.API(configure(auth_url=stack.cfg.keystone_url, backend="byok"))
    assert isinstance(mgr, ByokKeyManager)  # loaded by name through castellan's stevedore
    return mgr


def test_delete_of_user_owned_key_keeps_it_and_drops_the_volume_consumer(
    km, identities, make_key, barbican
):
    ref, raw = make_key("alice")
    ctx = identities("alice").castellan_context()
    km.add_consumer(ctx, ref.secret_id, {"service": "cinder", "resource_type": "volume",
                                         "resource_id": "vol-x"})
    with volume_scope("vol-x"):
        km.delete(ctx, ref.secret_id)
    assert keys.Resolver(identities("alice")).resolve(ref).payload.reveal() == raw
    assert barbican("alice").consumers(ref) == []


def test_clone_encryption_key_shares_a_user_key_instead_of_copying(km, identities, make_key,
                                                                    barbican):
    ref, _ = make_key("alice")
    ctx = identities("alice").castellan_context()
    before = barbican("alice").count_secrets()
    # What cinder.volume.volume_utils.clone_encryption_key does: get, then store.
    with volume_scope("vol-clone"):
        key = km.get(ctx, ref.secret_id)
        new_id = km.store(ctx, key)
    assert new_id == ref.secret_id
    assert barbican("alice").count_secrets() == before
    consumers = barbican("alice").consumers(ref)
    assert [c["resource_id"] for c in consumers] == ["vol-clone"]


def test_service_created_keys_are_marked_and_really_deleted(km, identities, barbican):
    ctx = identities("alice").castellan_context()
    kid = km.create_key(ctx, "AES", 256, name="cinder-generated")
    ref = KeyRef(kid)
    assert barbican("alice").metadata(ref) == {"byok-owner": "service"}
    assert not km.is_user_owned(ctx, kid)
    copy = km.store(ctx, km.get(ctx, kid))  # a service key is copied, as upstream does
    assert copy != kid
    for k in (kid, copy):
        km.delete(ctx, k)
        with pytest.raises(KeyNotFound):
            barbican("alice").secret(KeyRef(k))


@pytest.mark.parametrize(("backend", "tokens"), [("byok", 1), ("barbican", 5)])
def test_session_reuse_means_one_token_for_many_gets(stack, identities, make_key, backend,
                                                     tokens):
    """Tokens Keystone really issued, counted on the wire (a pass-through proxy in front of
    Keystone): five gets through backend byok cost one token; castellan's own backend, five."""
    from castellan.common.credentials import keystone_password

    from byok.harness.faults import FaultInjectingProxy

    ref, raw = make_key("alice")
    a = identities("alice").auth_args
    with FaultInjectingProxy(stack.cfg.keystone_url, "pass") as proxy:
        url = proxy.url + "/v3"
        mgr = key_manager.API(configure(auth_url=url, backend=backend))
        ctx = keystone_password.KeystonePassword(
            password=a["password"], auth_url=url, username=a["username"],
            user_domain_name=a.get("user_domain_name", "Default"),
            project_name=a["project_name"],
            project_domain_name=a.get("project_domain_name", "Default"))
        for _ in range(5):
            assert mgr.get(ctx, ref.secret_id).get_encoded() == raw
        issued = [s for s in proxy.seen if s == ("POST", "/v3/auth/tokens")]
    assert len(issued) == tokens, proxy.seen


@pytest.mark.parametrize(
    ("ref", "user", "code"),
    [("not-a-ref", "alice", KeyRefInvalid.exit_code),
     (str(uuid.uuid4()), "alice", KeyNotFound.exit_code), (None, "bob", KeyAccessDenied.exit_code)],
)
def test_cli_exit_codes(make_key, ref, user, code):
    import subprocess
    import sys

    if ref is None:
        ref = make_key("alice")[0].href
    r = subprocess.run([sys.executable, "-m", "byok.cli", "key", "show", ref, "--as", user],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == code, r.stderr
    assert r.stderr.startswith("error:")


def test_a_user_token_alone_is_an_identity(identities, make_key, stack):
    """What Nova/Cinder receive from a user is a token, not a password."""
    from byok.keys.identity import Identity

    ref, raw = make_key("alice")
    alice = identities("alice")
    tok = Identity.from_token(alice.token(), auth_url=stack.cfg.keystone_url,
                              project_id=alice.project_id())
    assert keys.Resolver(tok).resolve(ref).payload.reveal() == raw
    km = key_manager.API(configure(auth_url=stack.cfg.keystone_url))
    assert km.get(tok.castellan_context(), ref.secret_id).get_encoded() == raw


# --- os-brick's own encryptor code with the byok backend (what Nova runs) --------------------


def _os_brick_encryptor(km, key_id, volume_id):
    from os_brick import encryptors

    return encryptors.get_volume_encryptor(
        root_helper=None, keymgr=km, execute=None, control_location="front-end",
        provider="luks2", encryption_key_id=key_id,
        connection_info={"data": {"device_path": f"/dev/disk/by-id/{volume_id}",
                                  "volume_id": volume_id}},
    )


def test_os_brick_with_backend_byok_gets_the_passphrase_that_opens_the_volume(
    km, identities, make_key, barbican, tmp_path
):
    """os-brick's encryptor asks the key manager it was given (here the `byok` backend, loaded
    by name) for the key of one volume; the passphrase it derives opens a LUKS volume made with
    the hook's passphrase — real cryptsetup, no dm needed for the key check."""
    from byok.common.sensitive import Sensitive
    from byok.luks import cryptsetup as luks

    ref, _ = make_key("alice")
    vol = tmp_path / "v.img"
    vol.write_bytes(b"\0" * (20 << 20))
    hook_key = keys.Resolver(identities("alice")).resolve(ref)
    luks.format(vol, keys.passphrase(hook_key), luks_type="luks2", key_bits=512,
                policy=luks.policy_for("symmetric"))
    enc = _os_brick_encryptor(km, ref.secret_id, "vol-osbrick")
    with volume_scope("vol-osbrick"):
        passphrase = enc._get_encryption_key_as_passphrase(identities("alice").castellan_context())
    assert passphrase == keys.passphrase(hook_key).reveal().decode()
    luks.test_key(vol, Sensitive(passphrase))  # raises WrongKey otherwise
    # The volume is now a consumer of the key: bound by the user's token, once.
    ids = [c["resource_id"] for c in barbican("alice").consumers(ref)]
    assert ids == ["vol-osbrick"]


def test_backend_byok_applies_the_confused_deputy_guard_for_a_volume(km, identities, make_key,
                                                                      barbican):
    from castellan.common import exception as cexc

    ref, raw = make_key("alice")
    cinder = identities("cinder")
    enc = _os_brick_encryptor(km, ref.secret_id, "vol-g")
    with volume_scope("vol-g"), pytest.raises(cexc.KeyManagerError, match="KeyAccessDenied"):
        enc._get_key(identities("bob").castellan_context())  # bob names alice's key
    assert barbican("alice").consumers(ref) == []  # ... and nothing was registered
    barbican("alice").set_acl(ref, users=[cinder.user_id()], project_access=True)
    with volume_scope("vol-g"), pytest.raises(cexc.KeyManagerError, match="never bound"):
        enc._get_key(cinder.castellan_context())  # ACL, but no user ever bound vol-g
    with volume_scope("vol-g"):
        enc._get_key(identities("alice").castellan_context())  # alice binds vol-g
        assert enc._get_key(cinder.castellan_context()).get_encoded() == raw  # token-less
    with volume_scope("vol-other"), pytest.raises(cexc.KeyManagerError, match="never bound"):
        enc._get_key(cinder.castellan_context())
    with volume_scope("vol-g"), pytest.raises(cexc.ManagedObjectNotFoundError):
        km.get(identities("alice").castellan_context(), str(uuid.uuid4()))


def test_backend_byok_refuses_a_non_volume_key_for_a_volume(km, identities, make_key):
    from castellan.common import exception as cexc

    ref, _ = make_key("alice", "aes512", bit_length=512, algorithm="des")
    with volume_scope("vol-t"), pytest.raises(cexc.KeyManagerError, match="KeyTypeMismatch"):
        km.get(identities("alice").castellan_context(), ref.secret_id)
    # Outside a volume scope the backend is a general castellan key manager.
    assert km.get(identities("alice").castellan_context(), ref.secret_id)
