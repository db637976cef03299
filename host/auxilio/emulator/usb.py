"""Virtual boards on a virtual USB bus: each running board publishes its port like udev would.

A board started with `advertise=True` writes one JSON file per port under
runtime_dir()/usb/ (its pty, its rfc2217:// URL, the USB VID/PID, serial
number, manufacturer and product strings its board data gives), and removes
it when it closes. `auxilio ports` and `auxilio flash --all` list these next
to the machine's real serial ports. A file whose owner process is gone is
stale and ignored (and removed).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from auxilio.paths import runtime_dir
from auxilio.private import private_dir, write_private

log = logging.getLogger(__name__)


@dataclass
class VirtualPort:
    """What one virtual board exposes on the bus."""

    name: str  # the board instance name
    board: str  # its board definition (not visible to real USB; kept for messages)
    device: str  # the pty path tools open
    url: str | None  # rfc2217:// URL (carries DTR/RTS; what esptool needs)
    vid: int
    pid: int
    serial: str
    manufacturer: str
    product: str
    owner: int  # pid of the process running the board


def usb_dir() -> Path:
    return runtime_dir() / "usb"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def publish(port: VirtualPort) -> Path:
    path = private_dir(usb_dir()) / f"{port.name}.json"
    write_private(path, json.dumps(asdict(port)))  # atomic: `auxilio ports` never reads half
    return path


def withdraw(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def virtual_ports() -> list[VirtualPort]:
    """Every virtual board currently plugged in (stale entries are dropped)."""
    d = usb_dir()
    out: list[VirtualPort] = []
    if not d.is_dir():
        return out
    for path in sorted(d.glob("*.json")):
        try:
            port = VirtualPort(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            continue
        if not _alive(port.owner) or not os.path.exists(port.device):
            log.info("dropping stale virtual port %s", path)
            withdraw(path)
            continue
        out.append(port)
    return out
