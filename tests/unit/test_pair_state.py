"""The call set-up machine of ``gateway.sip.pair``: its table, taken as the specification.

Every (state, input) either moves by the table or raises ``IllegalTransition``; the paths
that RFC 3261 §9.1 and §13 make matter are spelled out one by one.
"""

from __future__ import annotations

import itertools

import pytest

from gateway.sip.dialog import Leg
from gateway.sip.headers import NameAddr
from gateway.sip.pair import (
    RINGING,
    TRANSITIONS,
    WINDING_DOWN,
    DialogPair,
    IllegalTransition,
    PairInput,
    PairState,
)
from gateway.sip.peer import Peer, Side
from gateway.sip.uri import parse_uri

S, In = PairState, PairInput


def pair(state: PairState = S.CALLING) -> DialogPair:
    uri = parse_uri("sip:100@192.0.2.1")
    peer = Peer(Side.LAN, "udp", ("192.0.2.10", 5060))
    leg = Leg(peer, "cid", NameAddr(None, uri, {"tag": "a"}), NameAddr(None, uri, {}), "<x>", uri)
    p = DialogPair("c1", "INVITE", leg, leg, Side.LAN, "k", None, (Side.LAN, "cid", "a", 1), None)
    p.state = state
    return p


@pytest.mark.parametrize(("state", "event"), list(itertools.product(PairState, PairInput)))
def test_every_input_in_every_state_moves_by_the_table_or_raises(
    state: PairState, event: PairInput
) -> None:
    p = pair(state)
    expected = TRANSITIONS[state].get(event)
    if expected is None:
        with pytest.raises(IllegalTransition, match=f"{event.value} in state {state.value}"):
            p.advance(event)
        assert p.state == state  # a refused input changes nothing
    else:
        assert p.advance(event) == state
        assert p.state == expected


@pytest.mark.parametrize(
    ("path", "end"),
    [
        # 100 Trying, 180 with a tag, 200: the ordinary call.
        ([In.PROVISIONAL, In.EARLY_DIALOG, In.ANSWER], S.CONFIRMED),
        # Given up before any provisional: CANCEL waits (§9.1), the first 1xx lets it go.
        ([In.GIVE_UP], S.CANCEL_PENDING),
        ([In.GIVE_UP, In.PROVISIONAL], S.CANCELLING),
        ([In.GIVE_UP, In.PROVISIONAL, In.REJECT], S.ENDED),
        # The callee's 2xx crossed our CANCEL: it is ACKed and ended.
        ([In.PROVISIONAL, In.GIVE_UP, In.ANSWER], S.ENDED),
        # Rejected outright.
        ([In.REJECT], S.ENDED),
        # A retransmitted 2xx, or another fork's, after the confirmation.
        ([In.ANSWER, In.ANSWER, In.PROVISIONAL], S.CONFIRMED),
        ([In.ANSWER, In.HANG_UP], S.ENDED),
        # A BYE on an early dialog winds the set-up down like a CANCEL.
        ([In.EARLY_DIALOG, In.HANG_UP], S.CANCELLING),
        # An ended call absorbs whatever arrives late.
        ([In.ANSWER, In.HANG_UP, In.ANSWER, In.REJECT, In.GIVE_UP], S.ENDED),
    ],
)
def test_paths_through_the_machine(path: list[PairInput], end: PairState) -> None:
    p = pair()
    for event in path:
        p.advance(event)
    assert p.state == end


def test_a_confirmed_call_cannot_be_rejected_or_given_up() -> None:
    p = pair(S.CONFIRMED)
    for event in (In.REJECT, In.GIVE_UP):
        with pytest.raises(IllegalTransition):
            p.advance(event)


def test_the_state_groups_partition_the_set_up() -> None:
    assert RINGING.isdisjoint(WINDING_DOWN)
    assert RINGING | WINDING_DOWN | {S.CONFIRMED, S.ENDED} == set(PairState)
    assert set(TRANSITIONS) == set(PairState)
