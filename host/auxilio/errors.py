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


def read_input(path: object, what: str, error: type[AuxilioError] = UsageError) -> bytes:
    """The bytes of a file the user named; a missing, directory or unreadable one is one line.

    ``what`` names it in the message ("firmware file", "broker admin file").
    """
    from pathlib import Path

    p = Path(str(path))
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise error(f"{what} {path} is a directory") from None
    except OSError as exc:
        raise error(f"{what} {path} cannot be read: {exc.strerror}") from None
