"""Experiments: one small declarative file each, discovered by the harness."""
