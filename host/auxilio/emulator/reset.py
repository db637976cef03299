"""The two auto-reset circuits esptool drives with DTR and RTS, as line-state machines.

Both take every (dtr, rts) change in order (True = asserted, pyserial's
convention) and answer what the chip does: hold it in reset, or release it
into a flash boot or the ROM's serial download mode.

- Classic (ESP32 DevKit behind a CP210x/CH340/FTDI bridge): two transistors
  pull EN low only while RTS is asserted and DTR is not, and IO0 low only
  while DTR is asserted and RTS is not. An RC on EN delays its rise after RTS
  lets go; IO0 is latched when EN rises, so IO0 pulled low inside that window
  means download mode (esptool's ClassicReset asserts DTR right as it
  releases RTS).
- USB-Serial-JTAG (ESP32-C3/S3 native USB): no pins; the peripheral reads
  the lines as requests. RTS asserted with DTR deasserted is a core reset
  held while it lasts ("the peripheral interprets RTS as a core reset",
  esptool docs); DTR asserted with RTS deasserted requests download mode on
  the next boot; both deasserted clears the request; both asserted does
  nothing (esptool's usb-reset sequence walks through (1,1) on purpose, not
  (0,0)).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from auxilio.boards import RESET_CLASSIC, RESET_USB_JTAG

# The RC on EN holds the chip in reset a little after RTS lets go. Over RFC 2217
# each line change is one round trip (pyserial waits >= 50 ms for its ack), so
# esptool's "IO0 low right after EN release" arrives 50-150 ms late; esptool's
# own esp_rfc2217_server replays the sequence locally for the same reason. The
# window is wide enough for that, and far shorter than any human reset.
EN_RC_S = 0.3


@dataclass
class Action:
    """What a line change does: 'reset' (held), 'boot' or 'download' (released), or None."""

    what: str | None
    cause: str = "power_on"  # the reset reason the ROM prints ("usb" for USB-Serial-JTAG)


class ClassicReset:
    """DTR -> IO0, RTS -> EN through the two-transistor DevKit circuit, with EN's RC."""

    kind = RESET_CLASSIC

    def __init__(self) -> None:
        self.lines = (False, False)
        self.rise_at: float | None = None  # EN released, rising through the RC
        self._io0_low_seen = False

    def set_lines(self, dtr: bool, rts: bool) -> Action:
        old_en_low = self.lines[1] and not self.lines[0]
        self.lines = (dtr, rts)
        en_low = rts and not dtr
        if en_low:
            self.rise_at = None
            return Action("reset" if not old_en_low else None)
        if dtr and not rts and self.rise_at is not None:
            self._io0_low_seen = True  # IO0 pulled low while EN is still rising
        if old_en_low:
            self.rise_at = time.monotonic() + EN_RC_S
            self._io0_low_seen = dtr and not rts
        return Action(None)

    def due(self) -> float | None:
        """When the pending EN rise completes (monotonic), if one is pending."""
        return self.rise_at

    def tick(self) -> Action:
        """Call at due(): EN has risen; the strapping pins are latched now."""
        if self.rise_at is None or time.monotonic() < self.rise_at:
            return Action(None)
        self.rise_at = None
        low = self._io0_low_seen or (self.lines[0] and not self.lines[1])
        self._io0_low_seen = False
        return Action("download" if low else "boot")


class UsbJtagReset:
    """The USB-Serial-JTAG peripheral's reading of DTR/RTS (see the module docstring).

    Over RFC 2217 esptool cannot see the port's VID/PID, so its default reset is
    the classic DTR/RTS one, which by itself would just reboot a native-USB chip.
    A redirector in front of a native-USB board answers that request with the
    reset the port needs (esptool's esp_rfc2217_server replays resets locally
    too): DTR asserted while RTS holds the core in reset is read as "release
    into download mode".
    """

    kind = RESET_USB_JTAG

    def __init__(self) -> None:
        self.lines = (False, False)
        self.download_requested = False

    def set_lines(self, dtr: bool, rts: bool) -> Action:
        old = self.lines
        self.lines = (dtr, rts)
        was_reset = old == (False, True)
        if (dtr, rts) == (False, True):
            return Action("reset" if not was_reset else None, "usb")
        if was_reset:
            download = self.download_requested or dtr  # dtr: the replayed classic request
            self._latch(dtr, rts)
            return Action("download" if download else "boot", "usb")
        self._latch(dtr, rts)
        return Action(None)

    def _latch(self, dtr: bool, rts: bool) -> None:
        if dtr and not rts:
            self.download_requested = True
        elif not dtr and not rts:
            self.download_requested = False

    def due(self) -> float | None:
        return None

    def tick(self) -> Action:
        return Action(None)


def make_circuit(kind: str) -> ClassicReset | UsbJtagReset:
    return UsbJtagReset() if kind == RESET_USB_JTAG else ClassicReset()
