# Fleet runner prelude (MicroPython, not CPython): work around a unix-port crash.
# With four or more Devices in one interpreter (more than four polled sockets)
# the process dies with SIGSEGV in poll_obj_get_revents (extmod/modselect.c)
# after the poll set's pollfd array grows: the reallocation leaves stale
# pollfd pointers behind. Growing the array once, up front, to room for every
# socket the fleet will poll avoids any later reallocation. The slots freed by
# unregister() are reused. The firmware itself is unchanged.
import asyncio.core as _core
import select
import socket

_POLL_SLOTS = 64  # replaced by the fleet runner: sockets per interpreter, with margin


def _prealloc(poller, n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        poller.register(s, select.POLLIN)
    for s in socks:
        poller.unregister(s)
        s.close()


_prealloc(_core._io_queue.poller, _POLL_SLOTS)
_init = _core.IOQueue.__init__


def _io_init(self):
    _init(self)
    _prealloc(self.poller, _POLL_SLOTS)


_core.IOQueue.__init__ = _io_init
