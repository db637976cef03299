"""32-bit heap figures: the firmware's import footprint and steady state on a 32-bit MicroPython.

The virtual boards run the 64-bit unix port, where every object and all
imported bytecode take more heap than on an ESP32. The WebAssembly port
(npm @micropython/micropython-webassembly-pyscript, run with node) is a
32-bit MicroPython: its figures are the ones an ESP32 pays. The same script
runs on the unix port in the same run, as the baseline. The npm package is
installed into build/npm on first use; without node or npm the figures say
why they are missing instead of failing (`make test` never needs npm).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from auxilio.boards import load_board
from auxilio.build import build
from auxilio.paths import find_micropython, repo_root
from auxilio.provision.config import new_config

NPM_PACKAGE = "@micropython/micropython-webassembly-pyscript"
NPM_VERSION = "1.27.0"  # 32-bit, loads mpy-cross 1.29's .mpy (v6.3); runs on node 20
HERE = Path(__file__).with_name("wasm32")
FAKE_ESP32 = Path(__file__).resolve().parent.parent / "firmware" / "fake_esp32"
BOARD = "bracelet-c3"
# A plain ESP32 (no PSRAM) starts MicroPython with about this much heap (NOTES.md).
ESP32_HEAP_REFERENCE = 100 * 1024
RUN_TIMEOUT_S = 120


def _npm_dir() -> Path:
    return repo_root() / "build" / "npm"


def _package() -> tuple[Path | None, str]:
    """micropython.mjs of the pinned package (installing it once), or the reason it is missing."""
    mjs = _npm_dir() / "node_modules" / NPM_PACKAGE / "micropython.mjs"
    if mjs.is_file():
        return mjs, ""
    npm = shutil.which("npm")
    if not npm:
        return None, "npm is not installed"
    _npm_dir().mkdir(parents=True, exist_ok=True)
    try:
        r = subprocess.run(
            [
                npm,
                "install",
                "--no-audit",
                "--no-fund",
                "--prefix",
                str(_npm_dir()),
                f"{NPM_PACKAGE}@{NPM_VERSION}",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"npm install failed: {exc}"
    if r.returncode != 0 or not mjs.is_file():
        last = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
        return None, f"npm install failed: {last[0][:200]}"
    return mjs, ""


def _standins(src: Path) -> Path:
    """What the WebAssembly port lacks: socket, ssl, cryptolib here; machine and network from
    the ESP32 HAL tests' fakes (tests/firmware/fake_esp32)."""
    src.mkdir()
    for path in list((HERE / "stubs").glob("*.py")) + [
        FAKE_ESP32 / "machine.py",
        FAKE_ESP32 / "network.py",
    ]:
        shutil.copyfile(path, src / path.name)
    return src


def _root(tmp: Path) -> Path:
    root = tmp / "dev0"
    (root / "data").mkdir(parents=True)
    board = load_board(BOARD)
    (root / "board.json").write_text(json.dumps(board.device_data()))
    cfg = new_config(board.role, "mqtt://127.0.0.1:9")  # nothing listens: offline steady state
    (root / "config.json").write_text(json.dumps(cfg))
    return root


def _unix(mpy: Path, stubs: Path, root: Path, tmp: Path) -> dict:
    """The same script on the 64-bit unix port (the baseline)."""
    script = tmp / "heap64.py"
    prelude = f"FW = {str(mpy)!r}\nSTUBS = {str(stubs)!r}\nROOT = {str(root)!r}\n"
    script.write_text(prelude + (HERE / "heap_mpy.py").read_text() + "\nasyncio.run(main())\n")
    exe = find_micropython()
    if not exe:
        return {"error": "micropython is not installed"}
    r = subprocess.run([exe, str(script)], capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    for line in r.stdout.splitlines():
        if line.startswith("J "):
            return json.loads(line[2:])
    return {"error": (r.stderr or r.stdout).strip()[-300:]}


def run() -> dict[str, object]:
    node = shutil.which("node")
    if not node:
        return {"available": False, "reason": "node is not installed"}
    mjs, why = _package()
    if mjs is None:
        return {"available": False, "reason": why}
    with tempfile.TemporaryDirectory(prefix="bench-ram32-") as d:
        tmp = Path(d)
        mpy, stubs = tmp / "mpy", tmp / "stubs"
        build(mpy)
        build(
            stubs, firmware=_standins(tmp / "standins")
        )  # .mpy: no compile garbage in the figures
        root32 = _root(tmp / "r32")
        root64 = _root(tmp / "r64")
        r = subprocess.run(
            [node, str(HERE / "heap.mjs"), str(mjs), str(mpy), str(stubs), str(root32)],
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
        )
        try:
            w32 = json.loads(r.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {
                "available": False,
                "reason": f"node run failed: {(r.stderr or r.stdout)[-300:]}",
            }
        u64 = _unix(mpy, stubs, root64, tmp)
    out: dict[str, object] = {
        "available": "error" not in w32,
        "package": f"{NPM_PACKAGE}@{NPM_VERSION}",
    }
    if "error" in w32:
        out["reason"] = w32["error"]
        return out
    out.update(
        {
            "wasm32_is_32bit": w32.get("sys_maxsize") == 2**31 - 1,
            "import_footprint_32bit_bytes": w32["code"],
            "import_footprint_64bit_bytes": u64.get("code"),
            "steady_device_32bit_bytes": w32.get("steady_device"),
            "steady_device_64bit_bytes": u64.get("steady_device"),
            "steady_total_32bit_bytes": w32.get("steady_total"),
            "stand_ins_32bit_bytes": w32.get("stubs"),
            "host_hal_32bit_bytes": w32.get("host_hal_code"),
            "esp32_heap_reference_bytes": ESP32_HEAP_REFERENCE,
            "esp32_headroom_bytes": ESP32_HEAP_REFERENCE - (w32.get("steady_total") or w32["code"]),
            "board": BOARD,
        }
    )
    for key in ("steady_error",):
        if key in w32:
            out["wasm32_" + key] = w32[key]
        if key in u64:
            out["unix64_" + key] = u64[key]
    return out


if __name__ == "__main__":
    print(json.dumps(run(), indent=1))
