"""`python -m mergekit_reasoning.cli`: the console script."""

from mergekit_reasoning.cli import run

run()
