"""Writing a device: a root directory on the host, or a board's filesystem over its raw REPL.

A root holds what a flashed board's filesystem holds: `config.json` (mode
0600: it carries the secret), `board.json` (the board file without its
host-only sections), `data/`, optionally the firmware. `app.run_fleet([root,
...])` runs one Device per root (the demo, fleet mode, the tests).

Over serial (mpremote's command line, its stable interface), config.json is
written atomically: the bytes go to `config.json.tmp` (copied from a 0600
host file, never on a command line), the board hashes them, and only a
matching hash renames the file over `config.json` (LittleFS renames are
atomic); the final file's hash is read back. A board reports only the
non-secret fields of its config (`DEVICE_FIELDS`), never the secret.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from auxilio.boards import Board, load_board
from auxilio.build import HOST_ONLY, PROTOCOL_MODULES
from auxilio.errors import AuxilioError, ConnectionFailed, UsageError
from auxilio.flash.deploy import BOARD_SHA256
from auxilio.paths import find_micropython, firmware_dir, protocol_dir
from auxilio.private import write_private

# Files of a firmware tree that go onto the device (sources or mpy-cross output).
FIRMWARE_SUFFIXES = (".py", ".mpy")
# Entry points a root run by app.run_fleet does without (the runner script replaces them).
ENTRY_POINTS = ("main.py", "main.mpy", "boot.py")
CONFIG = "config.json"
CONFIG_TMP = "config.json.tmp"
# A new identity on its way into config.json (a key rotation, auxilio.provision.rotate).
CONFIG_KEY = "config.json.key"
# Where a pinned CA goes on the device (DER: this MicroPython's mbedTLS takes DER only).
CA_FILE = "ca.der"
MARK = "AUXPROV "  # prefix of the one JSON line each board-side script prints
# The fields of a board's config.json it reports (never the secret or the password).
DEVICE_FIELDS = ("device", "role", "key_epoch", "key_id", "counter_floor", "prefix")
# mpremote over RFC 2217 needs about a second to connect; a busy machine more.
SERIAL_TIMEOUT_S = 60.0

# Runs on the board: who it is (MAC, MicroPython) and what config it holds.
_IDENTIFY = (
    """
import sys, json, hashlib, binascii
"""
    + BOARD_SHA256
    + """
r = {'impl': sys.implementation.name, 'version': '.'.join(str(x) for x in sys.implementation.version[:3])}
try:
    import machine
    r['mac'] = ':'.join('%%02x' %% b for b in machine.unique_id())
except Exception:
    r['mac'] = None
def _fields(p):
    try:
        with open(p) as f:
            c = json.load(f)
        return {k: c.get(k) for k in %(fields)r} if isinstance(c, dict) else None
    except Exception:
        return None
r['sha256'] = _h('config.json')
r['tmp_sha256'] = _h('config.json.tmp')
r['tmp'] = r['tmp_sha256'] is not None
r['config'] = _fields('config.json') if r['sha256'] else None
r['staged'] = _fields('config.json.tmp') if r['tmp'] else None
r['board'] = None
try:
    with open('board.json') as f:
        r['board'] = json.load(f).get('name')
except Exception:
    pass
print('AUXPROV ' + json.dumps(r))
"""
)
# Runs on the board after the copy: rename only a temp file whose hash is the host's.
_COMMIT = (
    """
import os, json, hashlib, binascii
"""
    + BOARD_SHA256
    + """
got = _h('config.json.tmp')
ok = got == %(want)r
if ok:
    os.rename('config.json.tmp', 'config.json')
    got = _h('config.json')
elif got is not None:
    os.remove('config.json.tmp')
print('AUXPROV ' + json.dumps({'ok': ok and got == %(want)r, 'sha256': got}))
"""
)
# Runs on the board: config.json with the identity fields of config.json.key (copied from
# a 0600 host file) put over it, as config.json.tmp; the key file goes. Reports the temp
# file's hash, its DEVICE_FIELDS and a digest of the secret and password it now holds
# (so the host checks them without the board ever printing a secret).
_STAGE = (
    """
import os, json, hashlib, binascii
"""
    + BOARD_SHA256
    + """
r = {'ok': False}
try:
    with open('config.json') as f:
        c = json.load(f)
    with open('config.json.key') as f:
        k = json.load(f)
    c.update(k)
    k = None
    with open('config.json.tmp', 'w') as f:
        f.write(json.dumps(c))
    c = None
    with open('config.json.tmp') as f:
        t = json.load(f)
    s = hashlib.sha256(('%%s|%%s' %% (t.get('secret'), t.get('password'))).encode())
    r = {'ok': True, 'sha256': _h('config.json.tmp'), 'identity': binascii.hexlify(s.digest()).decode(),
         'config': {n: t.get(n) for n in %(fields)r}}
    t = None
except Exception as e:
    r['why'] = type(e).__name__
try:
    os.remove('config.json.key')
except OSError:
    pass
print('AUXPROV ' + json.dumps(r))
"""
)
_REMOVE = """
import os, json
gone = []
for p in %(paths)r:
    try:
        os.remove(p)
        gone.append(p)
    except OSError:
        pass
print('AUXPROV ' + json.dumps({'removed': gone}))
"""


class DeviceWriteError(AuxilioError):
    """A board did not take its config (hash mismatch, no MicroPython, gone)."""


# ------------------------------------------------------------ roots (host dirs) ---


def firmware_files(fw: str | os.PathLike[str] | None = None) -> dict[str, bytes | Path]:
    """Device path -> host file for the firmware tree plus the codec, as deployed on a board."""
    fw = Path(fw) if fw else firmware_dir()
    if not (fw / "main.py").exists() and not (fw / "main.mpy").exists():
        raise UsageError(f"{fw} is not a firmware tree (no main.py)")
    files: dict[str, bytes | Path] = {}
    for path in sorted(fw.rglob("*")):
        if path.is_file() and path.suffix in FIRMWARE_SUFFIXES and "__pycache__" not in path.parts:
            rel = path.relative_to(fw).as_posix()
            if rel not in HOST_ONLY:
                files[rel] = path
    for name in PROTOCOL_MODULES:
        if name not in files and name.replace(".py", ".mpy") not in files:
            files[name] = protocol_dir() / name
    return files


def copy_firmware(dest: str | os.PathLike[str], fw: str | os.PathLike[str] | None = None) -> Path:
    """The firmware tree (without its entry points) into `dest`, for app.run_fleet."""
    d = Path(dest)
    for name, src in firmware_files(fw).items():
        if name in ENTRY_POINTS:
            continue
        target = d / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(src, Path):
            shutil.copyfile(src, target)
        else:
            target.write_bytes(src)
    return d


def board_data(board: Board | str | dict[str, Any]) -> dict[str, Any]:
    """The device copy of a board file (a name, a Board, or already the data)."""
    if isinstance(board, str):
        board = load_board(board)
    return board.device_data() if isinstance(board, Board) else board


def config_bytes(config: dict[str, Any]) -> bytes:
    """config.json as written everywhere (one form, so one hash)."""
    return json.dumps(config, separators=(",", ":")).encode()


def write_root(
    root: str | os.PathLike[str],
    config: dict[str, Any],
    board: Board | str | dict[str, Any],
    *,
    firmware: bool | str | os.PathLike[str] = False,
    files: dict[str, bytes] | None = None,
) -> Path:
    """Write (or refresh) a root: config.json (0600), board.json, data/; `data/` is kept.

    ``firmware``: True copies the bundled firmware into the root (so the root
    alone is a sys.path entry), a path copies that tree; False leaves the
    firmware to a shared directory on sys.path (fleet mode). ``files``: more
    device files (modem.json, a CA).
    """
    r = Path(root)
    (r / "data").mkdir(parents=True, exist_ok=True)
    if firmware:
        copy_firmware(r, None if firmware is True else firmware)
    (r / "board.json").write_text(json.dumps(board_data(board)))
    for name, blob in (files or {}).items():
        (r / name).write_bytes(blob)
    write_private(r / CONFIG, config_bytes(config))
    return r


def micropython_with_firmware() -> str | None:
    """The micropython binary when it and the firmware sources are both here, else None."""
    mp = find_micropython()
    if mp and (firmware_dir() / "app.py").exists():
        return mp
    return None


# ------------------------------------------------------------------ over serial ---


@dataclass(frozen=True)
class DeviceState:
    """What a board says about itself: chip MAC, MicroPython, the config it holds (no secret)."""

    mac: str | None
    micropython: str
    config: dict[str, Any] | None  # DEVICE_FIELDS of a readable config.json, else None
    sha256: str | None  # of config.json, None when there is none
    half_written: bool  # a config.json.tmp is left over (an interrupted write)
    board: str | None = None  # the name in the board's board.json (deployed by `auxilio flash`)
    staged: dict[str, Any] | None = None  # DEVICE_FIELDS of a readable config.json.tmp
    staged_sha256: str | None = None  # of config.json.tmp, None when there is none

    @property
    def corrupt(self) -> bool:
        """A config.json that is there but unreadable (not JSON, not an object)."""
        return self.sha256 is not None and self.config is None

    @property
    def device(self) -> str | None:
        return (self.config or {}).get("device")


def _mark(out: str, url: str) -> dict[str, Any]:
    for line in out.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK) :])
    raise DeviceWriteError(f"the board on {url} did not answer (is MicroPython running on it?)")


def _mpremote(url: str, args: list[str], cancel: threading.Event | None) -> str:
    from auxilio.flash import mpremote

    try:
        return mpremote.run(url, args, timeout=SERIAL_TIMEOUT_S, cancel=cancel)
    except mpremote.MpremoteError as exc:
        raise ConnectionFailed(
            f"no MicroPython REPL on {url}: {str(exc).split(': ', 1)[-1]}"
        ) from None


def read_device(url: str, cancel: threading.Event | None = None) -> DeviceState:
    """Ask the board at `url` its MAC, MicroPython version and config (raw REPL; stops main.py)."""
    out = _mpremote(url, ["exec", _IDENTIFY % {"fields": DEVICE_FIELDS}], cancel)
    r = _mark(out, url)
    if r.get("impl") != "micropython":
        raise DeviceWriteError(f"the board on {url} does not run MicroPython")
    return DeviceState(
        mac=r.get("mac"),
        micropython=str(r.get("version")),
        config=r.get("config"),
        sha256=r.get("sha256"),
        half_written=bool(r.get("tmp")),
        board=r.get("board"),
        staged=r.get("staged"),
        staged_sha256=r.get("tmp_sha256"),
    )


def write_config(
    url: str,
    config: dict[str, Any],
    files: dict[str, bytes] | None = None,
    *,
    cancel: threading.Event | None = None,
    stop_after_copy: bool = False,
) -> str:
    """Write config.json atomically (temp file, hash check, rename); returns its sha256.

    ``files``: other device files written first (a CA); not secret.
    ``stop_after_copy``: leave the temp file unrenamed (the crash tests' half-written board).
    """
    data = config_bytes(config)
    want = hashlib.sha256(data).hexdigest()
    with tempfile.TemporaryDirectory(prefix="auxilio-prov-") as tmp:  # 0700
        local = Path(tmp) / CONFIG
        write_private(local, data)
        cmds: list[list[str]] = []
        for name, blob in (files or {}).items():
            p = Path(tmp) / f"file-{len(cmds)}"
            p.write_bytes(blob)
            cmds.append(["fs", "cp", str(p), f":{name}"])
        cmds.append(["fs", "cp", str(local), f":{CONFIG_TMP}"])
        if not stop_after_copy:
            cmds.append(["exec", _COMMIT % {"want": want}])
        from auxilio.flash.mpremote import chain

        out = _mpremote(url, chain(*cmds), cancel)
    if stop_after_copy:
        return want
    r = _mark(out, url)
    if not r.get("ok"):
        raise DeviceWriteError(
            f"config.json on {url} does not read back as written (sha256 {r.get('sha256')}); "
            "nothing was changed on the board"
        )
    return str(r["sha256"])


def identity_digest(secret_hex: str, password: str | None) -> str:
    """What the board's stage script reports for the secret and password it holds."""
    return hashlib.sha256(f"{secret_hex}|{password}".encode()).hexdigest()


@dataclass(frozen=True)
class Staged:
    """A config.json.tmp the board wrote from its config and a new identity (not yet renamed)."""

    sha256: str
    config: dict[str, Any]  # its DEVICE_FIELDS
    identity: str  # identity_digest of its secret and password


def stage_identity(
    url: str, fields: dict[str, Any], cancel: threading.Event | None = None
) -> Staged:
    """config.json with these identity fields put over it, as config.json.tmp (not renamed).

    Every other key (broker, Wi-Fi, role, intervals) stays as the board has it; the
    new fields travel in a 0600 host file, never on a command line.
    """
    with tempfile.TemporaryDirectory(prefix="auxilio-prov-") as tmp:  # 0700
        local = Path(tmp) / CONFIG_KEY
        write_private(local, json.dumps(fields).encode())
        from auxilio.flash.mpremote import chain

        out = _mpremote(
            url,
            chain(
                ["fs", "cp", str(local), f":{CONFIG_KEY}"],
                ["exec", _STAGE % {"fields": DEVICE_FIELDS}],
            ),
            cancel,
        )
    r = _mark(out, url)
    if not r.get("ok"):
        raise DeviceWriteError(
            f"the board on {url} could not stage its new config ({r.get('why')}); "
            "its config.json is unchanged"
        )
    return Staged(str(r["sha256"]), dict(r["config"]), str(r["identity"]))


def commit_staged(url: str, sha256: str, cancel: threading.Event | None = None) -> str:
    """Rename config.json.tmp over config.json if its hash is ``sha256``; the final hash."""
    out = _mpremote(url, ["exec", _COMMIT % {"want": sha256}], cancel)
    r = _mark(out, url)
    if not r.get("ok"):
        raise DeviceWriteError(
            f"the staged config.json on {url} does not read back as written "
            f"(sha256 {r.get('sha256')}); config.json is unchanged"
        )
    return str(r["sha256"])


def remove_config(url: str, cancel: threading.Event | None = None) -> list[str]:
    """Take config.json (and any temp copy) off the board: a rolled-back provisioning."""
    out = _mpremote(url, ["exec", _REMOVE % {"paths": [CONFIG, CONFIG_TMP]}], cancel)
    return list(_mark(out, url).get("removed", []))


def reboot(url: str) -> None:
    """A hard reset through the auto-reset circuit: the firmware starts with its new config."""
    from auxilio.flash.link import pulse_reset

    pulse_reset(url)
