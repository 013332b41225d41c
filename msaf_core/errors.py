"""Typed exceptions of the public msaf_core API."""


class MSAFError(Exception):
    """Base class of every error msaf_core raises on purpose."""


class CheckpointError(MSAFError):
    """A checkpoint file cannot be used. ``path`` names the file; the message says why."""

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The file does not exist (or is not a regular file)."""


class CheckpointCorruptError(CheckpointError):
    """The file exists but cannot be read as a torch checkpoint (truncated, damaged)."""


class CheckpointFormatError(CheckpointError):
    """The file is a readable torch file but not an msaf checkpoint (a foreign file)."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint's config or weights do not fit the model asked for."""


class InputError(MSAFError, ValueError):
    """An image or frame given to the segmenter is unusable (shape, dtype, size)."""
