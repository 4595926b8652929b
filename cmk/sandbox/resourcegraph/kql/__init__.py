"""The honest subset of KQL that the sandbox's Resource Graph runs: ``language`` is the
entry point and says what the subset holds; ``tokens``, ``values``, ``expressions``,
``expression_parser``, ``summarize`` and ``query`` are its parts.
"""
