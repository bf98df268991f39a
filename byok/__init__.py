"""byok: user-supplied-key volume encryption for OpenStack Cinder (prototype + harness)."""

__version__ = "0.1.0"
