"""What goes wrong with data: every error a user can cause is one of these, and its message
says what to do (the CLI prints it as one line)."""

from __future__ import annotations


class DataError(RuntimeError):
    """The data cannot be used; the message says what to do."""


class DataNotFoundError(DataError):
    """MNIST is neither on disk nor downloadable."""


class DataDamagedError(DataError):
    """A data file is on disk but truncated, empty or not what its name says."""
