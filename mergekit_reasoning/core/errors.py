"""The package's one error hierarchy: a problem the user can fix, said in one line.

Library code raises these and nothing else for bad input; the command line
turns them into click's one-line `Error: ...` and exit status 1, in one place
(`cli.OneLineErrors`), and the merge method does the same at mergekit's own
command line (`method.reasoning_vector`).
"""


class Error(Exception):
    """A user-facing failure, one line that names the culprit."""

    def __init__(self, message: str = ""):
        super().__init__(message)
        self.message = str(message)


class RecipeError(Error):
    """A problem with the user's recipe, models or vector folders."""


class BenchError(Error):
    """A benchmark failure: unknown task, missing data file, unloadable model, bad option."""
