"""cmk-rotator: keep Azure AI services accounts on the newest valid customer-managed key version."""

__version__ = "0.1.0"
