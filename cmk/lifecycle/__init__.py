"""The CMK lifecycle around rotation: preflight check, enable, switch key, disable.

- :mod:`cmk.lifecycle.requirements` and :mod:`cmk.lifecycle.access`: the pure preflight
  (DESIGN §1) over :mod:`cmk.lifecycle.model`;
- :mod:`cmk.lifecycle.check`: ``cmk check`` (and which grants a revocation would cut);
- :mod:`cmk.lifecycle.changes`: ``cmk enable``, ``cmk switch``, ``cmk disable``;
- :mod:`cmk.lifecycle.context` / :mod:`cmk.lifecycle.services`: their ports and clients.

Nothing is imported here, so adapters can use the model without import cycles.
"""
