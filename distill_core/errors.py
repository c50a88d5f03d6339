"""User-facing errors: one line that says what is wrong and how to fix it."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input; the CLI prints it as one line and exits with code 2."""


class ConfigError(UserError, ValueError):
    """An invalid config value, key or combination."""


class DataError(UserError):
    """A data set that cannot be found or read."""


class TeacherError(UserError):
    """A teacher checkpoint that was never saved or is corrupted."""
