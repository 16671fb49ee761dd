"""What ``gateway audit`` finds on the box: the files a configuration names, loaded, and the
media loop a worker would run; handed to the sans-IO audit (``gateway.policy.audit``).

The audit claims only what it checked. The provider's certificate counts as verified once the
trust anchors each trunk names are loaded as the running gateway loads them
(``gateway.certs.material.build_client_context``: the CA bundle, or the system store, which
must hold at least one anchor). The gateway's own certificate and key are loaded as at
start-up (``load_configured_identity``): present, parsed, matching, within their validity, the
key not readable by group or others. The media loop is the worker's own decision taken here
(``gateway.media.loop.probe_media_loop``). Read errors become findings naming the file, never
tracebacks.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping

from gateway.certs.errors import CertificateError
from gateway.certs.material import build_client_context, load_configured_identity
from gateway.config import GatewayConfig
from gateway.media.loop import probe_media_loop
from gateway.policy.audit import AuditView, FileCheck

__all__ = ["AuditInputError", "audit_view", "identity_check", "trust_checks"]


class AuditInputError(Exception):
    """An input the operator named for the audit itself (the SIP secrets file) is unusable."""


def trust_checks(config: GatewayConfig) -> list[FileCheck]:
    """Each trunk's trust anchors, loaded as the gateway loads them."""
    checks = []
    for trunk in config.effective_trunks():
        bundle = trunk.trust.ca_bundle
        source = f"CA bundle {bundle}" if bundle else "the system trust store"
        subject = f"trunk {trunk.name}: {source}"
        try:
            context = build_client_context(trunk.trust)
        except CertificateError as exc:
            checks.append(FileCheck(subject, f"trunk {trunk.name}: {exc}"))
            continue
        anchors = context.cert_store_stats().get("x509_ca", 0)
        if not anchors and bundle is None:
            # A system store kept only as a hashed directory is read lazily, per handshake.
            anchors = _directory_anchors(ssl.get_default_verify_paths().capath)
        if not anchors:
            checks.append(FileCheck(subject, f"{subject}: holds no trust anchor"))
            continue
        pins = len(trunk.trust.spki_pins)
        detail = f"{anchors} trust anchor{'s' if anchors != 1 else ''}"
        if pins:
            detail += f", {pins} SPKI pin{'s' if pins != 1 else ''}"
        checks.append(FileCheck(subject, None, detail))
    return checks


def _directory_anchors(capath: str | None) -> int:
    if not capath or not os.path.isdir(capath):
        return 0
    return sum(1 for name in os.listdir(capath) if name.rsplit(".", 1)[-1].isdigit())


def identity_check(config: GatewayConfig) -> FileCheck | None:
    """The gateway's certificate and key as start-up loads them; None when none is set."""
    identity = config.wan.identity
    if identity is None:
        return None
    subject = f"certificate {identity.certificate} and key {identity.private_key}"
    try:
        loaded = load_configured_identity(identity)
    except CertificateError as exc:
        return FileCheck(subject, str(exc))
    leaf = loaded.leaf
    return FileCheck(
        subject, None, f"{leaf.subject.rfc4514_string()}, until {leaf.not_valid_after_utc:%Y-%m-%d}"
    )


def _sip_secrets(config: GatewayConfig) -> list[str] | None:
    name = config.audit.sip_secrets_file
    if not name:
        return None
    try:
        text = config.path(name).read_text(encoding="utf-8")
    except OSError as exc:
        raise AuditInputError(f"{name}: {exc.strerror}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def audit_view(config: GatewayConfig, env: Mapping[str, str] | None = None) -> AuditView:
    """The deployment as the audit sees it: configuration, files, environment, media loop."""
    env = os.environ if env is None else env
    wan, lan = config.wan, config.lan
    trunks = config.effective_trunks()
    media_loop = probe_media_loop(config.media.keep_core_awake)
    return AuditView(
        tls_verify=not (wan.insecure_skip_verify or any(t.insecure_skip_verify for t in trunks)),
        wan_transport="tcp" if wan.insecure_plaintext_signalling else "tls",
        srtp_required=not wan.insecure_plaintext_media,
        plaintext_downgrade=wan.insecure_plaintext_media
        or any(t.insecure_plaintext_media for t in trunks),
        admin_token=env.get(config.admin.token_env) or None,
        sip_secrets=_sip_secrets(config),
        personal_words=(*config.audit.personal_words, wan.sip_domain),
        policy=config.policy,
        admin_enabled=config.admin.enabled,
        admin_client_certificates=config.admin.client_ca is not None,
        provider_trust=trust_checks(config),
        identity=identity_check(config),
        sides_separate=lan.sip_address != wan.sip_address
        and lan.media_address != wan.media_address,
        media_loop=media_loop.engine,
        media_loop_reason=media_loop.detail
        if media_loop.engine == "c"
        else f"{media_loop.reason}{': ' + media_loop.detail if media_loop.detail else ''}",
        keep_core_awake_ignored=media_loop.keep_core_awake_ignored,
    )
