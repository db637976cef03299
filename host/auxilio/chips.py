"""ESP32-family chip facts as data: image ids, memory map, ROM registers and boot messages.

One table, used by the flashing tool (image checks, offsets) and by the virtual
board's ROM bootloader (what a chip answers over the serial protocol), in the
way esptool keeps chip differences in its targets/ classes. Register addresses
and field positions are the chips' (TRMs, ESP-IDF's soc/*_reg.h); the values
describe one typical part of each family: an ESP32-D0WD-V3 v3.0, an ESP32-C3
v0.4 and an ESP32-S3 v0.2, each with 40 MHz crystal and no eFuse security set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from auxilio.errors import NotFoundError

# Register the ROM maps a per-model magic number at (esptool CHIP_DETECT_MAGIC_REG_ADDR).
CHIP_DETECT_MAGIC_REG = 0x40001000
ESP_IMAGE_MAGIC = 0xE9  # first byte of every ESP32 bootloader and app image
ESP_CHECKSUM_MAGIC = 0xEF  # initial state of the image / protocol XOR checksum
PARTITION_TABLE_OFFSET = 0x8000  # CONFIG_PARTITION_TABLE_OFFSET, the same on every chip


@dataclass(frozen=True)
class SpiRegs:
    """The SPI0/1 'user command' registers esptool drives for raw flash commands."""

    base: int
    usr: int  # SPI_USER_REG offset
    usr1: int  # SPI_USER1_REG offset
    usr2: int  # SPI_USER2_REG offset (command byte in the low bits)
    mosi_dlen: int
    miso_dlen: int
    w0: int  # first data buffer word
    addr_msb: bool  # the ESP32 sends the address from the register's MSB

    @property
    def cmd(self) -> int:
        return self.base  # SPI_CMD_REG at offset 0

    @property
    def addr(self) -> int:
        return self.base + 0x04  # SPI_ADDR_REG


@dataclass(frozen=True)
class Chip:
    """One chip family: what tools check in images and what its ROM answers."""

    name: str  # esptool --chip name
    title: str  # esptool CHIP_NAME, as printed ("ESP32-C3")
    image_chip_id: int  # esp_image_header_t.chip_id
    bootloader_offset: int  # where the ROM loads the 2nd-stage bootloader from
    magic_value: int  # read at CHIP_DETECT_MAGIC_REG
    drom: tuple[int, int]  # flash-mapped data (rodata) window
    irom: tuple[int, int]  # flash-mapped code window
    dram: tuple[int, int]  # internal data RAM (stub .data/.bss, MEM_BEGIN targets)
    iram: tuple[int, int]  # internal instruction RAM
    spi: SpiRegs
    mac_regs: tuple[int, int]  # (word with MAC bytes 0..1 in bits 15..0, word with bytes 2..5)
    registers: dict[int, int]  # fixed register values (eFuse revision/package/calibration)
    uart_clkdiv_reg: int  # UART0 clock divider: the ROM auto-bauds onto it
    uart_clk_hz: int  # UART clock the divider divides (APB = crystal in the ROM)
    security_info: bool  # GET_SECURITY_INFO (0x14) exists in this ROM
    security_api_version: int
    rom_flash_begin_words: int  # ESP32's ROM takes 4 FLASH_BEGIN words, later ROMs 5
    rom_read_flash_slow: bool  # READ_FLASH_SLOW (0x0E) exists in this ROM
    rtc_wdt: tuple[int, int] | None  # (RTC_CNTL_WDTCONFIG0_REG, enable bit) for watchdog-reset
    rom_banner: str  # printed on every reset, before the reset reason
    reset_reasons: dict[str, str]  # cause -> "rst:" field
    boot_flash: str  # "boot:" field for SPI flash boot
    boot_download: str  # "boot:" field for the serial download mode
    load_line: str  # how the ROM reports each bootloader segment it loads
    pre_load_lines: tuple[str, ...] = ()
    usb_serial_jtag: bool = False  # has the native USB-Serial-JTAG peripheral
    extra: dict[str, int] = field(default_factory=dict)

    def in_ram(self, addr: int, size: int) -> bool:
        """True when [addr, addr+size) lies in this chip's internal RAM (MEM_BEGIN's check)."""
        end = addr + size
        return any(lo <= addr and end <= hi for lo, hi in (self.dram, self.iram))

    def rst_line(self, cause: str, download: bool) -> str:
        boot = self.boot_download if download else self.boot_flash
        return f"rst:{self.reset_reasons.get(cause, self.reset_reasons['power_on'])},boot:{boot}"


_ESP32_EFUSE = 0x3FF5A000  # EFUSE_BLK0_RDATA0_REG
# What the newer chips (C3, S3) have in common, as esptool's targets inherit it.
_NEWER: dict[str, Any] = {
    "bootloader_offset": 0x0,
    "spi": SpiRegs(0x60002000, 0x18, 0x1C, 0x20, 0x24, 0x28, 0x58, False),
    "uart_clkdiv_reg": 0x60000014,
    "uart_clk_hz": 40_000_000,
    "security_info": True,
    "security_api_version": 3,
    "rom_flash_begin_words": 5,
    "rom_read_flash_slow": False,
    "reset_reasons": {
        "power_on": "0x1 (POWERON)",
        "usb": "0x15 (USB_UART_CHIP_RESET)",
        "rtc_wdt": "0x10 (RTCWDT_RTC_RST)",
        "sw": "0xc (RTC_SW_CPU_RST)",
    },
    "load_line": "load:0x{addr:08x},len:0x{size:x}",
    "pre_load_lines": ("SPIWP:0xee", "mode:DIO, clock div:1"),
    "usb_serial_jtag": True,
}
_C3_EFUSE = 0x60008800
_S3_EFUSE = 0x60007000

CHIPS: dict[str, Chip] = {
    "esp32": Chip(
        name="esp32",
        title="ESP32",
        image_chip_id=0,
        bootloader_offset=0x1000,  # the ESP32 ROM reads the bootloader at 4 KB
        magic_value=0x00F01D83,
        drom=(0x3F400000, 0x3F800000),
        irom=(0x400D0000, 0x40400000),
        dram=(0x3FFAE000, 0x40000000),
        iram=(0x40080000, 0x400C0000),
        spi=SpiRegs(0x3FF42000, 0x1C, 0x20, 0x24, 0x28, 0x2C, 0x80, True),
        mac_regs=(_ESP32_EFUSE + 0x08, _ESP32_EFUSE + 0x04),  # BLK0 words 2 and 1
        registers={
            # word 3: package 1 (D0WD, bits 11..9) and revision bit 0 (bit 15)
            _ESP32_EFUSE + 0x0C: (1 << 9) | (1 << 15),
            # word 4: CK8M_FREQ = 100 (bits 7..0): with RTCCALICFG1 below, 40 MHz
            _ESP32_EFUSE + 0x10: 100,
            # word 5: revision bit 1 (bit 20); minor revision 0 (bits 25..24)
            _ESP32_EFUSE + 0x14: 1 << 20,
            # APB_CTL_DATE: bit 31 is revision bit 2 (so v3.0 overall)
            0x3FF6607C: 0x96042000,
            # RTCCALICFG1: calibration value 1024 (bits 31..7) -> 40 MHz crystal estimate
            0x3FF5F06C: 1024 << 7,
        },
        uart_clkdiv_reg=0x3FF40014,
        uart_clk_hz=40_000_000,
        security_info=False,
        security_api_version=0,
        rom_flash_begin_words=4,
        rom_read_flash_slow=True,
        rtc_wdt=None,
        rom_banner="ets Jun  8 2016 00:22:57\r\n\r\n",
        reset_reasons={
            "power_on": "0x1 (POWERON_RESET)",
            "rtc_wdt": "0x10 (RTCWDT_RTC_RESET)",
            "sw": "0xc (SW_CPU_RESET)",
        },
        boot_flash="0x13 (SPI_FAST_FLASH_BOOT)",
        boot_download="0x3 (DOWNLOAD_BOOT(UART0/UART1/SDIO_REI_REO_V2))",
        load_line="load:0x{addr:08x},len:{size}",
        pre_load_lines=(
            "configsip: 0, SPIWP:0xee",
            "clk_drv:0x00,q_drv:0x00,d_drv:0x00,cs0_drv:0x00,hd_drv:0x00,wp_drv:0x00",
            "mode:DIO, clock div:2",
        ),
    ),
    "esp32c3": Chip(
        **_NEWER,
        name="esp32c3",
        title="ESP32-C3",
        image_chip_id=5,
        magic_value=0x1B31506F,  # ECO3 and later
        drom=(0x3C000000, 0x3C800000),
        irom=(0x42000000, 0x42800000),
        dram=(0x3FC80000, 0x3FCE0000),
        iram=(0x4037C000, 0x403E0000),
        mac_regs=(_C3_EFUSE + 0x48, _C3_EFUSE + 0x44),  # EFUSE_RD_MAC_SPI_SYS_1/_0
        registers={
            # BLOCK1 word 3: minor revision low bits = 4 (bits 20..18), package 0
            _C3_EFUSE + 0x44 + 12: 4 << 18,
        },
        rtc_wdt=(0x60008000 + 0x90, 1 << 31),
        rom_banner="ESP-ROM:esp32c3-api1-20210207\r\nBuild:Feb  7 2021\r\n",
        boot_flash="0xc (SPI_FAST_FLASH_BOOT)",
        boot_download="0x4 (DOWNLOAD(USB/UART0/1))",
    ),
    "esp32s3": Chip(
        **_NEWER,
        name="esp32s3",
        title="ESP32-S3",
        image_chip_id=9,
        magic_value=0x00000009,
        drom=(0x3C000000, 0x3E000000),
        irom=(0x42000000, 0x44000000),
        dram=(0x3FC88000, 0x3FD00000),
        iram=(0x40370000, 0x403E0000),
        mac_regs=(_S3_EFUSE + 0x48, _S3_EFUSE + 0x44),
        registers={
            # BLOCK1 word 3: minor revision low bits = 2 (20..18), block minor 1 (26..24)
            _S3_EFUSE + 0x44 + 12: (2 << 18) | (1 << 24),
            # BLOCK2 word 4: block major version 1 (bits 1..0)
            _S3_EFUSE + 0x5C + 16: 1,
        },
        rtc_wdt=(0x60008000 + 0x98, 1 << 31),
        rom_banner="ESP-ROM:esp32s3-20210327\r\nBuild:Mar 27 2021\r\n",
        boot_flash="0x8 (SPI_FAST_FLASH_BOOT)",
        boot_download="0x0 (DOWNLOAD(USB/UART0))",
    ),
}

BY_IMAGE_ID = {c.image_chip_id: c for c in CHIPS.values()}


def get_chip(name: str) -> Chip:
    """The chip named like esptool's --chip ("esp32c3", "ESP32-C3" also accepted)."""
    key = name.lower().replace("-", "")
    if key not in CHIPS:
        raise NotFoundError(f"unknown chip {name!r} (known: {', '.join(sorted(CHIPS))})")
    return CHIPS[key]


def chip_title(image_chip_id: int) -> str:
    """A printable chip name for an image chip id, known or not."""
    chip = BY_IMAGE_ID.get(image_chip_id)
    return chip.title if chip else f"chip id {image_chip_id}"
