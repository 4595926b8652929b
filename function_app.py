"""The Azure Functions app (Python v2 model): a table of contents over the ``cmk`` core.

The triggers arrive with the Functions issue; for now the app only declares itself so
that the host can index it.
"""

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
