"""Benchmarks of cmk-rotator on the local sandbox: ``python -m bench.<name> [--json]``
(``fanout``, ``sweep``, ``handler``); figures and commands in docs/performance.md."""
