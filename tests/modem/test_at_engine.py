"""The AT engine (firmware/at.py) under the real micropython: properties and bad input.

The property: whatever the interleaving of URCs, echoes, information lines,
raw payloads, prompts and final result codes, and however the bytes are split
into UART reads, every command gets exactly its own answer, every URC reaches
the URC handler once and in order, and nothing is counted as garbage.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.modem.atkit import CME, ERROR, OK, RESET, TIMEOUT, Cmd, MpAt, line, urc


@pytest.fixture(scope="module")
def mp() -> Iterator[MpAt]:
    runner = MpAt()
    yield runner
    runner.close()


URCS = st.sampled_from(
    [
        "+CADATAIND: 0",
        "+CEREG: 1",
        '+QIURC: "recv",0',
        '+CMTI: "SM",3',
        "+APP PDP: 0,ACTIVE",
        "RDY",
    ]
)
TEXT = st.text(alphabet='ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789,."- ', min_size=1, max_size=40)
FINALS = st.sampled_from(["OK", "ERROR", "+CME ERROR: 10", "+CME ERROR: 516", "+CMS ERROR: 331"])


@st.composite
def commands(draw: st.DrawFn, n: int) -> Cmd:
    kind = draw(st.sampled_from(["plain", "prefixed", "payload_inline", "payload_line", "prompt"]))
    name = f"X{n}"
    echo = draw(st.booleans())
    urcs_before = draw(st.lists(URCS, max_size=2))
    c = Cmd(text=f"AT+{name}", echo=echo)
    if kind in ("plain", "prefixed"):
        c.expect = f"+{name}:" if kind == "prefixed" else None
        infos = draw(st.lists(TEXT, max_size=3))
        if kind == "prefixed":
            infos = [f"+{name}: {t}" for t in infos]
        else:
            # Unprefixed information lines must not look like URCs or result codes.
            infos = [f"V{t}" for t in infos]
        pieces = [urc(u) for u in urcs_before]
        for t in infos:
            pieces.append(line(t))
            pieces += [urc(u) for u in draw(st.lists(URCS, max_size=1))]
        c.pieces = pieces
        c.info = infos
        c.final = draw(FINALS)
    elif kind.startswith("payload"):
        payload = draw(st.binary(min_size=1, max_size=120))
        if draw(st.booleans()):
            payload += b"\r\nOK\r\n+CADATAIND: 0\r\n"  # result codes inside data are data
        inline = kind == "payload_inline"
        hdr = f"+{name}:"
        c.expect = hdr
        c.rx = (hdr, 0, inline)
        c.payload = payload
        head = f"{hdr} {len(payload)}".encode()
        body = b"\r\n" + head + (b"," if inline else b"\r\n") + payload + b"\r\n"
        c.pieces = [urc(u) for u in urcs_before] + [body]
        c.info = [f"{hdr} {len(payload)}"]
        c.final = "OK"
    else:
        c.data = draw(st.binary(min_size=1, max_size=60))
        c.pieces = [urc(u) for u in urcs_before]
        if draw(st.booleans()):
            c.extra_final = "SEND OK"
            c.final = "SEND OK"
        else:
            c.final = "OK"
    c.post = [urc(u) for u in draw(st.lists(URCS, max_size=2))]
    return c


def expected_urcs(cmds: list[Cmd]) -> list[bytes]:
    out = []
    for c in cmds:
        for piece in [*c.pieces, *c.post]:
            for ln in piece.split(b"\r\n"):
                if ln and not ln.startswith(f"+{c.text[3:]}".encode()) and not ln.startswith(b"V"):
                    if c.payload is not None and piece is c.pieces[-1]:
                        continue  # the payload piece carries no URC
                    out.append(ln)
    return out


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.integers(min_value=1, max_value=5).flatmap(
        lambda k: st.tuples(*[commands(i) for i in range(k)])
    ),
    st.lists(st.integers(min_value=1, max_value=70), min_size=1, max_size=6),
)
def test_interleavings_never_desynchronise(mp: MpAt, cmds: tuple[Cmd, ...], chunks: list[int]):
    cmds = list(cmds)
    res = mp.run(cmds, chunks)
    for c, (status, err, info, rx) in zip(cmds, res["results"], strict=True):
        want_status, want_err = c.status()
        assert (status, err) == (want_status, want_err), c
        assert [bytes.fromhex(x).decode() for x in info] == c.info, c
        if c.payload is not None:
            assert bytes.fromhex(rx) == c.payload
    assert [bytes.fromhex(u) for u in res["urcs"]] == expected_urcs(cmds)
    s = res["stats"]
    assert s["garbage"] == 0 and s["timeouts"] == 0 and s["stray"] == 0
    assert s["echoes"] == sum(1 for c in cmds if c.echo)
    for c in cmds:  # prompt data went out whole, right after the command line
        if c.data is not None:
            assert (c.text.encode() + b"\r" + c.data).hex() in res["written"]


# ------------------------------------------------------------------ bad input ----


def test_garbled_output_is_counted_and_the_next_command_still_works(mp: MpAt) -> None:
    junk = b"\r\n\xff\xfe\x00garbage\x07\r\n" + b"A" * 300 + b"\r\n"
    cmds = [
        Cmd("AT+X0", pieces=[junk], info=[], final="OK"),
        Cmd("AT+X1", expect="+X1:", pieces=[line("+X1: 7")], info=["+X1: 7"]),
    ]
    res = mp.run(cmds, [5, 64])
    assert [r[0] for r in res["results"]] == [OK, OK]
    assert res["results"][1][2] == [b"+X1: 7".hex()]
    assert res["stats"]["garbage"] == 2  # the binary line and the overlong line


def test_echo_left_on_is_recognised_not_taken_for_an_answer(mp: MpAt) -> None:
    cmds = [Cmd("AT+X0", expect="+X0:", echo=True, pieces=[line("+X0: 1")], info=["+X0: 1"])]
    res = mp.run(cmds, [1])  # one byte per read: the worst case for line assembly
    assert res["results"][0][:3] == [OK, 0, [b"+X0: 1".hex()]]
    assert res["stats"]["echoes"] == 1 and res["stats"]["garbage"] == 0


def test_a_truncated_urc_is_garbage_never_a_crash(mp: MpAt) -> None:
    # "+CADATAIND" cut short, with a raw byte where the rest should be: not a URC line.
    cmds = [
        Cmd("AT+X0", pieces=[b"\r\n+CADATA\x00IND\r\n"], final="OK"),
        Cmd("AT+X1", final="ERROR"),
    ]
    res = mp.run(cmds, [3])
    assert [r[0] for r in res["results"]] == [OK, ERROR]
    assert res["urcs"] == [] and res["stats"]["garbage"] == 1


def test_a_modem_that_never_answers_times_out_then_resynchronises(mp: MpAt) -> None:
    # X0 gets no final result code at all; the engine times out, then probes with
    # "AT" (the runner answers OK) before X1, which answers normally.
    cmds = [
        Cmd("AT+X0", final="OK"),
        Cmd("AT+X1", expect="+X1:", pieces=[line("+X1: 2")], info=["+X1: 2"]),
    ]
    case0 = cmds[0].to_case()
    case0["resp"] = b"\r\n+X0: half".hex()  # then silence
    cmds[0].to_case = lambda: case0  # type: ignore[method-assign]
    res = mp.run(cmds, [16])
    assert res["results"][0][0] == TIMEOUT
    assert res["results"][1][:3] == [OK, 0, [b"+X1: 2".hex()]]
    assert res["stats"]["timeouts"] == 1 and res["stats"]["resyncs"] >= 1


def test_cme_and_cms_codes_are_reported(mp: MpAt) -> None:
    cmds = [Cmd("AT+X0", final="+CME ERROR: 10"), Cmd("AT+X1", final="+CMS ERROR: 331")]
    res = mp.run(cmds, [9])
    assert [r[:2] for r in res["results"]] == [[CME, 10], [3, 331]]


RESET_SCRIPT = """
import asyncio, io
import at

class Port(io.IOBase):
    def __init__(self):
        self.out = bytearray()
    def ioctl(self, req, arg):
        if req == 3:
            return (1 if arg & 1 and self.out else 0) | (arg & 4)
        return -1
    def readinto(self, buf, n=-1):
        if not self.out:
            return None
        k = min(len(buf), len(self.out)); buf[:k] = self.out[:k]; self.out = self.out[k:]
        return k
    def write(self, buf, n=-1):
        if bytes(buf) == b"\\r":
            # The modem reboots mid-answer: half a line, then its boot banner.
            self.out += b"\\r\\n+CSQ: 1\\x00\\x00\\r\\nRDY\\r\\n"
        return len(buf)

p = Port()
eng = None
def on_urc(line):
    if line == b"RDY":
        eng.abort(at.RESET)
eng = at.AT(p, (b"RDY",), on_urc)
async def main():
    t = asyncio.create_task(eng.run())
    st = await eng.cmd(b"AT+CSQ", 3000, b"+CSQ:")
    print("J", st, eng.urc_count, eng.garbage)
    t.cancel()
asyncio.run(main())
"""


def test_modem_reset_mid_command_ends_it_at_once(tmp_path) -> None:  # noqa: ANN001
    from tests.conftest import FIRMWARE, run_micropython

    r = run_micropython(RESET_SCRIPT, path=[FIRMWARE])
    assert r.returncode == 0, r.stdout + r.stderr
    _, st, urcs, garbage = r.stdout.split()
    assert int(st) == RESET  # not a 3 s timeout: the reset URC aborted it
    assert int(urcs) == 1 and int(garbage) == 1
