"""The base class of user-facing errors: the CLI prints them as one line, exit code 2 (1 for a
run that stopped itself, `TrainingFailed`)."""


class AcclimateError(ValueError):
    """A problem with the user's input (recipe, data, weights, command line), stated in one line
    that names the file or key and the fix. Anything else is a bug and keeps its traceback."""


class TrainingFailed(AcclimateError):
    """The run stopped itself (divergence, collapse, a dead rank): exit code 1, the last good
    checkpoint kept."""


class ConfigError(AcclimateError):
    """A recipe problem, stated in one line that names the key and the file that set it."""
