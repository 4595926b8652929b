"""Event Grid: subscriptions that deliver Key Vault's events (a vault's system topic)
and custom topics on ``*.eventgrid.azure.net`` that keep what the app publishes
(``service``).
"""
