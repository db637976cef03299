"""The ESP32 ROM serial bootloader and esptool's flasher stub, for virtual boards in download mode.

The wire protocol is the one esptool speaks (its loader.py is the reference;
Espressif's "Serial Protocol" page documents it): SLIP-framed packets
(0xC0 ... 0xC0, 0xDB 0xDC for 0xC0 and 0xDB 0xDD for 0xDB). A request is
<dir=0x00, op, u16 size, u32 checksum> + data; a response is <dir=0x01, op,
u16 size, u32 value> + data, where data ends with status bytes: the ROM sends
(status, error, 0, 0), the stub (status, 0) with its own error codes. FLASH/MEM
data packets carry an XOR checksum (seed 0xEF) of their payload.

Chip differences (identities, eFuse words, SPI registers, which commands the
ROM has) come from auxilio.chips; this module is the behaviour. The ROM
"runs" esptool's stub when MEM_END jumps into code it was sent: it then says
OHAI and answers the stub-only commands (erase, read flash, bigger blocks).
Writes go to the board's flash image file with NOR semantics (erase sets
0xFF, programming can only clear bits), unbuffered, so a board that dies
mid-write leaves exactly what was written.
"""

from __future__ import annotations

import hashlib
import logging
import mmap
import os
import queue
import struct
import threading
import time
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from auxilio.chips import CHIP_DETECT_MAGIC_REG, Chip
from auxilio.flash.images import checksum

if TYPE_CHECKING:
    from auxilio.emulator.board import VirtualBoard

log = logging.getLogger(__name__)

SLIP_END = 0xC0
SLIP_ESC = 0xDB
SLIP_ESC_END = 0xDC
SLIP_ESC_ESC = 0xDD
DIR_REQUEST = 0x00
DIR_RESPONSE = 0x01
_HEADER = struct.Struct("<BBHI")

# Command opcodes (esptool ESPLoader.ESP_CMDS).
FLASH_BEGIN = 0x02
FLASH_DATA = 0x03
FLASH_END = 0x04
MEM_BEGIN = 0x05
MEM_END = 0x06
MEM_DATA = 0x07
SYNC = 0x08
WRITE_REG = 0x09
READ_REG = 0x0A
SPI_SET_PARAMS = 0x0B
SPI_ATTACH = 0x0D
READ_FLASH_SLOW = 0x0E
CHANGE_BAUDRATE = 0x0F
FLASH_DEFL_BEGIN = 0x10
FLASH_DEFL_DATA = 0x11
FLASH_DEFL_END = 0x12
SPI_FLASH_MD5 = 0x13
GET_SECURITY_INFO = 0x14
ERASE_FLASH = 0xD0  # stub only
ERASE_REGION = 0xD1  # stub only
READ_FLASH = 0xD2  # stub only
STUB_ONLY = (ERASE_FLASH, ERASE_REGION, READ_FLASH)

# ROM error codes (second status byte; esptool util.py names them).
ROM_INVALID_PARAM = 0x01  # shown as 0x101 "The input parameter is invalid"
ROM_INVALID_MSG = 0x05  # 0x105 "The format of the received message is invalid"
ROM_BAD_RESULT = 0x06  # 0x106 "Message is ok, but the running result is wrong"
ROM_CHECKSUM = 0x07  # 0x107 "Checksum error"
ROM_FLASH_WRITE = 0x08  # 0x108 "Flash write error"
ROM_DEFLATE = 0x0B  # 0x10B "Deflate failed error"
ROM_RAM_ADDR = 0x0F  # 0x10F "Invalid RAM binary address"
# Stub error codes (first status byte).
STUB_BAD_LEN = 0xC0
STUB_BAD_CHECKSUM = 0xC1
STUB_BAD_BLOCKSIZE = 0xC2
STUB_INVALID_CMD = 0xC3
STUB_FAILED_SPI = 0xC4
STUB_NOT_IN_FLASH_MODE = 0xC6
STUB_INFLATE = 0xC7
STUB_TOO_MUCH = 0xC9

SYNC_PAYLOAD = b"\x07\x07\x12\x20" + 32 * b"\x55"  # SYNC's fixed body
SYNC_REPLIES = 8  # the ROM answers one SYNC eight times (esptool reads 7 extra)
ROM_SYNC_VALUE = 0x20120707  # any non-zero value: esptool reads 0 as "the stub answered"
OHAI = b"OHAI"  # the stub's greeting after MEM_END jumps into it
SECTOR = 0x1000  # flash erase unit
READ_SLOW_BLOCK = 64  # READ_FLASH_SLOW answers 64 bytes per command
# SPI registers and bits (esptool run_spiflash_command).
SPI_CMD_USR = 1 << 18
SPI_USR_ADDR = 1 << 30
SPI_USR_MISO = 1 << 28
SPI_USR_ADDR_LEN_SHIFT = 26
# JEDEC ids by flash size: GigaDevice GD25Q32/64/128 (manufacturer, type, capacity).
JEDEC_BY_SIZE = {
    4 << 20: (0xC8, 0x40, 0x16),
    8 << 20: (0xC8, 0x40, 0x17),
    16 << 20: (0xC8, 0x40, 0x18),
}
# Time from the RTC watchdog being armed to the reset (esptool's 2000 ticks at ~150 kHz).
RTC_WDT_DELAY_S = 0.02
# Baud rates further apart than this do not frame (a UART tolerates a few %).
BAUD_TOLERANCE = 0.05
# An esptool read_flash with nobody acking stops after this long.
READ_ACK_TIMEOUT_S = 10.0


def slip_encode(payload: bytes) -> bytes:
    body = payload.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc")
    return b"\xc0" + body + b"\xc0"


class SlipDecoder:
    """Bytes in, whole frames out; bytes outside frames are line noise and dropped."""

    def __init__(self) -> None:
        self._buf: bytearray | None = None
        self._esc = False

    def feed(self, data: bytes) -> list[bytes]:
        frames = []
        for b in data:
            if self._buf is None:
                if b == SLIP_END:
                    self._buf = bytearray()
                continue
            if self._esc:
                self._esc = False
                if b == SLIP_ESC_END:
                    self._buf.append(SLIP_END)
                elif b == SLIP_ESC_ESC:
                    self._buf.append(SLIP_ESC)
                else:  # invalid escape: the frame is garbage
                    self._buf = None
                continue
            if b == SLIP_ESC:
                self._esc = True
            elif b == SLIP_END:
                if self._buf:
                    frames.append(bytes(self._buf))
                    self._buf = None
                # an empty frame is a frame start (esptool sends 0xC0 0xC0 between packets)
                else:
                    self._buf = bytearray()
            else:
                self._buf.append(b)
        return frames


class SpiFlash:
    """The board's SPI NOR flash: its image file, erased to 0xFF, programmed by AND."""

    def __init__(self, path: str | os.PathLike[str], size: int) -> None:
        self.size = size
        self.jedec = JEDEC_BY_SIZE.get(size, (0xC8, 0x40, 0x16))
        # Unbuffered: every write reaches the file at once (a kill leaves what was written).
        self._f = open(path, "r+b", buffering=0)  # noqa: SIM115 - owned for the session
        self._lock = threading.Lock()

    def close(self) -> None:
        self._f.close()

    def read(self, offset: int, length: int) -> bytes:
        with self._lock:
            self._f.seek(offset)
            data = self._f.read(length)
        return data + b"\xff" * (length - len(data))

    def erase(self, offset: int, length: int) -> None:
        """Erase whole sectors covering [offset, offset+length)."""
        start = offset - offset % SECTOR
        end = min(self.size, -(-(offset + length) // SECTOR) * SECTOR)
        if end <= start:
            return
        with self._lock:
            self._f.seek(start)
            self._f.write(b"\xff" * (end - start))

    def program(self, offset: int, data: bytes) -> None:
        """NOR programming: bits go from 1 to 0 only (write over unerased flash is an AND)."""
        if not data:
            return
        old = self.read(offset, len(data))
        if old != b"\xff" * len(data):
            data = (int.from_bytes(old, "big") & int.from_bytes(data, "big")).to_bytes(
                len(data), "big"
            )
        with self._lock:
            self._f.seek(offset)
            self._f.write(data)

    def md5(self, offset: int, length: int) -> bytes:
        with self._lock, mmap.mmap(self._f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return hashlib.md5(m[offset : offset + length]).digest()

    def sfdp(self, addr: int, nbytes: int) -> bytes:
        """The SFDP table (JESD216): signature, then a vendor header naming the manufacturer."""
        table = bytearray(b"\xff" * 64)
        table[0:8] = b"SFDP\x06\x01\x01\xff"  # signature, rev 1.6, 2 headers, access protocol
        table[8:16] = bytes([0x00, 0x06, 0x01, 0x10, 0x30, 0x00, 0x00, 0xFF])  # JEDEC basic table
        table[16:24] = bytes([self.jedec[0], 0x00, 0x01, 0x03, 0x60, 0x00, 0x00, 0xFF])  # vendor
        return bytes(table[addr : addr + nbytes]).ljust(nbytes, b"\xff")


class Registers:
    """The address space esptool reads and writes with READ_REG / WRITE_REG."""

    def __init__(self, chip: Chip, mac: bytes, flash: SpiFlash, baud: Callable[[], int]) -> None:
        self.chip = chip
        self.flash = flash
        self._baud = baud
        self._values: dict[int, int] = dict(chip.registers)
        hi, lo = chip.mac_regs
        self._values[hi] = (self._values.get(hi, 0) & 0xFFFF0000) | int.from_bytes(mac[0:2], "big")
        self._values[lo] = int.from_bytes(mac[2:6], "big")
        self._values[CHIP_DETECT_MAGIC_REG] = chip.magic_value
        self.on_watchdog: Callable[[], None] | None = None

    def read(self, addr: int) -> int:
        if addr == self.chip.uart_clkdiv_reg:
            # The ROM auto-bauds: the divider is whatever gives the host's rate.
            return self.chip.uart_clk_hz // max(self._baud(), 1)
        return self._values.get(addr, 0)

    def write(self, addr: int, value: int, mask: int) -> None:
        old = self._values.get(addr, 0)
        self._values[addr] = (old & ~mask | value & mask) & 0xFFFFFFFF
        spi = self.chip.spi
        if addr == spi.cmd and self._values[addr] & SPI_CMD_USR:
            self._spi_command()
            self._values[addr] &= ~SPI_CMD_USR  # done: esptool polls for the bit to clear
        wdt = self.chip.rtc_wdt
        if wdt and addr == wdt[0] and self._values[addr] & wdt[1] and self.on_watchdog:
            self.on_watchdog()

    def _spi_command(self) -> None:
        """Run the 'user command' esptool set up: opcode, optional address, MISO bits to W0."""
        spi = self.chip.spi
        usr = self._values.get(spi.base + spi.usr, 0)
        cmd = self._values.get(spi.base + spi.usr2, 0) & 0xFF
        miso_bits = (self._values.get(spi.base + spi.miso_dlen, 0) + 1) if usr & SPI_USR_MISO else 0
        addr = 0
        if usr & SPI_USR_ADDR:
            alen = ((self._values.get(spi.base + spi.usr1, 0) >> SPI_USR_ADDR_LEN_SHIFT) & 0x3F) + 1
            addr = self._values.get(spi.addr, 0)
            if spi.addr_msb:
                addr >>= 32 - alen
        nbytes = (miso_bits + 7) // 8
        if cmd == 0x9F:  # RDID: manufacturer, memory type, capacity
            out = bytes(self.flash.jedec)
        elif cmd == 0x5A:  # RDSFDP
            out = self.flash.sfdp(addr, max(nbytes, 1))
        elif cmd in (0x05, 0x35, 0x15):  # RDSR/RDSR2/RDSR3: no protection, not busy
            out = b"\x00"
        else:  # WREN, WRSR, reset (0x66/0x99), power-down...: accepted, nothing to read
            out = b""
        word = int.from_bytes(out[:4].ljust(4, b"\x00"), "little")
        if miso_bits and miso_bits < 32:
            word &= (1 << miso_bits) - 1
        self._values[spi.base + spi.w0] = word


class RomBootloader:
    """A DownloadMode for VirtualBoard: the ROM loader, then the stub once it is uploaded."""

    def __init__(self, board: VirtualBoard) -> None:
        self.board = board
        self.chip: Chip = board.board.chip_info
        self.flash = SpiFlash(board.image.path, board.board.flash_size)
        self.regs = Registers(self.chip, board.mac, self.flash, self._host_baud)
        self.regs.on_watchdog = self._watchdog
        self.stub = False
        self.chip_baud: int | None = None  # set by the first SYNC (the ROM auto-bauds)
        self.flash_size = board.board.flash_size  # SPI_SET_PARAMS may change it
        self._write: dict[str, object] | None = None  # FLASH/FLASH_DEFL session
        self._mem: dict[str, object] | None = None
        self._segments: list[tuple[int, int]] = []  # RAM uploaded by MEM_*
        self._slip = SlipDecoder()
        self._q: queue.Queue[bytes | None] = queue.Queue()
        self._closed = False
        self._lock = threading.Lock()  # one writer of responses
        self._thread = threading.Thread(target=self._run, name=f"vb-rom-{board.name}", daemon=True)
        self._thread.start()

    # -- DownloadMode -------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if not self._closed:
            self._q.put(data)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._q.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join(2.0)
        try:
            self.flash.close()
        except OSError:
            pass

    # -- plumbing -----------------------------------------------------------------

    def _host_baud(self) -> int:
        return self.board.host_baud()

    def _frames(self, timeout: float | None = None) -> list[bytes] | None:
        """The next frames from the wire, or None when closed (or [] on timeout)."""
        try:
            data = self._q.get(timeout=timeout)
        except queue.Empty:
            return []
        if data is None or self._closed:
            return None
        if not self._framing_ok():
            return []  # a baud mismatch: the UART sees framing errors, not packets
        return self._slip.feed(data)

    def _framing_ok(self) -> bool:
        if self.chip_baud is None or self.board.native_usb:
            return True  # native USB has no baud rate; before SYNC the ROM auto-bauds
        host = self._host_baud()
        return abs(host - self.chip_baud) <= BAUD_TOLERANCE * self.chip_baud

    def _run(self) -> None:
        try:
            while True:
                frames = self._frames()
                if frames is None:
                    return
                for frame in frames:
                    self._handle(frame)
                    if self._closed:
                        return
        except Exception:  # a bug here must show up, not hang esptool silently
            log.exception("virtual ROM of %s failed", self.board.name)

    def _send(self, payload: bytes) -> None:
        if not self._closed:
            self.board.emit(slip_encode(payload))

    def _reply(self, op: int, value: int = 0, data: bytes = b"", error: int = 0) -> None:
        if self.stub:
            status = bytes([error, 0])  # the stub: (error code, 0)
        else:
            status = bytes([1 if error else 0, error, 0, 0])  # the ROM: (failed, reason, 0, 0)
        body = data + status
        self._send(_HEADER.pack(DIR_RESPONSE, op, len(body), value) + body)

    def _fail(self, op: int, rom_code: int, stub_code: int) -> None:
        self._reply(op, error=stub_code if self.stub else rom_code)

    # -- commands -------------------------------------------------------------------

    def _handle(self, frame: bytes) -> None:
        if len(frame) < _HEADER.size:
            return
        direction, op, size, chk = _HEADER.unpack_from(frame)
        data = frame[_HEADER.size :]
        if direction != DIR_REQUEST:
            return
        if len(data) != size:
            self._fail(op, ROM_INVALID_MSG, STUB_BAD_LEN)
            return
        handler = self._HANDLERS.get(op)
        if handler is None or (op in STUB_ONLY and not self.stub):
            self._fail(op, ROM_INVALID_MSG, STUB_INVALID_CMD)
            return
        if op == GET_SECURITY_INFO and not self.chip.security_info:
            self._fail(op, ROM_INVALID_MSG, STUB_INVALID_CMD)
            return
        if op == READ_FLASH_SLOW and (self.stub or not self.chip.rom_read_flash_slow):
            self._fail(op, ROM_INVALID_MSG, STUB_INVALID_CMD)
            return
        try:
            handler(self, op, data, chk)
        except struct.error:
            self._fail(op, ROM_INVALID_MSG, STUB_BAD_LEN)

    def _sync(self, op: int, data: bytes, chk: int) -> None:
        if data != SYNC_PAYLOAD:
            self._fail(op, ROM_INVALID_MSG, STUB_BAD_LEN)
            return
        if self.chip_baud is None:
            self.chip_baud = self._host_baud()  # auto-baud on the 0x55 pattern
        for _ in range(SYNC_REPLIES):
            self._reply(op, 0 if self.stub else ROM_SYNC_VALUE)

    def _read_reg(self, op: int, data: bytes, chk: int) -> None:
        (addr,) = struct.unpack("<I", data[:4])
        self._reply(op, self.regs.read(addr))

    def _write_reg(self, op: int, data: bytes, chk: int) -> None:
        if len(data) % 16:
            self._fail(op, ROM_INVALID_MSG, STUB_BAD_LEN)
            return
        for pos in range(0, len(data), 16):
            addr, value, mask, delay_us = struct.unpack_from("<IIII", data, pos)
            self.regs.write(addr, value, mask)
            if delay_us:
                time.sleep(min(delay_us, 100_000) / 1e6)
        self._reply(op)

    def _security_info(self, op: int, data: bytes, chk: int) -> None:
        # flags, flash_crypt_cnt, 7 key purposes, chip id, API version: nothing is locked.
        body = struct.pack(
            "<IB7BII", 0, 0, *([0] * 7), self.chip.image_chip_id, self.chip.security_api_version
        )
        self._reply(op, data=body)

    def _spi_attach(self, op: int, data: bytes, chk: int) -> None:
        self._reply(op)

    def _spi_set_params(self, op: int, data: bytes, chk: int) -> None:
        _id, total, _block, _sector, _page, _mask = struct.unpack("<IIIIII", data[:24])
        if not 0 < total <= 64 << 20:
            self._fail(op, ROM_INVALID_PARAM, STUB_BAD_LEN)
            return
        self.flash_size = total
        self._reply(op)

    def _change_baud(self, op: int, data: bytes, chk: int) -> None:
        new, _old = struct.unpack("<II", data[:8])
        if not 300 <= new <= 5_000_000:
            self._fail(op, ROM_INVALID_PARAM, STUB_BAD_LEN)
            return
        self._reply(op)  # sent at the old rate, then the UART switches
        self.chip_baud = new

    # FLASH_BEGIN / FLASH_DEFL_BEGIN: erase up front, then take numbered blocks.
    def _flash_begin(self, op: int, data: bytes, chk: int) -> None:
        words = 5 if (self.stub or self.chip.rom_flash_begin_words == 5) else 4
        if len(data) < 16 or len(data) not in (16, 20) or (len(data) == 20) != (words == 5):
            self._fail(op, ROM_INVALID_MSG, STUB_BAD_LEN)
            return
        size, blocks, block_size, offset = struct.unpack_from("<IIII", data)
        if offset % SECTOR and not self.stub:
            self._fail(op, ROM_INVALID_PARAM, STUB_BAD_LEN)
            return
        if offset + size > self.flash_size or block_size == 0:
            self._fail(op, ROM_INVALID_PARAM, STUB_BAD_BLOCKSIZE)
            return
        self.flash.erase(offset, size)
        self._write = {
            "offset": offset,
            "size": size,
            "block": block_size,
            "seq": 0,
            "pos": offset,
            "inflate": zlib.decompressobj() if op == FLASH_DEFL_BEGIN else None,
        }
        self._reply(op)

    def _flash_data(self, op: int, data: bytes, chk: int) -> None:
        w = self._write
        if w is None or (op == FLASH_DEFL_DATA) != (w["inflate"] is not None):
            self._fail(op, ROM_BAD_RESULT, STUB_NOT_IN_FLASH_MODE)
            return
        length, seq, _a, _b = struct.unpack_from("<IIII", data)
        payload = data[16:]
        if length != len(payload):
            self._fail(op, ROM_INVALID_MSG, STUB_BAD_LEN)
            return
        if checksum(payload) != chk & 0xFF:
            self._fail(op, ROM_CHECKSUM, STUB_BAD_CHECKSUM)
            return
        if seq != w["seq"]:
            self._fail(op, ROM_INVALID_PARAM, STUB_BAD_LEN)
            return
        if w["inflate"] is not None:
            try:
                payload = w["inflate"].decompress(payload)  # type: ignore[union-attr]
            except zlib.error:
                self._fail(op, ROM_DEFLATE, STUB_INFLATE)
                return
        pos = int(w["pos"])  # type: ignore[arg-type]
        end = int(w["offset"]) + int(w["size"])  # type: ignore[arg-type]
        if w["inflate"] is not None and pos + len(payload) > end:
            self._fail(op, ROM_DEFLATE, STUB_TOO_MUCH)
            return
        # A plain FLASH_DATA block is padded to the block size; only what fits is kept.
        payload = payload[: max(0, min(len(payload), self.flash_size - pos))]
        # Program sector by sector, as the chip does: a power cut stops it part-way.
        for at in range(0, len(payload), SECTOR):
            piece = payload[at : at + SECTOR]
            self.flash.program(pos + at, piece)
            hook = self.board.on_flash_write
            if hook is not None:
                hook(pos + at, len(piece))
            if self._closed or not self.board.powered:
                return  # no power: the rest is never written, and a dead chip does not answer
        w["pos"] = pos + len(payload)
        w["seq"] = seq + 1
        self._reply(op)

    def _flash_end(self, op: int, data: bytes, chk: int) -> None:
        (run_user_code,) = struct.unpack("<I", data[:4]) if len(data) >= 4 else (1,)
        self._reply(op)
        if self.stub:
            if not run_user_code:  # "reboot": the stub hands back to the ROM loader
                self.stub = False
            return
        # The ROM leaves the loader: run the app from flash (a CPU reset, no strap re-sample).
        self.board.run_from_flash("sw")

    def _mem_begin(self, op: int, data: bytes, chk: int) -> None:
        size, blocks, block_size, offset = struct.unpack("<IIII", data[:16])
        if not self.chip.in_ram(offset, size):
            self._fail(op, ROM_RAM_ADDR, STUB_BAD_LEN)
            return
        self._mem = {"offset": offset, "size": size, "block": block_size, "seq": 0, "got": 0}
        self._reply(op)

    def _mem_data(self, op: int, data: bytes, chk: int) -> None:
        m = self._mem
        if m is None:
            self._fail(op, ROM_BAD_RESULT, STUB_NOT_IN_FLASH_MODE)
            return
        length, seq, _a, _b = struct.unpack_from("<IIII", data)
        payload = data[16:]
        if length != len(payload) or seq != m["seq"]:
            self._fail(op, ROM_INVALID_MSG, STUB_BAD_LEN)
            return
        if checksum(payload) != chk & 0xFF:
            self._fail(op, ROM_CHECKSUM, STUB_BAD_CHECKSUM)
            return
        m["seq"] = seq + 1
        m["got"] = int(m["got"]) + len(payload)  # type: ignore[arg-type]
        self._reply(op)
        if m["got"] >= m["size"]:
            self._segments.append((int(m["offset"]), int(m["size"])))  # type: ignore[arg-type]

    def _mem_end(self, op: int, data: bytes, chk: int) -> None:
        no_entry, entry = struct.unpack("<II", data[:8])
        self._reply(op)
        if no_entry:
            return
        if any(lo <= entry < lo + size for lo, size in self._segments):
            # Jump into the uploaded code. The only code a virtual ROM can "run" is
            # esptool's flasher stub, so that is what starts now.
            self.stub = True
            self._write = None
            self._send(OHAI)
        else:
            log.warning("virtual ROM: MEM_END entry %#x is outside uploaded code", entry)

    def _md5(self, op: int, data: bytes, chk: int) -> None:
        addr, size, _a, _b = struct.unpack("<IIII", data[:16])
        if addr + size > self.flash.size:
            self._fail(op, ROM_INVALID_PARAM, STUB_FAILED_SPI)
            return
        digest = self.flash.md5(addr, size)
        # The ROM answers 32 hex characters, the stub the 16 raw bytes.
        self._reply(op, data=digest if self.stub else digest.hex().encode())

    def _read_flash_slow(self, op: int, data: bytes, chk: int) -> None:
        offset, length = struct.unpack("<II", data[:8])
        if length > READ_SLOW_BLOCK or offset + length > self.flash.size:
            self._fail(op, ROM_INVALID_PARAM, STUB_BAD_LEN)
            return
        block = self.flash.read(offset, length).ljust(READ_SLOW_BLOCK, b"\xff")
        self._reply(op, data=block)

    def _erase_flash(self, op: int, data: bytes, chk: int) -> None:
        self.flash.erase(0, self.flash.size)
        self._reply(op)

    def _erase_region(self, op: int, data: bytes, chk: int) -> None:
        offset, size = struct.unpack("<II", data[:8])
        if offset % SECTOR or size % SECTOR or offset + size > self.flash.size:
            self._fail(op, ROM_INVALID_PARAM, STUB_BAD_LEN)
            return
        self.flash.erase(offset, size)
        self._reply(op)

    def _read_flash(self, op: int, data: bytes, chk: int) -> None:
        """Stub READ_FLASH: blocks as SLIP frames, at most max_inflight unacked, then the MD5."""
        offset, length, block, inflight = struct.unpack("<IIII", data[:16])
        if offset + length > self.flash.size or not block or not inflight:
            self._fail(op, ROM_INVALID_PARAM, STUB_BAD_LEN)
            return
        self._reply(op)
        md5 = hashlib.md5()
        sent = acked = 0
        deadline = time.monotonic() + READ_ACK_TIMEOUT_S
        while acked < length:
            while sent < length and sent - acked < block * inflight:
                chunk = self.flash.read(offset + sent, min(block, length - sent))
                md5.update(chunk)
                self._send(chunk)
                sent += len(chunk)
            frames = self._frames(timeout=0.5)
            if frames is None:
                return
            for f in frames:
                if len(f) == 4:  # the host's ack: total bytes it has received
                    acked = max(acked, struct.unpack("<I", f)[0])
                    deadline = time.monotonic() + READ_ACK_TIMEOUT_S
            if time.monotonic() > deadline:
                log.warning("virtual stub: read_flash abandoned (no acks)")
                return
        self._send(md5.digest())

    def _watchdog(self) -> None:
        """esptool's watchdog-reset armed the RTC WDT: the chip resets a moment later."""

        def fire() -> None:
            time.sleep(RTC_WDT_DELAY_S)
            if not self._closed:
                self.board.run_from_flash("rtc_wdt")

        threading.Thread(target=fire, daemon=True).start()

    _HANDLERS: dict[int, Callable[[RomBootloader, int, bytes, int], None]] = {
        SYNC: _sync,
        READ_REG: _read_reg,
        WRITE_REG: _write_reg,
        GET_SECURITY_INFO: _security_info,
        SPI_ATTACH: _spi_attach,
        SPI_SET_PARAMS: _spi_set_params,
        CHANGE_BAUDRATE: _change_baud,
        FLASH_BEGIN: _flash_begin,
        FLASH_DATA: _flash_data,
        FLASH_END: _flash_end,
        FLASH_DEFL_BEGIN: _flash_begin,
        FLASH_DEFL_DATA: _flash_data,
        FLASH_DEFL_END: _flash_end,
        MEM_BEGIN: _mem_begin,
        MEM_DATA: _mem_data,
        MEM_END: _mem_end,
        SPI_FLASH_MD5: _md5,
        READ_FLASH_SLOW: _read_flash_slow,
        ERASE_FLASH: _erase_flash,
        ERASE_REGION: _erase_region,
        READ_FLASH: _read_flash,
    }
