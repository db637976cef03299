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
import enum
import fcntl
import hashlib
import logging
import mmap
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

from auxilio.boards import RESET_USB_JTAG, Board, load_board
from auxilio.emulator import usb
from auxilio.emulator.endpoints import Pacer, PtyEndpoint, Rfc2217Endpoint
from auxilio.emulator.image import BOOT_SCRIPT, FlashImage, micropython_binary
from auxilio.emulator.reset import Action, make_circuit
from auxilio.errors import AuxilioError, UsageError
from auxilio.flash.images import BootCheck, boot_check
from auxilio.procs import die_with_parent

log = logging.getLogger(__name__)

SOFT_REBOOT_BANNER = b"MPY: soft reboot\r\n"  # ports/esp32/main.c soft_reset_exit
RAW_REPL_BANNER = b"raw REPL; CTRL-B to exit"
_MARK = b"\x1b]auxvb;"  # boot-script markers: ESC ] auxvb;<what> BEL
# An interpreter that exits this many times in a row before reaching the REPL is crashed.
BOOT_LOOP_LIMIT = 5
# Input typed while the interpreter restarts is kept (a UART FIFO plus driver buffer).
RX_PENDING_MAX = 64 * 1024
# A chip that finds no bootable image resets (RTC watchdog) and tries again about
# this often, printing the same lines each time, forever.
BOOT_LOOP_PERIOD_S = 1.0
# Link modes: "fast" delivers bytes as fast as the host moves them (tests);
# "faithful" spaces them at the link's rate (the baud rate set over RFC 2217 for a
# USB-UART bridge; USB full speed for the native USB-Serial-JTAG).
LINK_FAST = "fast"
LINK_FAITHFUL = "faithful"
UART_BITS_PER_BYTE = 10  # 8N1: start bit, 8 data bits, stop bit
DEFAULT_BAUD = 115200  # the ROM's and MicroPython's UART0 rate when nobody set one
# The USB-Serial-JTAG CDC endpoint: 64-byte bulk packets on USB 1.1 full speed; ESP-IDF
# measures about 1 MB/s, whatever baud rate the host asks for.
USB_SERIAL_JTAG_BYTES_PER_S = 1_000_000
# Kept console output, for tests and `wait_output`.
CONSOLE_KEEP = 1024 * 1024


def _child_setup() -> None:
    """In the child: make the pty its controlling tty (Ctrl-C -> SIGINT) and die with us."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    die_with_parent()


class State(enum.Enum):
    OFF = "off"  # no power
    RESET = "reset"  # EN held low
    # The names say what a technician sees: the firmware app (boot.py/main.py)
    # runs for as long as the board is on, so "booting" would be a lie after boot.
    BOOTING = "app"  # interpreter running boot.py / main.py: the firmware app
    RUNNING = "repl"  # interpreter at the REPL (mpremote stopped main.py, or it returned)
    DOWNLOAD = "download"  # ROM serial bootloader (IO0 low at reset)
    BOOT_LOOP = "boot_loop"  # no valid bootloader/partition table/app in flash: resets forever
    CRASHED = "crashed"


class DownloadMode(Protocol):
    """What runs while the chip is in serial download mode (the ROM bootloader by default)."""

    def feed(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class VirtualBoard:
    """A board definition + a flash image file + serial endpoints + the interpreter.

    `env` is added to the interpreter's environment (e.g. AUXILIO_HAL_CONTROL).
    `download_mode` builds what answers in serial download mode (IO0 low at
    reset); the default is the ROM bootloader of auxilio.emulator.rom, which
    esptool flashes. `link` is LINK_FAST or LINK_FAITHFUL (bytes paced at the
    link's rate). `advertise` publishes the port on the virtual USB bus, where
    `auxilio ports` finds it. `mac` fixes the eFuse MAC (default: derived from
    the image path, so the same image is the same board).
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
        link: str = LINK_FAST,
        advertise: bool = False,
        mac: bytes | None = None,
    ) -> None:
        self.board = load_board(board) if isinstance(board, str) else board
        self.image = FlashImage(image, self.board)
        self.name = name or self.board.name
        self.env = dict(env or {})
        self.heapsize = heapsize
        if download_mode is None:
            from auxilio.emulator.rom import RomBootloader

            download_mode = RomBootloader
        self.download_mode_factory = download_mode
        if link not in (LINK_FAST, LINK_FAITHFUL):
            raise UsageError(f"link must be {LINK_FAST!r} or {LINK_FAITHFUL!r}, not {link!r}")
        self.link = link
        self.native_usb = self.board.reset_circuit == RESET_USB_JTAG
        self.advertise = advertise
        # A locally administered unicast MAC (0x02 first byte): never a real board's.
        seed = hashlib.sha256(str(Path(image).resolve()).encode()).digest()
        self.mac = mac or bytes([0x02]) + seed[:5]
        self._pty_link = pty_link
        self._rfc2217_port = rfc2217_port
        self.pty: PtyEndpoint | None = None
        self.rfc2217: Rfc2217Endpoint | None = None
        self.state = State.OFF
        self.crash_reason: str | None = None
        self.boot_failure: str | None = None  # the last line of a boot loop, while looping
        self.boots = 0  # interpreter starts, for tests and figures
        self.booted_at: float | None = None  # monotonic time of the last interpreter start
        self._last_out = b""  # the interpreter's last output byte (CRLF cooking spans chunks)
        self.on_crash: Callable[[str], None] | None = None
        # Called by the ROM after each flash write (offset, length): tests cut power here.
        self.on_flash_write: Callable[[int, int], None] | None = None
        self.rx_bytes = 0  # bytes the host sent / the board sent on its serial link
        self.tx_bytes = 0
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
        self.circuit = make_circuit(self.board.reset_circuit)
        self._download: DownloadMode | None = None
        self._loop_at: float | None = None  # next boot-loop retry
        self._vfs: tuple[int, int] | None = None  # (offset, size) the bootloader found
        self._loop_lines: list[str] = []
        self._powered = False  # False from a power cut until power returns (output is dropped)
        self._tx_pacer = Pacer()
        self._rx_pacer = Pacer()
        self._emit_lock = threading.Lock()
        self._usb_file: Path | None = None
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

    @property
    def usb_serial(self) -> str:
        """The USB serial number: the MAC for USB-Serial-JTAG, a bridge-style id otherwise."""
        if self.native_usb:
            return ":".join(f"{b:02X}" for b in self.mac)
        # A bridge's serial is programmed at its factory; ours derives from the MAC.
        return self.mac.hex().upper() + "01"

    @property
    def powered(self) -> bool:
        """False from the instant of a power cut (before the supervisor has even seen it)."""
        return self._powered

    def host_baud(self) -> int:
        """The baud rate the host set on the port (RFC 2217 SET-BAUDRATE), else the default."""
        if self.rfc2217 is not None and self.rfc2217.connected:
            return self.rfc2217.baudrate
        return DEFAULT_BAUD

    def link_bytes_per_s(self) -> float:
        """The link's maximum: what faithful mode paces to."""
        if self.native_usb:
            return USB_SERIAL_JTAG_BYTES_PER_S
        return self.host_baud() / UART_BITS_PER_BYTE

    def start(self, wait: bool = True, timeout: float = 30.0) -> VirtualBoard:
        """Check the image file, open the endpoints and power on (wait for the REPL).

        The flash content is not checked here: a chip powers on whatever its
        flash holds (an erased one sits in the ROM's boot loop until flashed).
        """
        self.image.check_file()
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
        if self.advertise:
            self._publish()
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until the interpreter is at the REPL; a crash or a boot loop raises AuxilioError."""
        deadline = time.monotonic() + timeout
        while self.state is not State.RUNNING:
            if self.state is State.CRASHED:
                raise AuxilioError(f"virtual board {self.name} crashed: {self.crash_reason}")
            if self.state is State.BOOT_LOOP:
                raise AuxilioError(
                    f"virtual board {self.name} does not boot ({self.boot_failure}); flash it first"
                )
            if time.monotonic() > deadline:
                raise AuxilioError(f"virtual board {self.name} did not reach the REPL")
            time.sleep(0.01)

    def hard_reset(self) -> None:
        """EN pulse: RAM is lost, the ROM boots the firmware again."""
        self._post("hard_reset")

    def power_cut(self) -> None:
        """kill -9 of the interpreter; the flash image keeps what was written."""
        self._powered = False  # from this instant nothing more leaves the board
        self._post("power_cut")

    def power_restore(self) -> None:
        self._post("power_on")

    def run_from_flash(self, cause: str) -> None:
        """The ROM leaves download mode and boots the app (FLASH_END, a watchdog reset)."""
        self._post("run_flash", cause)

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
        if self._usb_file is not None:
            usb.withdraw(self._usb_file)
        if self._thread is not None and self._thread.is_alive():
            self._post("stop")
            self._thread.join(10)
        self._kill()
        self._stop_download()
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

    def _publish(self) -> None:
        ident = self.board.usb
        self._usb_file = usb.publish(
            usb.VirtualPort(
                name=self.name,
                board=self.board.name,
                device=self.port,
                url=self.rfc2217_url,
                vid=ident.vid if ident else 0,
                pid=ident.pid if ident else 0,
                serial=self.usb_serial,
                manufacturer=ident.manufacturer if ident else "",
                product=ident.product if ident else "",
                owner=os.getpid(),
            )
        )

    # -- the reset circuit (board data: classic DevKit or USB-Serial-JTAG) ---------

    def _set_lines(self, dtr: bool, rts: bool) -> None:
        self._post("lines", dtr, rts)

    def _act(self, action: Action) -> None:
        if self.state is State.OFF:
            return  # no power: the lines change nothing
        if action.what == "reset":
            self._kill()
            self._stop_download()
            self._loop_at = None
            self.state = State.RESET
        elif action.what in ("boot", "download"):
            # machine.reset_cause(): an ESP32's EN pin is a power-on reset; the native
            # USB peripheral's reset is a hard reset.
            fw = "power_on" if action.cause == "power_on" else "hard_reset"
            self._release(action.what == "download", action.cause, fw)

    def _release(self, download: bool, cause: str, fw_cause: str = "power_on") -> None:
        """The chip comes out of reset: the ROM prints its banner and boots or waits.

        `cause` is the ROM's reset reason (chips.Chip.reset_reasons), `fw_cause`
        what the firmware's machine.reset_cause() reports.
        """
        self._kill()
        self._stop_download()
        self._loop_at = None
        chip = self.board.chip_info
        self._emit(f"{chip.rom_banner}{chip.rst_line(cause, download)}\r\n".encode())
        if download:
            self._enter_download()
        else:
            self._boot(fw_cause)

    def _enter_download(self) -> None:
        self._emit(b"waiting for download\r\n")
        self.state = State.DOWNLOAD
        if self.download_mode_factory is not None:
            self._download = self.download_mode_factory(self)

    def _stop_download(self) -> None:
        if self._download is not None:
            self._download.close()
            self._download = None

    def _boot(self, fw_cause: str) -> None:
        """SPI flash boot: the ROM loads the bootloader, which checks the table and the app."""
        check = self._check_flash()
        if not check.ok:
            self._boot_loop(check)
            return
        self._emit(("".join(line + "\r\n" for line in check.lines)).encode())
        self._power_on(fw_cause, vfs=(check.vfs.offset, check.vfs.size) if check.vfs else None)

    def _check_flash(self) -> BootCheck:
        try:
            with (
                open(self.image.path, "rb") as f,
                mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m,
            ):
                return boot_check(m, self.board.chip_info, self.board.flash_size)
        except (OSError, ValueError) as exc:
            return BootCheck(False, [f"flash unreadable: {exc}"], rom_ok=False)

    def _boot_loop(self, check: BootCheck) -> None:
        self.state = State.BOOT_LOOP
        self.boot_failure = check.lines[-1] if check.lines else "no bootable image"
        self._loop_lines = check.lines if check.rom_ok else check.lines * 4
        self._emit(("".join(line + "\r\n" for line in self._loop_lines)).encode())
        self._loop_at = time.monotonic() + BOOT_LOOP_PERIOD_S

    def _boot_loop_again(self) -> None:
        """The RTC watchdog resets the stuck chip; it prints the same failure again."""
        chip = self.board.chip_info
        lines = [chip.rst_line("rtc_wdt", False)] + self._loop_lines
        self._emit(("".join(line + "\r\n" for line in lines)).encode())
        self._loop_at = time.monotonic() + BOOT_LOOP_PERIOD_S

    # -- serial data ------------------------------------------------------------

    def emit(self, data: bytes) -> None:
        """Board output (for a DownloadMode implementation)."""
        self._emit(data)

    def _emit(self, data: bytes) -> None:
        if not data or not self._powered:
            return
        if self.link == LINK_FAITHFUL:
            self._tx_pacer.pace(len(data), self.link_bytes_per_s())
        with self._emit_lock:
            self.tx_bytes += len(data)
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
        if self.link == LINK_FAITHFUL:
            self._rx_pacer.pace(len(data), self.link_bytes_per_s())
        self.rx_bytes += len(data)
        if self.state is State.DOWNLOAD:
            download = self._download
            if download is not None:
                download.feed(data)
            return
        with self._rx_lock:
            if self._ifd is not None and self._gate != "raw":
                self._write_interp(data)
            elif self.state in (State.BOOTING, State.RUNNING):
                room = RX_PENDING_MAX - len(self._rx_pending)
                self._rx_pending += data[: max(room, 0)]
            # OFF, RESET, BOOT_LOOP, CRASHED: nobody listens on the UART

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

    def _next_timer(self) -> float | None:
        times = [t for t in (self.circuit.due(), self._loop_at) if t is not None]
        return min(times) if times else None

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
                now = time.monotonic()
                due = self.circuit.due()
                if due is not None and now >= due:
                    self._act(self.circuit.tick())
                if self._loop_at is not None and now >= self._loop_at:
                    self._boot_loop_again()
                timeout = 0.5
                nxt = self._next_timer()
                if nxt is not None:
                    timeout = max(0.0, min(timeout, nxt - time.monotonic()))
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
            if self.state in (State.OFF, State.CRASHED):
                self._powered = True
                self._release(False, "power_on")
        elif what == "hard_reset":
            if self.state is not State.OFF:
                self._release(False, "usb" if self.native_usb else "power_on", "hard_reset")
        elif what == "run_flash":
            if self.state is State.DOWNLOAD:
                self._release(False, str(cmd[1]), "hard_reset")
        elif what == "power_cut":
            self._kill()
            self._stop_download()
            self._loop_at = None
            self._powered = False
            self.state = State.OFF
        elif what == "lines":
            self._act(self.circuit.set_lines(bool(cmd[1]), bool(cmd[2])))

    def _power_on(self, cause: str = "power_on", vfs: tuple[int, int] | None = None) -> None:
        """Start the interpreter: the app the bootloader found (MicroPython, here the unix port)."""
        self._raw = False
        self._boot_exits = 0
        self._reset_cause = cause
        self._vfs = vfs
        self._spawn()

    def _spawn(self) -> None:
        env = dict(os.environ)
        env.update(self.image.boot_env(self._vfs))
        env.update(self.env)
        env["AUXILIO_VB_MODE"] = "raw" if self._raw else "normal"
        # What machine.reset_cause() would say on the chip; the host HAL reports it in BOOT.
        env["AUXILIO_RESET_CAUSE"] = self._reset_cause
        env["AUXILIO_VB_MAC"] = self.mac.hex()  # machine.unique_id() on the board (vboot_mpy)
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
        self.booted_at = time.monotonic()
        self._gate, self._gate_buf = "boot", bytearray()
        with self._rx_lock:
            self._proc, self._ifd = proc, master
            self.state = State.BOOTING
            pending, self._rx_pending = bytes(self._rx_pending), bytearray()
            if pending:
                self._write_interp(pending)

    def uptime_s(self) -> float | None:
        """Seconds since the interpreter last started (None: never powered on)."""
        return None if self.booted_at is None else round(time.monotonic() - self.booted_at, 1)

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

    def _cook(self, data: bytes) -> bytes:
        """A lone LF becomes CRLF, as the ESP32 port's cooked stdout sends program output.

        The unix port writes `print()` output with a bare LF (its REPL's own lines
        already end in CRLF), so a terminal on the board's port would staircase.
        """
        if b"\n" not in data:
            if data:
                self._last_out = data[-1:]
            return data
        prev = self._last_out
        out = bytearray()
        for line in data.split(b"\n")[:-1]:
            out += line
            if not (line[-1:] == b"\r" or (not line and prev == b"\r")):
                out += b"\r"
            out += b"\n"
            prev = b"\n"
        out += data.rsplit(b"\n", 1)[1]
        self._last_out = data[-1:]
        return bytes(out)

    def _on_output(self, data: bytes) -> None:
        data = self._cook(data)
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
