"""Flash one board through esptool's Python API: connect, check, write, verify, boot, deploy.

The firmware image was checked against the board definition before any board
was touched (flash.images.check_firmware). Per board, before writing:
the chip esptool detects must be the board's chip and the flash chip at least
the board's size. Then the merged image is written compressed at the chip's
bootloader offset and at the board's flashing baud rate, verified by MD5
(esptool's write and an explicit verify_flash), the filesystem partition is
erased (a factory-fresh filesystem: nothing of a previous wearer survives;
`keep_fs` to skip), the board is reset and must print the MicroPython banner
with the image's version, and the application is deployed. Any failure
raises FlashFailure with one line a technician can act on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import serial

from auxilio.boards import Board
from auxilio.errors import AuxilioError
from auxilio.flash.deploy import AppBundle, deploy
from auxilio.flash.images import FirmwareInfo
from auxilio.flash.link import boot_failure, open_port, wait_banner
from auxilio.flash.ports import DRIVER_HINTS, Port

log = logging.getLogger(__name__)

ROM_BAUD = 115200  # esptool syncs with the ROM at 115200 (it auto-bauds) before switching
# esptool tries its two reset strategies this many times before "No serial data received".
CONNECT_ATTEMPTS = 3
# From the reset after flashing to the MicroPython banner (boot + first-boot mkfs).
BOOT_TIMEOUT_S = 30.0
# How esptool and pyserial say that the other end went quiet or away.
LOST_LINK = (
    "No more data to read",
    "No serial data",
    "stream stopped",
    "transfer stopped",
    "Timed out",
    "timeout",
    "Connection reset",
)
STAGES = ("queued", "connect", "check", "stub", "write", "verify", "boot", "deploy", "done")


class FlashFailure(AuxilioError):
    """One board failed; str() is the one line for the report and the screen."""


class Interrupted(FlashFailure):
    """The run was stopped (Ctrl-C) while this board was being worked on."""


@dataclass
class Options:
    deploy: bool = True
    keep_fs: bool = False
    connect_attempts: int = CONNECT_ATTEMPTS
    boot_timeout: float = BOOT_TIMEOUT_S
    baud: int | None = None  # override the board's flashing baud
    frozen: bool = False  # the image has the app frozen in (deploy main.py + board.json)


@dataclass
class Outcome:
    """What one board ended up as: a report row."""

    port: str
    serial: str
    board: str = ""
    chip: str = ""
    mac: str = ""
    image_sha256: str = ""
    app_version: str = ""
    result: str = "failed"  # ok | failed | skipped | interrupted
    seconds: float = 0.0
    error: str = ""
    files: dict[str, str] = field(default_factory=dict)  # deployed file -> sha256


Progress = Callable[[str, int, int], None]  # (stage, done, total)


class _ThreadLog:
    """An esptool logger (esp_pylib EspLogBase) sending each thread's output to its own board."""

    def __init__(self) -> None:
        from esp_pylib.logger import EspLogBase

        outer = self
        self.local = threading.local()

        class Impl(EspLogBase):
            def _sink(self) -> Any:
                return getattr(outer.local, "sink", None)

            def _text(self, *args: Any) -> None:
                s = self._sink()
                text = " ".join(str(a) for a in args).strip()
                if s is not None and text:
                    s.line(text)

            def print(self, *args: Any, **kwargs: Any) -> None:
                self._text(*args)

            def err(self, *args: Any, suggestion: str | None = None) -> None:
                self._text(*args)

            def warn(self, *args: Any, suggestion: str | None = None) -> None:
                self._text(*args)

            def note(self, *args: Any) -> None:
                self._text(*args)

            def hint(self, *args: Any) -> None:
                self._text(*args)

            def debug(self, *args: Any) -> None:
                pass

            def set_verbosity(self, mode: int | str) -> None:
                pass

            def progress_bar(self, cur_iter: int, total_iters: int, *_: Any, **__: Any) -> None:
                s = self._sink()
                if s is not None:
                    s.bytes(cur_iter, total_iters)

        self.impl = Impl()


_log_lock = threading.Lock()
_log_users = 0
_thread_log: _ThreadLog | None = None
_saved_log: Any = None


@contextmanager
def esptool_output(sink: Any):
    """Route esptool's output on this thread to `sink` (line(text), bytes(done, total))."""
    global _log_users, _thread_log, _saved_log
    from esp_pylib.logger import EspLog

    with _log_lock:
        if _thread_log is None:
            _thread_log = _ThreadLog()
        if _log_users == 0:
            _saved_log = EspLog.instance
            EspLog.instance = _thread_log.impl
        _log_users += 1
    _thread_log.local.sink = sink
    try:
        yield
    finally:
        _thread_log.local.sink = None
        with _log_lock:
            _log_users -= 1
            if _log_users == 0:
                EspLog.instance = _saved_log


def explain_connect(
    port: Port, exc: BaseException, attempts: int, bridge: str | None = None
) -> str:
    """'No serial data received' turned into what happened and what to check.

    `bridge` is the board's USB bridge when the port itself has no USB identity
    (an rfc2217:// URL).
    """
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    bridge = port.bridge or bridge
    tried = f"esptool's DTR/RTS auto-reset into download mode, {attempts} times, at {ROM_BAUD} baud"
    checks = ["that the board is plugged in with a data cable (not a charge-only one)"]
    if bridge in DRIVER_HINTS:
        checks.append(f"the driver: {DRIVER_HINTS[bridge]}")
    else:
        checks.append("the USB-serial driver for the board's bridge chip")
    checks.append("that no other program (a serial monitor, another auxilio run) has the port open")
    if bridge == "usb-serial-jtag":
        checks.append("if it still does not answer, hold BOOT while plugging it in")
    else:
        checks.append("for a board without auto-reset, hold BOOT and press RESET")
    if "Wrong boot mode" in text:
        what = "the board reset but did not enter download mode"
    elif "No serial data" in text or "Failed to connect" in text:
        what = "no answer from the ROM bootloader"
    else:
        what = text
    return f"{port.label()}: {what} (tried {tried}); check {'; '.join(checks)}"


class _Sink:
    def __init__(self, progress: Progress, stage: list[str]) -> None:
        self.progress = progress
        self.stage = stage
        self.lines: list[str] = []

    def line(self, text: str) -> None:
        self.lines.append(text)
        log.debug("esptool: %s", text)

    def bytes(self, done: int, total: int) -> None:
        self.progress(self.stage[0], done, total)


class BoardFlasher:
    """Flashes one port; `abort()` from another thread stops it (closing its port)."""

    def __init__(
        self,
        port: Port,
        choices: list[tuple[Board, FirmwareInfo]],
        app: dict[str, AppBundle],
        options: Options,
        progress: Progress | None = None,
        explicit: bool = True,
    ) -> None:
        self.port = port
        self.choices = choices
        self.app = app
        self.options = options
        self.explicit = explicit
        self.progress = progress or (lambda stage, done, total: None)
        self.outcome = Outcome(port=port.device, serial=port.serial)
        self._stage = ["queued"]
        self._cancel = threading.Event()
        self._serial: serial.Serial | None = None

    def abort(self) -> None:
        self._cancel.set()
        s = self._serial
        if s is not None:
            try:
                s.close()  # esptool's next read fails at once
            except Exception:
                pass

    def _set(self, stage: str, done: int = 0, total: int = 0) -> None:
        if self._cancel.is_set():
            raise Interrupted("interrupted")
        self._stage[0] = stage
        self.progress(stage, done, total)

    def run(self) -> Outcome:
        t0 = time.monotonic()
        o = self.outcome
        try:
            self._flash()
            o.result = "ok"
            self._set("done", 1, 1)
        except Interrupted as exc:
            o.result, o.error = (
                "interrupted",
                str(exc) if str(exc) != "interrupted" else f"interrupted during {self._stage[0]}",
            )
        except _Skip as exc:
            o.result, o.error = "skipped", str(exc)
        except AuxilioError as exc:
            o.result, o.error = (
                ("interrupted", f"interrupted during {self._stage[0]}")
                if self._cancel.is_set()
                else ("failed", str(exc))
            )
        except Exception as exc:  # esptool's FatalError, serial errors: one line each
            if self._cancel.is_set():
                o.result, o.error = "interrupted", f"interrupted during {self._stage[0]}"
            else:
                o.result, o.error = "failed", self._explain(exc)
        finally:
            if self._serial is not None:
                try:
                    self._serial.close()
                except Exception:
                    pass
            o.seconds = round(time.monotonic() - t0, 2)
        return o

    def _explain(self, exc: BaseException) -> str:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        stage = self._stage[0]
        lost = isinstance(exc, (serial.SerialException, OSError)) or any(
            s in text for s in LOST_LINK
        )
        if lost and stage in ("stub", "write", "verify"):
            return (
                f"{self.port.label()}: the board stopped answering mid-{stage} (unplugged, or lost "
                "power); it is partly written and must be flashed again"
            )
        return f"{self.port.label()} ({stage}): {text}"

    # -- the steps --------------------------------------------------------------

    def _flash(self) -> None:
        from esptool import cmds
        from esptool.util import FatalError, flash_size_bytes

        o = self.outcome
        sink = _Sink(self.progress, self._stage)
        with esptool_output(sink):
            self._set("connect")
            self._serial = open_port(self.port.url, ROM_BAUD, timeout=1.0)
            try:
                esp = cmds.detect_chip(
                    self._serial,
                    ROM_BAUD,
                    "default-reset",
                    connect_attempts=self.options.connect_attempts,
                )
            except (FatalError, serial.SerialException, OSError) as exc:
                if self._cancel.is_set():
                    raise Interrupted("interrupted during connect") from None
                bridges = {b.usb.bridge for b, _ in self.choices if b.usb}
                hint = bridges.pop() if len(bridges) == 1 else None
                raise FlashFailure(
                    explain_connect(self.port, exc, self.options.connect_attempts, hint)
                ) from None
            self._set("check")
            board, fw = self._choose(esp.CHIP_NAME)
            o.board, o.chip = board.name, esp.CHIP_NAME
            o.image_sha256, o.app_version = fw.sha256, fw.version or ""
            o.mac = ":".join(f"{b:02x}" for b in esp.read_mac())
            self._set("stub")
            esp = cmds.run_stub(esp)
            baud = self.options.baud or board.flash_baud
            if baud != ROM_BAUD:
                esp.change_baud(baud)
            cmds.attach_flash(esp)
            detected = flash_size_bytes(cmds.detect_flash_size(esp))
            if detected is not None and detected < board.flash_size:
                raise FlashFailure(
                    f"{self.port.label()}: the flash chip has {detected >> 20} MB, {board.name} needs "
                    f"{board.flash_size >> 20} MB: wrong board or module; nothing was written"
                )
            self._set("write", 0, fw.size)
            cmds.write_flash(esp, [(fw.offset, fw.data)], compress=True, no_progress=False)
            self._set("verify")
            cmds.verify_flash(esp, [(fw.offset, fw.data)])
            if not self.options.keep_fs:
                vfs = board.vfs
                cmds.erase_region(esp, vfs.offset, vfs.size)
            self._set("boot")
            esp.hard_reset()
        version, console = wait_banner(self._serial, self.options.boot_timeout)
        self._serial.close()
        self._serial = None
        if version is None:
            why = boot_failure(console) or "no MicroPython banner"
            raise FlashFailure(
                f"{self.port.label()}: flashed and verified, but the board does not boot ({why})"
            )
        if fw.version and version.lstrip("v") != fw.version.lstrip("v"):
            raise FlashFailure(
                f"{self.port.label()}: the board boots MicroPython {version}, but the image is "
                f"{fw.version}"
                + (
                    " (a virtual board runs the local unix port; make its images with "
                    "python -m auxilio.flash.images)"
                    if self.port.virtual
                    else ""
                )
            )
        if self.options.deploy:
            self._set("deploy")
            result = deploy(self.port.url, board, self.app[board.name], cancel=self._cancel)
            o.files = result.files

    def _choose(self, chip_title: str) -> tuple[Board, FirmwareInfo]:
        for board, fw in self.choices:
            if board.chip_info.title == chip_title:
                return board, fw
        wanted = " or ".join(f"{b.name}'s {b.chip_info.title}" for b, _ in self.choices)
        msg = f"{self.port.label()} has an {chip_title}, not {wanted}: wrong chip; nothing was written"
        if self.explicit:
            raise FlashFailure(msg)
        raise _Skip(msg)


class _Skip(Exception):
    """Not this run's board (found by --all, another chip): left untouched."""
