"""DTLS-SRTP keying in offer/answer toward the provider (RFC 5763 §5 and §6.6, RFC 5764,
RFC 8842, RFC 8122, RFC 4145), per trunk keying order.

The rtpengine and baresip bodies below are what those peers really sent (rtpengine 12 over its
ng socket: its default offer toward a secure peer and its answers to our offers; baresip 1.0
with mediaenc=dtls_srtp); the Asterisk one is in the shape chan_pjsip writes with
media_encryption=dtls, the browser one in the shape Chrome writes after ICE gathering.
"""

from __future__ import annotations

import re

import pytest

from gateway.media.ports import PortAllocator
from gateway.media.suites import SrtpSuite
from gateway.sdp import dtls
from gateway.sdp.model import SessionDescription
from gateway.sdp.negotiation import CallMedia, MediaPolicy, MediaRefused

LAN_GW = "192.0.2.1"
WAN_GW = "203.0.113.1"
PHONE = "192.0.2.23"
PROVIDER = "198.51.100.7"

OUR_FP = ("sha-256", ":".join(f"{n:02X}" for n in range(32)))
CM80 = SrtpSuite.AES_CM_128_HMAC_SHA1_80
GCM256 = SrtpSuite.AEAD_AES_256_GCM


def crlf(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n").encode()


def make_call(
    keying: tuple[str, ...], *, fingerprint: bool = True, **policy: object
) -> tuple[CallMedia, PortAllocator, PortAllocator]:
    lan = PortAllocator(10000, 10099)
    wan = PortAllocator(20000, 20099)
    pol = MediaPolicy(
        lan_address=LAN_GW,
        wan_address=WAN_GW,
        keying=keying,
        dtls_fingerprint=(lambda: OUR_FP) if fingerprint else None,
        **policy,  # type: ignore[arg-type]
    )
    return CallMedia("call-1", pol, lan, wan), lan, wan


def attrs(body: bytes, name: str) -> list[str]:
    return re.findall(rf"^a={name}:(.*)\r$", body.decode(), re.M)


PHONE_OFFER = crlf(
    "v=0",
    f"o=phone 100 200 IN IP4 {PHONE}",
    "s=call",
    f"c=IN IP4 {PHONE}",
    "t=0 0",
    "m=audio 4000 RTP/AVP 0 101",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:101 telephone-event/8000",
    "a=sendrecv",
)

PHONE_ANSWER = crlf(
    "v=0",
    f"o=phone 300 300 IN IP4 {PHONE}",
    "s=-",
    f"c=IN IP4 {PHONE}",
    "t=0 0",
    "m=audio 4100 RTP/AVP 0",
    "a=rtpmap:0 PCMU/8000",
    "a=sendrecv",
)

RTPENGINE_FP = "29:06:A5:0C:A5:45:FF:7C:7D:FB:CE:FD:DD:13:2A:08:AD:03:97:89:E0:65:AD:0B:24:F0:09:70:D4:BE:9D:CF"

#: rtpengine's answer to our ["dtls", "sdes"] offer (RTP/SAVP, a=crypto and a=fingerprint):
#: it picks DTLS, keeps RTP/SAVP, takes the client role and drops the crypto lines.
RTPENGINE_ANSWER_TO_DUAL = crlf(
    "v=0",
    "o=- 3 1 IN IP4 127.0.116.7",
    "s=-",
    f"c=IN IP4 {PROVIDER}",
    "t=0 0",
    "m=audio 31638 RTP/SAVP 0 101",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:101 telephone-event/8000",
    "a=sendrecv",
    "a=rtcp:31639",
    "a=setup:active",
    f"a=fingerprint:sha-256 {RTPENGINE_FP}",
)

#: rtpengine's answer to our ["dtls"] offer with its DTLS-reverse=passive flag.
RTPENGINE_PASSIVE_ANSWER = crlf(
    "v=0",
    "o=- 3 1 IN IP4 127.0.116.7",
    "s=-",
    f"c=IN IP4 {PROVIDER}",
    "t=0 0",
    "m=audio 31656 UDP/TLS/RTP/SAVP 0 101",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:101 telephone-event/8000",
    "a=sendrecv",
    "a=rtcp:31657",
    "a=setup:passive",
    "a=fingerprint:sha-256 21:16:E0:90:1A:72:F0:04:CE:8D:99:BA:5B:D6:15:85:20:9A:8B:2D:33:B9:9D:"
    "B6:58:5C:40:72:76:5B:48:8F",
)

#: rtpengine's default offer toward an SRTP peer (transport-protocol UDP/TLS/RTP/SAVP): DTLS
#: with actpass, and SDES lines beside it, NULL and suites we do not know among them.
RTPENGINE_OFFER = crlf(
    "v=0",
    "o=- 1 1 IN IP4 127.0.116.5",
    "s=-",
    f"c=IN IP4 {PROVIDER}",
    "t=0 0",
    "m=audio 31600 UDP/TLS/RTP/SAVP 0 8 101",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-15",
    "a=sendrecv",
    "a=rtcp:31601",
    "a=crypto:1 AEAD_AES_256_GCM inline:gnJUv7uV/pKVHJXSbZ8W0+YpMsfbbHRq8/Wak8KVr5L46Rz7/Zg7KCBK3j4",
    "a=crypto:2 AEAD_AES_128_GCM inline:3CEyFjjTppXE92bHKBWwhgLnPZL6krKj/yfgaA",
    "a=crypto:3 AES_256_CM_HMAC_SHA1_80 inline:EF3g1QnrYwK1aBLGQM1vVqXLKmdFCHmuCbyRbOg9gjESymeakd1"
    "7PrtXnFzXaQ",
    "a=crypto:7 AES_CM_128_HMAC_SHA1_80 inline:Hs5Sgf7W/Kpj+Uw2HWQ5VyXREFP0sodIRqDXaEZe",
    "a=crypto:8 AES_CM_128_HMAC_SHA1_32 inline:9SpzRRpeCSKGgfo2NDLCZQkSz6Ji6vg58rBsCLXY",
    "a=crypto:11 NULL_HMAC_SHA1_80 inline:w1PWBf7mBVrIiE38sO+qNtdcqJxlLBWAG+PSWoQk",
    "a=setup:actpass",
    f"a=fingerprint:sha-256 {RTPENGINE_FP}",
)

#: baresip 1.0, mediaenc=dtls_srtp: session-level a=setup and a=fingerprint, "SHA-256".
BARESIP_FP = "09:46:10:28:3D:D3:7C:29:BD:98:86:94:38:D3:03:C2:68:D7:39:C8:B8:CB:EB:D1:9A:8A:2A:EC:69:DF:ED:31"
BARESIP_OFFER = crlf(
    "v=0",
    "o=- 2471438269 514616900 IN IP4 192.0.2.2",
    "s=-",
    f"c=IN IP4 {PROVIDER}",
    "t=0 0",
    "a=tool:baresip 1.0.0",
    "a=setup:actpass",
    f"a=fingerprint:SHA-256 {BARESIP_FP}",
    "m=audio 55300 UDP/TLS/RTP/SAVPF 0 101",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-15",
    "a=sendrecv",
    "a=label:1",
    "a=rtcp-rsize",
    "a=ssrc:1971013378 cname:sip:dtls@127.0.116.2:46475",
    "a=minptime:20",
    "a=ptime:20",
)

ASTERISK_FP = "5A:4C:3B:2A:19:08:F7:E6:D5:C4:B3:A2:91:80:7F:6E:5D:4C:3B:2A:19:08:F7:E6:D5:C4:B3:A2:91:80:7F:6E"
ASTERISK_OFFER = crlf(
    "v=0",
    f"o=- 1726733590 1726733590 IN IP4 {PROVIDER}",
    "s=Asterisk",
    f"c=IN IP4 {PROVIDER}",
    "t=0 0",
    "m=audio 17228 UDP/TLS/RTP/SAVP 0 8 101",
    "a=connection:new",
    "a=setup:actpass",
    f"a=fingerprint:SHA-256 {ASTERISK_FP}",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-16",
    "a=ptime:20",
    "a=maxptime:150",
    "a=sendrecv",
)

BROWSER_FP = "D2:FA:0E:C3:22:59:5E:14:95:69:92:3D:13:B4:84:24:2C:C2:A2:C0:3E:FD:34:8E:5E:EA:6F:AF:52:CE:E6:0F"
BROWSER_OFFER = crlf(
    "v=0",
    "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
    "s=-",
    "t=0 0",
    "a=group:BUNDLE 0",
    "a=msid-semantic: WMS",
    "m=audio 50962 UDP/TLS/RTP/SAVPF 111 0 8 126",
    f"c=IN IP4 {PROVIDER}",
    f"a=rtcp:9 IN IP4 {PROVIDER}",
    f"a=candidate:1467250027 1 udp 2122260223 {PROVIDER} 50962 typ host generation 0",
    "a=ice-ufrag:Oyef",
    "a=ice-pwd:KzrxtaS4DAsK1rthsTkMg8Sx",
    "a=ice-options:trickle",
    f"a=fingerprint:sha-256 {BROWSER_FP}",
    "a=setup:actpass",
    "a=mid:0",
    "a=sendrecv",
    "a=rtcp-mux",
    "a=rtpmap:111 opus/48000/2",
    "a=fmtp:111 minptime=10;useinbandfec=1",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:126 telephone-event/8000",
)


# ------------------------------------------------------------------ attribute level


def test_fingerprints_parse_case_insensitively_and_keep_sha1_for_old_peers() -> None:
    assert dtls.parse_fingerprint(f"SHA-256 {BARESIP_FP.lower()}") == ("sha-256", BARESIP_FP)
    sha1 = ":".join(["0A"] * 20)
    assert dtls.parse_fingerprint(f"sha-1 {sha1.lower()}") == ("sha-1", sha1)
    assert dtls.format_fingerprint(OUR_FP) == f"sha-256 {OUR_FP[1]}"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (f"sha-512 {':'.join(['AA'] * 64)}", "sha-512 not accepted"),
        (f"md5 {':'.join(['AA'] * 16)}", "md5 not accepted"),
        (f"sha-256 {':'.join(['AA'] * 20)}", "not 32 colon-separated hex bytes"),
        ("sha-256 ZZ:11", "not 32 colon-separated"),
        ("sha-256", "is not '<hash> <hex digest>'"),
    ],
)
def test_other_hashes_and_malformed_fingerprints_are_refused(value: str, reason: str) -> None:
    with pytest.raises(MediaRefused, match=reason):
        dtls.parse_fingerprint(value)


def test_keying_lists_are_checked() -> None:
    assert dtls.check_keying(("dtls", "sdes")) is None
    assert dtls.check_keying(("sdes",)) is None
    assert "at least one" in (dtls.check_keying(()) or "")
    assert "unknown keying method 'zrtp'" in (dtls.check_keying(("zrtp",)) or "")
    assert "twice" in (dtls.check_keying(("dtls", "dtls")) or "")
    with pytest.raises(ValueError, match="keying"):
        make_call(("mikey",))


def test_profiles_follow_the_trunks_suites_in_order() -> None:
    assert dtls.profiles((GCM256, CM80)) == ("AEAD_AES_256_GCM", "AES_CM_128_HMAC_SHA1_80")
    assert all("NULL" not in s.value for s in dtls.DTLS_SRTP_PROFILES)
    assert dtls.DTLS_SRTP_PROFILES[CM80] == 0x0001  # RFC 5764 §4.1.2


# ------------------------------------------------------------------ our offers


def test_sdes_only_trunk_offers_as_before_without_any_dtls_line() -> None:
    call, _, _ = make_call(("sdes",))
    out = call.offer_from_lan(PHONE_OFFER)
    assert b"m=audio 20000 RTP/SAVP 0 101" in out
    assert len(attrs(out, "crypto")) == 4
    assert not attrs(out, "fingerprint") and not attrs(out, "setup")


def test_dtls_only_trunk_offers_udp_tls_with_our_fingerprint_and_actpass() -> None:
    call, _, _ = make_call(("dtls",))
    out = call.offer_from_lan(PHONE_OFFER)
    assert b"m=audio 20000 UDP/TLS/RTP/SAVP 0 101" in out
    assert attrs(out, "fingerprint") == [f"sha-256 {OUR_FP[1]}"]
    assert attrs(out, "setup") == ["actpass"]
    [tls_id] = attrs(out, "tls-id")
    assert re.fullmatch(r"[0-9a-f]{32}", tls_id)
    assert not attrs(out, "crypto")
    assert PHONE.encode() not in out


def test_dtls_and_sdes_trunk_offers_rtp_savp_with_crypto_and_fingerprint() -> None:
    call, _, _ = make_call(("dtls", "sdes"))
    out = call.offer_from_lan(PHONE_OFFER)
    assert b"m=audio 20000 RTP/SAVP 0 101" in out
    assert len(attrs(out, "crypto")) == 4
    assert attrs(out, "fingerprint") == [f"sha-256 {OUR_FP[1]}"]
    assert attrs(out, "setup") == ["actpass"]


def test_dtls_offer_without_a_certificate_fails_closed_and_frees_the_ports() -> None:
    call, lan, wan = make_call(("dtls",), fingerprint=False)
    with pytest.raises(MediaRefused, match="no DTLS certificate"):
        call.offer_from_lan(PHONE_OFFER)
    assert (lan.in_use, wan.in_use) == (0, 0)


# ------------------------------------------------------------------ provider answers


def test_rtpengine_answer_to_a_dual_offer_keys_by_dtls_as_server() -> None:
    call, _, _ = make_call(("dtls", "sdes"), suites=(GCM256, CM80))
    call.offer_from_lan(PHONE_OFFER)
    to_phone = call.answer_from_wan(RTPENGINE_ANSWER_TO_DUAL)
    assert b"m=audio 10000 RTP/AVP 0 101" in to_phone
    assert b"fingerprint" not in to_phone and b"setup" not in to_phone
    [spec] = call.streams()
    assert spec is not None and spec.wan_dtls is not None
    assert spec.wan_dtls.role == "server"  # it said active: it sends the ClientHello
    assert spec.wan_dtls.fingerprints == (("sha-256", RTPENGINE_FP),)
    assert spec.wan_dtls.profiles == ("AEAD_AES_256_GCM", "AES_CM_128_HMAC_SHA1_80")
    assert spec.wan_dtls.generation == 0
    assert spec.wan_tx is None and spec.wan_rx is None and not spec.wan_plaintext
    assert spec.provider_addr == (PROVIDER, 31638)
    assert spec.provider_rtcp_addr == (PROVIDER, 31639) and not spec.wan_rtcp_mux
    assert call.chosen_suite() is None


def test_passive_answer_makes_us_the_client() -> None:
    call, _, _ = make_call(("dtls",))
    call.offer_from_lan(PHONE_OFFER)
    call.answer_from_wan(RTPENGINE_PASSIVE_ANSWER)
    [spec] = call.streams()
    assert spec is not None and spec.wan_dtls is not None and spec.wan_dtls.role == "client"


def sdes_answer(offer: bytes) -> bytes:
    [first] = attrs(offer, "crypto")[:1]
    tag, suite, _ = first.split(" ", 2)
    key = "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB"
    return crlf(
        "v=0",
        f"o=prov 1 1 IN IP4 {PROVIDER}",
        "s=-",
        f"c=IN IP4 {PROVIDER}",
        "t=0 0",
        "m=audio 30000 RTP/SAVP 0",
        "a=rtpmap:0 PCMU/8000",
        f"a=crypto:{tag} {suite} inline:{key}",
    )


def test_an_sdes_answer_to_a_dual_offer_works_as_today() -> None:
    call, _, _ = make_call(("dtls", "sdes"))
    offer = call.offer_from_lan(PHONE_OFFER)
    call.answer_from_wan(sdes_answer(offer))
    [spec] = call.streams()
    assert spec is not None and spec.wan_dtls is None
    assert spec.wan_tx is not None and spec.wan_rx is not None
    assert call.chosen_suite() is CM80


def with_crypto(answer: bytes, offer: bytes) -> bytes:
    line = attrs(offer, "crypto")[0].rsplit(" ", 1)[0]
    return answer + f"a=crypto:{line} inline:QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB\r\n".encode()


@pytest.mark.parametrize(
    ("keying", "dtls_wins"), [(("dtls", "sdes"), True), (("sdes", "dtls"), False)]
)
def test_an_answer_with_both_follows_the_trunks_order(
    keying: tuple[str, ...], dtls_wins: bool
) -> None:
    call, _, _ = make_call(keying)
    offer = call.offer_from_lan(PHONE_OFFER)
    call.answer_from_wan(with_crypto(RTPENGINE_ANSWER_TO_DUAL, offer))
    [spec] = call.streams()
    assert spec is not None
    assert (spec.wan_dtls is not None) is dtls_wins
    assert (spec.wan_tx is None) is dtls_wins


@pytest.mark.parametrize(
    ("keying", "answer", "reason"),
    [
        (("sdes",), RTPENGINE_ANSWER_TO_DUAL, "SDES only"),
        (("sdes",), RTPENGINE_PASSIVE_ANSWER, "SDES only"),
        (
            ("dtls",),
            RTPENGINE_PASSIVE_ANSWER.replace(b"a=fingerprint", b"a=x-fingerprint"),
            "without a usable fingerprint",
        ),
        (
            ("dtls",),
            RTPENGINE_PASSIVE_ANSWER.replace(b"setup:passive", b"setup:actpass"),
            "actpass",
        ),
        (
            ("dtls",),
            RTPENGINE_PASSIVE_ANSWER.replace(b"setup:passive", b"setup:holdconn"),
            "holdconn",
        ),
        (
            ("dtls",),
            RTPENGINE_PASSIVE_ANSWER.replace(b"sha-256 21:16", b"sha-512 21:16"),
            "sha-512 not accepted",
        ),
        (("dtls",), RTPENGINE_ANSWER_TO_DUAL.replace(b"RTP/SAVP", b"RTP/SAVPF"), "offered"),
    ],
)
def test_unusable_dtls_answers_are_refused(
    keying: tuple[str, ...], answer: bytes, reason: str
) -> None:
    call, _, _ = make_call(keying)
    offer = call.offer_from_lan(PHONE_OFFER)
    if keying == ("sdes",):
        answer = with_crypto(answer, offer).replace(b"a=crypto", b"a=x-crypto")
    with pytest.raises(MediaRefused, match=reason):
        call.answer_from_wan(answer)
    assert call.streams() == [None]


def test_an_sdes_answer_to_a_dtls_only_offer_is_refused() -> None:
    call, _, _ = make_call(("dtls",))
    offer = call.offer_from_lan(PHONE_OFFER)
    with pytest.raises(MediaRefused, match="without a usable fingerprint"):
        call.answer_from_wan(sdes_answer(offer.replace(b"a=fingerprint", b"a=crypto:1 X")))


def test_an_answer_without_setup_is_active_as_rfc4145_says() -> None:
    call, _, _ = make_call(("dtls", "sdes"))
    call.offer_from_lan(PHONE_OFFER)
    call.answer_from_wan(RTPENGINE_ANSWER_TO_DUAL.replace(b"a=setup:active\r\n", b""))
    [spec] = call.streams()
    assert spec is not None and spec.wan_dtls is not None and spec.wan_dtls.role == "server"


# ------------------------------------------------------------------ provider offers


@pytest.mark.parametrize(
    ("offer", "fingerprint", "lan_proto", "wan_proto"),
    [
        (RTPENGINE_OFFER, RTPENGINE_FP, "RTP/AVP", "UDP/TLS/RTP/SAVP"),
        (ASTERISK_OFFER, ASTERISK_FP, "RTP/AVP", "UDP/TLS/RTP/SAVP"),
        # Feedback profiles reach the legacy phone as RTP/AVP; the answer keeps the offered one.
        (BARESIP_OFFER, BARESIP_FP, "RTP/AVP", "UDP/TLS/RTP/SAVPF"),
        (BROWSER_OFFER, BROWSER_FP, "RTP/AVP", "UDP/TLS/RTP/SAVPF"),
    ],
    ids=["rtpengine", "asterisk", "baresip", "browser"],
)
def test_actpass_offers_are_answered_active_with_our_fingerprint(
    offer: bytes, fingerprint: str, lan_proto: str, wan_proto: str
) -> None:
    call, _, _ = make_call(("dtls", "sdes"))
    to_phone = call.offer_from_wan(offer)
    assert f"m=audio 10000 {lan_proto} ".encode() in to_phone
    for leaked in (b"fingerprint", b"setup", b"tls-id", b"candidate", b"ice-", b"crypto"):
        assert leaked not in to_phone
    assert b"rtcp-fb" not in to_phone and b"rtcp-rsize" not in to_phone
    out = call.answer_from_lan(PHONE_ANSWER)
    assert f"m=audio 20000 {wan_proto} 0".encode() in out
    assert attrs(out, "setup") == ["active"]  # RFC 5763 §5
    assert attrs(out, "fingerprint") == [f"sha-256 {OUR_FP[1]}"]
    assert len(attrs(out, "tls-id")) == 1
    assert not attrs(out, "crypto")
    assert PHONE.encode() not in out
    [spec] = call.streams()
    assert spec is not None and spec.wan_dtls is not None
    assert spec.wan_dtls.role == "client"
    assert spec.wan_dtls.fingerprints == (("sha-256", fingerprint),)
    assert spec.wan_tx is None and spec.wan_rx is None


@pytest.mark.parametrize(
    ("theirs", "ours", "role"), [("active", "passive", "server"), ("passive", "active", "client")]
)
def test_an_offer_that_names_its_role_gets_the_other_one(theirs: str, ours: str, role: str) -> None:
    call, _, _ = make_call(("dtls",))
    call.offer_from_wan(ASTERISK_OFFER.replace(b"setup:actpass", f"setup:{theirs}".encode()))
    out = call.answer_from_lan(PHONE_ANSWER)
    assert attrs(out, "setup") == [ours]
    [spec] = call.streams()
    assert spec is not None and spec.wan_dtls is not None and spec.wan_dtls.role == role


def test_rtpengine_offer_on_an_sdes_first_trunk_is_keyed_by_sdes() -> None:
    call, _, _ = make_call(("sdes", "dtls"))
    call.offer_from_wan(RTPENGINE_OFFER)
    out = call.answer_from_lan(PHONE_ANSWER)
    assert b"m=audio 20000 RTP/SAVP 0" in out
    assert attrs(out, "crypto")[0].startswith("7 AES_CM_128_HMAC_SHA1_80 ")
    assert not attrs(out, "fingerprint") and not attrs(out, "setup")
    [spec] = call.streams()
    assert spec is not None and spec.wan_dtls is None and spec.wan_rx is not None


@pytest.mark.parametrize(
    ("keying", "offer", "reason"),
    [
        (("sdes",), ASTERISK_OFFER, "with DTLS keying only; this trunk keys media with SDES"),
        (("sdes",), BARESIP_OFFER, "with DTLS keying only"),
        (
            ("dtls",),
            RTPENGINE_OFFER.replace(b"UDP/TLS/RTP/SAVP", b"RTP/SAVP").replace(
                f"a=fingerprint:sha-256 {RTPENGINE_FP}\r\n".encode(), b""
            ),
            "with SDES keying only; this trunk keys media with DTLS-SRTP",
        ),
        (("dtls",), ASTERISK_OFFER.replace(b"setup:actpass", b"setup:holdconn"), "holdconn"),
        (("dtls",), ASTERISK_OFFER.replace(b"a=fingerprint", b"a=x-fp"), "without a usable"),
        (("dtls",), ASTERISK_OFFER.replace(b"SHA-256 5A", b"SHA-384 5A"), "sha-384 not accepted"),
    ],
)
def test_provider_offers_the_trunk_cannot_key_are_refused(
    keying: tuple[str, ...], offer: bytes, reason: str
) -> None:
    call, lan, wan = make_call(keying)
    with pytest.raises(MediaRefused, match=reason):
        call.offer_from_wan(offer)
    assert (lan.in_use, wan.in_use) == (0, 0)


def test_a_bad_fingerprint_falls_back_to_the_next_method_the_trunk_allows() -> None:
    call, _, _ = make_call(("dtls", "sdes"))
    call.offer_from_wan(RTPENGINE_OFFER.replace(b"sha-256 29:06", b"md5 29:06"))
    out = call.answer_from_lan(PHONE_ANSWER)
    assert attrs(out, "crypto") and not attrs(out, "fingerprint")


# ------------------------------------------------------------------ re-INVITEs (RFC 5763 §6.6)


def provider_call(keying: tuple[str, ...] = ("dtls",)) -> CallMedia:
    call, _, _ = make_call(keying)
    call.offer_from_wan(ASTERISK_OFFER)
    call.answer_from_lan(PHONE_ANSWER)
    return call


def dtls_spec(call: CallMedia) -> tuple[str, int, tuple[tuple[str, str], ...]]:
    [spec] = call.streams()
    assert spec is not None and spec.wan_dtls is not None
    return spec.wan_dtls.role, spec.wan_dtls.generation, spec.wan_dtls.fingerprints


def test_same_fingerprint_and_transport_keep_role_and_association() -> None:
    call = provider_call()
    before = dtls_spec(call)
    call.offer_from_wan(ASTERISK_OFFER.replace(b"1726733590 1726733590", b"1726733590 2"))
    out = call.answer_from_lan(PHONE_ANSWER)
    assert attrs(out, "setup") == ["active"]
    assert dtls_spec(call) == before == ("client", 0, (("sha-256", ASTERISK_FP),))


def test_a_new_fingerprint_or_transport_starts_a_new_association() -> None:
    call = provider_call()
    call.offer_from_wan(ASTERISK_OFFER.replace(b"SHA-256 5A", b"SHA-256 6A"))
    call.answer_from_lan(PHONE_ANSWER)
    assert dtls_spec(call)[1] == 1
    call.offer_from_wan(
        ASTERISK_OFFER.replace(b"SHA-256 5A", b"SHA-256 6A").replace(b"17228", b"17300")
    )
    call.answer_from_lan(PHONE_ANSWER)
    assert dtls_spec(call)[1] == 2
    # A hold (c=0.0.0.0) changes no transport: the association stays.
    held = ASTERISK_OFFER.replace(b"SHA-256 5A", b"SHA-256 6A").replace(b"17228", b"17300")
    held = held.replace(f"c=IN IP4 {PROVIDER}".encode(), b"c=IN IP4 0.0.0.0")
    call.offer_from_wan(held)
    call.answer_from_lan(PHONE_ANSWER)
    assert dtls_spec(call)[1] == 2


def test_our_reoffer_keeps_our_role_and_tls_id_and_the_association() -> None:
    call, _, _ = make_call(("dtls",))
    first = call.offer_from_lan(PHONE_OFFER)
    call.answer_from_wan(RTPENGINE_PASSIVE_ANSWER)
    assert dtls_spec(call)[:2] == ("client", 0)
    again = call.offer_from_lan(PHONE_OFFER)
    assert attrs(again, "setup") == ["active"]  # RFC 8842: the role we hold, not actpass
    assert attrs(again, "tls-id") == attrs(first, "tls-id")
    call.answer_from_wan(RTPENGINE_PASSIVE_ANSWER)
    assert dtls_spec(call)[:2] == ("client", 0)


def test_operator_rekey_offers_actpass_with_a_new_tls_id_and_a_new_association() -> None:
    call, _, _ = make_call(("dtls",))
    first = call.offer_from_lan(PHONE_OFFER)
    call.answer_from_wan(RTPENGINE_PASSIVE_ANSWER)
    call.request_rekey()
    again = call.offer_from_lan(PHONE_OFFER)
    assert attrs(again, "setup") == ["actpass"]
    assert attrs(again, "tls-id") != attrs(first, "tls-id")
    call.answer_from_wan(RTPENGINE_PASSIVE_ANSWER)
    assert dtls_spec(call)[1] == 1


def test_session_level_attributes_apply_to_every_m_line() -> None:
    sd = SessionDescription.parse(BARESIP_OFFER)
    [md] = sd.media
    peer = dtls.read_offer(md)
    assert peer.fingerprints == (("sha-256", BARESIP_FP),)
    assert (peer.role, peer.answer_setup, peer.tls_id) == ("client", "active", None)


def test_a_renewed_certificate_starts_a_new_association() -> None:
    current = [OUR_FP]
    policy = MediaPolicy(
        lan_address=LAN_GW,
        wan_address=WAN_GW,
        keying=("dtls",),
        dtls_fingerprint=lambda: current[0],
    )
    call = CallMedia("call-1", policy, PortAllocator(10000, 10099), PortAllocator(20000, 20099))
    call.offer_from_lan(PHONE_OFFER)
    call.answer_from_wan(RTPENGINE_PASSIVE_ANSWER)
    assert dtls_spec(call)[1] == 0
    current[0] = ("sha-256", ":".join(["EE"] * 32))
    again = call.offer_from_lan(PHONE_OFFER)
    assert attrs(again, "fingerprint") == [f"sha-256 {current[0][1]}"]
    call.answer_from_wan(RTPENGINE_PASSIVE_ANSWER)
    assert dtls_spec(call)[1] == 1


def test_the_fingerprint_our_sdp_named_is_pinned_across_a_renewal() -> None:
    """A renewal between our offer and the answer: the stream's handshake must present the
    certificate the offer named, not the new one; the next offer names (and pins) the new."""
    renewed = ("sha-256", ":".join(["EE"] * 32))
    current = [OUR_FP]
    policy = MediaPolicy(
        lan_address=LAN_GW,
        wan_address=WAN_GW,
        keying=("dtls",),
        dtls_fingerprint=lambda: current[0],
    )
    call = CallMedia("call-1", policy, PortAllocator(10000, 10099), PortAllocator(20000, 20099))
    call.offer_from_lan(PHONE_OFFER)
    current[0] = renewed
    call.answer_from_wan(RTPENGINE_PASSIVE_ANSWER)
    [spec] = call.streams()
    assert spec is not None and spec.wan_dtls is not None
    assert spec.wan_dtls.local_fingerprint == OUR_FP
    # A re-offer naming the new certificate that the provider refuses changes nothing.
    call.offer_from_lan(PHONE_OFFER)
    call.offer_rejected()
    [spec] = call.streams()
    assert spec is not None and spec.wan_dtls is not None
    assert spec.wan_dtls.local_fingerprint == OUR_FP
    call.offer_from_lan(PHONE_OFFER)
    call.answer_from_wan(RTPENGINE_PASSIVE_ANSWER)
    [spec] = call.streams()
    assert spec is not None and spec.wan_dtls is not None
    assert (spec.wan_dtls.local_fingerprint, spec.wan_dtls.generation) == (renewed, 1)


def test_our_answer_pins_the_fingerprint_it_named() -> None:
    current = [OUR_FP]
    call, _, _ = make_call(("dtls",))
    call.policy = MediaPolicy(
        lan_address=LAN_GW,
        wan_address=WAN_GW,
        keying=("dtls",),
        dtls_fingerprint=lambda: current[0],
    )
    call.offer_from_wan(ASTERISK_OFFER)
    out = call.answer_from_lan(PHONE_ANSWER)
    current[0] = ("sha-256", ":".join(["EE"] * 32))
    assert attrs(out, "fingerprint") == [f"sha-256 {OUR_FP[1]}"]
    [spec] = call.streams()
    assert spec is not None and spec.wan_dtls is not None
    assert spec.wan_dtls.local_fingerprint == OUR_FP
