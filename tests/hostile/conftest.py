"""Hostile input and faults: the attacks, the unlucky runs, and what each must end in.

Every test here tries one instance of a class of problem against the commands users
run (`check`, `merge`, `extract`, `densify`, `verify`, `regenerate`, `clean`, the
stock `mergekit-yaml`) and asserts the property that closes the class: nothing an
input names is replaced, nothing wrong is written and called done, nothing is left
behind, and the failure is one true line. Run them alone with `pytest tests/hostile`.
"""

import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from mergekit_reasoning.cli import main


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def write_recipe(folder: Path, recipe, name: str = "recipe.yml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(recipe if isinstance(recipe, str) else yaml.safe_dump(recipe), encoding="utf-8")
    return path


def one_line_error(result, *expected: str) -> str:
    """The command failed with exit status 1 and said one `Error: ...` line holding `expected`."""
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in result.output.strip().splitlines() if not line.startswith(("note:", "warning:"))]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for part in expected:
        assert part in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def copy_model(tmp_path):
    """A fresh copy of a model folder (a new path, so no process cache knows it)."""
    counter = iter(range(1000))

    def copy(source: Path, name: str = "model") -> Path:
        destination = tmp_path / f"{name}-{next(counter)}"
        shutil.copytree(source, destination)
        return destination

    return copy
