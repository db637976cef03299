"""Virtual boards: the real firmware on the MicroPython unix port behind real serial links."""

from __future__ import annotations

from auxilio.boards import Board, load_board
from auxilio.emulator.board import State, VirtualBoard
from auxilio.emulator.image import FlashImage

__all__ = ["Board", "FlashImage", "State", "VirtualBoard", "load_board"]
