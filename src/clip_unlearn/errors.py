"""The one exception type for user mistakes: the CLI prints its message alone, without a traceback."""


class ConfigError(ValueError):
    """A bad value in the run's configuration or environment (unknown class, missing folder, wrong tag...).

    The message must name the bad value and the valid choices or the fix.
    """
