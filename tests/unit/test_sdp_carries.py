"""What a call's SDP carries across the gateway untouched, and what it refuses (RFC 3264 §5.1,
§6.1, §8; RFC 4733 §2.4; RFC 3362): codecs with their payload types, rtpmap, fmtp, ptime and
maxptime; telephone-events under whatever numbers each side chose; T.38 never carried.

The offers are shaped after what desk phones, ATAs and SIP trunks send: G.711 µ-law and
A-law, G.722, G.729 without Annex B, Opus at 48 kHz with in-band FEC, each with DTMF events.
"""

from __future__ import annotations

import base64

import pytest

from gateway.media.ports import PortAllocator
from gateway.media.suites import SrtpSuite
from gateway.sdp.model import SessionDescription
from gateway.sdp.negotiation import FAX_REFUSAL, CallMedia, MediaPolicy, MediaRefused

LAN_GW = "192.0.2.1"
WAN_GW = "203.0.113.1"
PHONE = "192.0.2.23"
PROVIDER = "198.51.100.7"
CM80 = SrtpSuite.AES_CM_128_HMAC_SHA1_80
KEY = base64.b64encode(bytes(range(30))).decode()


def crlf(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n").encode()


def make_call() -> tuple[CallMedia, PortAllocator, PortAllocator]:
    lan = PortAllocator(10000, 10099)
    wan = PortAllocator(20000, 20099)
    policy = MediaPolicy(lan_address=LAN_GW, wan_address=WAN_GW, suites=(CM80,))
    return CallMedia("call-carries", policy, lan, wan), lan, wan


#: Per codec: the m= format list and the lines that describe the formats, as a phone sends them.
CODECS: dict[str, tuple[str, tuple[str, ...]]] = {
    "g711": (
        "0 8 101",
        (
            "a=rtpmap:0 PCMU/8000",
            "a=rtpmap:8 PCMA/8000",
            "a=rtpmap:101 telephone-event/8000",
            "a=fmtp:101 0-16",
            "a=ptime:20",
            "a=maxptime:150",
        ),
    ),
    "g711-alaw-first": (
        "8 0 101",
        (
            "a=rtpmap:8 PCMA/8000",
            "a=rtpmap:0 PCMU/8000",
            "a=rtpmap:101 telephone-event/8000",
            "a=fmtp:101 0-15",
            "a=ptime:30",
        ),
    ),
    "g722": (
        "9 0 8 101",
        (
            "a=rtpmap:9 G722/8000",
            "a=rtpmap:0 PCMU/8000",
            "a=rtpmap:8 PCMA/8000",
            "a=rtpmap:101 telephone-event/8000",
            "a=fmtp:101 0-16",
            "a=ptime:20",
        ),
    ),
    "g729": (
        "18 0 101",
        (
            "a=rtpmap:18 G729/8000",
            "a=fmtp:18 annexb=no",
            "a=rtpmap:0 PCMU/8000",
            "a=rtpmap:101 telephone-event/8000",
            "a=fmtp:101 0-15",
            "a=ptime:20",
            "a=maxptime:40",
        ),
    ),
    "opus": (
        "111 9 0 110 101",
        (
            "a=rtpmap:111 opus/48000/2",
            "a=fmtp:111 minptime=10;useinbandfec=1;stereo=0;sprop-stereo=0;maxplaybackrate=16000",
            "a=rtpmap:9 G722/8000",
            "a=rtpmap:0 PCMU/8000",
            "a=rtpmap:110 telephone-event/48000",
            "a=fmtp:110 0-16",
            "a=rtpmap:101 telephone-event/8000",
            "a=fmtp:101 0-16",
            "a=ptime:20",
            "a=maxptime:120",
        ),
    ),
}


def phone_sdp(formats: str, lines: tuple[str, ...], *, port: int = 4000) -> bytes:
    return crlf(
        "v=0",
        f"o=phone 1 1 IN IP4 {PHONE}",
        "s=call",
        f"c=IN IP4 {PHONE}",
        "t=0 0",
        f"m=audio {port} RTP/AVP {formats}",
        *lines,
        "a=sendrecv",
    )


def provider_sdp(
    formats: str, lines: tuple[str, ...], *, crypto_tag: int = 1, port: int = 30000
) -> bytes:
    return crlf(
        "v=0",
        f"o=prov 7 7 IN IP4 {PROVIDER}",
        "s=-",
        f"c=IN IP4 {PROVIDER}",
        "t=0 0",
        f"m=audio {port} RTP/SAVP {formats}",
        *lines,
        f"a=crypto:{crypto_tag} {CM80.value} inline:{KEY}",
        "a=sendrecv",
    )


def described(body: bytes) -> tuple[list[str], list[str]]:
    """The first m-line's format list and its codec lines, in order."""
    md = SessionDescription.parse(body).media[0]
    kinds = ("rtpmap", "fmtp", "ptime", "maxptime")
    lines = [f"a={name}:{value}" for name, value in md.attributes if name in kinds]
    return md.formats, lines


# ---------------------------------------------------------------------------- codecs


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_phone_offer_and_provider_answer_keep_every_codec_line(codec: str) -> None:
    formats, lines = CODECS[codec]
    call, _, _ = make_call()
    to_provider = call.offer_from_lan(phone_sdp(formats, lines))
    assert described(to_provider) == (formats.split(), list(lines))
    assert b"RTP/SAVP" in to_provider
    to_phone = call.answer_from_wan(provider_sdp(formats, lines))
    assert described(to_phone) == (formats.split(), list(lines))
    assert b"RTP/AVP " in to_phone and b"a=crypto" not in to_phone


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_provider_offer_and_phone_answer_keep_every_codec_line(codec: str) -> None:
    formats, lines = CODECS[codec]
    call, _, _ = make_call()
    to_phone = call.offer_from_wan(provider_sdp(formats, lines))
    assert described(to_phone) == (formats.split(), list(lines))
    # The phone answers with the first codec and DTMF only, as most phones do.
    first = formats.split()[0]
    dtmf = "101" if "101" in formats.split() else formats.split()[-1]
    kept = tuple(
        line
        for line in lines
        if line.split(":", 1)[1].split(" ")[0] in (first, dtmf) or "ptime" in line
    )
    to_provider = call.answer_from_lan(phone_sdp(f"{first} {dtmf}", kept, port=4010))
    assert described(to_provider) == ([first, dtmf], list(kept))
    assert to_provider.count(b"a=crypto:1 ") == 1


def test_g729_annexb_no_and_opus_fec_reach_the_provider_byte_for_byte() -> None:
    call, _, _ = make_call()
    formats, lines = CODECS["g729"]
    out = call.offer_from_lan(phone_sdp(formats, lines))
    assert b"\r\na=fmtp:18 annexb=no\r\n" in out
    call2, _, _ = make_call()
    formats, lines = CODECS["opus"]
    out = call2.offer_from_lan(phone_sdp(formats, lines))
    assert b"\r\na=rtpmap:111 opus/48000/2\r\n" in out
    assert b"minptime=10;useinbandfec=1;stereo=0;sprop-stereo=0;maxplaybackrate=16000" in out


# --------------------------------------------------------------------- telephone-events


def test_provider_answers_telephone_event_with_its_own_number_and_the_phone_sees_it() -> None:
    """Phone offers 101, provider answers 96 (RFC 3264 §6.1 allows it): the phone must be
    told 96, the number the provider receives DTMF on; the relay leaves PTs alone, so the
    phone's 96 arrives as 96 and the provider's 101 (the offer's number) arrives as 101."""
    call, _, _ = make_call()
    formats, lines = CODECS["g711"]
    call.offer_from_lan(phone_sdp(formats, lines))
    answer = provider_sdp(
        "0 96", ("a=rtpmap:0 PCMU/8000", "a=rtpmap:96 telephone-event/8000", "a=fmtp:96 0-15")
    )
    to_phone = call.answer_from_wan(answer)
    assert described(to_phone) == (
        ["0", "96"],
        ["a=rtpmap:0 PCMU/8000", "a=rtpmap:96 telephone-event/8000", "a=fmtp:96 0-15"],
    )
    [stream] = call.streams()
    assert stream is not None and stream.direction == "sendrecv"


def test_phone_answers_telephone_event_with_its_own_number_and_the_provider_sees_it() -> None:
    call, _, _ = make_call()
    offer = provider_sdp(
        "8 0 96",
        (
            "a=rtpmap:8 PCMA/8000",
            "a=rtpmap:0 PCMU/8000",
            "a=rtpmap:96 telephone-event/8000",
            "a=fmtp:96 0-16",
            "a=ptime:20",
        ),
    )
    to_phone = call.offer_from_wan(offer)
    assert described(to_phone)[0] == ["8", "0", "96"]
    assert b"a=rtpmap:96 telephone-event/8000" in to_phone
    answer = phone_sdp(
        "8 101", ("a=rtpmap:8 PCMA/8000", "a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-15")
    )
    to_provider = call.answer_from_lan(answer)
    assert described(to_provider) == (
        ["8", "101"],
        ["a=rtpmap:8 PCMA/8000", "a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-15"],
    )


# ------------------------------------------------------------------------------- T.38

T38_LINES = (
    "a=T38FaxVersion:0",
    "a=T38MaxBitRate:14400",
    "a=T38FaxRateManagement:transferredTCF",
    "a=T38FaxMaxBuffer:262",
    "a=T38FaxMaxDatagram:176",
    "a=T38FaxUdpEC:t38UDPRedundancy",
)


def t38_sdp(origin: str, address: str, *, audio: str | None = None, version: int = 2) -> bytes:
    """A T.38 switch-over offer: the image stream alone, or after an audio m-line."""
    media = [audio] if audio else []
    return crlf(
        "v=0",
        f"o={origin} 1 {version} IN IP4 {address}",
        "s=-",
        f"c=IN IP4 {address}",
        "t=0 0",
        *media,
        "m=image 4600 udptl t38",
        *T38_LINES,
    )


def agreed_call() -> CallMedia:
    call, _, _ = make_call()
    formats, lines = CODECS["g711"]
    call.offer_from_lan(phone_sdp(formats, lines))
    call.answer_from_wan(provider_sdp(formats, lines))
    return call


def test_t38_reoffer_from_the_phone_is_refused_and_the_audio_stays() -> None:
    call = agreed_call()
    before = call.streams()
    with pytest.raises(MediaRefused) as refused:
        call.offer_from_lan(t38_sdp("phone", PHONE))
    assert refused.value.status_hint == 488
    assert refused.value.warning == FAX_REFUSAL
    assert call.streams() == before
    # The next offer (back to audio, or a hold) is taken as usual.
    formats, lines = CODECS["g711"]
    out = call.offer_from_lan(phone_sdp(formats, lines))
    assert b"m=audio 20000 RTP/SAVP 0 8 101" in out


def test_t38_reoffer_from_the_provider_is_refused_and_the_audio_stays() -> None:
    call = agreed_call()
    before = call.streams()
    with pytest.raises(MediaRefused) as refused:
        call.offer_from_wan(t38_sdp("prov", PROVIDER))
    assert refused.value.warning == FAX_REFUSAL
    assert call.streams() == before


@pytest.mark.parametrize("side", ["phone", "provider"])
def test_t38_next_to_a_disabled_audio_stream_is_refused(side: str) -> None:
    call = agreed_call()
    if side == "phone":
        offer = t38_sdp("phone", PHONE, audio="m=audio 0 RTP/AVP 0")
        with pytest.raises(MediaRefused, match=r"T\.38"):
            call.offer_from_lan(offer)
    else:
        offer = t38_sdp("prov", PROVIDER, audio="m=audio 0 RTP/SAVP 0")
        with pytest.raises(MediaRefused, match=r"T\.38"):
            call.offer_from_wan(offer)


def test_initial_t38_only_offer_is_refused_without_taking_ports() -> None:
    call, lan, wan = make_call()
    with pytest.raises(MediaRefused, match=r"T\.38"):
        call.offer_from_lan(t38_sdp("phone", PHONE, version=1))
    assert (lan.in_use, wan.in_use) == (0, 0)


def test_t38_offered_beside_audio_is_disabled_and_audio_goes_on() -> None:
    """An image stream next to live audio gets port 0 on the other leg, without its T.38
    attributes and without any address: UDPTL never flows, the fax stays in the audio."""
    call = agreed_call()
    audio = (
        "m=audio 4000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000"
    )
    out = call.offer_from_lan(t38_sdp("phone", PHONE, audio=audio))
    sd = SessionDescription.parse(out)
    audio_md, image_md = sd.media
    assert (audio_md.media, audio_md.port, audio_md.proto) == ("audio", 20000, "RTP/SAVP")
    assert (image_md.media, image_md.port, image_md.proto) == ("image", 0, "udptl")
    assert image_md.attributes == [] and image_md.connection is None
    assert b"T38" not in out and PHONE.encode() not in out
