"""The errors prunekit raises on purpose.

Every message is meant to be read by a user: it says what is wrong and, where possible, what to do.
The CLI prints the message alone (no traceback unless ``--debug``) and exits non-zero.
"""


class PrunekitError(Exception):
    """Base class: something the user can fix (input, settings, environment)."""


class ModelNotFoundError(PrunekitError):
    """The model spec names nothing that can be loaded."""


class UnsupportedArchitectureError(PrunekitError):
    """The model family has no adapter, or a variant prunekit cannot prune correctly."""


class DataError(PrunekitError):
    """A dataset name, file or text that cannot be used."""


class SettingsError(PrunekitError):
    """An option value that is out of range or inconsistent with the model."""


class PlanError(PrunekitError):
    """A pruning plan that does not fit the model it is applied to, or is corrupt."""


class MissingExtraError(PrunekitError):
    """An optional dependency is not installed."""

    def __init__(self, package: str, extra: str, purpose: str):
        super().__init__(
            f"{purpose} needs the optional package '{package}': pip install 'prunekit[{extra}]'"
        )


class NumericalError(PrunekitError):
    """Statistics or a solve produced NaN/Inf or a matrix that is not positive definite."""


class ExportError(PrunekitError):
    """An export that cannot be written, or a model directory that cannot be loaded as written."""


class RankFailure(PrunekitError):
    """Under many processes, another rank failed or a collective timed out: this rank stops."""
