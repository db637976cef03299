"""Flashing figures on virtual boards with a faithful link (bytes paced at the baud rate).

- One DevKit (CP210x, 460800 baud for esptool, 115200 for mpremote): seconds to
  flash and to deploy, and the bytes per second achieved against the link's
  maximum (baud / 10 on an 8N1 UART) for each part.
- Eight boards in parallel against the same eight in sequence, in the same
  run: the work waits on the links, so parallel should be >= 4x on 2 cores.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from auxilio.boards import load_board
from auxilio.emulator import FlashImage, VirtualBoard
from auxilio.emulator.board import LINK_FAITHFUL, UART_BITS_PER_BYTE
from auxilio.flash import tray
from auxilio.flash.deploy import bundle
from auxilio.flash.flasher import BoardFlasher, Options
from auxilio.flash.images import build_firmware, check_firmware
from auxilio.flash.ports import Port

BOARD = "devkit-esp32"
TRAY = 8
# A MicroPython-sized app is ~1.5 MB; this keeps the bench to a few minutes
# while the image is still big enough for the link to dominate.
APP_CODE_BYTES = 128 * 1024
DEPLOY_BAUD = 115200  # mpremote opens ports at 115200 (MicroPython's REPL UART rate)


def _boards(tmp: Path, n: int, tag: str) -> list[VirtualBoard]:
    board = load_board(BOARD)
    out = []
    for i in range(n):
        img = FlashImage(tmp / f"{tag}{i}.img", board).erase()
        vb = VirtualBoard(board, img.path, link=LINK_FAITHFUL, name=f"{tag}{i}")
        out.append(vb.start(wait=False))
    return out


def _port(vb: VirtualBoard) -> Port:
    usb = vb.board.usb
    return Port(
        device=vb.port, url=vb.rfc2217_url or "", vid=usb.vid, pid=usb.pid, serial=vb.usb_serial
    )


def _one(tmp: Path, choice, apps) -> dict[str, float]:
    (vb,) = _boards(tmp, 1, "one")
    marks: dict[str, tuple[float, int, int]] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if stage not in marks:
            marks[stage] = (time.monotonic(), vb.rx_bytes, vb.tx_bytes)

    try:
        t0 = time.monotonic()
        fl = BoardFlasher(_port(vb), [choice], apps, Options(), progress)
        outcome = fl.run()
        end = (time.monotonic(), vb.rx_bytes, vb.tx_bytes)
    finally:
        vb.close()
    if outcome.result != "ok":
        raise RuntimeError(f"flash failed: {outcome.error}")
    flash_from, flash_to = marks["connect"], marks["boot"]
    deploy_from = marks["deploy"]
    flash_s = flash_to[0] - flash_from[0]
    deploy_s = end[0] - deploy_from[0]
    flash_rx = flash_to[1] - flash_from[1]  # host -> board: the image, compressed
    deploy_rx = end[1] - deploy_from[1]
    baud = choice[0].flash_baud
    return {
        "one_board_total_s": round(end[0] - t0, 2),
        "one_board_flash_s": round(flash_s, 2),
        "one_board_deploy_s": round(deploy_s, 2),
        "flash_bytes_to_board": flash_rx,
        "flash_baud": baud,
        "flash_bytes_per_s": round(flash_rx / flash_s),
        "flash_link_max_bytes_per_s": baud // UART_BITS_PER_BYTE,
        "flash_link_utilisation": round(flash_rx / flash_s / (baud / UART_BITS_PER_BYTE), 3),
        "deploy_bytes_to_board": deploy_rx,
        "deploy_baud": DEPLOY_BAUD,
        "deploy_bytes_per_s": round(deploy_rx / deploy_s),
        "deploy_link_utilisation": round(
            deploy_rx / deploy_s / (DEPLOY_BAUD / UART_BITS_PER_BYTE), 3
        ),
    }


def _tray(tmp: Path, choice, parallel: int, tag: str) -> float:
    boards = _boards(tmp, TRAY, tag)
    try:
        items = [tray.Item(_port(vb), [choice], True) for vb in boards]
        t0 = time.monotonic()
        result = tray.run(items, Options(), reports_dir=tmp / f"reports-{tag}", parallel=parallel)
        seconds = time.monotonic() - t0
    finally:
        for vb in boards:
            vb.close()
    bad = [o.error for o in result.outcomes if o.result != "ok"]
    if bad:
        raise RuntimeError(f"{len(bad)} boards failed: {bad[0]}")
    return seconds


def run() -> dict[str, object]:
    board = load_board(BOARD)
    fw = build_firmware(board, code_size=APP_CODE_BYTES)
    choice = (board, check_firmware(board, fw.merged))
    with tempfile.TemporaryDirectory(prefix="bench-flash-") as d:
        tmp = Path(d)
        apps = {board.name: bundle(board, tmp / "app")}
        out: dict[str, object] = {
            "board": BOARD,
            "image_bytes": len(fw.merged),
            "link": LINK_FAITHFUL,
        }
        out.update(_one(tmp, choice, apps))
        par = _tray(tmp, choice, TRAY, "par")
        seq = _tray(tmp, choice, 1, "seq")
    out.update(
        {
            "tray_boards": TRAY,
            "tray_parallel_s": round(par, 1),
            "tray_sequence_s": round(seq, 1),
            "tray_parallel_speedup": round(seq / par, 2),
        }
    )
    return out


if __name__ == "__main__":
    print(json.dumps(run(), indent=1))
