"""Reading a small text file whole, with a size limit and one ``InputError`` line for every way it can fail."""

from __future__ import annotations

from pathlib import Path

from medmtl.errors import InputError


def read_text(path: Path, limit: int, what: str, encoding: str = "utf-8") -> str:
    """The decoded contents of ``path``, refused above ``limit`` bytes before anything is read.

    ``what`` names the expected file in messages ("DL_info.csv", "a tag file"). Raises ``InputError`` for a
    folder, a missing or unreadable file, an oversized one, or bytes that are not ``encoding`` text.
    """
    try:
        if path.is_dir():
            raise InputError(path, f"is a folder, not {what}")
        size = path.stat().st_size
        if size > limit:
            raise InputError(path, f"is {size} bytes, above the limit of {limit} for {what}")
        return path.read_bytes().decode(encoding)
    except FileNotFoundError as err:
        raise InputError(path, "no such file") from err
    except OSError as err:
        raise InputError(path, f"cannot be read ({err.strerror or err})") from err
    except UnicodeDecodeError as err:
        raise InputError(path, f"is not UTF-8 text ({err.reason} at byte {err.start})") from err
