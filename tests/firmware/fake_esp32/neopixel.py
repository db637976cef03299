# Fake `neopixel` for the LED ring patterns.
import machine


class NeoPixel:
    def __init__(self, pin, n):
        self.n = n
        self.buf = [(0, 0, 0)] * n

    def fill(self, c):
        self.buf = [c] * self.n

    def __setitem__(self, i, c):
        self.buf[i] = c

    def __getitem__(self, i):
        return self.buf[i]

    def write(self):
        machine.CALLS.append(("np", self.buf[0]))
