"""Confirmed calls out of one B2BUA core and into another (sans-IO; RFC 3261 §12, issue 14).

An active/standby pair replicates every confirmed call: the active core reports which calls
changed (:meth:`CallRecords.touch` from the B2BUA's inputs, drained by
:meth:`CallRecords.take_changed`), exports each as a :class:`~gateway.state.calls.CallRecord`,
and the standby, once it takes over, restores them (:meth:`CallRecords.restore`): each pair
CONFIRMED with both legs as dialogs (§12: Call-ID, tags, CSeq numbers, route sets, remote
targets), filed in the dialog index, its media agreed as before on the same ports
(``gateway.sdp.media_state``), counted by the caps as a running call. From then on an
in-dialog BYE, re-INVITE or hold from either side is handled as on the old gateway: the
requests the new core sends go on with the legs' CSeq numbers, and an SDP re-offer keeps the
SRTP key and raises the o= version.

Restore emits nothing: the media workers' streams are re-opened by the glue
(``MediaController.restore_streams``) from the records' stream specs and checkpoints. Calls
still ringing are not exported (their transactions die with the old gateway: the caller
retransmits into nothing and gives up, as after a crash). A call keyed with DTLS-SRTP is
exported with its association (``gateway.sdp.dtls``); the keys its handshake gave
(RFC 5764 §4.2) are not the core's: the glue adds them to the streams from the media
controller, and the new gateway's worker carries the association on without a handshake.
"""

from __future__ import annotations

import re

from gateway.sdp.media_state import MediaConflict, export_media
from gateway.sip.admission import Admission
from gateway.sip.call_setup import CallSetup
from gateway.sip.dialog import Leg
from gateway.sip.dialog_index import DialogIndex
from gateway.sip.edge import user_of
from gateway.sip.errors import SipError
from gateway.sip.events import (
    RequestReceived,
    ResponseReceived,
    TransactionTimedOut,
)
from gateway.sip.headers import NameAddr
from gateway.sip.outgoing import Outgoing
from gateway.sip.pair import DialogPair, PairState
from gateway.sip.peer import Peer, Side
from gateway.sip.sdp_link import MediaLinks
from gateway.sip.trunks import TrunkTable
from gateway.sip.uri import parse_uri
from gateway.state.calls import CallRecord, LegRecord, ReplicatedStream

#: Keys the core gives its pairs ("c<serial>"): a core that took calls over numbers its own
#: after theirs, so a new call never gets the key (and media call id) of a restored one.
_SERIAL_KEY = re.compile(r"c(\d+)")


class CallRecords:
    """Export, restore and change tracking of one core's confirmed calls."""

    def __init__(
        self,
        index: DialogIndex,
        out: Outgoing,
        media: MediaLinks,
        admission: Admission,
        setup: CallSetup,
        trunks: TrunkTable,
    ) -> None:
        self._index = index
        self._out = out
        self._media = media
        self._admission = admission
        self._setup = setup
        self._trunks = trunks
        self._changed: set[str] = set()
        #: Changes are kept only once someone takes them (a gateway without a standby never
        #: does: the set must not grow with every call it ever carried).
        self._tracking = False
        #: Why records were skipped by the last restore: key -> reason (for the glue's log).
        self.skipped: dict[str, str] = {}

    # ------------------------------------------------------------ change tracking

    def touch(self, pair: DialogPair | None) -> None:
        """``pair``'s replicable state may change now (an INVITE call only)."""
        if self._tracking and pair is not None and pair.method == "INVITE":
            self._changed.add(pair.key)

    def touch_event(self, side: Side, event: object) -> None:
        """The call an input event of a transaction layer concerns, if any."""
        if isinstance(event, RequestReceived):
            request = event.request
            tag = request.to.tag
            if tag:
                self.touch(self._index.by_dialog(side, request.call_id, tag))
            elif request.method == "CANCEL":
                self.touch(self._index.by_server(side, event.key))
        elif isinstance(event, ResponseReceived | TransactionTimedOut):
            relay = self._out.relays.get((side, event.key))
            if relay is not None:
                self.touch(relay.pair)

    def take_changed(self) -> set[str]:
        """The calls touched since the last take; the first take names every call."""
        if not self._tracking:
            self._tracking = True
            return {pair.key for pair in self._index.pairs() if pair.method == "INVITE"}
        changed, self._changed = self._changed, set()
        return changed

    # -------------------------------------------------------------------- export

    def export(self, key: str, now: float, wall: float) -> CallRecord | None:
        """The record of a confirmed INVITE call; None for any other key (``wall``: Unix
        time at ``now``)."""
        pair = self._index.get(key)
        if (
            pair is None
            or pair.method != "INVITE"
            or pair.state != PairState.CONFIRMED
            or pair.answered is None
        ):
            return None

        def unix(t: float) -> float:
            return round(t - now + wall, 3)

        media = None
        streams: tuple[ReplicatedStream, ...] = ()
        if pair.media is not None:
            specs = pair.media.call.streams()
            media = export_media(pair.media.call, pair.media.caller_offered)
            streams = tuple(
                ReplicatedStream(index, spec)
                for index, spec in enumerate(specs)
                if spec is not None
            )
        number = pair.number
        origin = pair.origin
        return CallRecord(
            key=pair.key,
            caller_side=pair.caller_side.value,
            caller=_leg_record(pair.caller),
            callee=_leg_record(pair.callee),
            started=unix(pair.started),
            answered=unix(pair.answered),
            confirmed_tag=pair.confirmed_tag,
            origin_cseq=origin[3],
            origin_from_tag=origin[2],
            branch=pair.branch,
            caller_supports_100rel=pair.caller_supports_100rel,
            outgoing_cseq=pair.outgoing_cseq,
            trunk=pair.trunk,
            number=number,
            caller_user=user_of(pair.caller.remote) if pair.caller_side == Side.LAN else None,
            dialled=number.dialled if number is not None else None,
            media=media,
            streams=streams,
        )

    # ------------------------------------------------------------------- restore

    def restore(self, records: list[CallRecord], now: float, wall: float) -> list[str]:
        """Rebuild each record's pair CONFIRMED; returns the keys restored. A record that
        conflicts with this core's state (its key or a dialog known, a port taken, fields
        that do not parse) is skipped and named in ``skipped``; nothing raises."""
        self.skipped = {}
        restored: list[str] = []
        for record in records:
            problem = self._restore_one(record, now, wall)
            if problem is None:
                restored.append(record.key)
            else:
                self.skipped[record.key] = problem
        return restored

    def _restore_one(self, record: CallRecord, now: float, wall: float) -> str | None:
        if self._index.get(record.key) is not None:
            return "a call with this key exists"
        try:
            caller_side = Side(record.caller_side)
            caller = _leg(record.caller)
            callee = _leg(record.callee)
        except (SipError, ValueError) as exc:
            return f"unusable leg: {exc}"
        for leg in (caller, callee):
            tag = leg.local_tag
            if tag is None or self._index.by_dialog(leg.peer.side, leg.call_id, tag) is not None:
                return f"dialog {leg.call_id} exists or has no tag"
        if caller.peer.side != caller_side or callee.peer.side == caller_side:
            return "legs on the wrong sides"
        trunk_policy = None
        if record.trunk is not None:
            try:
                trunk_policy = self._trunks.get(record.trunk).media
            except KeyError:
                trunk_policy = None  # a trunk renamed since: the site's media policy
        media = None
        if record.media is not None:
            try:
                media = self._media.restored(record.key, record.media, trunk_policy)
            except MediaConflict as exc:
                return str(exc)

        def core(t: float) -> float:
            return t - wall + now

        pair = DialogPair(
            key=record.key,
            method="INVITE",
            caller=caller,
            callee=callee,
            caller_side=caller_side,
            server_key=f"restored:{record.key}",
            request=None,
            origin=(caller_side, caller.call_id, record.origin_from_tag, record.origin_cseq),
            branch=record.branch,
            caller_supports_100rel=record.caller_supports_100rel,
            started=core(record.started),
            answered=core(record.answered),
            media=media,
            state=PairState.CONFIRMED,
            outgoing_cseq=record.outgoing_cseq,
            confirmed_tag=record.confirmed_tag,
            trunk=record.trunk,
            number=record.number,
        )
        self._index.add(pair)
        # No server transaction stands behind a restored call: nothing to file it under.
        self._index.transaction_ended(caller_side, pair.server_key)
        match = _SERIAL_KEY.fullmatch(record.key)
        if match is not None:
            self._setup._serial = max(self._setup._serial, int(match.group(1)))
        if caller_side == Side.LAN and record.caller_user is not None:
            self._admission.call_started(
                pair.key, record.caller_user, record.dialled or "", record.number, pair.started
            )
            self._admission.call_answered(pair.key, core(record.answered))
        return None


def _leg_record(leg: Leg) -> LegRecord:
    return LegRecord(
        side=leg.peer.side.value,
        transport=leg.peer.transport,
        address=leg.peer.address,
        call_id=leg.call_id,
        local=str(leg.local),
        remote=str(leg.remote),
        contact=leg.contact,
        remote_target=str(leg.remote_target),
        route_set=tuple(leg.route_set),
        local_cseq=leg.local_cseq,
        remote_cseq=leg.remote_cseq,
        via_host=leg.via_host,
        via_port=leg.via_port,
    )


def _leg(record: LegRecord) -> Leg:
    # The old process's stream connection ids mean nothing here: None is "the current
    # connection to this peer" (the provider link) or a new one.
    peer = Peer(Side(record.side), record.transport, (record.address[0], record.address[1]))
    return Leg(
        peer=peer,
        call_id=record.call_id,
        local=NameAddr.parse(record.local),
        remote=NameAddr.parse(record.remote),
        contact=record.contact,
        remote_target=parse_uri(record.remote_target),
        route_set=list(record.route_set),
        local_cseq=record.local_cseq,
        remote_cseq=record.remote_cseq,
        via_host=record.via_host,
        via_port=record.via_port,
    )
