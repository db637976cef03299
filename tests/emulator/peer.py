"""The emulator tests' C4 peer (it lives in auxilio.testing, where the power figures use it too)."""

from auxilio.testing.peer import AckPeer

__all__ = ["AckPeer"]
