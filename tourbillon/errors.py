"""Errors the toolkit raises for bad input; the CLI prints them without a traceback."""


class TourbillonError(Exception):
    """Base class: a problem with what the user asked for, not a bug."""


class ConfigError(TourbillonError, ValueError):
    """An invalid variant, field or value."""


class DataError(TourbillonError, ValueError):
    """Missing, corrupt or malformed data."""


class CheckpointError(TourbillonError):
    """A checkpoint that cannot be read or does not match the run."""
