"""`auxilio deploy`: install the application (the .mpy build + board.json) on a board running MicroPython.

The build is `make firmware`'s (auxilio.build: mpy-cross over firmware/ and
the codec); board.json is the board file's device copy. One mpremote exec
asks the board for the sha256 of every file it should hold; only files whose
hash differs are copied (a second deploy copies nothing), stale `.py`
sources that would shadow a deployed `.mpy` are removed (MicroPython imports
`x.py` before `x.mpy`), and a second exec checks every hash again. Then an EN
pulse starts the firmware. For a MicroPython with the app frozen in
(firmware/manifest.py) only main.py and board.json are installed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from auxilio import build as fw_build
from auxilio.boards import Board
from auxilio.errors import AuxilioError
from auxilio.flash import mpremote
from auxilio.flash.link import pulse_reset

log = logging.getLogger(__name__)

# Board-side (MicroPython): the sha256 of a file in hex, None when it is not there.
# Shared with the provisioning scripts (auxilio.provision.writer).
BOARD_SHA256 = """
def _h(p):
    try:
        s = hashlib.sha256()
        with open(p, 'rb') as f:
            while True:
                b = f.read(1024)
                if not b:
                    break
                s.update(b)
        return binascii.hexlify(s.digest()).decode()
    except OSError:
        return None
"""
MARK = "AUXDEPLOY "  # prefix of the one JSON line the device-side script prints
# Runs on the board (MicroPython): hash the listed files, say which dirs exist.
_DEVICE_SCRIPT = (
    """
import os, json, hashlib, binascii
"""
    + BOARD_SHA256
    + """
def _d(p):
    try:
        return os.stat(p)[0] & 0x4000 != 0
    except OSError:
        return False
print('AUXDEPLOY ' + json.dumps({'files': {p: _h(p) for p in %(files)r}, 'dirs': [d for d in %(dirs)r if _d(d)]}))
"""
)


class DeployError(AuxilioError):
    """The application could not be installed or verified on a board."""


@dataclass
class DeployResult:
    copied: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # device path -> sha256 after deploy


@dataclass
class AppBundle:
    """The files to deploy (device path -> host file, their sha256) and what must not stay."""

    root: Path
    files: dict[str, Path]
    sha256: dict[str, str]
    shadows: list[str] = field(default_factory=list)  # removed from the board when present

    @property
    def dirs(self) -> list[str]:
        return sorted({str(Path(p).parent) for p in self.files if "/" in p})


def bundle(board: Board, out: Path, frozen: bool = False) -> AppBundle:
    """Build the firmware into `out` and add board.json (the device copy of the board file).

    `frozen`: the board runs a MicroPython with the app frozen in (firmware/manifest.py);
    only main.py and board.json go on the filesystem, and any module file there
    is removed (the filesystem comes before .frozen on sys.path, so it would win).
    """
    built = fw_build.build(out)
    files = {b.name: out / b.name for b in built}
    modules = sorted(n for n in files if n.endswith(".mpy"))
    if frozen:
        files = {n: p for n, p in files.items() if n in fw_build.SOURCE_ONLY}
        shadows = modules + [m[: -len(".mpy")] + ".py" for m in modules]
    else:
        # MicroPython imports x.py before x.mpy: a stale source would shadow the build.
        shadows = [m[: -len(".mpy")] + ".py" for m in modules]
    board_json = out / "board.json"
    board_json.write_text(json.dumps(board.device_data(), separators=(",", ":")))
    files["board.json"] = board_json
    sha = {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in files.items()}
    return AppBundle(out, files, sha, [s for s in shadows if s not in files])


def device_hashes(
    url: str, paths: list[str], dirs: list[str], cancel: threading.Event | None = None
) -> dict:
    script = _DEVICE_SCRIPT % {"files": paths, "dirs": dirs}
    out = mpremote.run(url, ["exec", script], cancel=cancel)
    for line in out.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK) :])
    raise DeployError(f"the board on {url} did not answer the file check (is MicroPython running?)")


def device_board_name(url: str, cancel: threading.Event | None = None) -> str:
    """The board name in the device's board.json (for `auxilio deploy` without --board)."""
    out = mpremote.run(
        url,
        [
            "exec",
            "import json\ntry:\n print('AUXDEPLOY '+json.dumps(json.load(open('board.json')).get('name')))\nexcept Exception:\n print('AUXDEPLOY null')",
        ],
        cancel=cancel,
    )
    for line in out.splitlines():
        if line.startswith(MARK):
            name = json.loads(line[len(MARK) :])
            if name:
                return str(name)
    raise DeployError(f"the board on {url} has no board.json yet: give --board NAME")


def deploy(
    url: str,
    board: Board,
    app: AppBundle | None = None,
    *,
    cancel: threading.Event | None = None,
    reset: bool = True,
    frozen: bool = False,
) -> DeployResult:
    """Install `app` (default: a fresh build for `board`) on the board at `url`."""
    if app is None:
        with tempfile.TemporaryDirectory(prefix="auxilio-deploy-") as tmp:
            return deploy(url, board, bundle(board, Path(tmp), frozen), cancel=cancel, reset=reset)
    shadows = app.shadows
    state = device_hashes(url, sorted(app.files) + shadows, app.dirs, cancel)
    have = state.get("files", {})
    result = DeployResult()
    todo = []
    for name in sorted(app.files):
        if have.get(name) == app.sha256[name]:
            result.unchanged.append(name)
        else:
            todo.append(name)
    result.removed = [s for s in shadows if have.get(s)]
    commands: list[list[str]] = []
    for d in app.dirs:
        if d not in state.get("dirs", []):
            commands.append(["fs", "mkdir", f":{d}"])
    for name in result.removed:
        commands.append(["fs", "rm", f":{name}"])
    for name in todo:
        commands.append(["fs", "cp", str(app.files[name]), f":{name}"])
    if commands:
        mpremote.run(url, ["resume", *mpremote.chain(*commands)], cancel=cancel)
    result.copied = todo
    if todo or result.removed:
        after = device_hashes(url, sorted(app.files), [], cancel).get("files", {})
        bad = [n for n in app.files if after.get(n) != app.sha256[n]]
        if bad:
            raise DeployError(
                f"{len(bad)} files differ on the board after copying (first: {bad[0]})"
            )
        result.files = {n: after[n] for n in app.files}
    else:
        result.files = {n: have[n] for n in app.files}
    log.info("deploy to %s: %d copied, %d unchanged", url, len(todo), len(result.unchanged))
    if reset:
        pulse_reset(url)  # mpremote stopped main.py; an EN pulse starts the firmware
    return result
