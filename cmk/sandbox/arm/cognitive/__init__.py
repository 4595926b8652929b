"""The Microsoft.CognitiveServices/accounts resource provider: accounts and their update
rules (``accounts``), the customer-managed key binding (``cmk``), managed identities
(``identity``), account JSON (``bodies``), listing (``listing``), long-running operations
(``operations``), request parsing (``requests``) and seeding (``seed``).
"""
