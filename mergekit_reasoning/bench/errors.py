"""One exception type so the command can print a single clear line and exit non-zero."""


class BenchError(RuntimeError):
    """A user-facing failure: unknown task, missing data file, unloadable model, bad option."""
