"""A local Azure Functions host for ``function_app.py``: it indexes the app (``index``),
invokes functions with their bindings (``invoke``, ``config``), runs the queue triggers
(``queues``), timers (``timers``, ``schedule``) and HTTP triggers (``http``), and
``host`` puts them together; ``thread`` runs it on a loop of its own for synchronous
callers.
"""
