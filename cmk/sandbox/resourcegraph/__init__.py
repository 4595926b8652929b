"""Azure Resource Graph (``service``: the ``resources`` query API and its paging; its quota
is in :mod:`cmk.sandbox.platform.throttling`) and the
KQL subset it evaluates (the ``kql`` package).
"""
