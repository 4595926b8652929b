"""A local Azure for cmk-rotator: Key Vault, Cognitive Services ARM, Resource Graph,
managed identity and Event Grid behind a TLS-terminating proxy, plus Azurite.

Production code never imports this package; it only sees the environment the sandbox
sets (HTTPS_PROXY, REQUESTS_CA_BUNDLE, SSL_CERT_FILE, IDENTITY_ENDPOINT, ...).
"""
