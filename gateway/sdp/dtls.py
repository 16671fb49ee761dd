"""DTLS-SRTP keying in SDP (sans-IO): a=fingerprint, a=setup and a=tls-id toward the provider.

RFC 5763 frames DTLS-SRTP for SIP: each side names the certificate it will present in the
handshake by its fingerprint (RFC 8122 §5), the roles come from a=setup (RFC 4145 §4; RFC 5763
§5: the offerer says ``actpass``, the answerer picks ``active`` and becomes the DTLS client),
and the SRTP keys are exported from the handshake (RFC 5764 §4.2), so no key ever travels in
SDP. RFC 8842 updates both: an offer may name a role other than ``actpass`` (used here to keep
the running association in a re-offer) and a=tls-id names the association, so a new value
means a new handshake. The handshake itself and the demultiplexing of DTLS, STUN and SRTP on
the one WAN port (RFC 7983) are the media worker's; this module only reads and writes the SDP
side and decides roles, accepted fingerprints and when an association starts afresh (RFC 5763
§6.6: a new fingerprint or a new transport).

Which keying a trunk may use toward its provider, in order of preference, is the operator's
``keying`` list: ``["sdes"]`` (the default), ``["dtls", "sdes"]`` or ``["dtls"]``. Offers
with both carry ``RTP/SAVP`` with a=crypto lines and a=fingerprint: an SDES-only peer
understands the profile and ignores the fingerprint, and rtpengine reads a=fingerprint
whatever the profile and favours DTLS-SRTP over SDES when it accepts an offer (its ng
protocol's ``DTLS`` flag documents that default). DTLS-only offers carry
``UDP/TLS/RTP/SAVP`` (RFC 5764 §8).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from gateway.media.control import DtlsKeying
from gateway.media.suites import SrtpSuite
from gateway.sdp.errors import MediaRefused
from gateway.sdp.model import MediaDescription

#: The keying methods a trunk may allow, as the configuration names them.
KEYING_METHODS = ("dtls", "sdes")

#: (hash function as SDP names it, colon-separated upper-case hex digest).
Fingerprint = tuple[str, str]
#: Gives the gateway's own certificate fingerprint (the media side owns the certificate).
FingerprintSource = Callable[[], Fingerprint]

#: DTLS-SRTP profiles (RFC 5764 §8) and the SDES profile with the same feedback behaviour.
DTLS_TO_SDES = {"UDP/TLS/RTP/SAVP": "RTP/SAVP", "UDP/TLS/RTP/SAVPF": "RTP/SAVPF"}
SDES_TO_DTLS = {v: k for k, v in DTLS_TO_SDES.items()}
_SECURE = frozenset(DTLS_TO_SDES) | frozenset(SDES_TO_DTLS)

#: Hash functions accepted in a peer's a=fingerprint, with their digest lengths. SHA-256 is
#: what every current peer sends; SHA-1 is still accepted from old ones (RFC 8122 §5 keeps
#: it); anything else is ignored, and an m-line left with none is refused.
ACCEPTED_HASHES = {"sha-256": 32, "sha-1": 20}

#: DTLS-SRTP protection profiles (RFC 5764 §4.1.2, RFC 7714 §14.2) of the suites the gateway
#: knows. NULL-cipher profiles (0x0005, 0x0006) are absent on purpose: never negotiated.
DTLS_SRTP_PROFILES: dict[SrtpSuite, int] = {
    SrtpSuite.AES_CM_128_HMAC_SHA1_80: 0x0001,
    SrtpSuite.AES_CM_128_HMAC_SHA1_32: 0x0002,
    SrtpSuite.AEAD_AES_128_GCM: 0x0007,
    SrtpSuite.AEAD_AES_256_GCM: 0x0008,
}

_SETUP_VALUES = frozenset({"active", "passive", "actpass", "holdconn"})
_HEX_PAIRS = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2})*")
#: RFC 8842 §4: tls-id is 20 to 255 characters of base64 alphabet, '+' and '/'.
_TLS_ID = re.compile(r"[A-Za-z0-9+/]{20,255}")


@dataclass(frozen=True, slots=True)
class PeerDtls:
    """What the provider said about DTLS for one m-line, and the role it leaves us."""

    #: Its acceptable fingerprints (one must match the certificate it presents).
    fingerprints: tuple[Fingerprint, ...]
    #: Our role in the handshake: "client" (we send the ClientHello) or "server".
    role: str
    #: The a=setup value we send back when we answer its offer (None: it answered ours).
    answer_setup: str | None = None
    #: Its a=tls-id, when it sent one (RFC 8842 §4).
    tls_id: str | None = None


def check_keying(keying: tuple[str, ...]) -> str | None:
    """Why a trunk's keying list is unusable, or None."""
    if not keying:
        return 'expected at least one keying method ("dtls", "sdes")'
    for method in keying:
        if method not in KEYING_METHODS:
            return f'unknown keying method {method!r} (known: "dtls", "sdes")'
    if len(set(keying)) != len(keying):
        return "a keying method is named twice"
    return None


def profiles(suites: tuple[SrtpSuite, ...]) -> tuple[str, ...]:
    """The trunk's suites that are DTLS-SRTP profiles, in the operator's order (never NULL)."""
    return tuple(s.value for s in suites if s in DTLS_SRTP_PROFILES)


def offer_proto(plain: str, keying: tuple[str, ...]) -> str:
    """Our WAN profile for a phone's RTP/AVP(F) m-line: UDP/TLS/... only when DTLS alone."""
    secure = {"RTP/AVP": "RTP/SAVP", "RTP/AVPF": "RTP/SAVPF"}[plain]
    return SDES_TO_DTLS[secure] if keying == ("dtls",) else secure


def new_tls_id() -> str:
    """A fresh a=tls-id value: 128 random bits (RFC 8842 §4 asks for at least 120)."""
    return secrets.token_hex(16)


def parse_fingerprint(value: str) -> Fingerprint:
    """``sha-256 AB:CD:…`` -> ("sha-256", "AB:CD:…"); MediaRefused naming what is wrong."""
    parts = value.split()
    if len(parts) != 2:
        raise MediaRefused(f"a=fingerprint:{value[:80]} is not '<hash> <hex digest>'")
    function, digest = parts[0].lower(), parts[1]
    length = ACCEPTED_HASHES.get(function)
    if length is None:
        raise MediaRefused(f"fingerprint hash {function} not accepted (sha-256, sha-1)")
    if not _HEX_PAIRS.fullmatch(digest) or len(digest.split(":")) != length:
        raise MediaRefused(f"{function} fingerprint is not {length} colon-separated hex bytes")
    return function, digest.upper()


def format_fingerprint(fingerprint: Fingerprint) -> str:
    return f"{fingerprint[0]} {fingerprint[1].upper()}"


def _attribute_values(md: MediaDescription, name: str) -> list[str]:
    """Media-level values, else the session's (RFC 8122 §5, RFC 4145 §4 allow both)."""
    values = [v for v in md.get_attributes(name) if v is not None]
    if not values and md.session is not None:
        values = [v for v in md.session.get_attributes(name) if v is not None]
    return values


def has_fingerprint(md: MediaDescription) -> bool:
    return bool(_attribute_values(md, "fingerprint"))


def _has_crypto(md: MediaDescription) -> bool:
    return bool(md.get_attributes("crypto"))


def offer_methods(md: MediaDescription, keying: tuple[str, ...]) -> tuple[list[str], str | None]:
    """The keying methods to try on a provider's offered m-line, in the trunk's order, or
    none and why. Plain and unknown profiles go the SDES way, which refuses or downgrades
    them as before."""
    if md.proto not in _SECURE:
        return ["sdes"], None
    dtls_proto = md.proto in DTLS_TO_SDES
    fingerprint, crypto = has_fingerprint(md), _has_crypto(md)
    present = []
    if fingerprint or (dtls_proto and not crypto):
        present.append("dtls")  # without a fingerprint the DTLS check gives the reason
    if crypto or not (fingerprint or dtls_proto):
        present.append("sdes")
    usable = [method for method in keying if method in present]
    if usable:
        return usable, None
    if "dtls" in present:
        return [], (
            f"{md.proto} offered for m={md.media} with DTLS keying only; this trunk keys "
            "media with SDES (a=crypto)"
        )
    return [], (
        f"{md.proto} offered for m={md.media} with SDES keying only; this trunk keys media "
        "with DTLS-SRTP (a=fingerprint)"
    )


def answer_method(md: MediaDescription, keying: tuple[str, ...]) -> str:
    """Which keying the provider's answer picked: "dtls" or "sdes" (the SDES path also
    handles plain and unknown profiles)."""
    if md.proto not in _SECURE:
        return "sdes"
    if "sdes" not in keying:
        return "dtls"  # nothing but DTLS was offered: whatever came back is checked as DTLS
    fingerprint, crypto = has_fingerprint(md), _has_crypto(md)
    dtls_proto = md.proto in DTLS_TO_SDES
    if not (fingerprint or (dtls_proto and not crypto)):
        return "sdes"
    if not crypto:
        return "dtls"
    # Both kinds of line: the trunk's preference decides (we offered both).
    if "dtls" in keying and keying.index("dtls") < keying.index("sdes"):
        return "dtls"
    return "sdes"


def _fingerprints(md: MediaDescription, who: str) -> tuple[Fingerprint, ...]:
    accepted: list[Fingerprint] = []
    problems: list[str] = []
    for value in _attribute_values(md, "fingerprint"):
        try:
            accepted.append(parse_fingerprint(value))
        except MediaRefused as exc:
            problems.append(exc.warning)
    if not accepted:
        detail = "; ".join(problems) if problems else "no a=fingerprint"
        raise MediaRefused(
            f"{who} DTLS-SRTP for m={md.media} without a usable fingerprint ({detail})"
        )
    return tuple(dict.fromkeys(accepted))


def _setup(md: MediaDescription, who: str) -> str:
    values = _attribute_values(md, "setup")
    if not values:
        return "active"  # RFC 4145 §4.1: an absent a=setup means active
    value = values[0].strip().lower()
    if value not in _SETUP_VALUES:
        raise MediaRefused(f"{who} a=setup:{values[0][:40]} for m={md.media} is not a setup role")
    return value


def _tls_id(md: MediaDescription) -> str | None:
    values = _attribute_values(md, "tls-id")
    if not values:
        return None
    value = values[0].strip()
    return value if _TLS_ID.fullmatch(value) else None


def read_answer(md: MediaDescription, keying: tuple[str, ...], offered_proto: str) -> PeerDtls:
    """The provider's DTLS answer to our offer; MediaRefused when it cannot be used."""
    if "dtls" not in keying:
        raise MediaRefused(
            f"provider answered DTLS-SRTP ({md.proto}, a=fingerprint) for m={md.media}; this "
            "trunk keys media with SDES only"
        )
    family = {offered_proto, DTLS_TO_SDES.get(offered_proto), SDES_TO_DTLS.get(offered_proto)}
    if md.proto not in family:
        raise MediaRefused(
            f"provider answered {md.proto} for m={md.media}, offered {offered_proto}"
        )
    fingerprints = _fingerprints(md, "provider answered")
    setup = _setup(md, "provider answer's")
    # RFC 5763 §5: the answerer picks a role; actpass (or holdconn) leaves none.
    role = {"active": "server", "passive": "client"}.get(setup)
    if role is None:
        raise MediaRefused(
            f"provider answer has a=setup:{setup} for m={md.media}; an answer must say active "
            "or passive (RFC 5763 §5)"
        )
    return PeerDtls(fingerprints, role, None, _tls_id(md))


def read_offer(md: MediaDescription) -> PeerDtls:
    """The provider's DTLS offer and the role we take answering it (RFC 5763 §5: we are
    active, the client, whenever the offerer lets us choose)."""
    fingerprints = _fingerprints(md, "provider offered")
    setup = _setup(md, "provider offer's")
    if setup == "holdconn":
        raise MediaRefused(f"provider offered a=setup:holdconn for m={md.media}: no connection")
    answer = {"actpass": "active", "active": "passive", "passive": "active"}[setup]
    role = "client" if answer == "active" else "server"
    return PeerDtls(fingerprints, role, answer, _tls_id(md))


def our_fingerprint(source: FingerprintSource | None) -> Fingerprint:
    """The gateway's fingerprint; MediaRefused (fail closed) when the media side gave none."""
    if source is None:
        raise MediaRefused("DTLS-SRTP keying is allowed but the gateway has no DTLS certificate")
    return source()


def keying(
    peer: PeerDtls | None, suites: tuple[SrtpSuite, ...], at: Association
) -> DtlsKeying | None:
    """The stream's ``wan_dtls``: our role, the provider's fingerprints, the profiles, and
    our certificate as the agreed SDP named it (pinned: a renewal meanwhile changes nothing)."""
    if peer is None:
        return None
    return DtlsKeying(peer.role, peer.fingerprints, profiles(suites), at.generation, at.pinned)


def write(
    md: MediaDescription, association: Association, source: FingerprintSource | None, setup: str
) -> None:
    """Our a=setup, a=fingerprint and a=tls-id on one m-line (the association remembers the
    fingerprint: a renewed certificate means a new handshake)."""
    ours = association.ours = our_fingerprint(source)
    md.add_attribute("setup", setup)
    md.add_attribute("fingerprint", format_fingerprint(ours))
    md.add_attribute("tls-id", association.tls_id)


@dataclass(slots=True)
class Association:
    """One m-line's DTLS association as the signalling sees it (RFC 5763 §6.6, RFC 8842 §5).

    The same role, fingerprints, peer address and tls-ids keep the association (and its
    ``generation``); any change starts a new handshake with the next generation. A hold
    (no peer address) changes nothing.
    """

    tls_id: str
    generation: int = 0
    role: str | None = None
    #: Our fingerprint as last sent.
    ours: Fingerprint | None = None
    #: Our fingerprint in the SDP of the agreement in force (what the handshake must present).
    pinned: Fingerprint | None = None
    #: The SRTP suite the worker's handshake agreed for the current generation (DtlsKeyed).
    suite: SrtpSuite | None = None
    _key: tuple[object, ...] | None = None
    _addr: tuple[str, int] | None = None

    def offer_setup(self, rekey: bool) -> str:
        """Our a=setup in an offer: actpass first (RFC 5763 §5); the role we hold in a
        re-offer that keeps the association (RFC 8842 §5.5); actpass and a new tls-id when
        the operator asked for new keys."""
        if rekey:
            self.tls_id = new_tls_id()
        if self.role is None or rekey:
            return "actpass"
        return "active" if self.role == "client" else "passive"

    def apply(self, peer: PeerDtls, addr: tuple[str, int] | None) -> int:
        """Record an agreement; the generation the worker must run it under."""
        if addr is None:
            addr = self._addr
        key = (peer.role, frozenset(peer.fingerprints), addr, peer.tls_id, self.tls_id, self.ours)
        if self._key is not None and key != self._key:
            self.generation += 1
            self.suite = None  # the new handshake reports its own
        self._key, self._addr, self.role = key, addr, peer.role
        self.pinned = self.ours
        return self.generation

    def keyed(self, generation: int, suite: str) -> bool:
        """The worker's handshake of ``generation`` agreed ``suite``: True when that is the
        association in force (a report of a replaced one changes nothing)."""
        if generation != self.generation or self._key is None:
            return False
        self.suite = SrtpSuite(suite)
        return True
