"""castellan's own functional key-manager suite, run against backend ``byok`` on the real stack.

castellan ships these tests in its package (castellan.tests.functional.key_manager). We subclass
its three Barbican test cases (oslo RequestContext, KeystonePassword, KeystoneToken contexts) so
that ``_create_key_manager`` returns our backend, configured for the embedded Keystone. The stock
suite turns any set-up failure into a skip; here a skip is a failure, so "nothing skipped" holds.
"""

from __future__ import annotations

import unittest

import pytest
from castellan.tests.functional import config as functional_config

from byok.key_manager.byok_key_manager import ByokKeyManager, configure

CONF = functional_config.get_config()  # castellan's [identity] options, overridden below

from castellan.tests.functional.key_manager import (  # noqa: E402 - needs CONF first
    test_barbican_key_manager as peer,
)

pytestmark = pytest.mark.stack
_STACK: dict = {}


@pytest.fixture(autouse=True, scope="module")
def _point_suite_at_embedded_stack(stack, identities):
    """Run as user ``peer`` in its own project (test_list lists the project's secrets, first
    page only), starting from an empty project so leftovers of an aborted run do not count."""
    from byok.keys.barbican import BarbicanAPI

    peer_user = identities("peer")
    api = BarbicanAPI(peer_user, stack.cfg.barbican_url)
    while leftovers := api.list_secrets():
        for s in leftovers:
            from byok.keys.ref import KeyRef

            api.delete(KeyRef(s["secret_ref"].rsplit("/", 1)[1]), force=True)
    _STACK["auth_url"] = stack.cfg.keystone_url
    for key, value in {
        "auth_url": stack.cfg.keystone_url,
        "username": "peer",
        "password": stack.secrets.passwords()["peer"],
        "project_name": "peer-project",
        "user_domain_name": "Default",
        "project_domain_name": "Default",
    }.items():
        CONF.set_override(key, value, group="identity")
    yield
    CONF.clear_override("password", group="identity")


class _ByokBackend:
    def _create_key_manager(self):
        return ByokKeyManager(configure(auth_url=_STACK["auth_url"]))

    def setUp(self):
        try:
            super().setUp()
        except unittest.SkipTest as e:  # the stock suite hides set-up failures as skips
            self.fail(f"peer suite set-up failed (would have been skipped): {e}")


class TestByokPeerOsloContext(_ByokBackend, peer.BarbicanKeyManagerOsloContextTestCase):
    pass


class TestByokPeerKeystonePassword(_ByokBackend, peer.BarbicanKeyManagerKSPasswordTestCase):
    pass


class TestByokPeerKeystoneToken(_ByokBackend, peer.BarbicanKeyManagerKSTokenTestCase):
    pass
