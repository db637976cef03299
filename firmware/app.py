# Application wiring: build Devices, start their asyncio tasks under guards, feed the watchdog.
#
# Entry points (firmware contract): main(root="/") runs one device from a
# filesystem root (what main.py calls); run_fleet(roots, hal_factory=None)
# runs several Devices on one asyncio loop in one interpreter. Every task is
# wrapped by _guard(): an exception is logged, counted and the task restarts
# after a short backoff; it never dies. The watchdog is fed only from the
# fleet loop below, and only while every Device reports healthy() (its sender
# loop ticks and tasks are not crash-looping).
#
# RAM budget: one Slot (~100 B) per device plus the device's own budget.

import asyncio

from config import ConfigError, join, read_json

GUARD_MIN_MS = 50  # first restart delay after a task failure
GUARD_MAX_MS = 5000  # cap on the restart delay
WDT_FEED_MS = 1000  # watchdog feeding period (the hardware timeout is in board tunables)


async def _guard(dev, name, fn):
    delay = GUARD_MIN_MS
    while True:
        try:
            await fn()
            return  # finished on purpose (e.g. the host transport has nothing to run)
        except Exception as e:  # CancelledError is a BaseException: stop() still works
            dev.crashed(name, e)
            await asyncio.sleep_ms(delay)
            delay = min(delay * 2, GUARD_MAX_MS)


class Slot:
    """One device position in the fleet: its root, its HAL and the running Device."""

    def __init__(self, root, hal, index):
        self.root = root
        self.hal = hal
        self.index = index
        self.dev = None
        self.tasks = []

    def start(self):
        from device import Device

        hal = self.hal
        try:
            dev = Device(self.root, hal, self.index)
            session = dev.make_session()
        except ConfigError as e:
            # One clear line, an error pattern, no reboot loop (issue 3 §10).
            hal.log("config error: %s" % e)
            hal.hello(None)
            hal.error_blink()
            return False
        except Exception as e:  # damaged flash or a bug: report, blink, keep the REPL
            hal.log("device start failed: %r" % e)
            hal.hello(None)
            hal.error_blink()
            return False
        self.dev = dev
        hal.attach_button(dev)
        hal.hello(dev.cfg.device_str)
        import supervision

        for name, fn in (
            ("transport", dev.transport.run),
            ("session", session.run),
            ("sender", dev.sender),
            ("gestures", dev.gestures),
            ("heartbeats", lambda: supervision.heartbeats(dev)),
            ("inputs", lambda: supervision.inputs(dev)),
        ):
            self.tasks.append(asyncio.create_task(_guard(dev, name, fn)))
        dev.queue_boot()
        return True

    def stop(self):
        for t in self.tasks:
            t.cancel()
        self.tasks = []
        if self.dev is not None and self.dev.session is not None:
            self.dev.session.stop()
        self.dev = None

    def reset(self):
        """Soft reboot of this Device object in place (control op "reset")."""
        self.stop()
        self.start()


def _board(root, hal_log):
    try:
        return read_json(join(root, "board.json"), "board.json")
    except ConfigError as e:
        hal_log("config error: %s" % e)
        return None


async def _fleet(roots, hal_factory):
    import hal as hal_mod

    channel = None
    if hal_factory is None and not hal_mod.is_esp32():
        from hal.control import channel_from_env

        channel = channel_from_env()
        if channel is not None:
            asyncio.create_task(channel.run())
    slots = []
    for i in range(len(roots)):
        root = roots[i]
        if hal_factory is not None:
            hal = hal_factory(i, root)
        else:
            board = _board(root, print)
            hal = hal_mod.make(board or {}, i, channel)
        slot = Slot(root, hal, i)
        hal.on_reset = slot.reset
        slot.start()
        slots.append(slot)
    running = [s for s in slots if s.dev is not None]
    if not running and channel is None:
        return slots  # nothing valid to run: back to the REPL (no boot loop)
    if running:
        wdt_hal = running[0].hal
        wdt_hal.wdt_start(running[0].dev.cfg.watchdog_ms)
    else:
        wdt_hal = None
    while True:
        healthy = True
        for s in slots:
            if s.dev is not None and not s.dev.healthy():
                healthy = False
        if healthy and wdt_hal is not None:
            wdt_hal.wdt_feed()
        await asyncio.sleep_ms(WDT_FEED_MS)


def run_fleet(roots, hal_factory=None):
    """Run one Device per root on one asyncio loop; returns only if none could start."""
    return asyncio.run(_fleet(roots, hal_factory))


def main(root="/"):
    """Run the device whose config.json and board.json live under root."""
    return run_fleet([root])
