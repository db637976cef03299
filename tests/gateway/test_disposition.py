"""Every disposition rule in one table (SPEC §12.2, §12.4): the pure function the pipeline uses."""

from __future__ import annotations

import pytest
from auxilio.gateway import disposition as D

NEW, SEEN, BELOW = D.NEW, D.SEEN, D.BELOW
SAME, DIFF, NONE = D.SAME, D.DIFFERENT, D.NO_ROW

# (window, heartbeat, device state, stored, stored disposition, attended, clock skewed)
#   -> (action, disposition, reason)
TABLE = [
    # A new counter: stored and acked received; lifecycle decides rejections.
    ((NEW, False, "assigned", NONE, None, False, False), (D.STORE, "received", "none")),
    ((NEW, False, "spare", NONE, None, False, False), (D.STORE, "received", "none")),
    ((NEW, False, "lost", NONE, None, False, False), (D.STORE, "received", "none")),
    ((NEW, False, "revoked", NONE, None, False, False), (D.STORE, "rejected", "revoked")),
    ((NEW, False, "retired", NONE, None, False, False), (D.STORE, "rejected", "retired")),
    # A skewed clock: time-NAK, nothing stored; heartbeats are never time-checked.
    ((NEW, False, "assigned", NONE, None, False, True), (D.TIME_NAK, "time_nak", "none")),
    ((NEW, True, "assigned", NONE, None, False, True), (D.HEARTBEAT, None, "none")),
    ((NEW, True, "assigned", NONE, None, False, False), (D.HEARTBEAT, None, "none")),
    # The same frame again (retransmission, MQTT redelivery): its stored answer.
    ((SEEN, False, "assigned", SAME, "received", False, False), (D.REACK, "received", "none")),
    ((BELOW, False, "assigned", SAME, "received", False, False), (D.REACK, "received", "none")),
    ((SEEN, False, "assigned", SAME, "received", True, False), (D.REACK, "attending", "none")),
    ((SEEN, False, "assigned", SAME, "attending", False, False), (D.REACK, "attending", "none")),
    ((SEEN, False, "revoked", SAME, "rejected", False, False), (D.REACK, "rejected", "revoked")),
    ((SEEN, False, "assigned", SAME, "rejected", False, False), (D.REACK, "rejected", "policy")),
    # ... even with a skewed clock: the stored answer, never a time-NAK.
    ((SEEN, False, "assigned", SAME, "received", False, True), (D.REACK, "received", "none")),
    ((SEEN, True, "assigned", SAME, None, False, False), (D.IGNORE, None, "none")),
    # Another frame under a taken name: never answered from that frame's record.
    (
        (SEEN, False, "assigned", DIFF, "received", True, False),
        (D.COLLISION, "rejected", "collision"),
    ),
    (
        (BELOW, False, "assigned", DIFF, "attending", True, False),
        (D.COLLISION, "rejected", "collision"),
    ),
    (
        (NEW, False, "assigned", DIFF, "received", False, False),
        (D.COLLISION, "rejected", "collision"),
    ),
    ((SEEN, True, "assigned", DIFF, "received", False, False), (D.COLLISION, None, "collision")),
    # Seen, but nothing stored: a replay (or a repeated heartbeat, ignored).
    ((SEEN, False, "assigned", NONE, None, False, False), (D.REPLAY, "rejected", "replay")),
    ((BELOW, False, "assigned", NONE, None, False, False), (D.REPLAY, "rejected", "replay")),
    ((BELOW, False, "revoked", NONE, None, False, False), (D.REPLAY, "rejected", "replay")),
    ((SEEN, True, "assigned", NONE, None, False, False), (D.IGNORE, None, "none")),
    ((BELOW, True, "assigned", NONE, None, False, False), (D.IGNORE, None, "none")),
]


@pytest.mark.parametrize(("facts", "expected"), TABLE, ids=[str(i) for i in range(len(TABLE))])
def test_disposition_table(facts: tuple, expected: tuple) -> None:
    window, heartbeat, state, stored, disp, attended, skewed = facts
    d = D.decide(
        window=window,
        heartbeat=heartbeat,
        device_state=state,
        stored=stored,
        stored_disposition=disp,
        stored_attended=attended,
        clock_skewed=skewed,
    )
    assert (d.action, d.disposition, d.reason) == expected


def test_only_accepted_frames_consume_the_counter_and_prove_life() -> None:
    accepted = {
        D.decide(window=NEW, heartbeat=h, device_state=s).action
        for h in (True, False)
        for s in ("assigned", "revoked")
    }
    assert accepted <= D.ACCEPTED
    for stored in (SAME, DIFF):
        for w in (NEW, SEEN, BELOW):
            assert not D.decide(
                window=w, heartbeat=False, device_state="assigned", stored=stored
            ).accepted
    assert not D.decide(
        window=NEW, heartbeat=False, device_state="assigned", clock_skewed=True
    ).accepted
