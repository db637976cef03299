# Virtual board boot script, run by the MicroPython unix port (not CPython).
# Mounts the LittleFS2 "vfs" partition of a flash image file at / and runs
# boot.py then main.py like MicroPython's ESP32 port (ports/esp32/main.c), then
# returns so the interpreter (started with -i) serves the REPL. With
# AUXILIO_VB_TASK set it does a one-shot job on the image instead and exits.
# Markers to the supervisor are OSC sequences (ESC ] auxvb;... BEL) that the
# supervisor strips from the serial stream.
import os
import sys

import vfs

_BLOCK = 4096  # ESP32 flash sector = MicroPython's LittleFS block size on ESP32
_ERASED = b"\xff" * _BLOCK  # erased NOR flash reads as 0xFF


class FlashBdev:
    """Extended block device (readblocks/writeblocks with offset, ioctl erase) on the image file."""

    def __init__(self, path, offset, size):
        # Unbuffered binary file: each write reaches the file at once, so a kill -9
        # of this process leaves the image exactly as far as LittleFS had written.
        self.f = open(path, "r+b")
        self.base = offset
        self.blocks = size // _BLOCK

    def readblocks(self, n, buf, off=0):
        self.f.seek(self.base + n * _BLOCK + off)
        self.f.readinto(buf)

    def writeblocks(self, n, buf, off=None):
        if off is None:  # simple interface: erase then program a whole block
            self.ioctl(6, n)
            off = 0
        self.f.seek(self.base + n * _BLOCK + off)
        self.f.write(buf)
        self.f.flush()

    def ioctl(self, op, arg):
        if op == 4:  # MP_BLOCKDEV_IOCTL_BLOCK_COUNT
            return self.blocks
        if op == 5:  # MP_BLOCKDEV_IOCTL_BLOCK_SIZE
            return _BLOCK
        if op == 6:  # MP_BLOCKDEV_IOCTL_BLOCK_ERASE
            self.f.seek(self.base + arg * _BLOCK)
            self.f.write(_ERASED)
            self.f.flush()
            return 0
        return 0  # 1 init, 2 deinit, 3 sync: nothing to do for a file


def _marker(text):
    sys.stdout.write("\x1b]auxvb;" + text + "\x07")


def _bdev():
    return FlashBdev(
        os.getenv("AUXILIO_VB_IMAGE"),
        int(os.getenv("AUXILIO_VB_VFS_OFFSET")),
        int(os.getenv("AUXILIO_VB_VFS_SIZE")),
    )


def _copy_tree(src, dst):
    for name, kind, *_ in os.ilistdir(src):
        s = src + "/" + name
        d = dst + "/" + name
        if kind == 0x4000:  # directory
            try:
                os.mkdir(d)
            except OSError:
                pass
            _copy_tree(s, d)
        else:
            with open(s, "rb") as fi, open(d, "wb") as fo:
                while True:
                    chunk = fi.read(4096)
                    if not chunk:
                        break
                    fo.write(chunk)


def _task(task):
    bdev = _bdev()
    if task == "mkfs":
        vfs.VfsLfs2.mkfs(bdev)
        return
    fs = vfs.VfsLfs2(bdev)
    if task == "deploy":  # copy a host directory tree into the filesystem root
        vfs.mount(fs, "/flash")
        _copy_tree(os.getenv("AUXILIO_VB_SRC"), "/flash")
        vfs.umount("/flash")


def _run_file(name, g):
    """Run a script from the fs root like pyexec_file_if_exists; False on SystemExit."""
    try:
        os.stat(name)
    except OSError:
        return True
    try:
        with open(name) as f:
            src = f.read()
        exec(compile(src, name, "exec"), g)
    except SystemExit:
        return False
    except BaseException as e:  # KeyboardInterrupt included: report and go on to the REPL
        sys.print_exception(e)
    return True


def _at_exit():
    # The ESP32 port's soft reset runs every finaliser (gc_sweep_all), so files
    # left open are closed and their data committed; the unix port just exits.
    # Collect what is unreachable, then unmount, to come as close as we can.
    import gc

    gc.collect()
    try:
        vfs.umount("/")
    except OSError:
        pass


# What MicroPython's ESP32 inisetup.py writes into a fresh filesystem.
_BOOT_PY = """\
# This file is executed on every boot (including wake-boot from deepsleep)
#import esp
#esp.osdebug(None)
#import webrepl
#webrepl.start()
"""
_CORRUPTED = """\
The filesystem appears to be corrupted. If you had important data there, you
may want to make a flash snapshot to try to recover it. Otherwise, perform
factory reprogramming of MicroPython firmware (completely erase flash, followed
by firmware programming).
"""


def _inisetup(bdev):
    """ports/esp32/modules/inisetup.py: format an erased vfs partition, refuse a corrupt one."""
    buf = bytearray(_BLOCK)
    bdev.readblocks(0, buf)
    if buf != _ERASED:
        print(_CORRUPTED)
        return None
    print("Performing initial setup")
    vfs.VfsLfs2.mkfs(bdev)
    return vfs.VfsLfs2(bdev)


class _Machine:
    """The unix port's machine module plus the chip's eFuse MAC as unique_id() (ESP32 port)."""

    def __init__(self, base, mac):
        self._base = base
        self._mac = mac

    def __getattr__(self, name):
        return getattr(self._base, name)

    def unique_id(self):
        return self._mac


def _efuse_mac():
    # The unix port's machine has no unique_id(); on an ESP32 it returns the base MAC
    # (6 bytes), which the provisioning tool reads to identify the chip.
    mac = os.getenv("AUXILIO_VB_MAC")
    if not mac:
        return
    import binascii

    import machine

    if not hasattr(machine, "unique_id"):
        sys.modules["machine"] = _Machine(machine, binascii.unhexlify(mac))


def _boot(g):
    _efuse_mac()
    bdev = _bdev()
    fresh = False
    try:
        fs = vfs.VfsLfs2(bdev)
    except OSError as e:
        fs = _inisetup(bdev)
        if fs is None:
            _marker("fatal;cannot mount the vfs partition: " + repr(e))
            return
        fresh = True
    vfs.umount("/")
    vfs.mount(fs, "/")
    os.chdir("/")
    if fresh:
        with open("boot.py", "w") as f:
            f.write(_BOOT_PY)
    sys.path[:] = ["", ".frozen", "/lib"]  # the ESP32 port's sys.path
    sys.atexit(_at_exit)
    if not _run_file("boot.py", g):
        _at_exit()
        _marker("reboot")
        return
    # Like the ESP32 port, main.py runs only when booting into the friendly REPL.
    if os.getenv("AUXILIO_VB_MODE") != "raw":
        if not _run_file("main.py", g):
            _at_exit()
            _marker("reboot")
            return
    _marker("ready")


_t = os.getenv("AUXILIO_VB_TASK")
if _t:
    _task(_t)
    sys.exit(0)
else:
    _boot(globals())
