"""Managed identity: the App Service-style token endpoint and the verification of tokens
for the services (``service``), and the tokens themselves: JWTs as Entra issues them,
signed by a per-sandbox key (``tokens``).
"""
