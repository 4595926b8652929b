"""Small readers of Azure SDK models shared by the adapters."""

from __future__ import annotations

from enum import Enum

__all__ = ["text_of"]


def text_of(value: object, default: str = "") -> str:
    """An SDK enum or string as plain text (``KeyType.rsa_hsm`` -> ``RSA-HSM``);
    ``default`` for None."""
    if value is None:
        return default
    return str(value.value) if isinstance(value, Enum) else str(value)
