"""Scenario files: the JSON (``scenario.schema.json``, the built-in ``example_world.json``
and ``demo_world.json``) turned into a world and its Event Grid topics, faults and
throttling (``loader``; ``files``, ``specs``, ``context`` and one module per part of the
world: ``tenancy``, ``vaults``, ``accounts``, ``times``).
"""
