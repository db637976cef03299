# Fake `esp32` module: ext0 wake source.
import machine


def wake_on_ext0(pin=None, level=0):
    machine.CALLS.append(("ext0", pin.n, level))
