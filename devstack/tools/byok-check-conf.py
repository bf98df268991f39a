#!/usr/bin/env python3
"""Load a service's config file the way the service does; check castellan's backend is byok.

The devstack plugin's smoke check (``BYOK_RUN_SMOKE=True``) runs this against cinder.conf and
nova.conf: the service builds its key manager with ``castellan.key_manager.API(CONF)``, which
resolves ``[key_manager] backend`` through stevedore (entry point group ``castellan.drivers``),
so this catches a missing install, a wrong backend name and a wrong ``[byok] consumer_service``
before the first volume does. Offline: constructing the key manager contacts neither Keystone
nor Barbican. Prints no secret (the ``[barbican_service_user]`` password is never read).
"""

from __future__ import annotations

import argparse
import sys


def check(path: str, consumer: str) -> str:
    """One summary line, or SystemExit with the reason the file does not give byok."""
    from castellan import key_manager
    from oslo_config import cfg

    from byok.key_manager.byok_key_manager import ByokKeyManager

    conf = cfg.ConfigOpts()
    try:
        conf(["--config-file", path], project="byok-check-conf", default_config_files=[])
    except cfg.Error as e:
        raise SystemExit(f"{path}: not a loadable config file: {e}") from e
    km = key_manager.API(conf)
    if not isinstance(km, ByokKeyManager):
        raise SystemExit(
            f"{path}: [key_manager] backend = {conf.key_manager.backend!r} loads "
            f"{type(km).__module__}.{type(km).__name__}, not "
            "byok.key_manager.byok_key_manager.ByokKeyManager"
        )
    if conf.byok.consumer_service != consumer:
        raise SystemExit(
            f"{path}: [byok] consumer_service = {conf.byok.consumer_service!r}, "
            f"expected {consumer!r}"
        )
    return (
        f"{path}: backend=byok ({type(km).__name__}) consumer_service={consumer} "
        f"auth_endpoint={conf.barbican.auth_endpoint} "
        f"barbican_endpoint={conf.barbican.barbican_endpoint or '(catalog)'} "
        f"session_ttl={conf.byok.session_ttl}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("conf", help="the service's config file (cinder.conf, nova.conf)")
    p.add_argument("--consumer", required=True, choices=("cinder", "nova"),
                   help="the service the file belongs to ([byok] consumer_service)")
    args = p.parse_args(argv)
    try:
        print("byok smoke:", check(args.conf, args.consumer))
    except SystemExit as e:
        print(f"byok smoke: FAILED: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
