"""Configuration the certificate layer needs, as msgspec Structs the main config embeds.

Kept here, not in ``gateway.config``, so that certificate code and its tests depend on a small
interface instead of the whole configuration. Pins are RFC 7469 §2.4 values: base64 of the
SHA-256 of the DER SubjectPublicKeyInfo.
"""

from __future__ import annotations

import msgspec


class TlsIdentitySettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The gateway's own TLS identity (toward the provider: client, and server for inbound TLS)."""

    #: PEM path: the leaf first, then intermediates (RFC 5246 §7.4.2 order).
    certificate: str
    #: PEM path, mode 0600; a key readable by group or others is refused at start-up.
    private_key: str
    #: Environment variable holding the key's passphrase, if the key is encrypted.
    passphrase_env: str | None = None
    #: File holding the key's passphrase (first line), if the key is encrypted.
    passphrase_file: str | None = None


class ProviderTrustSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What the gateway trusts when it verifies the provider's certificate."""

    #: PEM bundle of trust anchors; None means the system store.
    ca_bundle: str | None = None
    #: base64 SHA-256 of a SubjectPublicKeyInfo (RFC 7469 §2.4); empty means no pinning.
    #: When set, a verified chain must also contain one of these keys (RFC 7469 §2.6).
    spki_pins: tuple[str, ...] = ()
    #: Name to verify and send as SNI; None means the provider host.
    server_name: str | None = None


class CertWatchSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where the certificate store lives, when expiry is warned about, and the gateway's names."""

    #: Days before not-after at which a warning is raised, once per threshold.
    warn_days: tuple[int, ...] = (30, 14, 7, 1)
    #: The certificate store directory (one folder per purpose, see gateway.certs.store).
    store: str = "certs"
    #: DNS names and IP addresses the gateway's own certificates carry (issue, csr, status
    #: name check). An entry that parses as an IP address becomes an IP SAN.
    gateway_names: tuple[str, ...] = ()
