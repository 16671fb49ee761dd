"""Certificate operations: the gateway's TLS identity, provider trust, pins and expiry.

RFC 5280 (certificates, paths, validity), RFC 7469 §2.4/§2.6 (SPKI pins), RFC 7292 (PKCS#12).
The TLS glue needs only the names re-exported here; ``commands`` is the operator's CLI.
"""

from gateway.certs.errors import CertificateError, PinMismatchError
from gateway.certs.expiry import ExpiryWarning, ExpiryWatch
from gateway.certs.material import (
    Identity,
    IdentityWatcher,
    build_client_context,
    build_server_context,
    load_configured_identity,
    load_identity,
    verify_pins,
)
from gateway.certs.settings import CertWatchSettings, ProviderTrustSettings, TlsIdentitySettings

__all__ = [
    "CertWatchSettings",
    "CertificateError",
    "ExpiryWarning",
    "ExpiryWatch",
    "Identity",
    "IdentityWatcher",
    "PinMismatchError",
    "ProviderTrustSettings",
    "TlsIdentitySettings",
    "build_client_context",
    "build_server_context",
    "load_configured_identity",
    "load_identity",
    "verify_pins",
]
