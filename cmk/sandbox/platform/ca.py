"""The sandbox's certificate authority: a CA made per sandbox and the certificates it signs
for Azure's real host names, so TLS clients that trust the CA bundle talk to the sandbox
as if it were Azure.

Keys are ECDSA P-256: generated in milliseconds, accepted by OpenSSL, requests, urllib3
and aiohttp. Nothing here is secret beyond the sandbox's lifetime.
"""

from __future__ import annotations

import ipaddress
import ssl
import threading
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Host names the sandbox terminates TLS for (public and sovereign clouds). A leading
# "*." is a DNS wildcard: one label, as TLS clients match it.
EMULATED_HOSTS: tuple[str, ...] = (
    "*.vault.azure.net",
    "*.vault.azure.cn",
    "*.vault.usgovcloudapi.net",
    "*.managedhsm.azure.net",
    "*.managedhsm.azure.cn",
    "*.managedhsm.usgovcloudapi.net",
    "management.azure.com",
    "management.chinacloudapi.cn",
    "management.usgovcloudapi.net",
    "*.eventgrid.azure.net",
    "*.eventgrid.azure.cn",
    "*.eventgrid.azure.us",
    "login.microsoftonline.com",
    "login.chinacloudapi.cn",
    "login.microsoftonline.us",
    "graph.microsoft.com",
    "microsoftgraph.chinacloudapi.cn",
    "graph.microsoft.us",
)

# Event Grid topic hosts have two labels below the suffix ({topic}.{region}-1.eventgrid...),
# which a one-label wildcard cannot cover: the leaf names the common regions, and
# :meth:`SandboxCA.server_context` issues a certificate on the fly (by SNI) for the rest.
EVENTGRID_REGIONS: tuple[str, ...] = (
    "eastus", "eastus2", "westus", "westus2", "westus3", "centralus", "northcentralus",
    "southcentralus", "westcentralus", "canadacentral", "brazilsouth", "northeurope",
    "westeurope", "uksouth", "ukwest", "francecentral", "germanywestcentral",
    "switzerlandnorth", "swedencentral", "norwayeast", "polandcentral", "italynorth",
    "australiaeast", "southeastasia", "eastasia", "japaneast", "koreacentral",
    "centralindia", "uaenorth", "southafricanorth",
)  # fmt: skip


def host_is_emulated(host: str) -> bool:
    """Whether ``host`` (no port) is one of the Azure host names the sandbox answers for.

    Wildcards here match any depth, so ``t.westeurope-1.eventgrid.azure.net`` counts.
    """
    name = host.lower().rstrip(".")
    for pattern in EMULATED_HOSTS:
        if pattern.startswith("*."):
            if name.endswith(pattern[1:]) and len(name) > len(pattern) - 1:
                return True
        elif name == pattern:
            return True
    return False


def _covered_by(host: str, names: Iterable[str]) -> bool:
    """Whether a certificate with SANs ``names`` is valid for ``host`` (one-label wildcards)."""
    name = host.lower().rstrip(".")
    for san in names:
        if san.startswith("*."):
            head, _, rest = name.partition(".")
            if head and rest == san[2:]:
                return True
        elif san == name:
            return True
    return False


class SandboxCA:
    """A throwaway CA and the TLS server context the sandbox serves Azure's hosts with."""

    def __init__(self, common_name: str = "cmk-rotator sandbox CA") -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cmk-rotator sandbox"),
            ]
        )
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        self._lock = threading.Lock()
        self._contexts: dict[str, ssl.SSLContext] = {}

    @property
    def pem(self) -> bytes:
        """The CA certificate in PEM, the content of the CA bundle."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def write_bundle(self, path: Path) -> Path:
        """Write the CA bundle (for REQUESTS_CA_BUNDLE and SSL_CERT_FILE) to ``path``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.pem)
        return path

    def issue(self, names: Iterable[str]) -> tuple[bytes, bytes]:
        """A leaf certificate and its key (both PEM) for DNS names / IP addresses ``names``."""
        names = list(dict.fromkeys(n.lower() for n in names))
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        sans: list[x509.GeneralName] = []
        for n in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                sans.append(x509.DNSName(n))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=825))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return cert.public_bytes(serialization.Encoding.PEM), key_pem

    def _context_for(self, names: list[str], state_dir: Path, label: str) -> ssl.SSLContext:
        cert_pem, key_pem = self.issue(names)
        cert_file = state_dir / f"{label}.crt"
        key_file = state_dir / f"{label}.key"
        cert_file.write_bytes(cert_pem + self.pem)
        key_file.write_bytes(key_pem)
        key_file.chmod(0o600)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert_file, key_file)
        ctx.set_alpn_protocols(["http/1.1"])
        return ctx

    def server_context(self, state_dir: Path) -> ssl.SSLContext:
        """The TLS context of the sandbox's HTTPS server: one leaf for every emulated host,
        and, chosen by SNI, a leaf made on demand for emulated hosts the first does not
        cover (deeper Event Grid topic hosts). Files go to ``state_dir/tls``."""
        tls_dir = state_dir / "tls"
        tls_dir.mkdir(parents=True, exist_ok=True)
        default_names = [
            *EMULATED_HOSTS,
            *(f"*.{r}-1.eventgrid.azure.net" for r in EVENTGRID_REGIONS),
            "localhost",
            "127.0.0.1",
        ]
        default = self._context_for(default_names, tls_dir, "leaf")

        def choose(sock: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
            if not server_name or _covered_by(server_name, default_names):
                return
            if not host_is_emulated(server_name):
                return  # the default leaf; the client will refuse it, as it should
            host = server_name.lower()
            with self._lock:
                ctx = self._contexts.get(host)
                if ctx is None:
                    label = f"leaf-{len(self._contexts) + 1}"
                    ctx = self._context_for([host], tls_dir, label)
                    self._contexts[host] = ctx
            sock.context = ctx

        default.sni_callback = choose
        return default
