"""Azure Resource Manager on ``management.azure.com``: routing (``service``), role
assignments and definitions (``authorization``), the generic ARM a client needs first
(``resources``: subscriptions, tenants, resource groups), ARM's error answer (``errors``)
and the resource providers: Microsoft.KeyVault's management plane (``keyvault``) and
Microsoft.CognitiveServices accounts (the ``cognitive`` package).
"""
