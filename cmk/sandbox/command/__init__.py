"""``cmk sandbox up``: the command (``up``), the Functions app it can run with ``--app``
(``app``) and the env file it writes (``env``).
"""
