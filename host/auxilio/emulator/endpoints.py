"""Serial endpoints of a virtual board: a pty with a stable symlink, and an RFC 2217 server."""

from __future__ import annotations

import errno
import logging
import os
import pty
import select
import socket
import threading
import time
import tty
from collections.abc import Callable
from pathlib import Path

from serial import rfc2217

from auxilio.errors import UsageError

log = logging.getLogger(__name__)

# Read size for serial data; a USB-CDC packet is 64 bytes, mpremote writes up to 256.
CHUNK = 4096
# How often a pty with nobody attached is re-polled (POLLHUP spins otherwise).
HUP_POLL_S = 0.05


class Pacer:
    """Spaces bytes at a link's rate: n bytes take n / rate seconds, queued behind earlier ones."""

    def __init__(self) -> None:
        self._free_at = 0.0
        self._lock = threading.Lock()

    def pace(self, nbytes: int, bytes_per_s: float) -> None:
        with self._lock:
            now = time.monotonic()
            self._free_at = max(now, self._free_at) + nbytes / max(bytes_per_s, 1.0)
            delay = self._free_at - now
        if delay > 0:
            time.sleep(delay)


def _owner_file(link: Path) -> Path:
    """Beside the link: the pid of the emulator that made it, and its pty."""
    return link.with_name(link.name + ".owner")


def _link_in_use(link: Path) -> bool:
    """Whether a live emulator still serves this link.

    The link's pty existing is not enough: a killed emulator's /dev/pts/N is
    soon handed to another process (another board, a terminal), so the owner
    file names the emulator's pid and its pty, and both must still hold.
    """
    target = os.readlink(link)
    owner = _owner_file(link)
    try:
        pid_text, device = owner.read_text().split()
        pid = int(pid_text)
    except (OSError, ValueError):
        return os.path.exists(target if os.path.isabs(target) else link.parent / target)
    if device != target:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class PtyEndpoint:
    """The board's USB serial as a pty; `path` (a symlink) is what tools open.

    Output written while no process has the pty open is dropped, as a USB-UART
    bridge drops it with no host attached (the master sees POLLHUP then).
    """

    def __init__(self, on_rx: Callable[[bytes], None], link: str | os.PathLike[str] | None) -> None:
        self.link = Path(link) if link else None
        if self.link is not None and (self.link.exists() or self.link.is_symlink()):
            if self.link.is_symlink() and not _link_in_use(self.link):
                log.info("removing stale pty link %s", self.link)
                self.link.unlink()
            else:
                raise UsageError(f"port path {self.link} is already in use")
        self._on_rx = on_rx
        self.master, slave = pty.openpty()
        self.device = os.ttyname(slave)
        tty.setraw(slave)  # pyserial sets raw too; this covers plain `cat`/`screen`
        os.close(slave)  # hold no slave fd: POLLHUP then tells "nobody attached"
        os.set_blocking(self.master, False)
        if self.link is not None:
            self.link.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.symlink(self.device, self.link)
            except FileExistsError:
                os.close(self.master)
                raise UsageError(f"port path {self.link} is already in use") from None
            _owner_file(self.link).write_text(f"{os.getpid()} {self.device}\n")
        self._closed = False
        self._thread = threading.Thread(target=self._reader, name="vb-pty", daemon=True)
        self._thread.start()

    @property
    def path(self) -> str:
        return str(self.link) if self.link is not None else self.device

    def attached(self) -> bool:
        p = select.poll()
        p.register(self.master, select.POLLIN)
        return not any(ev & select.POLLHUP for _, ev in p.poll(0))

    def write(self, data: bytes) -> None:
        if self._closed or not self.attached():
            return
        view = memoryview(data)
        for _ in range(200):  # bounded: a reader that stalls for ~1 s loses data, like a UART
            try:
                n = os.write(self.master, view)
            except BlockingIOError:
                select.select([], [self.master], [], 0.005)
                continue
            except OSError:
                return
            view = view[n:]
            if not view:
                return

    def _reader(self) -> None:
        p = select.poll()
        p.register(self.master, select.POLLIN)
        while not self._closed:
            try:
                events = p.poll(500)
            except (OSError, ValueError):
                return
            if not events:
                continue
            if any(ev & select.POLLHUP and not ev & select.POLLIN for _, ev in events):
                threading.Event().wait(HUP_POLL_S)
                continue
            try:
                data = os.read(self.master, CHUNK)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno == errno.EIO:  # slave closed between poll and read
                    threading.Event().wait(HUP_POLL_S)
                    continue
                return
            if data:
                self._on_rx(data)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.link is not None:
            try:
                if self.link.is_symlink() and os.readlink(self.link) == self.device:
                    self.link.unlink()
                    _owner_file(self.link).unlink(missing_ok=True)
            except OSError:
                pass
        self._thread.join(1.0)
        try:
            os.close(self.master)
        except OSError:
            pass


class _Lines:
    """The serial-port object pyserial's PortManager drives: settings and control lines."""

    def __init__(self, on_lines: Callable[[bool, bool], None]) -> None:
        self._on_lines = on_lines
        self._dtr = False
        self._rts = False
        self.baudrate = 115200
        self.bytesize = 8
        self.parity = "N"
        self.stopbits = 1
        self.xonxoff = False
        self.rtscts = False
        self.break_condition = False
        # Inputs as a USB-UART bridge reports them with the board attached.
        self.cts = True
        self.dsr = True
        self.ri = False
        self.cd = True

    @property
    def dtr(self) -> bool:
        return self._dtr

    @dtr.setter
    def dtr(self, value: bool) -> None:
        self._dtr = bool(value)
        self._on_lines(self._dtr, self._rts)

    @property
    def rts(self) -> bool:
        return self._rts

    @rts.setter
    def rts(self, value: bool) -> None:
        self._rts = bool(value)
        self._on_lines(self._dtr, self._rts)

    def release(self) -> None:
        """Port closed: both lines deassert together (HUPCL), which resets nothing."""
        self._dtr = self._rts = False
        self._on_lines(False, False)

    def raise_both(self) -> None:
        """Port opened: the tty driver raises DTR and RTS together (tty_port_raise_dtr_rts).

        An RFC 2217 client then sends them as two separate changes, which no
        real open produces; the redirector's own open already raised both.
        """
        self._dtr = self._rts = True
        self._on_lines(True, True)

    def reset_input_buffer(self) -> None:
        pass

    def reset_output_buffer(self) -> None:
        pass


class _Conn:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self.lock:
            self.sock.sendall(data)


class Rfc2217Endpoint:
    """RFC 2217 server on 127.0.0.1: serial data plus DTR/RTS as real control lines.

    One client at a time, like an exclusive tty open. `on_lines(dtr, rts)` sees
    every line change, in order, so the board can model its auto-reset circuit.
    """

    def __init__(
        self,
        on_rx: Callable[[bytes], None],
        on_lines: Callable[[bool, bool], None],
        port: int = 0,
    ) -> None:
        self._on_rx = on_rx
        self._lines = _Lines(on_lines)
        self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._server.bind(("127.0.0.1", port))
        except OSError as exc:
            self._server.close()
            raise UsageError(f"RFC 2217 port {port} is not available: {exc.strerror}") from None
        self._server.listen(2)
        self.port = self._server.getsockname()[1]
        self._client: _Conn | None = None
        self._manager: rfc2217.PortManager | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="vb-rfc2217", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"rfc2217://127.0.0.1:{self.port}"

    @property
    def connected(self) -> bool:
        return self._client is not None

    @property
    def baudrate(self) -> int:
        """The rate the client set (RFC 2217 SET-BAUDRATE)."""
        return int(self._lines.baudrate)

    def _accept(self) -> None:
        while not self._closed:
            try:
                sock, _ = self._server.accept()
            except OSError:
                return
            if self._client is not None:
                sock.close()  # busy: the port is open elsewhere
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(sock)
            try:
                manager = rfc2217.PortManager(self._lines, conn)
            except OSError:
                sock.close()
                continue
            self._client, self._manager = conn, manager
            self._lines.raise_both()
            threading.Thread(
                target=self._serve, args=(conn, manager), name="vb-rfc2217-client", daemon=True
            ).start()

    def _serve(self, conn: _Conn, manager: rfc2217.PortManager) -> None:
        try:
            while not self._closed:
                data = conn.sock.recv(CHUNK)
                if not data:
                    break
                if (
                    b"\xff" not in data
                    and manager.mode == rfc2217.M_NORMAL
                    and manager.suboption is None
                ):
                    rx = data  # fast path: no Telnet command in this chunk
                else:
                    rx = b"".join(manager.filter(data))
                if rx:
                    self._on_rx(rx)
        except OSError:
            pass
        finally:
            if self._client is conn:
                self._client = self._manager = None
            try:
                conn.sock.close()
            except OSError:
                pass
            if not self._closed:
                self._lines.release()

    def write(self, data: bytes) -> None:
        conn = self._client
        if conn is None:
            return
        try:
            conn.write(data.replace(b"\xff", b"\xff\xff"))  # escape IAC
        except OSError:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self._closed = True
        try:
            self._server.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        try:
            self._server.close()
        except OSError:
            pass
        conn = self._client
        if conn is not None:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
                conn.sock.close()
            except OSError:
                pass
