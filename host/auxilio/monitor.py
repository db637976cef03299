"""`auxilio.monitor`: the operator console's entry points; the console itself is auxilio.console.

Kept so that `from auxilio.monitor import …` (the attend CLI, downstream
scripts) goes on working: nothing is defined twice.
"""

from __future__ import annotations

from auxilio.console.app import MonitorApp, run_live
from auxilio.console.view import attend_message, print_once, public, snapshot

__all__ = ["MonitorApp", "attend_message", "print_once", "public", "run_live", "snapshot"]
