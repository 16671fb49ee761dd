"""Per-call media negotiation across the two legs of the B2BUA (sans-IO).

Theory of operation
-------------------
The phone (LAN) speaks RTP/AVP, the provider (WAN) RTP/SAVP with SDES keys. Each SDP body that
crosses the gateway goes through one :class:`CallMedia` method, which parses it, records what
the peer said, and returns the body for the other leg with the gateway's own addresses, ports
and keys in it. Nothing from the LAN side (addresses, o= user, ICE candidates, RTCP address,
SSRC CNAMEs) is copied to the WAN side and vice versa; everything else (codecs, fmtp, ptime,
direction) passes through. m-lines keep their index on both legs, so stream ``i`` of the phone
is stream ``i`` of the provider (RFC 3264 §6, §8.1: m-lines are never removed, only disabled).

States (an offer from either side must be answered before the next one, RFC 3264 §4)::

    IDLE/STABLE --offer_from_lan--> LAN_OFFERED --answer_from_wan--> STABLE (more answers
                                                                     allowed: forking, 18x/200)
    IDLE/STABLE --offer_from_wan--> WAN_OFFERED --answer_from_lan--> STABLE
    LAN_OFFERED/WAN_OFFERED --offer_rejected--> STABLE (or IDLE before any agreement)
    any --release--> CLOSED

An offer while another is pending raises SdpError with status 491 (glare, RFC 3261 §14.2).
A refused offer or answer (MediaRefused, 488), like an offer the other side rejected
(``offer_rejected``), leaves the previous agreement in force, as RFC 3264 §8 asks for a failed
re-offer; the state returns to STABLE so the next offer can come.

Security rules (docs/design.md §3.1, §3.2, §3.4)
------------------------------------------------
- The WAN side is RTP/SAVP with one of ``policy.suites`` (RFC 4568 §7, RFC 7714 §12). An
  RTP/AVP answer, an answer without a crypto line matching one we offered (same tag and suite,
  RFC 4568 §7.1.3), NULL suites, MKIs (libsrtp is driven without MKI here) and unknown mandatory
  session parameters (RFC 4568 §6.3.7) are refused with 488 and a Warning text. Only
  ``policy.allow_plaintext`` lets an RTP/AVP peer (or an answer with no crypto line at all)
  through, and ``uses_plaintext_downgrade`` then says so, for the B2BUA to log at every call.
- Our keys are fresh per call and direction (``secrets``). Across re-offers we keep our outgoing
  key (RFC 4568 §7.1.4 allows it; the packet path keeps its ROC) unless the operator asks
  (:meth:`CallMedia.request_rekey`), the suite changes, or, when the provider offers, its media
  address or key changed (a new receiver would not know our ROC). Every change of a key in
  either direction raises that direction's ``SrtpKeying.generation``.
- DTLS-SRTP (RFC 5763, RFC 5764, RFC 8842) where the trunk's ``policy.keying`` allows it:
  ``gateway.sdp.dtls`` reads and writes a=fingerprint/a=setup/a=tls-id and picks roles; the
  stream then carries ``wan_dtls`` (role, the provider's fingerprints, the trunk's suites as
  profiles, the association's generation) and no SDES key: the worker keys from the handshake.
- RTCP mux (RFC 5761 §5.1.1) is used on the WAN only when both sides said so; the LAN never
  muxes (legacy phones), so a=rtcp-mux never reaches the phone.

Payload types and codecs (RFC 3264 §5.1, §6.1; RFC 4733 §2.4)
------------------------------------------------------------
The gateway relays RTP without touching its payload type, so it never changes a payload type
number, an m= format list, a=rtpmap, a=fmtp, a=ptime or a=maxptime: both legs then see the
same mapping, and each peer's numbers mean on the other leg what they meant on its own. An
answer that uses its own number for a codec (RFC 3264 §6.1 only says SHOULD reuse the
offer's: the offerer sends with the answer's numbers, the answerer with the offer's) therefore
works as it stands: a telephone-event offered as 101 and answered as 96 is sent by the
offerer as 96 and by the answerer as 101, on both legs. Rewriting the numbers in one leg's SDP
only would break exactly that, unless every packet's PT were rewritten as well.

Fax (ITU-T T.38 over UDPTL, RFC 3362)
-------------------------------------
UDPTL has no SRTP counterpart here, so an image stream is never anchored: beside audio it is
disabled (port 0) and the fax goes as G.711 pass-through in the audio stream; an offer whose
only usable stream would be image (the usual T.38 re-INVITE) is refused with MediaRefused
(488 with :data:`FAX_REFUSAL` as Warning), nothing is sent on, and the audio stays as agreed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from gateway.media.control import SrtpKeying, StreamSpec
from gateway.media.ports import PortAllocator
from gateway.media.suites import SrtpSuite
from gateway.sdp import dtls
from gateway.sdp.crypto import CryptoAttribute, new_crypto
from gateway.sdp.errors import MediaRefused, SdpError
from gateway.sdp.model import MediaDescription, SessionDescription
from gateway.sdp.rewrite import (
    OriginKeeper,
    anchor,
    anchor_session,
    crypto_problem,
    disable,
    mirror,
    peer_transport,
    phone_direction,
    strip_feedback,
)

__all__ = ["FAX_REFUSAL", "CallMedia", "MediaPolicy", "MediaRefused", "SdpError"]

_DEFAULT_SUITES = (
    SrtpSuite.AES_CM_128_HMAC_SHA1_80,
    SrtpSuite.AES_CM_128_HMAC_SHA1_32,
    SrtpSuite.AEAD_AES_128_GCM,
    SrtpSuite.AEAD_AES_256_GCM,
)

#: Media the gateway anchors; anything else (image/T.38, application…) is disabled (port 0).
_RELAYED_MEDIA = frozenset({"audio", "video"})
_PLAIN_TO_SECURE = {"RTP/AVP": "RTP/SAVP", "RTP/AVPF": "RTP/SAVPF"}
_SECURE_TO_PLAIN = {v: k for k, v in _PLAIN_TO_SECURE.items()}
#: DTLS-SRTP profiles (RFC 5764 §8); rtpengine offers them with SDES lines too: keyed by SDES
#: (when the trunk's keying picks it), they are answered with the SDES profile.
_DTLS_TO_SDES = dtls.DTLS_TO_SDES

#: Warning text of the 488 to an offer that only a T.38 (image/udptl) stream would carry.
FAX_REFUSAL = "T.38 fax (image/udptl) is not carried; G.711 pass-through in the audio is used"


@dataclass(frozen=True)
class MediaPolicy:
    """What the operator allows for one provider (trunk)."""

    #: Gateway's LAN media IP (what the phone is told).
    lan_address: str
    #: Gateway's WAN media IP (what the provider is told).
    wan_address: str
    #: Suites offered and accepted toward the provider, in order of preference.
    suites: tuple[SrtpSuite, ...] = _DEFAULT_SUITES
    #: The explicit per-provider downgrade ("allow plaintext media"), off by default.
    allow_plaintext: bool = False
    #: Offer RTCP multiplexing (RFC 5761) toward the provider.
    offer_rtcp_mux: bool = True
    #: Keying methods toward the provider in order of preference ("dtls", "sdes").
    keying: tuple[str, ...] = ("sdes",)
    #: The gateway's DTLS certificate fingerprint, from the media side (needed for "dtls").
    dtls_fingerprint: dtls.FingerprintSource | None = None


class _State(enum.Enum):
    IDLE = "idle"
    LAN_OFFERED = "lan-offered"
    WAN_OFFERED = "wan-offered"
    STABLE = "stable"
    CLOSED = "closed"


@dataclass(slots=True)
class _Slot:
    """One m-line's resources, kept for the whole call."""

    lan_port: int | None = None
    wan_port: int | None = None
    #: Masters we last offered per suite: reused by re-offers so our key stays put.
    offered_masters: dict[SrtpSuite, bytes] = field(default_factory=dict)
    dtls: dtls.Association = field(default_factory=lambda: dtls.Association(dtls.new_tls_id()))


@dataclass(frozen=True, slots=True)
class _PhoneSide:
    addr: tuple[str, int] | None
    rtcp_addr: tuple[str, int] | None
    #: Direction as the phone wrote it (c=0.0.0.0 hold folded in).
    direction: str
    #: The phone's profile, RTP/AVP or RTP/AVPF.
    proto: str


@dataclass(frozen=True, slots=True)
class _ProviderSide:
    addr: tuple[str, int] | None
    rtcp_addr: tuple[str, int] | None
    #: The provider offered (in its offer) or accepted (in its answer) a=rtcp-mux.
    rtcp_mux: bool
    #: The provider's key: what it protects with, so what we unprotect with.
    rx: CryptoAttribute | None
    plaintext: bool
    direction: str
    proto: str
    #: DTLS-SRTP keying instead of ``rx`` (RFC 5763).
    dtls: dtls.PeerDtls | None = None


@dataclass(frozen=True, slots=True)
class _Agreed:
    """One m-line once offer and answer are both known."""

    phone: _PhoneSide
    provider: _ProviderSide
    #: Our key toward the provider.
    tx: CryptoAttribute | None
    rtcp_mux: bool


@dataclass(frozen=True, slots=True)
class _LanOffer:
    """A phone offer we forwarded, per m-line: None when disabled."""

    phone: list[_PhoneSide | None]
    offered: list[tuple[CryptoAttribute, ...]]
    wan_proto: list[str]
    #: (media, proto, formats) of the phone's m-lines, mirrored by disabled answer lines.
    mirror: list[tuple[str, str, list[str]]]


@dataclass(frozen=True, slots=True)
class _WanOffer:
    provider: list[_ProviderSide | None]
    mirror: list[tuple[str, str, list[str]]]


class CallMedia:
    """The media side of one call: SDP rewriting between the legs and the relay's streams.

    ``lan_ports`` and ``wan_ports`` are the two sides' port ranges; given one allocator only,
    both sides draw from it.
    """

    def __init__(
        self,
        call_id: str,
        policy: MediaPolicy,
        lan_ports: PortAllocator,
        wan_ports: PortAllocator | None = None,
    ) -> None:
        if not policy.suites:
            raise ValueError("MediaPolicy.suites is empty: nothing could ever be offered")
        if (problem := dtls.check_keying(policy.keying)) is not None:
            raise ValueError(f"MediaPolicy.keying: {problem}")
        self.call_id = call_id
        self.policy = policy
        self._lan_ports = lan_ports
        self._wan_ports = wan_ports if wan_ports is not None else lan_ports
        self._state = _State.IDLE
        self._slots: list[_Slot] = []
        self._lan_origin = OriginKeeper(policy.lan_address)
        self._wan_origin = OriginKeeper(policy.wan_address)
        self._lan_offer: _LanOffer | None = None
        self._wan_offer: _WanOffer | None = None
        #: Answers to our last WAN offer by early dialog (To-tag); None = untagged.
        self._answers: dict[str | None, list[_Agreed | None]] = {}
        self._agreed: list[_Agreed | None] = []
        self._tx_applied: list[bytes | None] = []
        self._rx_applied: list[bytes | None] = []
        self._tx_generation: list[int] = []
        self._rx_generation: list[int] = []
        self._rekey = False

    # ------------------------------------------------------------------ phone offers

    def offer_from_lan(self, body: bytes) -> bytes:
        """The phone's RTP/AVP offer -> our RTP/SAVP offer to the provider."""
        self._begin_offer()
        sd = SessionDescription.parse(body)
        self._check_offer_count(sd, "phone")
        _refuse_fax_only(sd, [_phone_relays(md) for md in sd.media])
        fresh: list[tuple[PortAllocator, int]] = []
        phones: list[_PhoneSide | None] = []
        offered: list[tuple[CryptoAttribute, ...]] = []
        protos: list[str] = []
        mirrors: list[tuple[str, str, list[str]]] = []
        try:
            for index, md in enumerate(sd.media):
                mirrors.append(mirror(md))
                slot = self._slot(index)
                if not _phone_relays(md):
                    # Not relayed: other media (T.38 …), port 0, or an SRTP/DTLS profile
                    # (such phones are not legacy phones: not anchored).
                    phone = None
                else:
                    addr, rtcp_addr, direction = peer_transport(md, "phone offer")
                    phone = _PhoneSide(addr, rtcp_addr, direction, md.proto)
                if phone is None:
                    disable(md)
                    phones.append(None)
                    offered.append(())
                    protos.append(md.proto)
                    continue
                self._ensure_ports(slot, fresh)
                assert slot.wan_port is not None
                keying = self.policy.keying
                cryptos = self._offer_cryptos(index, slot) if "sdes" in keying else ()
                wan_proto = dtls.offer_proto(md.proto, keying)
                anchor(md, slot.wan_port, wan_proto, self.policy.wan_address)
                if md.direction != phone.direction:
                    md.direction = phone.direction
                for crypto in cryptos:
                    md.add_attribute("crypto", crypto.format())
                if "dtls" in keying:
                    setup = slot.dtls.offer_setup(self._rekey)
                    dtls.write(md, slot.dtls, self.policy.dtls_fingerprint, setup)
                if self.policy.offer_rtcp_mux:
                    md.add_attribute("rtcp-mux")
                phones.append(phone)
                offered.append(cryptos)
                protos.append(wan_proto)
            anchor_session(sd, self.policy.wan_address)
            out = self._wan_origin.stamp(sd)
        except BaseException:
            self._give_back(fresh)
            raise
        for index, cryptos in enumerate(offered):
            if cryptos:
                self._slots[index].offered_masters = {c.suite: c.master for c in cryptos}
        self._rekey = False
        self._lan_offer = _LanOffer(phones, offered, protos, mirrors)
        self._wan_offer = None
        self._answers = {}
        self._state = _State.LAN_OFFERED
        return out

    def answer_from_wan(self, body: bytes, *, early_dialog: str | None = None) -> bytes:
        """The provider's answer -> our RTP/AVP answer to the phone.

        ``early_dialog`` is the To-tag of the (early) dialog the answer came in; with forking,
        each dialog's answer is kept until :meth:`confirm` picks one.
        """
        self._require_open()
        offer = self._lan_offer
        if offer is None or self._state not in (_State.LAN_OFFERED, _State.STABLE):
            raise SdpError("answer from the provider without an offer to it", status_hint=400)
        try:
            return self._take_wan_answer(offer, body, early_dialog)
        except SdpError:
            # A refused answer still ends the exchange (the B2BUA tears the call or the
            # re-INVITE down); the previous agreement stays and other forks may still answer.
            self._state = _State.STABLE
            raise

    def _take_wan_answer(self, offer: _LanOffer, body: bytes, early_dialog: str | None) -> bytes:
        sd = SessionDescription.parse(body)
        if len(sd.media) != len(offer.phone):
            raise MediaRefused(
                f"provider answer has {len(sd.media)} m-lines, the offer had {len(offer.phone)}"
            )
        agreed: list[_Agreed | None] = []
        for index, md in enumerate(sd.media):
            phone = offer.phone[index]
            if phone is None or md.port == 0:
                disable(md, offer.mirror[index])
                agreed.append(None)
                continue
            provider, tx = self._check_wan_answer(md, offer.offered[index], offer.wan_proto[index])
            slot = self._slots[index]
            assert slot.lan_port is not None
            anchor(md, slot.lan_port, phone.proto, self.policy.lan_address)
            if md.direction != provider.direction:
                md.direction = provider.direction
            agreed.append(_Agreed(phone, provider, tx, rtcp_mux=provider.rtcp_mux))
        anchor_session(sd, self.policy.lan_address)
        out = self._lan_origin.stamp(sd)
        self._answers[early_dialog] = agreed
        self._apply(agreed)
        self._state = _State.STABLE
        return out

    def confirm(self, early_dialog: str) -> None:
        """The 2xx came on ``early_dialog``: keep its answer, forget the other forks'."""
        self._require_open()
        if early_dialog in self._answers:
            chosen = self._answers[early_dialog]
        elif None in self._answers:
            # The answer came without a To-tag: it is this dialog's.
            chosen = self._answers[None]
        else:
            raise SdpError(f"no provider answer for dialog {early_dialog!r}", status_hint=500)
        self._answers = {early_dialog: chosen}
        self._apply(chosen)

    # --------------------------------------------------------------- provider offers

    def offer_from_wan(self, body: bytes) -> bytes:
        """The provider's RTP/SAVP offer -> our RTP/AVP offer to the phone."""
        self._begin_offer()
        sd = SessionDescription.parse(body)
        self._check_offer_count(sd, "provider")
        providers: list[_ProviderSide | None] = []
        mirrors: list[tuple[str, str, list[str]]] = []
        refusals: list[str] = []
        audio_refused = False
        for md in sd.media:
            mirrors.append(mirror(md))
            provider = None
            if md.media in _RELAYED_MEDIA and md.port != 0:
                provider, refusal = self._check_wan_offer(md)
                if refusal is not None:
                    refusals.append(refusal)
                    audio_refused = audio_refused or md.media == "audio"
            providers.append(provider)
        if refusals and (audio_refused or not any(providers)):
            raise MediaRefused("provider offer refused: " + "; ".join(refusals))
        _refuse_fax_only(sd, [provider is not None for provider in providers])
        fresh: list[tuple[PortAllocator, int]] = []
        try:
            for index, md in enumerate(sd.media):
                slot = self._slot(index)
                provider = providers[index]
                if provider is None:
                    disable(md)
                    continue
                self._ensure_ports(slot, fresh)
                assert slot.lan_port is not None
                # Legacy phones get RTP/AVP whatever feedback profile the provider offered
                # (an AVPF offer is refused by a plain phone: RFC 4585 §4.1); our answer keeps
                # the offered profile, where a=rtcp-fb is optional (RFC 5124, RFC 3264 §6).
                anchor(md, slot.lan_port, "RTP/AVP", self.policy.lan_address)
                strip_feedback(md.attributes)
                if md.direction != provider.direction:
                    md.direction = provider.direction
            anchor_session(sd, self.policy.lan_address)
            strip_feedback(sd.attributes)
            out = self._lan_origin.stamp(sd)
        except BaseException:
            self._give_back(fresh)
            raise
        self._wan_offer = _WanOffer(providers, mirrors)
        self._lan_offer = None
        self._state = _State.WAN_OFFERED
        return out

    def answer_from_lan(self, body: bytes) -> bytes:
        """The phone's answer -> our RTP/SAVP answer to the provider (one a=crypto each)."""
        self._require_open()
        offer = self._wan_offer
        if offer is None or self._state is not _State.WAN_OFFERED:
            raise SdpError("answer from the phone without an offer to it", status_hint=400)
        try:
            return self._take_lan_answer(offer, body)
        except SdpError:
            self.offer_rejected()
            raise

    def offer_rejected(self) -> None:
        """The pending offer got no answer (error response, CANCEL, refused answer).

        The previous agreement, if any, stays in force (RFC 3264 §8) and a new offer may come.
        """
        self._require_open()
        if self._state is _State.LAN_OFFERED:
            self._lan_offer = None
        elif self._state is _State.WAN_OFFERED:
            self._wan_offer = None
        else:
            return
        self._state = _State.STABLE if self._agreed else _State.IDLE

    def _take_lan_answer(self, offer: _WanOffer, body: bytes) -> bytes:
        sd = SessionDescription.parse(body)
        if len(sd.media) != len(offer.provider):
            raise SdpError(
                f"phone answer has {len(sd.media)} m-lines, the offer had {len(offer.provider)}"
            )
        agreed: list[_Agreed | None] = []
        for index, md in enumerate(sd.media):
            provider = offer.provider[index]
            if provider is None or md.port == 0:
                disable(md, offer.mirror[index])
                agreed.append(None)
                continue
            addr, rtcp_addr, direction = peer_transport(md, "phone answer")
            phone = _PhoneSide(addr, rtcp_addr, direction, md.proto)
            slot = self._slots[index]
            assert slot.wan_port is not None
            keyless = provider.plaintext or provider.dtls is not None
            tx = None if keyless else self._answer_crypto(index, provider)
            anchor(md, slot.wan_port, provider.proto, self.policy.wan_address)
            if md.direction != direction:
                md.direction = direction
            if tx is not None:
                md.add_attribute("crypto", tx.format())
            if provider.dtls is not None and provider.dtls.answer_setup is not None:
                setup = provider.dtls.answer_setup
                dtls.write(md, slot.dtls, self.policy.dtls_fingerprint, setup)
            if provider.rtcp_mux:
                md.add_attribute("rtcp-mux")
            agreed.append(_Agreed(phone, provider, tx, rtcp_mux=provider.rtcp_mux))
        anchor_session(sd, self.policy.wan_address)
        out = self._wan_origin.stamp(sd)
        self._rekey = False
        self._answers = {None: agreed}
        self._apply(agreed)
        self._state = _State.STABLE
        return out

    # ------------------------------------------------------------------------ queries

    def streams(self) -> list[StreamSpec | None]:
        """Per m-line, what the relay must do now; None for disabled or not yet agreed."""
        specs: list[StreamSpec | None] = []
        for index, slot in enumerate(self._slots):
            agreed = self._agreed[index] if index < len(self._agreed) else None
            if agreed is None or slot.lan_port is None or slot.wan_port is None:
                specs.append(None)
                continue
            tx, rx = agreed.tx, agreed.provider.rx
            specs.append(
                StreamSpec(
                    lan_port=slot.lan_port,
                    wan_port=slot.wan_port,
                    phone_addr=agreed.phone.addr,
                    provider_addr=agreed.provider.addr,
                    provider_rtcp_addr=None if agreed.rtcp_mux else agreed.provider.rtcp_addr,
                    phone_rtcp_addr=agreed.phone.rtcp_addr,
                    wan_rtcp_mux=agreed.rtcp_mux,
                    wan_tx=None
                    if tx is None
                    else SrtpKeying(tx.suite.value, tx.master, self._tx_generation[index]),
                    wan_rx=None
                    if rx is None
                    else SrtpKeying(rx.suite.value, rx.master, self._rx_generation[index]),
                    wan_plaintext=agreed.provider.plaintext,
                    direction=phone_direction(agreed.phone.direction, agreed.provider.direction),
                    wan_dtls=dtls.keying(agreed.provider.dtls, self.policy.suites, slot.dtls),
                )
            )
        return specs

    def chosen_suite(self) -> SrtpSuite | None:
        """The suite of the first keyed stream (the audio one in practice), if any; a
        DTLS-keyed stream's once its handshake reported it (:meth:`dtls_keyed`)."""
        for agreed, slot in zip(self._agreed, self._slots, strict=False):
            if agreed is not None and agreed.tx is not None:
                return agreed.tx.suite
            if agreed is not None and agreed.provider.dtls is not None and slot.dtls.suite:
                return slot.dtls.suite
        return None

    @property
    def keying(self) -> str | None:
        """How the first secured WAN stream is keyed: "dtls", "sdes", or None (none is)."""
        for agreed in self._agreed:
            if agreed is not None and not agreed.provider.plaintext:
                return "dtls" if agreed.provider.dtls is not None else "sdes"
        return None

    def dtls_keyed(self, index: int, generation: int, suite: str) -> bool:
        """DtlsKeyed from the worker: True when it keyed the association in force."""
        return index < len(self._slots) and self._slots[index].dtls.keyed(generation, suite)

    @property
    def uses_plaintext_downgrade(self) -> bool:
        """True when some WAN stream is plain RTP under ``policy.allow_plaintext``."""
        return any(a is not None and a.provider.plaintext for a in self._agreed)

    def request_rekey(self) -> None:
        """Operator's request: the next SDP we send toward the provider carries new keys."""
        self._rekey = True

    def release(self) -> None:
        """Give the ports back and forget every key; the object is unusable afterwards."""
        for slot in self._slots:
            if slot.lan_port is not None:
                self._lan_ports.release(slot.lan_port)
            if slot.wan_port is not None:
                self._wan_ports.release(slot.wan_port)
        self._slots = []
        self._agreed = []
        self._answers = {}
        self._lan_offer = None
        self._wan_offer = None
        self._tx_applied = []
        self._rx_applied = []
        self._state = _State.CLOSED

    # ------------------------------------------------------------------------ helpers

    def _require_open(self) -> None:
        if self._state is _State.CLOSED:
            raise SdpError(f"call {self.call_id}: media already released", status_hint=500)

    def _begin_offer(self) -> None:
        self._require_open()
        if self._state in (_State.LAN_OFFERED, _State.WAN_OFFERED):
            raise SdpError("an offer is already waiting for its answer", status_hint=491)

    def _check_offer_count(self, sd: SessionDescription, who: str) -> None:
        if len(sd.media) < len(self._slots):
            # RFC 3264 §8.1: a re-offer disables m-lines with port 0, never removes them.
            raise SdpError(
                f"{who} re-offer has {len(sd.media)} m-lines, the session has {len(self._slots)}"
            )

    def _slot(self, index: int) -> _Slot:
        while len(self._slots) <= index:
            self._slots.append(_Slot())
            self._tx_applied.append(None)
            self._rx_applied.append(None)
            self._tx_generation.append(0)
            self._rx_generation.append(0)
        return self._slots[index]

    def _ensure_ports(self, slot: _Slot, fresh: list[tuple[PortAllocator, int]]) -> None:
        if slot.lan_port is None:
            slot.lan_port = self._lan_ports.allocate()
            fresh.append((self._lan_ports, slot.lan_port))
        if slot.wan_port is None:
            slot.wan_port = self._wan_ports.allocate()
            fresh.append((self._wan_ports, slot.wan_port))

    def _give_back(self, fresh: list[tuple[PortAllocator, int]]) -> None:
        for allocator, port in fresh:
            allocator.release(port)
            for slot in self._slots:
                if allocator is self._lan_ports and slot.lan_port == port:
                    slot.lan_port = None
                if allocator is self._wan_ports and slot.wan_port == port:
                    slot.wan_port = None

    def _offer_cryptos(self, index: int, slot: _Slot) -> tuple[CryptoAttribute, ...]:
        """One crypto line per allowed suite, tags 1..n, keeping our current key if asked to."""
        current = self._agreed[index] if index < len(self._agreed) else None
        cryptos: list[CryptoAttribute] = []
        for tag, suite in enumerate(self.policy.suites, start=1):
            master: bytes | None = None
            if not self._rekey:
                if current is not None and current.tx is not None and current.tx.suite is suite:
                    master = current.tx.master
                else:
                    master = slot.offered_masters.get(suite)
            if master is None:
                cryptos.append(new_crypto(tag, suite))
            else:
                cryptos.append(CryptoAttribute(tag=tag, suite=suite, master=master))
        return tuple(cryptos)

    def _offered_names(self) -> str:
        return ", ".join(s.value for s in self.policy.suites)

    def _check_wan_answer(
        self, md: MediaDescription, offered: tuple[CryptoAttribute, ...], wan_proto: str
    ) -> tuple[_ProviderSide, CryptoAttribute | None]:
        """Validate one accepted m-line of the provider's answer; MediaRefused if insecure."""
        if dtls.answer_method(md, self.policy.keying) == "dtls":
            peer = dtls.read_answer(md, self.policy.keying, wan_proto)
            return self._dtls_provider(md, peer, "provider answer"), None
        lines = [value for value in md.get_attributes("crypto") if value is not None]
        plaintext = False
        rx: CryptoAttribute | None = None
        tx: CryptoAttribute | None = None
        if md.proto == wan_proto and lines:
            by_tag = {c.tag: c for c in offered}
            problems: list[str] = []
            for value in lines:
                try:
                    crypto = CryptoAttribute.parse(value)
                except SdpError as exc:
                    problems.append(exc.reason)
                    continue
                ours = by_tag.get(crypto.tag)
                if ours is None or ours.suite is not crypto.suite:
                    problems.append(
                        f"tag {crypto.tag} {crypto.suite.value} matches no offered crypto line"
                    )
                    continue
                problem = crypto_problem(crypto)
                if problem is not None:
                    problems.append(problem)
                    continue
                rx, tx = crypto, ours
                break
            if rx is None:
                raise MediaRefused(
                    f"provider answer has no acceptable crypto for m={md.media}"
                    f" (offered {self._offered_names()}; {'; '.join(problems)})"
                )
        elif md.proto == wan_proto and not self.policy.allow_plaintext:
            raise MediaRefused(
                f"provider answer has no acceptable crypto for m={md.media}"
                f" (offered {self._offered_names()}; the answer has no a=crypto line)"
            )
        elif md.proto in _PLAIN_TO_SECURE or md.proto == wan_proto:
            if not self.policy.allow_plaintext:
                raise MediaRefused(
                    f"provider answered plaintext {md.proto} for m={md.media}; SRTP is required"
                    f" (offered {self._offered_names()})"
                )
            plaintext = True
        else:
            raise MediaRefused(
                f"provider answered {md.proto} for m={md.media}, offered {wan_proto}"
            )
        addr, rtcp_addr, direction = peer_transport(md, "provider answer")
        mux = self.policy.offer_rtcp_mux and md.rtcp_mux
        provider = _ProviderSide(addr, rtcp_addr, mux, rx, plaintext, direction, md.proto)
        return provider, tx

    def _check_wan_offer(self, md: MediaDescription) -> tuple[_ProviderSide | None, str | None]:
        """The provider side of one offered m-line, or None and why it is refused: the
        keying methods the offer carries are tried in the trunk's order."""
        methods, refusal = dtls.offer_methods(md, self.policy.keying)
        problems = [refusal] if refusal is not None else []
        for method in methods:
            if method == "sdes":
                provider, problem = self._check_sdes_offer(md)
            else:
                try:
                    peer = dtls.read_offer(md)
                    provider, problem = self._dtls_provider(md, peer, "provider offer"), None
                except MediaRefused as exc:
                    provider, problem = None, exc.warning
            if provider is not None:
                return provider, None
            problems.append(problem or f"m={md.media} refused")
        return None, "; ".join(problems)

    def _check_sdes_offer(self, md: MediaDescription) -> tuple[_ProviderSide | None, str | None]:
        rx: CryptoAttribute | None = None
        plaintext = False
        proto = _DTLS_TO_SDES.get(md.proto, md.proto)
        if proto in _SECURE_TO_PLAIN:
            problems: list[str] = []
            candidates: list[tuple[int, int, CryptoAttribute]] = []
            for position, value in enumerate(md.get_attributes("crypto")):
                if value is None:
                    continue
                try:
                    crypto = CryptoAttribute.parse(value)
                except SdpError as exc:
                    problems.append(exc.reason)
                    continue
                if crypto.suite not in self.policy.suites:
                    problems.append(f"{crypto.suite.value} not allowed by policy")
                    continue
                problem = crypto_problem(crypto)
                if problem is not None:
                    problems.append(problem)
                    continue
                rank = self.policy.suites.index(crypto.suite)
                candidates.append((rank, position, crypto))
            if not candidates:
                detail = "; ".join(problems) if problems else "no a=crypto line"
                return None, (
                    f"no acceptable crypto for m={md.media}"
                    f" (accepted {self._offered_names()}; {detail})"
                )
            rx = min(candidates, key=lambda c: (c[0], c[1]))[2]
        elif md.proto in _PLAIN_TO_SECURE:
            if not self.policy.allow_plaintext:
                return None, f"plaintext {md.proto} offered for m={md.media}; SRTP is required"
            plaintext = True
        else:
            return None, f"unsupported profile {md.proto} for m={md.media}"
        addr, rtcp_addr, direction = peer_transport(md, "provider offer")
        return (
            _ProviderSide(addr, rtcp_addr, md.rtcp_mux, rx, plaintext, direction, proto),
            None,
        )

    def _dtls_provider(self, md: MediaDescription, peer: dtls.PeerDtls, who: str) -> _ProviderSide:
        """The provider side of a DTLS-keyed m-line; MediaRefused when we cannot take part."""
        dtls.our_fingerprint(self.policy.dtls_fingerprint)
        if not dtls.profiles(self.policy.suites):
            raise MediaRefused(f"no DTLS-SRTP profile allowed for m={md.media} (NULL never is)")
        addr, rtcp_addr, direction = peer_transport(md, who)
        mux = md.rtcp_mux and (self.policy.offer_rtcp_mux or who == "provider offer")
        return _ProviderSide(addr, rtcp_addr, mux, None, False, direction, md.proto, peer)

    def _answer_crypto(self, index: int, provider: _ProviderSide) -> CryptoAttribute:
        """Our single crypto line answering the provider's chosen one (RFC 4568 §7.1.2)."""
        assert provider.rx is not None
        chosen = provider.rx
        current = self._agreed[index] if index < len(self._agreed) else None
        keep = (
            not self._rekey
            and current is not None
            and current.tx is not None
            and current.tx.suite is chosen.suite
            and current.provider.addr == provider.addr
            and current.provider.rx is not None
            and current.provider.rx.master == chosen.master
        )
        if keep:
            assert current is not None and current.tx is not None
            return CryptoAttribute(tag=chosen.tag, suite=chosen.suite, master=current.tx.master)
        return new_crypto(chosen.tag, chosen.suite)

    def _apply(self, agreed: list[_Agreed | None]) -> None:
        """Make ``agreed`` current, raising generations where a key changed."""
        for index, entry in enumerate(agreed):
            if entry is None:
                continue
            if entry.provider.dtls is not None:
                self._slots[index].dtls.apply(entry.provider.dtls, entry.provider.addr)
            tx = entry.tx.master if entry.tx is not None else None
            rx = entry.provider.rx.master if entry.provider.rx is not None else None
            if tx is not None:
                if self._tx_applied[index] is not None and self._tx_applied[index] != tx:
                    self._tx_generation[index] += 1
                self._tx_applied[index] = tx
            if rx is not None:
                if self._rx_applied[index] is not None and self._rx_applied[index] != rx:
                    self._rx_generation[index] += 1
                self._rx_applied[index] = rx
        self._agreed = list(agreed)


def _phone_relays(md: MediaDescription) -> bool:
    """Whether a phone's m-line is one the gateway anchors (plain RTP audio or video)."""
    return md.media in _RELAYED_MEDIA and md.port != 0 and md.proto in _PLAIN_TO_SECURE


def _refuse_fax_only(sd: SessionDescription, relayed: list[bool]) -> None:
    """MediaRefused when nothing would be relayed but an image stream is offered (a T.38
    switch-over): forwarding it with every stream disabled would only end the audio, so the
    offerer gets 488 and falls back to G.711 in the audio stream it already has."""
    if any(relayed):
        return
    if any(md.media == "image" and md.port != 0 for md in sd.media):
        raise MediaRefused(FAX_REFUSAL)
