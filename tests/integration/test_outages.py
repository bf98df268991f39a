"""Barbican and Keystone down, paused, slow or answering garbage: bounded retries, a deadline,
then KeyServiceUnavailable naming the endpoint (issue 4, item 7)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from byok.common.errors import KeyServiceUnavailable
from byok.harness.faults import FaultInjectingProxy
from byok.keys import resolver as keys
from byok.keys.identity import Identity

pytestmark = pytest.mark.stack
DEADLINE = 2.0


def resolver_via(proxy, identities, user="alice"):
    return keys.Resolver(identities(user), endpoint=proxy.url, deadline=DEADLINE)


@pytest.mark.parametrize("mode", ["error500", "truncate", "garbage", "hang"])
def test_persistent_fault_ends_in_typed_error_within_deadline(stack, identities, make_key, mode):
    ref, _ = make_key("alice")
    with FaultInjectingProxy(stack.cfg.barbican_url, mode) as proxy:
        r = resolver_via(proxy, identities)
        t0 = time.monotonic()
        with pytest.raises(KeyServiceUnavailable) as ei:
            r.resolve(ref.secret_id)
        elapsed = time.monotonic() - t0
    assert elapsed < DEADLINE + 3.5, elapsed  # deadline + one attempt's timeout + slack
    assert proxy.url in str(ei.value) or "Barbican" in str(ei.value)
    assert 1 <= r.api.attempts <= 20  # bounded


@pytest.mark.parametrize("mode", ["error500", "truncate", "garbage"])
def test_transient_fault_is_retried_to_success(stack, identities, make_key, mode):
    ref, raw = make_key("alice")
    with FaultInjectingProxy(stack.cfg.barbican_url, mode, fail_first=2) as proxy:
        r = resolver_via(proxy, identities)
        km = r.resolve(ref.secret_id)
    assert km.payload.reveal() == raw
    assert proxy.injected == 2 and r.api.attempts == 4  # 2 failures + metadata + payload


def _signal_group(pid: int, sig: int) -> None:
    os.killpg(os.getpgid(pid), sig)


def test_paused_barbican_gives_typed_error_then_recovers(stack, identities, make_key):
    ref, raw = make_key("alice")
    pid = stack.barbican().running_pid()
    r = keys.Resolver(identities("alice"), deadline=DEADLINE)
    _signal_group(pid, signal.SIGSTOP)
    try:
        with pytest.raises(KeyServiceUnavailable) as ei:
            r.resolve(ref)
        assert str(stack.cfg.barbican_port) in str(ei.value)
    finally:
        _signal_group(pid, signal.SIGCONT)
    assert r.resolve(ref).payload.reveal() == raw


def test_killed_barbican_names_its_endpoint_and_restart_recovers(stack, identities, make_key):
    ref, raw = make_key("alice")
    r = keys.Resolver(identities("alice"), deadline=DEADLINE)
    stack.barbican().stop()
    try:
        with pytest.raises(KeyServiceUnavailable) as ei:
            r.resolve(ref)
        assert stack.cfg.barbican_url in str(ei.value)
    finally:
        stack.up()
    assert r.resolve(ref).payload.reveal() == raw


def test_killed_keystone_names_its_endpoint(stack, identities, make_key):
    ref, raw = make_key("alice")
    stack.keystone().stop()
    try:
        with pytest.raises(KeyServiceUnavailable) as ei:
            # A new identity must authenticate first: Keystone is the one that is down.
            fresh = Identity.from_cloud(
                stack.cloud_name("alice"), clouds_yaml=stack.cfg.clouds_yaml
            )
            keys.Resolver(fresh, endpoint=stack.cfg.barbican_url, deadline=DEADLINE).resolve(ref)
        assert str(stack.cfg.keystone_port) in str(ei.value)
    finally:
        stack.up()
    assert keys.Resolver(identities("alice")).resolve(ref).payload.reveal() == raw


def test_paused_keystone_is_bounded_and_typed_then_recovers(stack, make_key):
    """SIGSTOP: Keystone accepts the connection and never answers. Every Keystone request of an
    identity is bounded (KEYSTONE_TIMEOUT), so the resolve ends in a typed error, not a hang."""
    from byok.keys.identity import KEYSTONE_TIMEOUT

    ref, raw = make_key("alice")
    fresh = Identity.from_cloud(stack.cloud_name("alice"), clouds_yaml=stack.cfg.clouds_yaml)
    pid = stack.keystone().running_pid()
    _signal_group(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        with pytest.raises(KeyServiceUnavailable) as ei:
            keys.Resolver(fresh, endpoint=stack.cfg.barbican_url, deadline=DEADLINE).resolve(ref)
        elapsed = time.monotonic() - t0
    finally:
        _signal_group(pid, signal.SIGCONT)
    # No attempt starts after the deadline; one started just before it makes at most two
    # Keystone requests (discovery + token), each bounded.
    assert elapsed < DEADLINE + 2 * KEYSTONE_TIMEOUT + 1.5, elapsed
    assert str(stack.cfg.keystone_port) in str(ei.value)
    again = keys.Resolver(fresh, endpoint=stack.cfg.barbican_url, deadline=DEADLINE)
    assert again.resolve(ref).payload.reveal() == raw  # the same identity recovers


def _alice_via(proxy, stack) -> Identity:
    """alice's password identity with Keystone behind ``proxy`` (a v3 plugin: no discovery)."""
    from keystoneauth1 import session as ks_session
    from keystoneauth1.identity import v3

    url = proxy.url + "/v3"
    auth = v3.Password(auth_url=url, username="alice", password=stack.secrets.passwords()["alice"],
                       user_domain_id="default", project_name="alice-project",
                       project_domain_id="default")
    return Identity(name="alice-via-proxy", auth_url=url, auth=auth,
                    session=ks_session.Session(auth=auth))


@pytest.mark.parametrize("mode", ["error500", "garbage", "hang"])
def test_keystone_faults_end_in_typed_error_naming_keystone(stack, make_key, mode):
    ref, _ = make_key("alice")
    with FaultInjectingProxy(stack.cfg.keystone_url, mode) as proxy:
        ident = _alice_via(proxy, stack)
        r = keys.Resolver(ident, endpoint=stack.cfg.barbican_url, deadline=DEADLINE)
        t0 = time.monotonic()
        with pytest.raises(KeyServiceUnavailable) as ei:
            r.resolve(ref)
        elapsed = time.monotonic() - t0
    assert elapsed < DEADLINE + 4.5, elapsed
    assert proxy.url in str(ei.value)  # the endpoint that failed is Keystone (the proxy)
    assert proxy.injected >= 1


def test_keystone_500_once_is_retried_to_success(stack, make_key):
    ref, raw = make_key("alice")
    with FaultInjectingProxy(stack.cfg.keystone_url, "error500", fail_first=1) as proxy:
        r = keys.Resolver(_alice_via(proxy, stack), endpoint=stack.cfg.barbican_url,
                          deadline=DEADLINE)
        assert r.resolve(ref).payload.reveal() == raw
    assert proxy.injected == 1
