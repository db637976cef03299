"""CPython side of the AT engine tests: scripted modem conversations, run under micropython.

``MpAt`` keeps one micropython process running tests/modem/mp_at_runner.py and
sends it one case per line, so Hypothesis can run (and shrink) hundreds of
cases against the real firmware/at.py on the real interpreter cheaply.
``Cmd`` builds what a modem sends back for one command: echo, URCs wherever
they fall, information lines, a raw payload, the final result code.
"""

from __future__ import annotations

import json
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import FIRMWARE, micropython_binary

HERE = Path(__file__).resolve().parent
RUNNER = HERE / "mp_at_runner.py"
# at.py result codes (firmware/at.py)
OK, ERROR, CME, CMS, TIMEOUT, RESET = range(6)
URC_PREFIXES = ("+CADATAIND:", "+CEREG:", '+QIURC: "recv",', "+CMTI:", "RDY", "+APP PDP:")


@dataclass
class Cmd:
    """One command and the modem's scripted answer (pieces in wire order)."""

    text: str
    expect: str | None = None
    echo: bool = False
    pieces: list[bytes] = field(default_factory=list)  # after the echo, before the final
    info: list[str] = field(default_factory=list)
    final: str = "OK"
    post: list[bytes] = field(default_factory=list)  # URCs after the final
    data: bytes | None = None  # written after the prompt
    payload: bytes | None = None  # raw bytes announced by a header
    rx: tuple[str, int, bool] | None = None
    extra_final: str | None = None

    def status(self) -> tuple[int, int]:
        if self.final == "OK" or self.final == self.extra_final:
            return OK, 0
        if self.final.startswith("+CME ERROR:"):
            return CME, int(self.final.split(":")[1])
        if self.final.startswith("+CMS ERROR:"):
            return CMS, int(self.final.split(":")[1])
        return ERROR, 0

    def to_case(self) -> dict:
        resp = b""
        if self.echo:
            resp += self.text.encode() + b"\r"
        final = f"\r\n{self.final}\r\n".encode()
        tail = b"".join(self.post)
        if self.data is not None:
            return {
                "text": self.text,
                "expect": self.expect,
                "resp": (resp + b"".join(self.pieces) + b"\r\n> ").hex(),
                "data": self.data.hex(),
                "after_prompt": (final + tail).hex(),
                "final": self.extra_final,
                "rx": None,
            }
        resp += b"".join(self.pieces) + final + tail
        return {
            "text": self.text,
            "expect": self.expect,
            "resp": resp.hex(),
            "data": None,
            "after_prompt": None,
            "final": self.extra_final,
            "rx": [*self.rx, 600] if self.rx else None,
        }


def urc(text: str) -> bytes:
    return f"\r\n{text}\r\n".encode()


def line(text: str) -> bytes:
    return f"\r\n{text}\r\n".encode()


class MpAt:
    """A persistent micropython running the AT engine runner."""

    def __init__(self) -> None:
        script = (
            f"import sys\nsys.path[:0] = [{str(FIRMWARE)!r}, {str(HERE)!r}]\nimport mp_at_runner\n"
        )
        self.proc = subprocess.Popen(
            [micropython_binary(), "-c", script],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self._lock = threading.Lock()

    def run(self, cmds: list[Cmd], chunks: list[int], urcs: tuple[str, ...] = URC_PREFIXES) -> dict:
        case = {"cmds": [c.to_case() for c in cmds], "chunks": chunks, "urcs": list(urcs)}
        with self._lock:
            assert self.proc.stdin is not None and self.proc.stdout is not None
            self.proc.stdin.write(json.dumps(case) + "\n")
            self.proc.stdin.flush()
            out = self.proc.stdout.readline()
        if not out:
            raise AssertionError("micropython AT runner died")
        res = json.loads(out)
        if "exc" in res:
            raise AssertionError("AT engine raised under micropython: " + res["exc"])
        return res

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
