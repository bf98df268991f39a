"""Barbican and Keystone down, paused, slow or answering garbage: bounded retries, a deadline,
then KeyServiceUnavailable naming the endpoint (issue 4, item 7)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from byok import keys
from byok.errors import KeyServiceUnavailable
from byok.harness.faults import FaultInjectingProxy
from byok.identity import Identity

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
