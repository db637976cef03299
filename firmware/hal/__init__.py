# Hardware abstraction: pick the ESP32 or the host (unix port) implementation by platform.
#
# Every HAL offers the same firmware-facing methods (see hal/host.py for the
# reference): attach_button(device), battery_pct(), battery_mv(), charging(), mains(),
# tamper_open(), location(), haptic/led/buzzer(pattern), state(name, counter),
# log(msg), hello(device), reset_cause(), make_transport(cfg, log),
# wdt_start(ms), wdt_feed(), deep_sleep(ms), error_blink(), make_flag().
# RAM budget: nothing here; see each implementation.

import sys


def is_esp32():
    return sys.platform == "esp32"


def make(board, index=0, channel=None):
    """The HAL for this platform, configured from board data (never from a board name)."""
    if is_esp32():
        from hal.esp32 import Esp32Hal

        return Esp32Hal(board)
    from hal.host import HostHal

    return HostHal(board, index, channel)
