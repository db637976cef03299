# Heap figures of the firmware, run by MicroPython itself (not CPython).
#
# heap.mjs runs it in the 32-bit WebAssembly port, bench_ram32.py in the 64-bit
# unix port for comparison; both first define FW (the .mpy build), STUBS (.mpy
# stand-ins for what a port lacks: socket, ssl, cryptolib, machine, network)
# and ROOT (a device root), and then await main(). Every figure is a
# gc.mem_alloc() delta taken after yielding to the event loop (in the
# WebAssembly port the C stack is then fresh, so nothing stale is scanned as a
# root) and a gc.collect().
import asyncio
import gc
import json
import sys

CODE = (
    "auxcodec",
    "config",
    "counter_store",
    "outbox",
    "gesture",
    "feedback",
    "power",
    "mqtt",
    "session",
    "supervision",
    "device",
    "app",
    "wifi",
    "hal",
    "hal.esp32",
)
STANDINS = ("cryptolib", "machine", "network", "socket", "ssl")
RUN_S = 2  # the device runs offline this long: boot frame queued, connects fail, backoff


async def _alloc():
    await asyncio.sleep(0)
    gc.collect()
    gc.collect()
    return gc.mem_alloc()


def _import(names):
    for n in names:
        __import__(n)


async def main():
    sys.path[:0] = [FW]  # noqa: F821 - defined by the runner
    sys.path.append(STUBS)  # noqa: F821 - last: a port's own module wins
    res = {"sys_maxsize": sys.maxsize}
    base = await _alloc()
    _import(STANDINS)
    a = await _alloc()
    _import(CODE)
    b = await _alloc()
    _import(("hal.host",))  # the HAL this bench runs with (no machine.Pin here)
    c = await _alloc()
    res.update(stubs=a - base, code=b - a, host_hal_code=c - b)
    try:
        import app
        import hal.host

        with open(ROOT + "/board.json") as f:  # noqa: F821
            board = json.loads(f.read())
        h = hal.host.HostHal(board, 0)
        board = None
        slot = app.Slot(ROOT, h, 0)  # noqa: F821
        h.on_reset = slot.reset
        before = await _alloc()
        res["started"] = slot.start()
        await asyncio.sleep(RUN_S)
        after = await _alloc()
        res["steady_device"] = after - before
        res["steady_total"] = after - base - res["stubs"] - res["host_hal_code"]
        slot.stop()
    except Exception as e:  # the import figures are still worth reporting
        res["steady_error"] = repr(e)
    print("J " + json.dumps(res))
