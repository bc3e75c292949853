"""One exception family: each message says what was wrong and what to do about it.

The CLI turns any `PrefcurateError` into one line on stderr and exit code 2, so these
messages are what a user reads instead of a traceback.
"""


class PrefcurateError(Exception):
    """Base of every error prefcurate raises on purpose."""


class ConfigError(PrefcurateError):
    """A parameter or config file is invalid."""


class StorageError(PrefcurateError):
    """A URI cannot be read or written. `transient` when retrying may help (network, throttling,
    5xx, timeouts); a missing file, a permission error or a full disk is not."""

    def __init__(self, message: str, *, transient: bool = False):
        super().__init__(message)
        self.transient = transient


class CheckpointError(PrefcurateError):
    """A model checkpoint is missing, unsafe or unusable."""


class DataError(PrefcurateError):
    """A preference data set cannot be read or has no usable rows."""


class TrainingError(PrefcurateError):
    """A training run failed outside prefcurate's own checks (the multi-process launcher exited non-zero)."""


class ScoringError(PrefcurateError):
    """Scores cannot be computed (non-finite losses, bad batches)."""


class SelectionError(PrefcurateError):
    """A selection rule keeps nothing or is misconfigured."""


class JudgeError(PrefcurateError):
    """A judge cannot produce verdicts (endpoint down, bad model)."""


class VerifyError(PrefcurateError):
    """A run cannot be verified: not a run directory, or a stage verify needs has not finished."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type when it has none): what a one-line error quotes."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
