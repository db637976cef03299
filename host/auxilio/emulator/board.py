"""A virtual board: the MicroPython unix port booting from a flash image, behind serial endpoints.

One supervisor thread owns the interpreter's whole life (power, resets, soft
reboots) so that every child is started by a thread that outlives it (the
child dies with PR_SET_PDEATHSIG when that thread goes). The serial stream
from the interpreter goes to the pty and to the RFC 2217 client; what either
sends goes to the interpreter's own pty (its stdin), where ISIG turns a Ctrl-C
into SIGINT while main.py runs, as the ESP32 port's UART IRQ does.
"""

from __future__ import annotations

import atexit
import ctypes
import enum
import fcntl
import logging
import os
import pty
import queue
import select
import signal
import subprocess
import termios
import threading
import time
import tty
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from auxilio.boards import Board, load_board
from auxilio.emulator.endpoints import PtyEndpoint, Rfc2217Endpoint
from auxilio.emulator.image import BOOT_SCRIPT, FlashImage, micropython_binary
from auxilio.errors import AuxilioError

log = logging.getLogger(__name__)

# What the ESP32 ROM prints on a power-on/EN reset, and for the download-mode strap.
ROM_BANNER = b"rst:0x1 (POWERON_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)\r\n"
ROM_DOWNLOAD_BANNER = (
    b"rst:0x1 (POWERON_RESET),boot:0x3 (DOWNLOAD(USB/UART0))\r\nwaiting for download\r\n"
)
SOFT_REBOOT_BANNER = b"MPY: soft reboot\r\n"  # ports/esp32/main.c soft_reset_exit
RAW_REPL_BANNER = b"raw REPL; CTRL-B to exit"
_MARK = b"\x1b]auxvb;"  # boot-script markers: ESC ] auxvb;<what> BEL
# An interpreter that exits this many times in a row before reaching the REPL is crashed.
BOOT_LOOP_LIMIT = 5
# Input typed while the interpreter restarts is kept (a UART FIFO plus driver buffer).
RX_PENDING_MAX = 64 * 1024
# The RC on EN holds the chip in reset a little after RTS lets go; the strapping
# pins (IO0) are sampled when it rises. esptool's classic reset relies on it
# (it sets DTR then RTS in two writes that briefly pass through both-high).
# Over RFC 2217 each line change is one round trip (pyserial waits ~50 ms for
# it), so the window is wider than a real RC's few ms; esptool's own
# esp_rfc2217_server replays the reset sequence locally for the same reason.
EN_RC_S = 0.3
# Kept console output, for tests and `wait_output`.
CONSOLE_KEEP = 1024 * 1024
_PR_SET_PDEATHSIG = 1

try:
    _libc: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:  # not Linux: no parent-death signal, atexit and signals still clean up
    _libc = None


def _child_setup() -> None:
    """In the child: make the pty its controlling tty (Ctrl-C -> SIGINT) and die with us."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class State(enum.Enum):
    OFF = "off"  # no power
    RESET = "reset"  # EN held low
    BOOTING = "booting"  # interpreter running boot.py / main.py
    RUNNING = "running"  # interpreter at the REPL (or main.py returned)
    DOWNLOAD = "download"  # ROM serial bootloader (IO0 low at reset)
    CRASHED = "crashed"


class DownloadMode(Protocol):
    """The ROM serial bootloader hook (the flashing issue adds one for esptool)."""

    def feed(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class VirtualBoard:
    """A board definition + a flash image file + serial endpoints + the interpreter.

    `env` is added to the interpreter's environment (e.g. AUXILIO_HAL_CONTROL).
    `download_mode` builds the ROM bootloader when a reset samples IO0 low;
    without one the board prints the ROM's "waiting for download" and idles.
    """

    def __init__(
        self,
        board: Board | str,
        image: str | os.PathLike[str],
        *,
        pty_link: str | os.PathLike[str] | None = None,
        rfc2217_port: int | None = 0,
        env: dict[str, str] | None = None,
        heapsize: str | None = None,
        download_mode: Callable[[VirtualBoard], DownloadMode] | None = None,
        name: str | None = None,
    ) -> None:
        self.board = load_board(board) if isinstance(board, str) else board
        self.image = FlashImage(image, self.board)
        self.name = name or self.board.name
        self.env = dict(env or {})
        self.heapsize = heapsize
        self.download_mode_factory = download_mode
        self._pty_link = pty_link
        self._rfc2217_port = rfc2217_port
        self.pty: PtyEndpoint | None = None
        self.rfc2217: Rfc2217Endpoint | None = None
        self.state = State.OFF
        self.crash_reason: str | None = None
        self.boots = 0  # interpreter starts, for tests and figures
        self.on_crash: Callable[[str], None] | None = None
        self._listeners: list[Callable[[bytes], None]] = []
        self._console = bytearray()
        self._console_cond = threading.Condition()
        self._cmds: queue.Queue[tuple] = queue.Queue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._proc: subprocess.Popen[bytes] | None = None
        self._ifd: int | None = None
        self._rx_lock = threading.Lock()
        self._rx_pending = bytearray()
        self._gate: str | None = None  # "boot" until the ready marker, "raw" until >>>
        self._gate_buf = bytearray()
        self._raw = False  # the REPL mode, tracked from the output like pyexec_mode_kind
        self._reset_cause = "power_on"  # reported to the firmware as machine.reset_cause()
        self._tail = b""
        self._boot_exits = 0
        self._lines = (False, False)  # (dtr, rts) as set by the RFC 2217 client
        self._en_rise_at: float | None = None  # when EN, released, reaches high
        self._download: DownloadMode | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- public API -----------------------------------------------------------

    @property
    def port(self) -> str:
        """The pty path (the symlink when one was asked for)."""
        assert self.pty is not None, "board not started"
        return self.pty.path

    @property
    def rfc2217_url(self) -> str | None:
        return self.rfc2217.url if self.rfc2217 else None

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def start(self, wait: bool = True, timeout: float = 30.0) -> VirtualBoard:
        """Check the image, open the endpoints and power on (wait for the REPL)."""
        self.image.check()
        micropython_binary()
        self.pty = PtyEndpoint(self._uart_rx, self._pty_link)
        try:
            if self._rfc2217_port is not None:
                self.rfc2217 = Rfc2217Endpoint(self._uart_rx, self._set_lines, self._rfc2217_port)
        except BaseException:
            self.pty.close()
            raise
        _live_boards.add(self)
        self._thread = threading.Thread(target=self._supervise, name=f"vb-{self.name}", daemon=True)
        self._thread.start()
        self._post("power_on")
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until the interpreter is at the REPL; a crash raises AuxilioError."""
        deadline = time.monotonic() + timeout
        while self.state is not State.RUNNING:
            if self.state is State.CRASHED:
                raise AuxilioError(f"virtual board {self.name} crashed: {self.crash_reason}")
            if time.monotonic() > deadline:
                raise AuxilioError(f"virtual board {self.name} did not reach the REPL")
            time.sleep(0.01)

    def hard_reset(self) -> None:
        """EN pulse: RAM is lost, the ROM boots the firmware again."""
        self._post("hard_reset")

    def power_cut(self) -> None:
        """kill -9 of the interpreter; the flash image keeps what was written."""
        self._post("power_cut")

    def power_restore(self) -> None:
        self._post("power_on")

    def write(self, data: bytes) -> None:
        """Type into the board's UART as a serial tool would."""
        self._uart_rx(data)

    def add_listener(self, callback: Callable[[bytes], None]) -> None:
        """callback(bytes) for every chunk the board writes to its serial port."""
        self._listeners.append(callback)

    def console(self) -> bytes:
        with self._console_cond:
            return bytes(self._console)

    def wait_output(self, pattern: bytes, timeout: float = 30.0, since: int = 0) -> int:
        """Wait until `pattern` appears in the console after offset `since`; its end offset."""
        deadline = time.monotonic() + timeout
        with self._console_cond:
            while True:
                i = self._console.find(pattern, since)
                if i >= 0:
                    return i + len(pattern)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{pattern!r} not seen on {self.name}'s console")
                self._console_cond.wait(min(left, 0.2))

    def console_len(self) -> int:
        with self._console_cond:
            return len(self._console)

    def close(self) -> None:
        """Power off and remove the endpoints (pty link included). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None and self._thread.is_alive():
            self._post("stop")
            self._thread.join(10)
        self._kill()
        if self.rfc2217 is not None:
            self.rfc2217.close()
        if self.pty is not None:
            self.pty.close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        _live_boards.discard(self)

    def __enter__(self) -> VirtualBoard:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the auto-reset circuit (EN on RTS, IO0 on DTR) ------------------------

    def _set_lines(self, dtr: bool, rts: bool) -> None:
        self._post("lines", dtr, rts)

    def _apply_lines(self, dtr: bool, rts: bool) -> None:
        # The two-transistor circuit of ESP32 dev boards: EN is pulled low only
        # when RTS is asserted and DTR is not; IO0 only when DTR is and RTS is not.
        old_en_low = self._lines[1] and not self._lines[0]
        self._lines = (dtr, rts)
        en_low = rts and not dtr
        # IO0 (low when DTR is asserted and RTS is not) is sampled once EN has risen.
        if self.state is State.OFF:
            return  # no power: the lines change nothing
        if en_low:
            self._en_rise_at = None
            if not old_en_low:
                self._kill()
                self._stop_download()
                self.state = State.RESET
        elif old_en_low:
            self._en_rise_at = time.monotonic() + EN_RC_S

    def _en_risen(self) -> None:
        self._en_rise_at = None
        dtr, rts = self._lines
        if dtr and not rts:  # IO0 low at reset: the ROM serial bootloader
            self._enter_download()
        else:
            self._power_on()

    def _enter_download(self) -> None:
        self._emit(ROM_DOWNLOAD_BANNER)
        self.state = State.DOWNLOAD
        if self.download_mode_factory is not None:
            self._download = self.download_mode_factory(self)

    def _stop_download(self) -> None:
        if self._download is not None:
            self._download.close()
            self._download = None

    # -- serial data ------------------------------------------------------------

    def emit(self, data: bytes) -> None:
        """Board output (for a DownloadMode implementation)."""
        self._emit(data)

    def _emit(self, data: bytes) -> None:
        if not data:
            return
        scan = self._tail + data
        if RAW_REPL_BANNER in scan:
            self._raw = True
        elif scan.endswith(b">>> "):
            self._raw = False
        self._tail = scan[-32:]
        with self._console_cond:
            self._console += data
            if len(self._console) > CONSOLE_KEEP:
                del self._console[: len(self._console) - CONSOLE_KEEP]
            self._console_cond.notify_all()
        if self.pty is not None:
            self.pty.write(data)
        if self.rfc2217 is not None:
            self.rfc2217.write(data)
        for cb in list(self._listeners):
            try:
                cb(data)
            except Exception:  # a listener must not take the UART down
                log.exception("console listener failed")

    def _uart_rx(self, data: bytes) -> None:
        if self.state is State.DOWNLOAD:
            if self._download is not None:
                self._download.feed(data)
            return
        with self._rx_lock:
            if self._ifd is not None and self._gate != "raw":
                self._write_interp(data)
            elif self.state in (State.BOOTING, State.RUNNING):
                room = RX_PENDING_MAX - len(self._rx_pending)
                self._rx_pending += data[: max(room, 0)]
            # OFF, RESET, CRASHED: nobody listens on the UART

    def _write_interp(self, data: bytes) -> None:
        view = memoryview(data)
        deadline = time.monotonic() + 2.0
        while view and self._ifd is not None:
            try:
                n = os.write(self._ifd, view)
                view = view[n:]
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return  # the interpreter stopped reading: RX overflow drops data
                select.select([], [self._ifd], [], 0.01)
            except OSError:
                return

    # -- supervisor thread ------------------------------------------------------

    def _post(self, *cmd: object) -> None:
        self._cmds.put(cmd)
        try:
            os.write(self._wake_w, b"!")
        except OSError:
            pass

    def _supervise(self) -> None:
        try:
            while True:
                while True:
                    try:
                        cmd = self._cmds.get_nowait()
                    except queue.Empty:
                        break
                    if cmd[0] == "stop":
                        self._kill()
                        self._stop_download()
                        self.state = State.OFF
                        return
                    self._handle(cmd)
                if self._en_rise_at is not None and time.monotonic() >= self._en_rise_at:
                    self._en_risen()
                timeout = 0.5
                if self._en_rise_at is not None:
                    timeout = max(0.0, min(timeout, self._en_rise_at - time.monotonic()))
                fds = [self._wake_r] + ([self._ifd] if self._ifd is not None else [])
                ready, _, _ = select.select(fds, [], [], timeout)
                if self._wake_r in ready:
                    try:
                        os.read(self._wake_r, 4096)
                    except OSError:
                        pass
                if self._ifd is not None and self._ifd in ready:
                    try:
                        data = os.read(self._ifd, 4096)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""  # EIO: the interpreter closed its tty (it exited)
                    if data:
                        self._on_output(data)
                    else:
                        self._on_exit()
        except Exception as exc:  # a supervisor bug must surface, not hang the board
            log.exception("virtual board supervisor failed")
            self._crash(f"supervisor error: {exc}")

    def _handle(self, cmd: tuple) -> None:
        what = cmd[0]
        if what == "power_on":
            if self._proc is None and self.state not in (State.DOWNLOAD, State.RESET):
                self._power_on()
        elif what == "hard_reset":
            self._kill()
            self._stop_download()
            self._power_on(cause="hard_reset")
        elif what == "power_cut":
            self._kill()
            self._stop_download()
            self.state = State.OFF
        elif what == "lines":
            self._apply_lines(bool(cmd[1]), bool(cmd[2]))

    def _power_on(self, cause: str = "power_on") -> None:
        self._raw = False
        self._boot_exits = 0
        self._reset_cause = cause
        self._emit(ROM_BANNER)
        self._spawn()

    def _spawn(self) -> None:
        env = dict(os.environ)
        env.update(self.image.boot_env())
        env.update(self.env)
        env["AUXILIO_VB_MODE"] = "raw" if self._raw else "normal"
        # What machine.reset_cause() would say on the chip; the host HAL reports it in BOOT.
        env["AUXILIO_RESET_CAUSE"] = self._reset_cause
        env.pop("AUXILIO_VB_TASK", None)
        master, slave = pty.openpty()
        tty.setraw(slave)
        attrs = termios.tcgetattr(slave)
        attrs[3] |= termios.ISIG  # Ctrl-C -> SIGINT while code runs (the REPL turns ISIG off)
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        cmd = [micropython_binary()]
        if self.heapsize:
            cmd += ["-X", f"heapsize={self.heapsize}"]
        cmd += ["-i", str(BOOT_SCRIPT)]
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=slave,
                stdout=slave,
                stderr=slave,
                env=env,
                cwd=str(self.image.path.resolve().parent),
                start_new_session=True,
                preexec_fn=_child_setup,
            )
        except OSError as exc:
            os.close(master)
            os.close(slave)
            self._crash(f"cannot start micropython: {exc}")
            return
        os.close(slave)
        os.set_blocking(master, False)
        self.boots += 1
        self._gate, self._gate_buf = "boot", bytearray()
        with self._rx_lock:
            self._proc, self._ifd = proc, master
            self.state = State.BOOTING
            pending, self._rx_pending = bytes(self._rx_pending), bytearray()
            if pending:
                self._write_interp(pending)

    def _kill(self) -> None:
        """SIGKILL the interpreter's process group: RAM is gone, the flash file stays."""
        with self._rx_lock:
            proc, fd = self._proc, self._ifd
            self._proc = self._ifd = None
            self._rx_pending = bytearray()
        if proc is not None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                log.error("micropython pid %d did not die", proc.pid)
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
        self._gate = None

    def _on_exit(self) -> None:
        """The interpreter ended by itself: a soft reboot, unless it crashed."""
        proc = self._proc
        booting = self._gate == "boot"
        self._kill()
        rc = proc.returncode if proc is not None else 0
        if rc is not None and rc < 0:
            self._crash(f"micropython died with signal {signal.Signals(-rc).name}")
            return
        self._boot_exits = self._boot_exits + 1 if booting else 0
        if self._boot_exits >= BOOT_LOOP_LIMIT:
            self._crash("micropython keeps exiting during boot")
            return
        self._soft_reboot()

    def _soft_reboot(self) -> None:
        self._reset_cause = "soft_reset"
        self._emit(SOFT_REBOOT_BANNER)
        self._spawn()

    def _crash(self, reason: str) -> None:
        self._kill()
        self.crash_reason = reason
        self.state = State.CRASHED
        log.error("virtual board %s crashed: %s", self.name, reason)
        if self.on_crash is not None:
            self.on_crash(reason)

    def _on_output(self, data: bytes) -> None:
        if self._gate is None:
            self._emit(data)
            return
        self._gate_buf += data
        while self._gate is not None:
            buf = self._gate_buf
            if self._gate == "raw":
                # Swallow the friendly banner, then switch the REPL to raw as the
                # ESP32 port would have stayed (pyexec_mode_kind survives soft reset).
                i = buf.find(b">>> ")
                if i < 0:
                    del buf[: max(0, len(buf) - 3)]
                    return
                rest = bytes(buf[i + 4 :])
                self._gate_buf = bytearray()
                with self._rx_lock:
                    self._gate = None
                    self.state = State.RUNNING
                    self._write_interp(b"\x01")  # Ctrl-A: raw REPL
                    pending, self._rx_pending = bytes(self._rx_pending), bytearray()
                    if pending:
                        self._write_interp(pending)
                self._emit(rest)
                return
            i = buf.find(_MARK)
            if i < 0:
                keep = buf.rfind(b"\x1b")
                cut = keep if keep >= 0 and len(buf) - keep < len(_MARK) + 256 else len(buf)
                self._emit(bytes(buf[:cut]))
                del buf[:cut]
                return
            end = buf.find(b"\x07", i)
            if end < 0:
                self._emit(bytes(buf[:i]))
                del buf[:i]
                return
            self._emit(bytes(buf[:i]))
            what = bytes(buf[i + len(_MARK) : end]).decode(errors="replace")
            del buf[: end + 1]
            if what == "ready":
                self._boot_exits = 0
                if self._raw:
                    self._gate = "raw"
                else:
                    self._gate = None
                    self.state = State.RUNNING
                    rest = bytes(buf)
                    self._gate_buf = bytearray()
                    self._emit(rest)
            elif what == "reboot":
                self._kill()
                self._soft_reboot()
                return
            elif what.startswith("fatal;"):
                self._crash(what[len("fatal;") :])
                return


_live_boards: weakref.WeakSet[VirtualBoard] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    """Never leave interpreters or pty links behind when the host process exits."""
    for board in list(_live_boards):
        try:
            board.close()
        except Exception:  # best effort at exit
            pass


def image_path_default(board: str) -> Path:
    return Path.cwd() / f"{board}.img"
