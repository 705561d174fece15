"""Errors that speak to the user: the CLI prints their message on one line, without a traceback.

Each message names the bad value, what is allowed, and the fix.
"""


class UserError(Exception):
    """Bad input from the user (a config value, a path, a data file)."""


class ConfigError(UserError, ValueError):
    """A configuration value is out of range."""


class DataError(UserError, RuntimeError):
    """A dataset file is missing or corrupted."""


class CheckpointError(UserError, ValueError):
    """A checkpoint path is missing, unreadable, or holds another kind of model."""


class MetricUnavailable(Exception):
    """An evaluation metric cannot be computed on this data (a classifier fit on one class); the
    message says why. Not a UserError: ``evaluate`` records NaN and the reason, and goes on with
    the other metrics. Any other error in a metric is a bug and stops it."""
