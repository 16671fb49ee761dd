"""Where a call's signalling meets its media: offer/answer across the two legs, the stream
commands for the media workers, and the media ports (RFC 3264 §4-§8, RFC 4568 through
``gateway.sdp.negotiation``).

``MediaLink`` is one call's: it knows which side has an offer outstanding (an SDP body is an
answer when the other side has one, an offer otherwise: RFC 3264 §4), whether the caller's
INVITE carried the offer (else the callee's 2xx does: "late offer"), and which streams the
workers already have, so that only what changed is sent to them. ``MediaLinks`` makes them,
from one port allocator per side. A refusal (no acceptable crypto, unusable SDP) is raised as
``MediaRefused`` for the B2BUA to answer with 488: nothing is ever forwarded half-secured.
"""

from __future__ import annotations

from gateway.media.control import CloseCall, OpenStream, StreamSpec, UpdateStream
from gateway.media.ports import PortAllocator
from gateway.media.suites import SrtpSuite
from gateway.sdp.media_state import restore_media
from gateway.sdp.negotiation import CallMedia, MediaPolicy
from gateway.sip.actions import MediaCommand
from gateway.sip.peer import Side
from gateway.state.calls import MediaRecord


class MediaLink:
    """One call's media as the signalling sees it."""

    __slots__ = ("_specs", "call", "caller_offered", "key", "offer_from")

    def __init__(self, key: str, call: CallMedia) -> None:
        self.key = key
        self.call = call
        #: Side whose offer awaits an answer, for offer/answer outside the initial INVITE.
        self.offer_from: Side | None = None
        #: The initial INVITE carried an offer (else the callee's 2xx carries one).
        self.caller_offered = False
        self._specs: list[StreamSpec | None] = []

    def offer(self, side: Side, body: bytes) -> tuple[bytes, list[MediaCommand]]:
        out = self.call.offer_from_lan(body) if side == Side.LAN else self.call.offer_from_wan(body)
        self.offer_from = side
        return out, self._sync()

    def answer(
        self, side: Side, body: bytes, *, early: str | None = None, confirmed: bool = False
    ) -> tuple[bytes, list[MediaCommand]]:
        if side == Side.LAN:
            out = self.call.answer_from_lan(body)
        else:
            out = self.call.answer_from_wan(body, early_dialog=early)
        if confirmed or early is None:
            self.offer_from = None
        return out, self._sync()

    def offer_or_answer(
        self, side: Side, body: bytes, *, confirmed: bool
    ) -> tuple[bytes, list[MediaCommand]]:
        """RFC 3264 §4: an SDP body is an answer when the other side has an offer pending."""
        if self.offer_from is not None and self.offer_from != side:
            return self.answer(side, body, confirmed=confirmed)
        return self.offer(side, body)

    def confirm(self, early_dialog: str) -> list[MediaCommand]:
        """Forking: keep the answer of the dialog that won, release the others (RFC 3264)."""
        self.call.confirm(early_dialog)
        self.offer_from = None  # the answer is in: the next offer may come from either side
        return self._sync()

    def chosen_suite(self) -> SrtpSuite | None:
        return self.call.chosen_suite()

    @property
    def keying(self) -> str | None:
        return self.call.keying

    def dtls_keyed(self, index: int, generation: int, suite: str) -> bool:
        """The worker's DTLS-SRTP handshake of stream ``index`` agreed ``suite``."""
        return self.call.dtls_keyed(index, generation, suite)

    @property
    def uses_plaintext_downgrade(self) -> bool:
        return self.call.uses_plaintext_downgrade

    def release(self) -> list[MediaCommand]:
        """The call is over: the workers close its streams, the ports go back."""
        commands = [MediaCommand(CloseCall(self.key))] if self._specs else []
        self.call.release()
        self._specs = []
        return commands

    def adopt_streams(self) -> None:
        """The workers run the call's current streams already (a call taken over from another
        gateway: its streams are re-opened from their records), so no command is due."""
        self._specs = list(self.call.streams())

    def _sync(self) -> list[MediaCommand]:
        """What changed in the call's streams, as commands for the media workers."""
        specs = self.call.streams()
        commands: list[MediaCommand] = []
        for index, spec in enumerate(specs):
            old = self._specs[index] if index < len(self._specs) else None
            if spec is None or spec == old:
                continue
            if old is None:
                commands.append(MediaCommand(OpenStream(self.key, index, spec)))
            else:
                commands.append(MediaCommand(UpdateStream(self.key, index, spec)))
        self._specs = list(specs)
        return commands


class MediaLinks:
    """Makes each call's ``MediaLink`` from the site's media policy and port ranges."""

    def __init__(
        self, policy: MediaPolicy, lan_ports: tuple[int, int], wan_ports: tuple[int, int]
    ) -> None:
        self.policy = policy
        self._lan_ports = PortAllocator(*lan_ports)
        self._wan_ports = PortAllocator(*wan_ports)

    @property
    def ports_in_use(self) -> tuple[int, int]:
        """RTP/RTCP port pairs handed out now on the LAN and the WAN side."""
        return self._lan_ports.in_use, self._wan_ports.in_use

    def restored(self, key: str, record: MediaRecord, policy: MediaPolicy | None) -> MediaLink:
        """A call's media taken over from another gateway, its ports claimed here
        (``MediaConflict`` when one is taken); no stream command is due for it."""
        call = restore_media(record, key, policy or self.policy, self._lan_ports, self._wan_ports)
        link = MediaLink(key, call)
        link.caller_offered = record.caller_offered
        link.adopt_streams()
        return link

    def new(self, key: str, policy: MediaPolicy | None = None) -> MediaLink:
        """A call's media; ``policy`` is its trunk's, when the trunk has its own."""
        call = CallMedia(key, policy or self.policy, self._lan_ports, self._wan_ports)
        return MediaLink(key, call)
