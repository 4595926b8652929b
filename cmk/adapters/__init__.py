"""Thin adapters: one per Azure service, SDK client in, our own types out (see cmk.ports)."""
