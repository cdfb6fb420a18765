"""Exception types that cross module boundaries. Their messages are shown to users as-is."""


class ShardserveError(Exception):
    """Base class: an error whose message is meant for the user (no traceback needed)."""


class ModelLoadError(ShardserveError):
    """A model directory, config or checkpoint that cannot be loaded; names the file."""


class StorageError(ShardserveError):
    """A model location that cannot be fetched, verified or unpacked; names the object."""


class EngineDeadError(ShardserveError):
    """The engine (or one of its ranks) stopped; every pending request fails with this."""


class RequestError(ShardserveError, ValueError):
    """A request an engine refuses: a ValueError, as bad input always was, that also names the
    request field at fault as the engine calls it (`field`: "prompt" or a SamplingParams field),
    for a server to name in its own terms."""

    def __init__(self, message: str, field: str = "prompt"):
        super().__init__(message)
        self.field = field
