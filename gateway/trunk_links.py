"""The verified TLS links to every trunk's provider, and what the core's trunks are made of
(glue: asyncio, ssl; RFC 3261 §18, RFC 3263, RFC 5626 §4.4.1 through ``ProviderLink``).

Each trunk has its own link (its own provider address, trust and pins) and its own TLS
material built from the gateway's one identity and the trunk's trust. The core names a trunk's
provider by a ``Peer`` without a connection; ``send`` finds that trunk's current connection.
A link's state goes to the core with the trunk's name, so phones' calls go to the trunks that
are up and a trunk that is down is skipped.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from gateway.certs.material import verify_pins
from gateway.certs.runtime import TlsMaterial
from gateway.config import GatewayConfig, TrunkSettings
from gateway.media.suites import SrtpSuite
from gateway.sdp.negotiation import MediaPolicy
from gateway.sip.peer import Peer, Side
from gateway.sip.trunks import Route, Trunk
from gateway.transport.provider import ProviderLink
from gateway.transport.stream import SipStreamConnection

log = logging.getLogger("gateway.provider")

#: (trunk name, up, reason)
TrunkStateHandler = Callable[[str, bool, str], None]


@dataclass
class TrunkLink:
    settings: TrunkSettings
    trunk: Trunk
    tls: TlsMaterial
    link: ProviderLink | None = None


def core_trunks(
    config: GatewayConfig, media: MediaPolicy
) -> tuple[tuple[Trunk, ...], tuple[Route, ...]]:
    """The core's view of the configured trunks and routes."""
    transport = "tcp" if config.wan.insecure_plaintext_signalling else "tls"
    trunks = []
    for t in config.effective_trunks():
        suites = tuple(SrtpSuite(n) for n in t.srtp_suites) if t.srtp_suites else media.suites
        trunk_media = MediaPolicy(
            lan_address=media.lan_address,
            wan_address=media.wan_address,
            suites=suites,
            allow_plaintext=t.insecure_plaintext_media,
            offer_rtcp_mux=media.offer_rtcp_mux,
            # Each trunk's own keying order, else [wan]'s; the DTLS certificate is the site's.
            keying=t.keying or config.wan.keying,
            dtls_fingerprint=media.dtls_fingerprint,
        )
        trunks.append(
            Trunk(
                name=t.name,
                peer=Peer(Side.WAN, transport, (t.provider_host, t.provider_port or 5061)),
                domain=t.sip_domain,
                number_format=t.number_format,
                caller_id_format=t.caller_id_format,
                answer_timeout=t.answer_timeout,
                down_for=t.down_for,
                media=trunk_media,
            )
        )
    routes = tuple(Route(r.destinations, r.trunks) for r in config.routes)
    return tuple(trunks), routes


class TrunkLinks:
    """One verified provider link per trunk."""

    def __init__(self, config: GatewayConfig, trunks: tuple[Trunk, ...]) -> None:
        self._config = config
        wan = config.wan
        self.links: list[TrunkLink] = []
        for settings, trunk in zip(config.effective_trunks(), trunks, strict=True):
            tls = TlsMaterial(
                wan.identity,
                settings.trust,
                warn_days=config.certs.warn_days,
                skip_verify=settings.insecure_skip_verify,
                plaintext=wan.insecure_plaintext_signalling,
            )
            self.links.append(TrunkLink(settings, trunk, tls))
        self._by_address = {t.trunk.peer.address: t for t in self.links}

    @property
    def first(self) -> TrunkLink:
        return self.links[0]

    def load(self) -> None:
        for t in self.links:
            t.tls.load()

    def start(
        self,
        connection_factory: Callable[[], SipStreamConnection],
        on_state: TrunkStateHandler,
    ) -> None:
        wan = self._config.wan
        for t in self.links:
            trust = t.settings.trust
            pins = trust.spki_pins

            def state(up: bool, reason: str, name: str = t.trunk.name) -> None:
                on_state(name, up, reason)

            def context(tls: TlsMaterial = t.tls) -> ssl.SSLContext | None:
                return tls.client_context

            def pin_check(obj: ssl.SSLObject, pinned: tuple[str, ...] = pins) -> None:
                verify_pins(obj, pinned)

            t.link = ProviderLink(
                host=t.settings.provider_host,
                port=t.settings.provider_port,
                server_name=trust.server_name,
                local_address=wan.sip_address,
                context_factory=context,
                pin_check=pin_check if pins else None,
                connection_factory=connection_factory,
                on_state=state,
                keepalive_interval=wan.keepalive_interval,
                reconnect_min=wan.reconnect_min,
                reconnect_max=wan.reconnect_max,
                trunk=t.trunk.name if len(self.links) > 1 else "",
            )
            t.link.start()

    async def stop(self) -> None:
        for t in self.links:
            if t.link is not None:
                await t.link.stop()

    def send(self, peer: Peer, data: bytes) -> bool:
        """To a trunk's provider over its current connection; False when it has none."""
        t = self._by_address.get(peer.address)
        return t is not None and t.link is not None and t.link.send(data)

    def peer_of(self, conn: SipStreamConnection) -> Peer | None:
        """The trunk whose current link ``conn`` is, as the core names it."""
        for t in self.links:
            if t.link is not None and conn is t.link.connection:
                return t.trunk.peer
        return None

    def connection_closed(self, conn: SipStreamConnection, reason: str) -> None:
        for t in self.links:
            if t.link is not None:
                t.link.connection_closed(conn, reason)

    def provider_addresses(self) -> list[str]:
        """Every trunk's resolved provider address (allowed on the WAN, never banned)."""
        return [t.link.target.address for t in self.links if t.link and t.link.target]

    def poll(self) -> None:
        for t in self.links:
            t.tls.poll()

    def check_expiry(self) -> None:
        # Every trunk presents the gateway's one identity: its expiry is watched once.
        self.first.tls.check_expiry()

    def reload(self, reason: str) -> str | None:
        """Reload every trunk's TLS material; the first error, if any."""
        errors = [e for e in (t.tls.reload(reason) for t in self.links[1:]) if e]
        return errors[0] if errors else None
