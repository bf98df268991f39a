"""The key path: parse a key reference, build an identity, talk to Barbican, resolve and
validate a volume key, derive os-brick's passphrase, and the confused-deputy guard. Knows
nothing of LUKS."""
