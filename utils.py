"""Errors caused by the user's input, shown as one line without a traceback.

`main()` catches `UserError`, prints `error: <message>` on stderr and exits with code 2.
Everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in the user's flags, config, data or files; the message names the thing and the fix."""


class ConfigError(UserError):
    """A config file, key or value that cannot be used."""


class DataError(UserError):
    """A dataset path, layout, map file or image that cannot be read."""


class CheckpointError(UserError):
    """A checkpoint file that is missing, unreadable or does not fit the model."""
