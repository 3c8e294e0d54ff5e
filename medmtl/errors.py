"""Typed errors. Everything a user can cause is a ``MedmtlError``; CLIs turn it into one line and exit 2."""

from __future__ import annotations

import os


class MedmtlError(Exception):
    """Base of every error medmtl raises on purpose."""


class InputError(MedmtlError, ValueError):
    """Bad user input: a file, an array or a value. The message reads ``<where>: <what>``."""

    def __init__(self, where: str | os.PathLike, what: str):
        self.where = os.fspath(where)
        self.what = what
        super().__init__(f"{self.where}: {what}")


class KSpaceFileError(InputError):
    """A k-space HDF5 file that is missing, unreadable or does not follow the fastMRI layout."""


class ConfigError(InputError):
    """A configuration value that cannot work."""
