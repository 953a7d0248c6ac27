"""Files shipped with the package: the recipes under `recipes/`."""

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent.parent  # mergekit_reasoning/


def recipes_dir() -> Path:
    """`recipes/` beside the package in a checkout, or inside it once installed."""
    for candidate in (_PACKAGE.parent / "recipes", _PACKAGE / "recipes"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("the recipes folder is not installed with this package")
