# Runs under micropython: drives firmware/at.py against a scripted fake UART, one JSON case per line.
#
# Input line: {"cmds": [...], "chunks": [int...], "urcs": [prefix...]}; each cmd:
#   {"text": "AT+X1", "expect": "+X1:" | null, "resp": hex (bytes the modem sends after the
#    command line), "after_prompt": hex | null (sent once the engine wrote `data`),
#    "data": hex | null, "rx": [hdr, field, inline, size] | null, "final": str | null}
# Output line: {"results": [[status, err, [info hex...], rx hex], ...], "urcs": [hex...],
#   "stats": {...}, "written": hex} or {"exc": "..."} if the engine raised.

import asyncio
import io
import json
import sys
from binascii import hexlify, unhexlify

import at


class Port(io.IOBase):
    """A UART whose modem answers from a script, in the chunk sizes given."""

    def __init__(self, case):
        self.cmds = case["cmds"]
        self.sizes = case["chunks"] or [7]
        self.k = 0
        self.out = bytearray()  # modem -> engine, not yet delivered
        self.written = bytearray()
        self.line = bytearray()
        self.i = 0  # next scripted command
        self.want_data = 0
        self.after = None

    def ioctl(self, req, arg):
        if req == 3:
            r = 0
            if arg & 1 and self.out:
                r |= 1
            if arg & 4:
                r |= 4
            return r
        return -1

    def readinto(self, buf, n=-1):
        if not self.out:
            return None
        size = self.sizes[self.k % len(self.sizes)]
        self.k += 1
        k = min(len(buf), size, len(self.out))
        buf[:k] = self.out[:k]
        self.out = self.out[k:]
        return k

    def write(self, buf, n=-1):
        b = bytes(buf)
        self.written += b
        for ch in b:
            if self.want_data:
                self.want_data -= 1
                if not self.want_data and self.after is not None:
                    self.out += self.after
                    self.after = None
                continue
            if ch == 13:
                self._command(bytes(self.line))
                self.line = bytearray()
            elif ch == 27:
                self.want_data = 0
            else:
                self.line.append(ch)
        return len(b)

    def _command(self, line):
        if line == b"AT":  # a resync probe (only after a timeout): answer it
            self.out += b"\r\nOK\r\n"
            return
        if self.i >= len(self.cmds):
            return
        c = self.cmds[self.i]
        self.i += 1
        self.out += unhexlify(c["resp"])
        if c.get("data"):
            self.want_data = len(unhexlify(c["data"]))
            self.after = unhexlify(c["after_prompt"])


def run_case(case):
    port = Port(case)
    urcs = []
    eng = at.AT(port, [p.encode() for p in case["urcs"]], lambda line: urcs.append(line))
    results = []

    async def main():
        task = asyncio.create_task(eng.run())
        for c in case["cmds"]:
            rx = None
            buf = None
            if c.get("rx"):
                hdr, fld, inline, size = c["rx"]
                buf = bytearray(size)
                rx = (hdr.encode(), fld, inline, memoryview(buf))
            st = await eng.cmd(
                c["text"].encode(),
                2000,
                c["expect"].encode() if c.get("expect") else None,
                data=unhexlify(c["data"]) if c.get("data") else None,
                final=c["final"].encode() if c.get("final") else None,
                rx=rx,
            )
            got = hexlify(bytes(buf[: eng.rx_n])).decode() if buf is not None else ""
            results.append([st, eng.err, [hexlify(x).decode() for x in eng.info], got])
        for _ in range(50):  # let trailing URCs drain
            if not port.out:
                break
            await asyncio.sleep_ms(1)
        await asyncio.sleep_ms(2)
        task.cancel()

    asyncio.run(main())
    return {
        "results": results,
        "urcs": [hexlify(u).decode() for u in urcs],
        "stats": eng.stats(),
        "written": hexlify(bytes(port.written)).decode(),
    }


def main():
    while True:
        line = sys.stdin.readline()
        if not line:
            return
        line = line.strip()
        if not line:
            continue
        try:
            out = run_case(json.loads(line))
        except Exception as e:  # noqa: BLE001 - reported to the test, which fails
            out = {"exc": type(e).__name__ + ": " + str(e)}
        sys.stdout.write(json.dumps(out) + "\n")


main()
