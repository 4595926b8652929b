"""The platform beneath the emulated services: the CA and the TLS-terminating proxy
(``ca``, ``server``), what every service is handed (``context``), faults and counters
(``faults``), ARM's and Resource Graph's throttles (``throttling``), ISO 8601 durations,
and Azurite, the real Storage emulator, as a child process (``azurite``).
"""
