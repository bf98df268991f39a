"""The embedded real Keystone + Barbican on 127.0.0.1 (``byok stack up|down|status|env``).

Only the harness, the tests and the CLI use this package; the product (key path, LUKS layer,
attach hook) works against any cloud through clouds.yaml and never imports it.
"""
