"""Key Vault and Managed HSM on ``*.vault.azure.net`` / ``*.managedhsm.azure.net``: the data
plane (``service``), its keys and versions (``model``), response bodies (``bodies``),
errors (``errors``), the API versions it accepts (``versions``) and its per-vault and
per-HSM limits (``limits``).
"""
