"""Every way the B2BUA finds a call, each a dictionary look-up (RFC 3261 §12.2, §8.2.2.2, §9.2).

- by key, for media workers and the admin surface;
- by dialog: (side, Call-ID, the gateway's tag on that side), for in-dialog requests and for
  the Replaces header of an attended transfer (RFC 3891 §3);
- by the server transaction of the dialog-creating request, for CANCEL (§9.2);
- by origin: (side, Call-ID, From tag, CSeq) of that request, for late retransmissions and
  merged requests (§8.2.2.2).

Each pair remembers the dialog keys it was filed under, so forgetting a call costs as many
look-ups as it has dialogs (two, or one more per forked early dialog), never a scan.
"""

from __future__ import annotations

from gateway.sip.pair import DialogPair
from gateway.sip.peer import Side

DialogKey = tuple[Side, str, str]
OriginKey = tuple[Side, str, str | None, int]


class DialogIndex:
    def __init__(self) -> None:
        self._pairs: dict[str, DialogPair] = {}
        self._dialogs: dict[DialogKey, DialogPair] = {}
        self._dialog_keys: dict[str, list[DialogKey]] = {}
        self._by_server: dict[tuple[Side, str], DialogPair] = {}
        self._by_origin: dict[OriginKey, DialogPair] = {}
        #: Pairs filed whose method is INVITE: [limits] max_calls counts these only.
        self._invites = 0

    # ----------------------------------------------------------------- filing

    def add(self, pair: DialogPair) -> None:
        """File a new pair under its key, origin, server transaction and both dialogs."""
        if self._pairs.get(pair.key) is None and pair.method == "INVITE":
            self._invites += 1
        self._pairs[pair.key] = pair
        self._by_origin[pair.origin] = pair
        self._by_server[(pair.caller_side, pair.server_key)] = pair
        self._dialog_keys[pair.key] = []
        for side in (pair.caller_side, pair.callee_side):
            leg = pair.leg(side)
            if leg.local_tag is not None:
                self.add_dialog(pair, side, leg.call_id, leg.local_tag)

    def add_dialog(self, pair: DialogPair, side: Side, call_id: str, local_tag: str) -> None:
        """One more dialog of the pair (a caller-side tag per forked early dialog)."""
        key = (side, call_id, local_tag)
        self._dialogs[key] = pair
        self._dialog_keys.setdefault(pair.key, []).append(key)

    def forget_dialog(self, side: Side, call_id: str, local_tag: str | None) -> None:
        """One dialog of a pair is gone (a leg replaced when a call moves to another trunk)."""
        if local_tag is None:
            return
        pair = self._dialogs.pop((side, call_id, local_tag), None)
        if pair is not None:
            keys = self._dialog_keys.get(pair.key, [])
            if (side, call_id, local_tag) in keys:
                keys.remove((side, call_id, local_tag))

    def forget(self, pair: DialogPair) -> None:
        """Unfile the pair everywhere; its server transaction entry goes with the transaction."""
        if self._pairs.get(pair.key) is pair:
            del self._pairs[pair.key]
            if pair.method == "INVITE":
                self._invites -= 1
        if self._by_origin.get(pair.origin) is pair:
            del self._by_origin[pair.origin]
        for key in self._dialog_keys.pop(pair.key, ()):
            if self._dialogs.get(key) is pair:
                del self._dialogs[key]

    def transaction_ended(self, side: Side, server_key: str) -> None:
        self._by_server.pop((side, server_key), None)

    # ---------------------------------------------------------------- finding

    def get(self, key: str) -> DialogPair | None:
        return self._pairs.get(key)

    def __contains__(self, pair: DialogPair) -> bool:
        return self._pairs.get(pair.key) is pair

    def by_dialog(self, side: Side, call_id: str, local_tag: str) -> DialogPair | None:
        return self._dialogs.get((side, call_id, local_tag))

    def by_server(self, side: Side, server_key: str) -> DialogPair | None:
        return self._by_server.get((side, server_key))

    def by_origin(self, origin: OriginKey) -> DialogPair | None:
        return self._by_origin.get(origin)

    def pairs(self) -> list[DialogPair]:
        return list(self._pairs.values())

    def __len__(self) -> int:
        return len(self._pairs)

    @property
    def calls(self) -> int:
        """Pairs of INVITE dialogs (calls); the others are subscriptions and transfers."""
        return self._invites
