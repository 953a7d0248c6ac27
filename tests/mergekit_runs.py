"""Running merges the ways users do: mergekit's Python API, the stock CLI, ours."""

import subprocess
import sys
from pathlib import Path

import yaml

from mergekit_reasoning.testing.demo import stock_mergekit_yaml


def run_stock(recipe: dict, out: Path, **options) -> Path:
    """mergekit's own `run_merge`, as a Python user calls it."""
    from mergekit.config import MergeConfiguration
    from mergekit.io.tasks import LoaderCache
    from mergekit.merge import MergeOptions, run_merge

    run_merge(MergeConfiguration.model_validate(recipe), str(out), options=MergeOptions(quiet=True, **options))
    LoaderCache().flush_all()  # mergekit leaves each input's last shard mapped; the test goes on reading
    return out


def run_cli(command: list, recipe: dict, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    """A command line on a recipe file, in a fresh interpreter (plugin discovery included)."""
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "recipe.yml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return subprocess.run(command + [str(path), *args], capture_output=True, text=True)


def mergekit_yaml(recipe: dict, tmp: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    return run_cli(stock_mergekit_yaml(), recipe, tmp, str(out), "--quiet", *args)


def ours(verb: str, recipe: dict, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return run_cli([sys.executable, "-m", "mergekit_reasoning.cli", verb], recipe, tmp, *args)
