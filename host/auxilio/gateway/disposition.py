"""Every rule for what the C4 answers an uplink frame, in one pure function (SPEC §12.2, §12.4).

The verifier classifies a frame (window position, clock); the store says
whether its (device, key epoch, counter) is already taken and by what; this
module turns those facts into an Action and the ACK disposition. Nothing here
does I/O, so the whole rule set is one table-driven test
(tests/gateway/test_disposition.py).
"""

from __future__ import annotations

from dataclasses import dataclass

# Window position of a frame's counter: replay.NEW / SEEN / BELOW.
from auxilio.gateway.replay import BELOW, NEW, SEEN

__all__ = ["BELOW", "NEW", "SEEN", "Decision", "decide"]

# What the stored record for the same (device, key epoch, counter) says.
NO_ROW = "none"  # nothing stored under that name
SAME = "same"  # a row with the same type and payload bytes: this frame, again
DIFFERENT = "different"  # a row for another frame: the counter was reused

# Actions the pipeline takes.
STORE = "store"  # record it (alerts table), then ACK
HEARTBEAT = "heartbeat"  # accepted sign of life, no ACK (SPEC §12.4)
REACK = "reack"  # a duplicate: ACK the stored disposition again, store nothing
COLLISION = "collision"  # keep as evidence (COUNTER_COLLISION), ACK rejected/collision
REPLAY = "replay"  # ACK rejected/replay, store nothing
TIME_NAK = "time_nak"  # ACK time_nak with server time, store nothing, counter not consumed
IGNORE = "ignore"  # a repeated heartbeat: nothing to store, nothing to answer

# Lifecycle states whose frames are stored (as evidence) but rejected, with the wire reason.
# A device still being provisioned holds no secret the C4 may trust yet (issue 11 §7).
REJECTED_STATES = {"revoked": "revoked", "retired": "retired", "provisioning": "policy"}

# Actions that consume the counter: the only frames that are signs of life (SPEC §12.2, §12.7).
ACCEPTED = frozenset({STORE, HEARTBEAT})


@dataclass(frozen=True)
class Decision:
    action: str
    disposition: str | None = None  # None: no ACK is sent
    reason: str = "none"

    @property
    def accepted(self) -> bool:
        return self.action in ACCEPTED


def decide(
    *,
    window: str,
    heartbeat: bool,
    device_state: str,
    stored: str = NO_ROW,
    stored_disposition: str | None = None,
    stored_attended: bool = False,
    clock_skewed: bool = False,
) -> Decision:
    """The C4's answer to one verified uplink frame.

    window: NEW / SEEN / BELOW; heartbeat: the frame is a HEARTBEAT (never
    ACKed); stored: NO_ROW / SAME / DIFFERENT for the same (device, epoch,
    counter); stored_disposition / stored_attended: that row's answer;
    clock_skewed: the frame claims a synced clock outside the window (only
    when the gateway's own clock is synced).
    """
    # A name already taken by another frame is never answered from that frame's
    # record (SPEC §12.2 rule 2), whatever the window says.
    if stored == DIFFERENT:
        return Decision(COLLISION, None if heartbeat else "rejected", "collision")
    if stored == SAME:
        if heartbeat:
            return Decision(IGNORE)
        if stored_attended:
            return Decision(REACK, "attending")
        disp = stored_disposition or "received"
        if disp == "rejected":
            return Decision(REACK, "rejected", REJECTED_STATES.get(device_state, "policy"))
        return Decision(REACK, disp)
    if window != NEW:
        # Seen (or older than the window) with no record: a heartbeat's counter
        # reused, or a replay. Heartbeats are not stored, so a repeated one is
        # simply ignored; anything else is told "replay" with the high-water mark.
        return Decision(IGNORE) if heartbeat else Decision(REPLAY, "rejected", "replay")
    if heartbeat:
        # Not time-checked (SPEC §12.2): a heartbeat takes no ACK that could carry
        # the server time, so refusing it would turn a drifting clock into a
        # supervision alarm; its counter still stops replays.
        return Decision(HEARTBEAT)
    if clock_skewed:
        return Decision(TIME_NAK, "time_nak")
    reject = REJECTED_STATES.get(device_state)
    if reject is not None:
        return Decision(STORE, "rejected", reject)
    return Decision(STORE, "received")
