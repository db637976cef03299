"""The one error hierarchy for user-facing failures on the host side."""

from __future__ import annotations


class AuxilioError(Exception):
    """A failure the user can act on; the CLI prints it as one line and exits non-zero.

    ``details``: further lines under that one when one mistake has several
    parts (every bad line of a CSV import), printed indented, never as more
    ``error:`` lines.
    """

    exit_code = 1
    details: list[str] = []  # noqa: RUF012 - instances assign their own list


class UsageError(AuxilioError):
    """Bad arguments, bad files, bad URLs: the user's input is wrong."""

    exit_code = 2


class NotFoundError(AuxilioError):
    """A named thing (device, board, alert, file) does not exist."""

    exit_code = 3


class ConnectionFailed(AuxilioError):
    """A broker, registry, serial port or webhook could not be reached."""

    exit_code = 4
