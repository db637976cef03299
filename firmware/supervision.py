# Supervision tasks: HEARTBEAT cadence, power/tamper inputs, idle deep sleep (issue 3 §9, SPEC §12.7).
#
# heartbeats(): one HEARTBEAT every cfg.heartbeat_s (role default, changed by
# CONFIG; a change restarts the wait at once). inputs(): polls battery, mains
# and tamper every input_poll_ms and queues LOW_BATTERY / POWER / TAMPER on
# edges.
#
# RAM budget: no buffers of its own; frames are built in the Device's scratch.

import asyncio
from time import ticks_add, ticks_diff, ticks_ms

import auxcodec as codec


async def heartbeats(dev):
    """Queue a HEARTBEAT every heartbeat_s seconds; reschedule when CONFIG changes it."""
    last = ticks_ms()
    first = dev.cfg.first_heartbeat_s
    if first is not None and first < dev.cfg.heartbeat_s:
        # Pretend the last beat was long enough ago that the first one is due in `first` s.
        last = ticks_add(last, (first - dev.cfg.heartbeat_s) * 1000)
    while True:
        wait = dev.cfg.heartbeat_s * 1000 - ticks_diff(ticks_ms(), last)
        if wait > 0:
            try:
                await asyncio.wait_for_ms(dev.hb_changed.wait(), wait)
                dev.hb_changed.clear()
                continue  # interval changed: recompute from the last beat
            except asyncio.TimeoutError:
                pass
        last = ticks_ms()
        dev.queue_heartbeat()


async def inputs(dev):
    """Battery thresholds, mains lost/restored and the tamper switch, by polling."""
    cfg = dev.cfg
    hal = dev.hal
    pw = dev.power
    while True:
        pct = hal.battery_pct()
        t = pw.battery(pct)
        if t is not None:
            dev.log("battery low: %d%% (threshold %d%%)" % (pct, t))
            dev.queue_event(codec.LOW_BATTERY, pct, t)
        if cfg.has_mains:
            on = hal.mains()
            if pw.mains_changed(on):
                dev.log("mains " + ("restored" if on else "lost"))
                dev.queue_event(codec.POWER, 1 if on else 0, dev._battery_wire())
        if cfg.has_tamper:
            opened = hal.tamper_open()
            if pw.tamper_changed(opened):
                dev.log("tamper switch " + ("opened" if opened else "closed"))
                dev.queue_event(codec.TAMPER, 1 if opened else 0)
        idle = cfg.deep_sleep_idle_s
        if (
            idle
            and dev.outbox.depth() == 0
            and not dev.gesture.active()
            and ticks_diff(ticks_ms(), dev.last_activity) > idle * 1000
        ):
            # Nothing to deliver and nobody touching the button: sleep until the
            # next heartbeat is due or the button wakes us (HAL wires the wake pin).
            dev.log("idle: deep sleep")
            hal.deep_sleep(cfg.heartbeat_s * 1000)
        await asyncio.sleep_ms(cfg.input_poll_ms)
