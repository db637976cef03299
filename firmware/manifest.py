# MicroPython manifest: Auxilio frozen into an ESP32 build (bytecode runs from flash, not heap).
# ruff: noqa: F821 - include(), module() and package() are makemanifest.py's
#
# Frozen modules execute in place from the firmware image, so importing them
# costs almost no heap: what a 100 KB ESP32 needs (see the README, "Flashing").
# With ESP-IDF set up and a MicroPython checkout at $MPY (v1.24 or later):
#
#   cd $MPY/ports/esp32
#   make BOARD=ESP32_GENERIC FROZEN_MANIFEST=/path/to/auxilio/firmware/manifest.py
#   auxilio flash --board devkit-esp32 --firmware build-ESP32_GENERIC/firmware.bin --frozen --all
#
# (BOARD=ESP32_GENERIC_C3 / ESP32_GENERIC_S3 for the other chips.) main.py is
# not frozen: the ESP32 port runs main.py from the filesystem, and `auxilio
# deploy --frozen` installs only main.py and board.json. This file is executed
# by MicroPython's tools/makemanifest.py, not on a device.

include("$(PORT_DIR)/boards/manifest.py")  # the port's own frozen modules (_boot, asyncio, ...)

module("auxcodec.py", base_path="../protocol")  # the one codec (protocol/auxcodec.py)
module("auxsms.py", base_path="../protocol")  # SMS bodies (SPEC §10.4), LTE boards
for _name in (
    "app",
    "at",
    "config",
    "counter_store",
    "device",
    "feedback",
    "gesture",
    "modem",
    "mqtt",
    "outbox",
    "power",
    "selftest",
    "session",
    "supervision",
    "transport",
    "wifi",
):
    module(_name + ".py")
package("hal")
