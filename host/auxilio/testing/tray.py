"""Test helpers for flashing: firmware files, a tray of virtual boards on USB, a virtual technician.

def test_tray(virtual_tray, tmp_path):
    boards = virtual_tray(["devkit-esp32", "bracelet-c3"])      # blank, plugged in
    fw = firmware_file("devkit-esp32", tmp_path)                # a merged image
    # ... `auxilio flash --all` finds them (AUXILIO_RUNTIME_DIR is the test's own)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from auxilio.boards import load_board
from auxilio.emulator.board import LINK_FAST, VirtualBoard
from auxilio.emulator.image import FlashImage
from auxilio.flash.images import build_firmware

# How long a virtual technician holds the button for the factory test.
TECH_PRESS_S = 0.3


def firmware_file(
    board: str,
    directory: Path,
    *,
    chip: str | None = None,
    version: str | None = None,
    code_size: int | None = None,
    name: str | None = None,
) -> Path:
    """A merged MicroPython-like image for `board` (or built for another `chip`) in `directory`."""
    kwargs: dict[str, Any] = {"version": version, "chip": chip}
    if code_size is not None:
        kwargs["code_size"] = code_size
    fw = build_firmware(load_board(board), **kwargs)
    path = Path(directory) / (name or f"{board}{'-' + chip if chip else ''}.bin")
    path.write_bytes(fw.merged)
    return path


@pytest.fixture
def virtual_tray(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., list[VirtualBoard]]]:
    """Factory: virtual_tray(["devkit-esp32", ...], blank=True, link="fast") -> started boards.

    Every board is plugged into this test's own virtual USB bus
    (AUXILIO_RUNTIME_DIR under tmp_path, inherited by subprocesses), so
    `auxilio ports` / `auxilio flash --all` see exactly these. Blank boards
    have erased flash (they boot-loop until flashed); otherwise they hold a
    synthetic MicroPython with an empty filesystem.
    """
    runtime = tmp_path / "runtime"
    monkeypatch.setenv("AUXILIO_RUNTIME_DIR", str(runtime))
    started: list[VirtualBoard] = []

    def make(names: list[str], *, blank: bool = True, link: str = LINK_FAST) -> list[VirtualBoard]:
        out = []
        for name in names:
            i = len(started)
            img = FlashImage(tmp_path / f"tray-{i}-{name}.img", load_board(name))
            img.erase() if blank else img.create()
            vb = VirtualBoard(img.board, img.path, advertise=True, name=f"tray{i}", link=link)
            started.append(vb)
            vb.start(wait=False)
            out.append(vb)
        return out

    try:
        yield make
    finally:
        for vb in started:
            vb.close()


class VirtualTechnician:
    """Answers `auxilio.flash.factory` prompts from a VirtualDevice's control channel.

    It confirms an output only when the board really emitted that event after
    the step started, and presses the virtual button when asked to.
    """

    def __init__(self, device: Any, press_s: float = TECH_PRESS_S) -> None:
        self.device = device
        self.press_s = press_s
        self._since = device.mark()  # events after the previous answer belong to this step
        self.prompts: list[str] = []

    def prompt(self, check: str, text: str) -> None:
        self.prompts.append(check)
        if check == "button":
            self.device.control.wait_connected(10)
            threading.Event().wait(0.1)  # the selftest attached its button handler
            self.device.press()
            time.sleep(self.press_s)
            self.device.release()

    def confirm(self, check: str, question: str) -> bool:
        try:
            self.device.wait_event(ev=check, since=self._since, timeout=5)
            return True
        except TimeoutError:
            return False
        finally:
            self._since = self.device.mark()
