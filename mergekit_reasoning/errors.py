"""The one error type users see from a bad recipe or incompatible models."""

import click


class RecipeError(click.ClickException):
    """A problem with the user's recipe or models, reported as one line.

    It derives from click's exception so that any click command, the stock
    `mergekit-yaml` included, prints `Error: <message>` and exits 1 instead of a
    traceback; Python callers catch it like any other exception.
    """
