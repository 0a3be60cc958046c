"""User-facing errors: the CLI prints their message as one line, without a traceback."""


class ChangenetError(Exception):
    """Base class for every error that is the user's to fix (bad spec, bad data, missing file)."""


class SpecError(ChangenetError):
    """The experiment spec or an override is wrong (unknown key, bad type, out of range, missing)."""


class DataError(ChangenetError):
    """A dataset file is missing, unreadable or inconsistent."""


class ModelError(ChangenetError):
    """A checkpoint, ONNX model or engine does not fit the spec or cannot be loaded."""


class UnsupportedError(ChangenetError):
    """The request is valid but cannot run on this machine or is not supported."""


class SkippedInputs(ChangenetError):
    """A run finished but left out some inputs (each named as it was skipped); scripts see exit code 3."""

    exit_code = 3
